//! Products with block-quantised weights ([`QuantMatrix`]) that never unpack the matrix:
//! each weight block meets the matching block of the activations in an integer dot product.
//!
//! The activations are quantised once per product to 16 bits per block of 32 (`d = amax /
//! 32767`; the sum of the block's quantised values kept for `Q4_1`'s minimum), so a block's
//! dot product is 32 `i16 × i16` multiply-adds (`pmaddwd`) and one float multiply-add with
//! the two scales. llama.cpp rounds the activations to 8 bits instead (`q8_0`/`q8_1`),
//! which moved SmolLM2's perplexity by 0.56 % (`Q4_1` weights) and 1.1 % (`Q8_0`) against
//! the same weights dequantised; at 16 bits the packed product equals dequantise-then-
//! multiply to float rounding, and decode still reads 4.5–8.5 bits per weight.
//!
//! The x86-64 path uses AVX2 (F16C for the block scales), chosen at run time; the portable
//! path computes the same integer sums, so both give the same result up to the order of the
//! float additions.

use rayon::prelude::*;

use super::gemm::matmul_into;
use crate::kernels::quant::{f16_at, QuantFormat, QuantMatrix, BLOCK};

/// Multiply-adds from which a product is spread over the thread pool.
const MIN_PARALLEL: usize = 1 << 18;

/// Activation rows from which a product unpacks the weights into a float GEMM.
const GEMM_ROWS: usize = 8;

/// A row-major `[rows, cols]` matrix of activations quantised to 16 bits per block of 32.
pub(crate) struct QRows {
    cols: usize,
    /// Quantised values, `rows · cols`.
    q: Vec<i16>,
    /// Scale per block.
    d: Vec<f32>,
    /// `d · Σq` per block (for `Q4_1`'s per-block minimum).
    s: Vec<f32>,
}

impl QRows {
    /// Quantises `x` (`rows · cols` values, `cols` a multiple of 32).
    pub(crate) fn new(x: &[f32], cols: usize) -> Self {
        debug_assert!(cols.is_multiple_of(BLOCK) && x.len().is_multiple_of(cols));
        let blocks = x.len() / BLOCK;
        let (mut q, mut d, mut s) = (
            Vec::with_capacity(x.len()),
            Vec::with_capacity(blocks),
            Vec::with_capacity(blocks),
        );
        for b in x.chunks_exact(BLOCK) {
            let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = amax / 32767.0;
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for &v in b {
                let qv = (v * inv).round() as i16;
                sum += i32::from(qv);
                q.push(qv);
            }
            d.push(scale);
            s.push(scale * sum as f32);
        }
        Self { cols, q, d, s }
    }

    fn row(&self, r: usize) -> (&[i16], &[f32], &[f32]) {
        let nb = self.cols / BLOCK;
        (
            &self.q[r * self.cols..(r + 1) * self.cols],
            &self.d[r * nb..(r + 1) * nb],
            &self.s[r * nb..(r + 1) * nb],
        )
    }
}

/// `y += x·Wᵀ` for `x` `[rows, W.cols]` row-major and `y` `[rows, W.rows]` row-major, `W`
/// packed; over the thread pool for large products. `portable` forces the non-SIMD path
/// (tests compare the two).
pub(crate) fn qmatmul(y: &mut [f32], x: &[f32], w: &QuantMatrix, portable: bool) {
    let (out, cols) = (w.rows(), w.cols());
    let rows = x.len() / cols;
    assert_eq!(x.len(), rows * cols, "activations are [rows, {cols}]");
    assert_eq!(y.len(), rows * out, "output is [rows, {out}]");
    if rows >= GEMM_ROWS {
        // Many rows (prefill, the vision tower): the matrix unpacked to f32 (over the thread
        // pool, one matrix alive at a time) and one parallel GEMM over the float
        // activations. Per-task unpacking into small single-threaded GEMMs ran CLIP-L at
        // 448 px in 7.2 s against 3.8 s dense (mid shape).
        let mut dense = vec![0.0f32; out * cols];
        dense
            .par_chunks_mut(cols * 16)
            .enumerate()
            .for_each(|(t, chunk)| {
                let mut row = Vec::with_capacity(cols);
                for (i, dst) in chunk.chunks_exact_mut(cols).enumerate() {
                    row.clear();
                    w.dequantize_row(t * 16 + i, &mut row);
                    dst.copy_from_slice(&row);
                }
            });
        // y [rows, out] += x [rows, cols] · Wᵀ [cols, out].
        matmul_into(
            y,
            [rows, out, cols],
            (x, cols, 1),
            (&dense, 1, cols),
            true,
            true,
        );
        return;
    }
    // Output rows in tasks: each task reads its weight rows once for every activation row,
    // writing `yt`, the output transposed ([out, rows]), so tasks own contiguous slices.
    let mut yt = vec![0.0f32; rows * out];
    let work = rows * out * cols;
    let threads = rayon::current_num_threads().max(1);
    let per_task = if work < MIN_PARALLEL {
        out
    } else {
        (out / (threads * 8)).max(8)
    };
    let xq = QRows::new(x, cols);
    let task = |(t, yt): (usize, &mut [f32])| {
        dot_rows(yt, w, t * per_task, &xq, rows, portable);
    };
    if per_task >= out {
        task((0, &mut yt[..]));
    } else {
        yt.par_chunks_mut(per_task * rows)
            .enumerate()
            .for_each(task);
    }
    for (o, col) in yt.chunks_exact(rows).enumerate() {
        for (r, v) in col.iter().enumerate() {
            y[r * out + o] += v;
        }
    }
}

/// Fills `yt` (`[n, rows]`: weight rows `first..first + n`) with the dot products of those
/// weight rows and every activation row.
fn dot_rows(
    yt: &mut [f32],
    w: &QuantMatrix,
    first: usize,
    xq: &QRows,
    rows: usize,
    portable: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if !portable
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU has AVX2, FMA and F16C; the slices' lengths were checked by
        // `qmatmul` and `QuantMatrix::from_blocks`.
        unsafe { avx2::dot_rows(yt, w, first, xq, rows) };
        return;
    }
    let _ = portable;
    for (i, yt) in yt.chunks_exact_mut(rows).enumerate() {
        let wr = w.row(first + i);
        for (r, y) in yt.iter_mut().enumerate() {
            *y = dot_portable(w.format(), wr, xq.row(r));
        }
    }
}

/// One weight row against one quantised activation row, without SIMD.
fn dot_portable(format: QuantFormat, w: &[u8], (q, d, s): (&[i16], &[f32], &[f32])) -> f32 {
    let size = format.block_bytes();
    let mut acc = 0.0f32;
    for (b, blk) in w.chunks_exact(size).enumerate() {
        let x = &q[b * BLOCK..(b + 1) * BLOCK];
        let nibbles = |qs: &[u8], offset: i32| -> i32 {
            (0..16)
                .map(|j| {
                    (i32::from(qs[j] & 0xF) - offset) * i32::from(x[j])
                        + (i32::from(qs[j] >> 4) - offset) * i32::from(x[j + 16])
                })
                .sum()
        };
        let (sum, extra) = match format {
            QuantFormat::Q8_0 => (
                blk[2..34]
                    .iter()
                    .zip(x)
                    .map(|(&w, &x)| i32::from(w as i8) * i32::from(x))
                    .sum(),
                0.0,
            ),
            QuantFormat::Q4_0 => (nibbles(&blk[2..18], 8), 0.0),
            QuantFormat::Q4_1 => (nibbles(&blk[4..20], 0), f16_at(blk, 2) * s[b]),
        };
        acc += f16_at(blk, 0) * d[b] * sum as f32 + extra;
    }
    acc
}

/// The x86-64 kernel: AVX2, weights widened to 16 bits (`vpmovzxbw`/`vpmovsxbw`) and
/// multiplied with the activations by `vpmaddwd`. An 8-bit version (`maddubs`, or AVX-VNNI's
/// `vpdpbusd`) ran 41–48 tokens/s on SmolLM2 against this one's 45–48, so the 16-bit
/// activations cost little speed for their accuracy.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::QRows;
    use crate::kernels::quant::{QuantFormat, QuantMatrix, BLOCK};

    const Q8_0: u8 = 0;
    const Q4_0: u8 = 1;
    const Q4_1: u8 = 2;

    /// [`super::dot_rows`] with AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `yt.len()` is a multiple of `rows` and rows
    /// `first..first + yt.len() / rows` of `w` exist.
    pub(super) unsafe fn dot_rows(
        yt: &mut [f32],
        w: &QuantMatrix,
        first: usize,
        xq: &QRows,
        rows: usize,
    ) {
        // SAFETY: the caller's CPU features and lengths.
        unsafe {
            match w.format() {
                QuantFormat::Q8_0 => rows_avx2::<Q8_0>(yt, w, first, xq, rows),
                QuantFormat::Q4_0 => rows_avx2::<Q4_0>(yt, w, first, xq, rows),
                QuantFormat::Q4_1 => rows_avx2::<Q4_1>(yt, w, first, xq, rows),
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_avx2<const F: u8>(
        yt: &mut [f32],
        w: &QuantMatrix,
        first: usize,
        xq: &QRows,
        rows: usize,
    ) {
        for (i, yt) in yt.chunks_exact_mut(rows).enumerate() {
            let wr = w.row(first + i);
            for (r, y) in yt.iter_mut().enumerate() {
                // SAFETY: this function's features; each weight row holds `cols / 32`
                // blocks and each activation row `cols` values.
                *y = unsafe { dot::<F>(wr, xq.row(r)) };
            }
        }
    }

    #[inline(always)]
    unsafe fn half(b: &[u8], at: usize) -> f32 {
        let bits = i32::from(u16::from_le_bytes([b[at], b[at + 1]]));
        // SAFETY: F16C, from the caller's features.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits))) }
    }

    /// One block of weights against its 32 activations (at `x`): the 8 partial integer
    /// sums as f32.
    #[inline(always)]
    unsafe fn block<const F: u8>(blk: &[u8], x: *const i16) -> __m256 {
        // SAFETY: `blk` is one whole block and `x` points at 32 values; the caller's
        // features.
        unsafe {
            let (w0, w1) = if F == Q8_0 {
                (
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.as_ptr().add(2).cast())),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.as_ptr().add(18).cast())),
                )
            } else {
                let off = if F == Q4_0 { 2 } else { 4 };
                let v = _mm_loadu_si128(blk.as_ptr().add(off).cast());
                let m = _mm_set1_epi8(0xF);
                let lo = _mm256_cvtepu8_epi16(_mm_and_si128(v, m));
                let hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(v), m));
                if F == Q4_0 {
                    let eight = _mm256_set1_epi16(8);
                    (_mm256_sub_epi16(lo, eight), _mm256_sub_epi16(hi, eight))
                } else {
                    (lo, hi)
                }
            };
            let x0 = _mm256_loadu_si256(x.cast());
            let x1 = _mm256_loadu_si256(x.add(16).cast());
            let sums = _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
            _mm256_cvtepi32_ps(sums)
        }
    }

    #[inline(always)]
    unsafe fn dot<const F: u8>(w: &[u8], (q, d, s): (&[i16], &[f32], &[f32])) -> f32 {
        let size = match F {
            Q8_0 => 34,
            Q4_0 => 18,
            _ => 20,
        };
        // SAFETY: `q` holds 32 values per block of `w`; the caller's features.
        unsafe {
            // Two accumulators: the float multiply-adds of consecutive blocks overlap.
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut mins = 0.0f32;
            let mut blocks = w.chunks_exact(size).enumerate();
            while let Some((b, blk)) = blocks.next() {
                let p = block::<F>(blk, q.as_ptr().add(b * BLOCK));
                acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half(blk, 0) * d[b]), p, acc0);
                if F == Q4_1 {
                    mins += half(blk, 2) * s[b];
                }
                if let Some((b, blk)) = blocks.next() {
                    let p = block::<F>(blk, q.as_ptr().add(b * BLOCK));
                    acc1 = _mm256_fmadd_ps(_mm256_set1_ps(half(blk, 0) * d[b]), p, acc1);
                    if F == Q4_1 {
                        mins += half(blk, 2) * s[b];
                    }
                }
            }
            hsum(_mm256_add_ps(acc0, acc1)) + mins
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: AVX, from the caller's features.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    /// The packed product against `x̃ · dequantize(W)ᵀ` in f32, where `x̃` is the activations
    /// after their 16-bit rounding: equal up to float rounding (a wrong nibble order, scale
    /// or minimum moves results by O(1)). And against the unrounded `x`, within the 16-bit
    /// rounding's bound.
    #[test]
    fn packed_product_matches_dequantize_then_matmul() {
        for format in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4_1] {
            for (rows, out, cols) in [(1, 37, 64), (5, 300, 96), (1, 2048, 256), (9, 70, 64)] {
                let w = QuantMatrix::quantize(format, out, cols, &values(out * cols, 7)).unwrap();
                let x = values(rows * cols, 11);
                let xq = QRows::new(&x, cols);
                let x_rounded: Vec<f32> =
                    xq.q.iter()
                        .enumerate()
                        .map(|(i, &q)| f32::from(q) * xq.d[i / BLOCK])
                        .collect();
                let dense = w.dequantize();
                let product = |x: &[f32], r: usize, o: usize| -> (f32, f32) {
                    (0..cols).fold((0.0, 0.0), |(s, a), c| {
                        let p = x[r * cols + c] * dense[o * cols + c];
                        (s + p, a + p.abs())
                    })
                };
                for portable in [false, true] {
                    let mut got = vec![1.0f32; rows * out];
                    qmatmul(&mut got, &x, &w, portable);
                    for r in 0..rows {
                        for o in 0..out {
                            let g = got[r * out + o] - 1.0;
                            // Many rows take the float GEMM over unrounded activations.
                            let reference = if rows >= GEMM_ROWS { &x } else { &x_rounded };
                            let (want, mag) = product(reference, r, o);
                            assert!(
                                (g - want).abs() <= 1e-5 * (1.0 + mag),
                                "{format} [{rows}, {out}, {cols}] portable {portable}: {g} vs {want}"
                            );
                            // Each activation moved by ≤ half a step (amax/65534, amax ≤
                            // 1): the packed product equals dequantise-then-multiply.
                            let (exact, mag) = product(&x, r, o);
                            let bound = cols as f32 / 65534.0 * 0.5 + 1e-5 * (1.0 + mag);
                            assert!((g - exact).abs() <= bound, "{g} vs {exact}");
                        }
                    }
                }
            }
        }
    }
}
