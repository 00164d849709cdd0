//! Counting the device work of a pass: kernel launches, distinct kernels (so compilations),
//! host→device uploads and device→host reads.
//!
//! On a GPU the decode step is bound by how many kernels it launches and how often it
//! talks to the host, not by arithmetic; those counts are the same on lavapipe in CI as on
//! an H200, so they are what a test can assert where timings are noise
//! (`docs/performance.md`).
//! - Launches come from CubeCL's launch observer (called on the issuing thread for every
//!   kernel of every CubeCL backend: wgpu, WebGPU, CUDA). The CPU backend launches none:
//!   its counts are 0 and [`Watch::observes_launches`] says so.
//! - Distinct kernels come from CubeCL's launched-kernel collection (each kernel's stable
//!   hash, the key of its compiled artifact): a kernel first seen after warm-up is a
//!   compilation on the decode path.
//! - Uploads and reads are counted where the runtime makes them ([`super::upload`] and the
//!   other `note_upload` sites, the token id read in [`crate::generate::greedy_async`]). Burn's own ops upload
//!   only in `int_arange` (its attention fallback's causal mask), which the runtime never
//!   reaches with one query (`kernels::attention` is called with `causal = false` there).
//!
//! The observer is process-wide: a count taken while other threads run models includes
//! their kernels (the bench runs alone; tests that assert counts run the CLI in a process
//! of its own).

use std::collections::BTreeMap;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use std::sync::Arc;

static UPLOADS: AtomicU64 = AtomicU64::new(0);
static READS: AtomicU64 = AtomicU64::new(0);

/// Notes one host→device upload (a tensor created from host values).
pub fn note_upload() {
    UPLOADS.fetch_add(1, Ordering::Relaxed);
}

/// Notes one device→host read (a tensor's values brought back to the host).
pub fn note_read() {
    READS.fetch_add(1, Ordering::Relaxed);
}

/// What a pass did on the device between two [`Watch::lap`]s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Work {
    /// Kernels launched.
    pub launches: u64,
    /// Distinct kernels launched that no earlier lap of the watch launched (each one a
    /// compilation, unless an earlier pass of the process compiled it).
    pub new_kernels: u64,
    /// Host→device uploads.
    pub uploads: u64,
    /// Device→host reads.
    pub reads: u64,
    /// Launches by kernel (the kernel's short type name, as CubeCL's profiling logger
    /// prints it).
    pub by_kernel: BTreeMap<String, u64>,
}

impl std::ops::AddAssign for Work {
    fn add_assign(&mut self, o: Self) {
        self.launches += o.launches;
        self.new_kernels += o.new_kernels;
        self.uploads += o.uploads;
        self.reads += o.reads;
        for (name, n) in o.by_kernel {
            *self.by_kernel.entry(name).or_default() += n;
        }
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[derive(Default)]
struct LaunchCounter(std::sync::Mutex<BTreeMap<&'static str, u64>>);

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl burn::cubecl::logging::LaunchObserver for LaunchCounter {
    fn launched(&self, kernel: &'static str) {
        // A poisoned lock only means another launching thread panicked mid-insert: the
        // counts are still integers.
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(kernel).or_default() += 1;
    }
}

/// Counts device work from [`Watch::start`] on, lap by lap.
#[must_use = "counting stops when the watch is dropped"]
pub struct Watch {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    counter: Arc<LaunchCounter>,
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    _observation: burn::cubecl::logging::LaunchObservation,
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    kernels: Option<burn::cubecl::launched::LaunchedKernels>,
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    seen: HashSet<u128>,
    /// The upload and read counters at the last lap.
    uploads: u64,
    reads: u64,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("uploads", &self.uploads)
            .field("reads", &self.reads)
            .finish()
    }
}

impl Watch {
    /// Starts counting (replacing any launch observer installed before, until dropped).
    pub fn start() -> Self {
        let (uploads, reads) = (
            UPLOADS.load(Ordering::Relaxed),
            READS.load(Ordering::Relaxed),
        );
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        {
            let counter = Arc::new(LaunchCounter::default());
            Self {
                _observation: burn::cubecl::logging::LaunchObservation::new(counter.clone()),
                counter,
                kernels: Some(burn::cubecl::launched::LaunchedKernels::new()),
                seen: HashSet::new(),
                uploads,
                reads,
            }
        }
        #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
        Self { uploads, reads }
    }

    /// Whether this build observes kernel launches (a CubeCL backend compiled in); without
    /// one, `launches` and `new_kernels` stay 0.
    pub fn observes_launches() -> bool {
        cfg!(any(feature = "wgpu", feature = "cuda"))
    }

    /// The work done since the previous lap (or the start).
    pub fn lap(&mut self) -> Work {
        let uploads = UPLOADS.load(Ordering::Relaxed);
        let reads = READS.load(Ordering::Relaxed);
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        let (by_kernel, new_kernels) = {
            let counts =
                std::mem::take(&mut *self.counter.0.lock().unwrap_or_else(|e| e.into_inner()));
            let mut by_kernel = BTreeMap::new();
            for (name, n) in counts {
                let short = burn::cubecl::config::type_name_format(
                    name,
                    burn::cubecl::config::TypeNameFormatLevel::Short,
                );
                *by_kernel.entry(short).or_default() += n;
            }
            let mut new_kernels = 0;
            if let Some(open) = self.kernels.take() {
                for hash in open.finish() {
                    if self.seen.insert(hash) {
                        new_kernels += 1;
                    }
                }
            }
            self.kernels = Some(burn::cubecl::launched::LaunchedKernels::new());
            (by_kernel, new_kernels)
        };
        #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
        let (by_kernel, new_kernels) = (BTreeMap::new(), 0);
        let work = Work {
            launches: by_kernel.values().sum(),
            by_kernel,
            new_kernels,
            uploads: uploads - self.uploads,
            reads: reads - self.reads,
        };
        (self.uploads, self.reads) = (uploads, reads);
        work
    }
}
