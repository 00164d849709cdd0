//! An optional CBLAS library (Intel MKL, OpenBLAS, BLIS) for the CPU backend's f32 matrix
//! products, loaded at run time.
//!
//! Why: the `gemm` crate behind the CPU kernels reaches 100–165 GFLOPS on the vision-tower
//! and prefill shapes of a 2-core AVX-512 Xeon, where MKL's `sgemm` (what PyTorch uses)
//! reaches 170–220 (`docs/performance.md`). Linking a BLAS at build time would make every
//! build need one; loading it on request keeps the default build pure Rust and lets a user
//! point at whichever library the machine has (`pixellm --blas`, [`load`]).
//!
//! The library is asked to run single-threaded (MKL's sequential layer,
//! `openblas_set_num_threads(1)`, BLIS's `bli_thread_set_num_threads(1)`) and is called
//! from the CPU backend's own thread pool on blocks of rows: two thread pools on the same
//! cores get in each other's way, and row blocks measured at least as fast as MKL's own
//! threading.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::views::SendPtr;
use crate::error::{Error, Result};

/// `cblas_sgemm` (row-major/col-major, trans flags, m, n, k, alpha, A, lda, B, ldb, beta,
/// C, ldc); 32-bit integers (the LP64 interface every BLAS exports under this name).
type CblasSgemm = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

/// A loaded CBLAS library.
pub(crate) struct Blas {
    sgemm: CblasSgemm,
    /// What the caller passed to [`load`].
    library: String,
    /// Vendor and library, for reports.
    name: String,
    // Keeps the code behind `sgemm` mapped.
    _library: libloading::Library,
}

static LOADED: OnceLock<Blas> = OnceLock::new();

/// Loads the CBLAS library `library` (a path, or a name the dynamic loader searches for,
/// e.g. `libopenblas.so.0`) for every later f32 product on the CPU backend of this process,
/// and returns a description of it ("Intel MKL (…/libmkl_rt.so.3)").
///
/// Fails with a message naming the library when it cannot be loaded, has no
/// `cblas_sgemm`, or computes a wrong product (an ILP64 build, say). Once one library is
/// loaded, loading another fails; loading the same one again is a no-op.
pub fn load(library: &str) -> Result<String> {
    if let Some(blas) = LOADED.get() {
        return if blas.library == library {
            Ok(blas.name.clone())
        } else {
            Err(Error::Backend(format!(
                "a CPU BLAS is already loaded in this process ({}); cannot also load {library}",
                blas.name
            )))
        };
    }
    let blas = Blas::open(library)?;
    let name = blas.name.clone();
    // A concurrent `load` may have won; then its library serves and this one is dropped.
    let _ = LOADED.set(blas);
    Ok(LOADED.get().map_or(name, |b| b.name.clone()))
}

/// The library [`load`] loaded, if any.
pub(crate) fn loaded() -> Option<&'static Blas> {
    LOADED.get()
}

/// What computes the CPU backend's f32 matrix products in this process.
pub fn describe() -> String {
    match LOADED.get() {
        Some(blas) => blas.name.clone(),
        None => "built-in (gemm crate)".into(),
    }
}

impl Blas {
    /// Loads and checks `library` (see [`load`]).
    pub(crate) fn open(library: &str) -> Result<Self> {
        let fail = |msg: String| Error::Backend(format!("CPU BLAS {library}: {msg}"));
        // SAFETY: loading a shared library runs its initialisers; the user named this
        // library as a BLAS, and every BLAS initialiser is safe to run once per process.
        let lib = unsafe { libloading::Library::new(library) }
            .map_err(|e| fail(format!("cannot be loaded ({e})")))?;
        // SAFETY: the type is `cblas_sgemm`'s C prototype (LP64).
        let sgemm = *unsafe { lib.get::<CblasSgemm>(b"cblas_sgemm\0") }
            .map_err(|_| fail("has no cblas_sgemm; expected a CBLAS library such as Intel MKL's libmkl_rt or OpenBLAS".into()))?;
        let vendor = single_threaded(&lib);
        let blas = Blas {
            sgemm,
            library: library.to_string(),
            name: format!("{vendor} ({library})"),
            _library: lib,
        };
        blas.check().map_err(fail)?;
        Ok(blas)
    }

    /// One small product against its known value: catches a library whose integers are
    /// 64-bit (ILP64) or whose `cblas_sgemm` is something else.
    fn check(&self) -> std::result::Result<(), String> {
        // [[1, 2, 3], [4, 5, 6]] · [[1, 0], [0, 1], [1, 1]] = [[4, 5], [10, 11]]
        let a = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];
        let mut c = [0.0f32; 4];
        // SAFETY: the views address only elements of `a`, `b`, `c`.
        let ran = unsafe {
            self.matmul(
                c.as_mut_ptr(),
                2,
                [2, 2, 3],
                (&a, 3, 1),
                (&b, 2, 1),
                false,
                false,
            )
        };
        if ran && c == [4.0, 5.0, 10.0, 11.0] {
            Ok(())
        } else {
            Err(format!(
                "cblas_sgemm returned {c:?} for a 2×3·3×2 product whose answer is [4, 5, 10, 11] (an ILP64 build? use the LP64 one)"
            ))
        }
    }

    /// `dst = lhs · rhs` (`+=` when `accumulate`), the contract of
    /// [`matmul_raw`](super::gemm::matmul_raw); over the thread pool in blocks of rows when
    /// `parallel`. Returns `false` (nothing written) when an operand's strides are not a
    /// CBLAS layout (one of its two strides must be 1) or a size does not fit CBLAS's 32-bit
    /// integers.
    ///
    /// # Safety
    /// As [`matmul_raw`](super::gemm::matmul_raw): the operand slices hold every element
    /// their views address, and `dst` is valid for reads and writes at `r · dst_rs + c` for
    /// `r < m`, `c < n`, with no other access to those elements during the call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn matmul(
        &self,
        dst: *mut f32,
        dst_rs: usize,
        [m, n, k]: [usize; 3],
        (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
        (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
        accumulate: bool,
        parallel: bool,
    ) -> bool {
        let (Some(a), Some(b)) = (operand(m, k, lhs_rs, lhs_cs), operand(k, n, rhs_rs, rhs_cs))
        else {
            return false;
        };
        if !(fits(m) && fits(n) && fits(k) && fits(dst_rs.max(n))) {
            return false;
        }
        let beta = if accumulate { 1.0 } else { 0.0 };
        let call = |dst: SendPtr, rows: usize, lhs: *const f32| {
            // SAFETY: `operand` checked that the view's leading dimension covers its rows
            // or columns, the caller vouches for the slices and `dst`; row block `rows`
            // starting at `lhs`/`dst` stays inside both.
            unsafe {
                (self.sgemm)(
                    ROW_MAJOR,
                    a.trans,
                    b.trans,
                    rows as i32,
                    n as i32,
                    k as i32,
                    1.0,
                    lhs,
                    a.ld as i32,
                    rhs.as_ptr(),
                    b.ld as i32,
                    beta,
                    dst.get(),
                    dst_rs.max(n) as i32,
                )
            }
        };
        let threads = if parallel {
            rayon::current_num_threads()
        } else {
            1
        };
        // Blocks of at least 32 rows; fewer rows than that run on this thread.
        let blocks = threads.min(m / 32).max(1);
        let dst = SendPtr(dst);
        if blocks == 1 {
            call(dst, m, lhs.as_ptr());
        } else {
            let per = m.div_ceil(blocks);
            (0..blocks).into_par_iter().for_each(|i| {
                let r0 = i * per;
                if r0 < m {
                    // SAFETY: row `r0` of the lhs view and of `dst` exist (`r0 < m`); each
                    // block writes only its own rows of `dst`.
                    let (lhs, dst) = unsafe {
                        (
                            lhs.as_ptr().add(r0 * lhs_rs),
                            SendPtr(dst.get().add(r0 * dst_rs)),
                        )
                    };
                    call(dst, per.min(m - r0), lhs);
                }
            });
        }
        true
    }
}

/// Whether `v` fits CBLAS's 32-bit integers.
fn fits(v: usize) -> bool {
    i32::try_from(v).is_ok()
}

/// How CBLAS reads a row-major `[rows, cols]` view with the given strides.
struct Operand {
    trans: i32,
    ld: usize,
}

/// A CBLAS description of a `[rows, cols]` view: row-major with leading dimension `rs`
/// when `cs == 1`, the transpose of a row-major `[cols, rows]` when `rs == 1`; `None`
/// otherwise (a broadcast, a doubly strided view).
fn operand(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<Operand> {
    // A single row or column makes the other stride irrelevant; CBLAS still wants a
    // leading dimension at least as long as a row.
    let rs = if rows == 1 { rs.max(cols) } else { rs };
    let cs = if cols == 1 { cs.max(rows) } else { cs };
    if cs == 1 && rs >= cols && fits(rs) {
        Some(Operand {
            trans: NO_TRANS,
            ld: rs,
        })
    } else if rs == 1 && cs >= rows && fits(cs) {
        Some(Operand {
            trans: TRANS,
            ld: cs,
        })
    } else {
        None
    }
}

/// Asks a freshly loaded library to run on the calling thread only and names its vendor.
fn single_threaded(lib: &libloading::Library) -> &'static str {
    // SAFETY: each symbol, when present, has the C prototype written here (MKL's
    // `MKL_Set_Threading_Layer(int)` with 1 = sequential, called before any other MKL
    // function; OpenBLAS's and BLIS's thread-count setters).
    unsafe {
        if let Ok(set_layer) =
            lib.get::<unsafe extern "C" fn(i32) -> i32>(b"MKL_Set_Threading_Layer\0")
        {
            set_layer(1);
            return "Intel MKL";
        }
        if let Ok(set) = lib.get::<unsafe extern "C" fn(i32)>(b"openblas_set_num_threads\0") {
            set(1);
            return "OpenBLAS";
        }
        if let Ok(set) = lib.get::<unsafe extern "C" fn(i64)>(b"bli_thread_set_num_threads\0") {
            set(1);
            return "BLIS";
        }
    }
    "CBLAS"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The BLAS these tests use: `PIXELLM_TEST_BLAS`, else the system OpenBLAS. Absent, the
    /// tests say so and pass, unless `PIXELLM_REQUIRE_BLAS=1` (CI) makes that a failure.
    fn test_blas() -> Option<Blas> {
        let name = std::env::var("PIXELLM_TEST_BLAS").unwrap_or("libopenblas.so.0".into());
        match Blas::open(&name) {
            Ok(b) => Some(b),
            Err(e) if std::env::var("PIXELLM_REQUIRE_BLAS").is_ok_and(|v| v == "1") => {
                panic!("PIXELLM_REQUIRE_BLAS=1 but {e}")
            }
            Err(e) => {
                eprintln!("skipping: {e}");
                None
            }
        }
    }

    #[test]
    fn products_match_the_definition_for_every_layout() {
        let Some(blas) = test_blas() else { return };
        let value = |i: usize, p: usize| ((i * 7919 % p) as f32 / p as f32) - 0.5;
        // (m, n, k): one row, fewer rows than a block, several row blocks, odd sizes.
        for &(m, n, k) in &[(1, 7, 5), (3, 9, 37), (70, 130, 300), (257, 33, 64)] {
            let a: Vec<f32> = (0..m * k).map(|i| value(i, 101)).collect();
            let b: Vec<f32> = (0..k * n).map(|i| value(i, 89)).collect();
            // Each operand row-major and transposed; dst with a row stride wider than n.
            for (a_t, b_t, accumulate, parallel) in [
                (false, false, false, true),
                (false, true, true, true),
                (true, false, false, false),
                (true, true, true, false),
            ] {
                let (a_rs, a_cs) = if a_t { (1, m) } else { (k, 1) };
                let (b_rs, b_cs) = if b_t { (1, k) } else { (n, 1) };
                let at = |i: usize, p: usize| a[i * a_rs + p * a_cs] as f64;
                let bt = |p: usize, j: usize| b[p * b_rs + j * b_cs] as f64;
                let dst_rs = n + 3;
                let mut dst = vec![0.25f32; m * dst_rs];
                // SAFETY: the views and `dst` cover exactly the addressed elements.
                let ran = unsafe {
                    blas.matmul(
                        dst.as_mut_ptr(),
                        dst_rs,
                        [m, n, k],
                        (&a, a_rs, a_cs),
                        (&b, b_rs, b_cs),
                        accumulate,
                        parallel,
                    )
                };
                assert!(ran, "{m}x{n}x{k}: a CBLAS layout was refused");
                for i in 0..m {
                    for j in 0..n {
                        let want = (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f64>()
                            + if accumulate { 0.25 } else { 0.0 };
                        let got = dst[i * dst_rs + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{m}x{n}x{k} a_t {a_t} b_t {b_t} [{i},{j}]: {got} vs {want}"
                        );
                    }
                    // The padding past n is never written.
                    assert!(dst[i * dst_rs + n..(i + 1) * dst_rs]
                        .iter()
                        .all(|&v| v == 0.25));
                }
            }
        }
        // A broadcast operand (both strides > 1) is refused, not misread.
        let a = [1.0f32; 16];
        let mut dst = [0.0f32; 4];
        // SAFETY: the refused call writes nothing.
        let ran = unsafe {
            blas.matmul(
                dst.as_mut_ptr(),
                2,
                [2, 2, 2],
                (&a, 4, 2),
                (&a, 2, 1),
                false,
                false,
            )
        };
        assert!(!ran);
    }

    #[test]
    fn a_library_that_is_not_a_blas_is_a_clear_error() {
        for (library, expected) in [
            ("/nonexistent/libblas.so", "cannot be loaded"),
            ("libc.so.6", "has no cblas_sgemm"),
        ] {
            let err = Blas::open(library).err().expect("not a BLAS").to_string();
            assert!(
                err.contains(library) && err.contains(expected),
                "{library}: {err}"
            );
        }
    }
}
