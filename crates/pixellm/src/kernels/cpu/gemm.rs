//! The CPU kernels' matrix products: [`matmul_into`]/[`matmul_raw`] over strided operands
//! (a loaded CBLAS when there is one, the `gemm` crate otherwise) and [`gemv`], a
//! multi-threaded one-row product.
//!
//! Why a GEMV of our own: Burn's CPU backend sends a one-row product to `gemm`'s GEMV,
//! which runs on one thread (decode at one core's memory bandwidth).

use rayon::prelude::*;

use super::blas;
use super::math::{dispatch, lane_sum_product};

/// Multiply-adds from which a product is spread over the thread pool (Burn's CPU backend
/// uses the same threshold).
pub(super) const PARALLEL_GEMM: usize = 192 * 192 * 192;

/// Weight rows per GEMV task: 64 rows of a 2048-wide weight are 512 KiB.
const GEMV_BLOCK: usize = 64;

/// `y += W·x` for `W` `[y.len(), x.len()]` row-major, over the thread pool in blocks of
/// [`GEMV_BLOCK`] rows. Memory-bound: each task streams four weight rows at once (four
/// independent read streams keep more cache-line fills in flight than one), which reads
/// the weights at 19–21 GB/s on this 2-core VM against 13–15 for one row at a time (and
/// `gemm`'s GEMV 17–19 on one thread; MKL's sgemv 20–22, measured the same hour).
pub(super) fn gemv(y: &mut [f32], w: &[f32], x: &[f32]) {
    let d_in = x.len();
    assert_eq!(w.len(), y.len() * d_in);
    // Below this the thread pool costs more than it saves.
    const MIN_PARALLEL: usize = 1 << 18;
    if w.len() < MIN_PARALLEL {
        gemv_rows(y, w, x);
    } else {
        y.par_chunks_mut(GEMV_BLOCK)
            .zip(w.par_chunks(GEMV_BLOCK * d_in))
            .for_each(|(y, w)| gemv_rows(y, w, x));
    }
}

/// One task's rows of [`gemv`].
fn gemv_rows(y: &mut [f32], w: &[f32], x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; `gemv` checked `w.len() == y.len() * x.len()`.
        unsafe { gemv_rows_avx512(y, w, x) };
        return;
    }
    dispatch!(gemv_rows_body(y, w, x))
}

#[inline(always)]
fn gemv_rows_body(y: &mut [f32], w: &[f32], x: &[f32]) {
    for (y, w) in y.iter_mut().zip(w.chunks_exact(x.len())) {
        *y += lane_sum_product(w, x);
    }
}

/// [`gemv_rows`] with AVX-512 intrinsics, four weight rows per pass, two accumulators per
/// row (the compiler does not interleave four rows' loads on its own: measured 8 GB/s).
///
/// # Safety
/// The CPU must have AVX-512F, and `w.len() == y.len() * x.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gemv_rows_avx512(y: &mut [f32], w: &[f32], x: &[f32]) {
    use std::arch::x86_64::*;
    let d_in = x.len();
    let vectorised = d_in / 32 * 32;
    let mut ys = y.chunks_exact_mut(4);
    let mut ws = w.chunks_exact(4 * d_in);
    for (y, w) in (&mut ys).zip(&mut ws) {
        let rows = [0, 1, 2, 3].map(|r| w[r * d_in..(r + 1) * d_in].as_ptr());
        let mut acc = [_mm512_setzero_ps(); 8];
        let mut k = 0;
        while k < vectorised {
            // SAFETY: `k + 32 <= d_in`, so every load is inside `x` and inside each row.
            unsafe {
                let x0 = _mm512_loadu_ps(x.as_ptr().add(k));
                let x1 = _mm512_loadu_ps(x.as_ptr().add(k + 16));
                for (r, row) in rows.iter().enumerate() {
                    acc[2 * r] = _mm512_fmadd_ps(_mm512_loadu_ps(row.add(k)), x0, acc[2 * r]);
                    acc[2 * r + 1] =
                        _mm512_fmadd_ps(_mm512_loadu_ps(row.add(k + 16)), x1, acc[2 * r + 1]);
                }
            }
            k += 32;
        }
        for (r, y) in y.iter_mut().enumerate() {
            let row = &w[r * d_in..(r + 1) * d_in];
            let tail: f32 = row[vectorised..]
                .iter()
                .zip(&x[vectorised..])
                .map(|(a, b)| a * b)
                .sum();
            *y += _mm512_reduce_add_ps(_mm512_add_ps(acc[2 * r], acc[2 * r + 1])) + tail;
        }
    }
    gemv_rows_body(ys.into_remainder(), ws.remainder(), x);
}

/// `dst = lhs · rhs` (`dst += lhs · rhs` when `accumulate`; over the thread pool when
/// `parallel`, else on this thread), `dst` row-major `[m, n]`; each operand is given as
/// (values, row stride, column stride) of its `[m, k]` / `[k, n]` view.
pub(super) fn matmul_into(
    dst: &mut [f32],
    [m, n, k]: [usize; 3],
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    assert!(m > 0 && n > 0 && dst.len() >= m * n);
    // SAFETY: `dst` holds the `m` rows of `n` it addresses with row stride `n`.
    unsafe {
        matmul_raw(
            dst.as_mut_ptr(),
            n,
            [m, n, k],
            lhs,
            rhs,
            accumulate,
            parallel,
        )
    }
}

/// [`matmul_into`] into `m` rows of `n` values `dst_rs` apart from `dst`.
///
/// # Safety
/// `dst` must be valid for writes (and reads when `accumulate`) at `r · dst_rs + c` for
/// every `r < m`, `c < n`, with no other access to those elements during the call.
pub(super) unsafe fn matmul_raw(
    dst: *mut f32,
    dst_rs: usize,
    [m, n, k]: [usize; 3],
    (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(m > 0 && n > 0 && k > 0);
    assert!(last(m, k, lhs_rs, lhs_cs) < lhs.len() && last(k, n, rhs_rs, rhs_cs) < rhs.len());
    if let Some(blas) = blas::loaded() {
        // SAFETY: the asserts above and the caller's promise are `Blas::matmul`'s contract.
        let done = unsafe {
            blas.matmul(
                dst,
                dst_rs,
                [m, n, k],
                (lhs, lhs_rs, lhs_cs),
                (rhs, rhs_rs, rhs_cs),
                accumulate,
                parallel,
            )
        };
        if done {
            return;
        }
    }
    // SAFETY: the asserts keep every element each operand view addresses inside its slice;
    // the caller vouches for `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            if parallel {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}
