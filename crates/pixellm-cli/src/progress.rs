//! Progress on stderr: a live bar when stderr is a terminal, plain lines otherwise (one
//! per phase, and for long work at most one every [`LOG_EVERY`]), so a log file never
//! fills with carriage returns.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a non-terminal log gets a progress line during long work.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

/// Whether progress is shown at all (`-q/--quiet` turns it off).
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Silences every progress and phase line (errors still print).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// Whether `-q` was given.
pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether stderr is an interactive terminal.
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

/// A phase line (`load weights… 812 ms`), unless quiet.
pub fn note(line: &str) {
    if !quiet() {
        eprintln!("{line}");
    }
}

/// A counted piece of long work (questions, steps, scenes).
pub struct Bar {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    start: Instant,
    last_line: Instant,
    /// The first count reported: a resumed run starts part-way, and its ETA must come from
    /// the rate of this run only.
    base: Option<u64>,
}

impl Bar {
    /// Starts `label` with `total` units.
    pub fn new(label: &str, total: u64) -> Self {
        let bar = (interactive() && !quiet()).then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed_precise}, ETA {eta})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            b
        });
        Self {
            bar,
            label: label.to_string(),
            total,
            start: Instant::now(),
            last_line: Instant::now(),
            base: None,
        }
    }

    /// `done` units finished; `msg` is shown beside the count (e.g. the loss).
    pub fn set(&mut self, done: u64, msg: &str) {
        let first = self.base.is_none();
        let base = *self.base.get_or_insert(done);
        if let Some(b) = &self.bar {
            b.set_position(done);
            if first {
                b.reset_eta();
            }
            b.set_message(msg.to_string());
            return;
        }
        if quiet() || self.last_line.elapsed() < LOG_EVERY || done >= self.total {
            return;
        }
        self.last_line = Instant::now();
        let secs = self.start.elapsed().as_secs_f64();
        let eta = if done > base {
            secs / (done - base) as f64 * (self.total - done) as f64
        } else {
            f64::NAN
        };
        eprintln!(
            "{}: {done}/{} {msg} ({:.0} s, ETA {:.0} s)",
            self.label, self.total, secs, eta
        );
    }

    /// A line above a live bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => note(line),
        }
    }

    /// Changes the total (when it becomes known late).
    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    /// Ends the bar with a closing line.
    pub fn finish(self, line: &str) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        note(&format!(
            "{}: {line} ({:.1} s)",
            self.label,
            self.start.elapsed().as_secs_f64()
        ));
    }
}
