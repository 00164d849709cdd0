//! Malformed inputs through the `pixellm` CLI, end to end (issue 6).
//!
//! The corpus (`malformed/corpus.rs`) is generated at test time from the conformance kit.
//! Every case runs `pixellm segment` and checks:
//! * failures: exit code 1; the error is one line starting with `error: `, on its own line
//!   and last on stderr (complete progress lines may precede it), containing the expected
//!   substrings (file / tensor / what was expected);
//! * successes (valid odd images, the hand-built `.bin` control): exit code 0 and a complete
//!   output directory (`result.json` with every field, one mask PNG per target, overlay);
//! * always: `panicked` appears nowhere; the process was not killed by a signal (a refused
//!   allocation aborts); no temporary `.<out>.tmp-*` sibling is left, and after a failure
//!   the `--out` directory does not exist.
//!
//! On Linux every run is capped at 4 GiB of address space (`ulimit -v`), far above what
//! the tiny kit model needs (< 0.3 GiB) and far below what trusting any of the absurd sizes
//! in the corpus would allocate.
//!
//! The CLI is not a dependency of this package: the binary is looked up next to this test
//! executable (`target/<profile>/pixellm`, built by `cargo test --workspace` or
//! `cargo build --workspace`), or taken from `$PIXELLM_BIN`. `PIXELLM_KEEP_MALFORMED=1` keeps
//! every case directory; `PIXELLM_MALFORMED_ONLY=name,name` runs only those cases.

#[path = "malformed/corpus.rs"]
mod corpus;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use corpus::{Case, Ctx, Expect, Run};
use serde_json::Value;

/// Longest a single run may take (the valid runs take a few seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Address-space cap per run on Linux, in KiB.
const MEMORY_CAP_KIB: u64 = 4 << 20;

fn kit() -> PathBuf {
    if let Some(dir) = std::env::var_os("PIXELLM_KIT") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/conformance")
}

/// `target/<profile>/pixellm`, found from this test executable (`target/<profile>/deps/`).
fn pixellm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PIXELLM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let name = format!("pixellm{}", std::env::consts::EXE_SUFFIX);
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the `pixellm` CLI binary was not found next to {} (expected target/<profile>/{name}); \
                 run `cargo build --workspace` first (`cargo test --workspace` builds it too), \
                 or set PIXELLM_BIN",
                exe.display()
            )
        })
}

/// Warns when the binary is older than the sources it is built from.
fn warn_if_stale(bin: &Path) {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut stack = vec![
        root.join("crates/pixellm/src"),
        root.join("crates/pixellm-cli/src"),
    ];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                    newest = Some((t, p));
                }
            }
        }
    }
    if let Some((t, p)) = newest {
        if t > built {
            eprintln!(
                "WARNING: {} is older than {}: results are for a stale CLI; run `cargo build --workspace`",
                bin.display(),
                p.display()
            );
        }
    }
}

/// What one run printed.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    secs: f64,
}

fn command(bin: &Path, run: &Run) -> Command {
    let mut args: Vec<std::ffi::OsString> = vec!["segment".into(), "--model".into()];
    args.push(run.model.clone().into());
    if let Some(v) = &run.vision_tower {
        args.push("--vision-tower".into());
        args.push(v.clone().into());
    }
    args.push("--image".into());
    args.push(run.image.clone().into());
    args.push("--prompt".into());
    args.push(run.prompt.clone().into());
    if let Some(a) = &run.answer {
        args.push("--answer".into());
        args.push(a.clone().into());
    }
    args.push("--out".into());
    args.push(run.out.clone().into());
    args.extend(run.args.iter().map(Into::into));

    let mut cmd = if cfg!(target_os = "linux") && Path::new("/bin/sh").exists() {
        let mut c = Command::new("/bin/sh");
        c.arg("-c")
            .arg(format!(
                "ulimit -v {MEMORY_CAP_KIB} 2>/dev/null; exec \"$0\" \"$@\""
            ))
            .arg(bin)
            .args(args);
        c
    } else {
        let mut c = Command::new(bin);
        c.args(args);
        c
    };
    cmd.env("RUST_BACKTRACE", "0")
        .env("MALLOC_ARENA_MAX", "2")
        // Nothing outside the case may be picked up as a vision tower.
        .env("HF_HUB_CACHE", run.out.with_file_name("no-hf-cache"))
        .env_remove("HF_HOME");
    for (k, v) in &run.env {
        cmd.env(k, v);
    }
    cmd
}

fn execute(bin: &Path, ctx: &Ctx) -> Outcome {
    let (out_path, err_path) = (ctx.dir.join(".stdout"), ctx.dir.join(".stderr"));
    let start = Instant::now();
    let mut child = command(bin, &ctx.run)
        .current_dir(&ctx.dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    Outcome {
        code: status.and_then(|s| s.code()),
        stdout: text(&out_path),
        stderr: text(&err_path)
            + if status.is_none() {
                "\n<killed: ran past the timeout>"
            } else if status.is_some_and(|s| s.code().is_none()) {
                "\n<terminated by a signal>"
            } else {
                ""
            },
        secs: start.elapsed().as_secs_f64(),
    }
}

/// The error line: last on stderr, at the start of its own line, the only `error` line.
fn error_line(stderr: &str) -> Result<String, String> {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let Some(last) = lines.last() else {
        return Err("stderr is empty".into());
    };
    if !last.starts_with("error: ") {
        return Err(match last.find("error: ") {
            Some(_) => format!("the error does not start its own line: {last:?}"),
            None => format!("the last stderr line is not an `error: ` line: {last:?}"),
        });
    }
    if last.contains('\r') {
        return Err(format!("the error line holds a carriage return: {last:?}"));
    }
    if let Some(other) = lines[..lines.len() - 1]
        .iter()
        .find(|l| l.to_lowercase().contains("error"))
    {
        return Err(format!("more than one error line; also: {other:?}"));
    }
    Ok(last.to_string())
}

fn matches(line: &str, want: &str) -> bool {
    want.split('|').any(|alt| line.contains(alt))
}

/// Problems with one finished run; empty when it behaved.
fn check(case: &Case, ctx: &Ctx, o: &Outcome) -> (Vec<String>, String) {
    let mut problems = Vec::new();
    let mut shown = String::new();
    if o.stdout.contains("panicked") || o.stderr.contains("panicked") {
        problems.push("`panicked` in the output".to_string());
    }
    // No temporary sibling of the output directory may remain, whatever the outcome.
    let out = &ctx.run.out;
    if let (Some(parent), Some(name)) = (out.parent(), out.file_name()) {
        let prefix = format!(".{}.", name.to_string_lossy());
        for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                problems.push(format!("leftover next to the output directory: {n}"));
            }
        }
    }
    for p in &ctx.run.must_not_exist {
        if p.exists() {
            problems.push(format!(
                "{} exists but must not (payload run or stale file kept)",
                p.display()
            ));
        }
    }
    for (p, bytes) in &ctx.run.must_keep {
        if std::fs::read(p).ok().as_deref() != Some(bytes.as_slice()) {
            problems.push(format!(
                "{}: the user's file was changed or removed",
                p.display()
            ));
        }
    }
    match case.expect {
        Expect::Err(want) => {
            if o.code != Some(1) {
                problems.push(format!("exit code {:?}, expected 1", o.code));
            }
            match error_line(&o.stderr) {
                Ok(line) => {
                    for w in want {
                        if !matches(&line, w) {
                            problems.push(format!("the error does not mention {w:?}"));
                        }
                    }
                    shown = line;
                }
                Err(e) => {
                    problems.push(e);
                    // Still check what the error says, wherever it was printed.
                    let last = o.stderr.lines().last().unwrap_or("");
                    let text = last.rfind("error: ").map_or("", |i| &last[i..]);
                    for w in want {
                        if !matches(text, w) {
                            problems.push(format!("the error does not mention {w:?}"));
                        }
                    }
                    shown = last.to_string();
                }
            }
            match &ctx.run.out_file {
                Some(bytes) => {
                    if std::fs::read(out).ok().as_ref() != Some(bytes) {
                        problems.push(format!(
                            "the file at {} was not left as it was",
                            out.display()
                        ));
                    }
                }
                None => {
                    if out.exists() {
                        problems.push(format!("{} exists after a failure", out.display()));
                    }
                }
            }
        }
        Expect::Ok => {
            if o.code != Some(0) {
                problems.push(format!("exit code {:?}, expected 0", o.code));
                shown = o.stderr.lines().last().unwrap_or("").to_string();
            } else {
                match check_output(&ctx.run) {
                    Ok(s) => shown = s,
                    Err(e) => problems.push(e),
                }
            }
        }
    }
    let shown = shown.replace(&ctx.dir.display().to_string(), "$CASE");
    let shown = shown.replace(&kit().display().to_string(), "$KIT");
    (problems, shown)
}

/// `result.json` and the files it names, for a successful run.
fn check_output(run: &Run) -> Result<String, String> {
    let dir = &run.out;
    let text = std::fs::read(dir.join("result.json")).map_err(|e| format!("result.json: {e}"))?;
    let r: Value =
        serde_json::from_slice(&text).map_err(|e| format!("result.json is not JSON: {e}"))?;
    for key in [
        "text",
        "token_ids",
        "targets",
        "width",
        "height",
        "timings_ms",
        "backend",
        "dtype",
        "warnings",
    ] {
        if r.get(key).is_none() {
            return Err(format!("result.json lacks `{key}`"));
        }
    }
    let (w, h) = run.size;
    if r["width"] != w || r["height"] != h {
        return Err(format!(
            "result.json size {}x{}, expected {w}x{h}",
            r["width"], r["height"]
        ));
    }
    let targets = r["targets"].as_array().ok_or("`targets` is not a list")?;
    if run.targets != usize::MAX && targets.len() != run.targets {
        return Err(format!(
            "{} targets, expected {}",
            targets.len(),
            run.targets
        ));
    }
    let mut expected_files = vec!["result.json".to_string(), "overlay.png".to_string()];
    for t in targets {
        for key in ["index", "score", "area", "bbox", "mask"] {
            if t.get(key).is_none() {
                return Err(format!("a target lacks `{key}`"));
            }
        }
        let mask = t["mask"].as_str().ok_or("mask is not a file name")?;
        let img = image::open(dir.join(mask)).map_err(|e| format!("{mask}: {e}"))?;
        if (img.width(), img.height()) != (w, h) {
            return Err(format!("{mask} is {}x{}", img.width(), img.height()));
        }
        expected_files.push(mask.to_string());
    }
    // The user's own files beside a previous result stay (checked byte for byte elsewhere).
    for (p, _) in &run.must_keep {
        if p.parent() == Some(dir.as_path()) {
            expected_files.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    let overlay = image::open(dir.join("overlay.png")).map_err(|e| format!("overlay.png: {e}"))?;
    if (overlay.width(), overlay.height()) != (w, h) {
        return Err("overlay.png has the wrong size".into());
    }
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    expected_files.sort();
    if present != expected_files {
        return Err(format!(
            "output holds {present:?}, expected exactly {expected_files:?}"
        ));
    }
    Ok(format!(
        "ok: {} target(s), {w}x{h}, text {:?}",
        targets.len(),
        r["text"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(40)
            .collect::<String>()
    ))
}

struct Row {
    name: &'static str,
    problems: Vec<String>,
    shown: String,
    secs: f64,
}

fn all_cases() -> Vec<Case> {
    let mut cases = corpus::cases();
    cases.extend(corpus::platform_cases());
    if let Ok(only) = std::env::var("PIXELLM_MALFORMED_ONLY") {
        let only: Vec<&str> = only.split(',').collect();
        cases.retain(|c| only.contains(&c.name));
    }
    cases
}

#[test]
fn corpus_has_30_distinct_broken_inputs() {
    let cases = corpus::cases();
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
    let broken = cases
        .iter()
        .filter(|c| matches!(c.expect, Expect::Err(_)))
        .count();
    assert!(broken >= 30, "only {broken} broken inputs");
}

#[test]
fn malformed_inputs_through_the_cli() {
    let bin = pixellm_bin();
    warn_if_stale(&bin);
    let kit = kit();
    let root = std::env::temp_dir().join(format!("pixellm-malformed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let keep = std::env::var_os("PIXELLM_KEEP_MALFORMED").is_some();

    let cases = all_cases();
    assert!(!cases.is_empty(), "no case selected");
    let next = AtomicUsize::new(0);
    let rows: Mutex<Vec<Option<Row>>> = Mutex::new((0..cases.len()).map(|_| None).collect());
    // Two workers: the runs are single-process and mostly short.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(case) = cases.get(i) else { break };
                let dir = root.join(case.name);
                std::fs::create_dir_all(&dir).unwrap();
                let mut ctx = Ctx::new(&kit, &dir);
                let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    (case.build)(&mut ctx)
                }));
                let row = match built {
                    Err(_) => Row {
                        name: case.name,
                        problems: vec!["the corpus generator failed (see the panic above)".into()],
                        shown: String::new(),
                        secs: 0.0,
                    },
                    Ok(()) => {
                        let o = execute(&bin, &ctx);
                        let (problems, shown) = check(case, &ctx, &o);
                        if !problems.is_empty() {
                            eprintln!(
                                "---- {} ----\nstdout:\n{}\nstderr:\n{}",
                                case.name,
                                o.stdout.trim_end(),
                                o.stderr.trim_end()
                            );
                        }
                        Row {
                            name: case.name,
                            problems,
                            shown,
                            secs: o.secs,
                        }
                    }
                };
                if !keep {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                rows.lock().unwrap()[i] = Some(row);
            });
        }
    });
    if !keep {
        let _ = std::fs::remove_dir_all(&root);
    }

    let rows: Vec<Row> = rows.into_inner().unwrap().into_iter().flatten().collect();
    let mut report = String::new();
    for r in &rows {
        let status = if r.problems.is_empty() {
            "PASS"
        } else {
            "FAIL"
        };
        report.push_str(&format!(
            "{status} {:<38} {:>5.1}s  {}\n",
            r.name, r.secs, r.shown
        ));
        for p in &r.problems {
            report.push_str(&format!("       - {p}\n"));
        }
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.problems.is_empty())
        .map(|r| r.name)
        .collect();
    if failed.is_empty() {
        eprintln!("\n{report}");
    }
    assert!(
        failed.is_empty(),
        "{} of {} malformed-input cases failed: {}\n\n{report}",
        failed.len(),
        rows.len(),
        failed.join(", ")
    );
}

/// Writes the fuzz seeds (`fuzz/seeds/<target>/`) when `PIXELLM_FUZZ_SEEDS=<dir>` is set:
/// `PIXELLM_FUZZ_SEEDS=$PWD/fuzz/seeds cargo test --workspace --test malformed fuzz_seeds`.
#[test]
fn fuzz_seeds() {
    let seeds = corpus::fuzz_seeds(&kit());
    assert!(seeds.len() >= 4);
    let Some(dir) = std::env::var_os("PIXELLM_FUZZ_SEEDS") else {
        return;
    };
    for (target, name, bytes) in seeds {
        let d = Path::new(&dir).join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    }
}
