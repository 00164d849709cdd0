//! The CPU kernels: activations, norms, attention, linear layers, convolution and resize,
//! each taking Burn tensors and returning `Err` with its inputs untouched when they are not
//! f32 on the CPU backend (or a shape it does not take), for [`crate::kernels`] to run
//! Burn's op instead.

// `Err` hands the caller's own tensor back (as large as the `Ok` one): no extra cost.
#![allow(clippy::result_large_err)]

use burn::tensor::Tensor;
use rayon::prelude::*;

use super::gemm::{gemv, matmul_into, matmul_raw, PARALLEL_GEMM};
use super::math::{dispatch, erf, exp, lane_fold, lane_sum, sigmoid, LANES};
use super::qgemm;
use super::views::{host_vec, in_place, is_cpu_f32, with_strided, with_view, SendPtr};
use crate::kernels::quant::QuantMatrix;

/// Elements per parallel task for the element-wise kernels (64 KiB of f32).
const CHUNK: usize = 16 * 1024;

/// Runs `kernel` over the elements of `x` in place, in parallel chunks.
fn map_in_place<const D: usize>(
    x: Tensor<D>,
    kernel: fn(&mut [f32]),
) -> Result<Tensor<D>, Tensor<D>> {
    in_place(x, |s| s.par_chunks_mut(CHUNK).for_each(kernel))
}

/// CLIP's `quick_gelu`, `x · σ(1.702 x)`.
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Result<Tensor<D>, Tensor<D>> {
    map_in_place(x, |s| dispatch!(quick_gelu_body(s)))
}

/// Exact GELU, `x · Φ(x) = x/2 · (1 + erf(x/√2))`.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Result<Tensor<D>, Tensor<D>> {
    map_in_place(x, |s| dispatch!(gelu_body(s)))
}

/// `silu`, `x · σ(x)`.
pub fn silu<const D: usize>(x: Tensor<D>) -> Result<Tensor<D>, Tensor<D>> {
    map_in_place(x, |s| dispatch!(silu_body(s)))
}

/// LayerNorm over the last dimension (biased variance, both statistics in f32), scaled by
/// `weight` and shifted by `bias` (`[d]` each), in one pass per row instead of Burn's six
/// element-wise ops.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    weight: &Tensor<1>,
    bias: &Tensor<1>,
    eps: f64,
) -> Result<Tensor<D>, Tensor<D>> {
    let d = x.dims()[D - 1];
    let Some((w, b)) = affine_params(weight, bias, d) else {
        return Err(x);
    };
    let (rows_per_task, eps) = ((CHUNK / d).max(1), eps as f32);
    in_place(x, |s| {
        s.par_chunks_mut(rows_per_task * d).for_each(|rows| {
            for row in rows.chunks_mut(d) {
                dispatch!(layer_norm_row_body(row, &w, &b, eps));
            }
        })
    })
}

/// LLaMA's RMSNorm over the last dimension, `(x · 1/√(mean(x²) + ε)) · w`, in one pass per
/// row instead of Burn's seven element-wise ops (the same operations in the same order
/// per element; the mean's summation order differs).
pub fn rms_norm<const D: usize>(
    x: Tensor<D>,
    weight: &Tensor<1>,
    eps: f64,
) -> Result<Tensor<D>, Tensor<D>> {
    let d = x.dims()[D - 1];
    if d == 0 || !is_cpu_f32(weight) || weight.dims() != [d] {
        return Err(x);
    }
    let w = host_vec(weight);
    let (rows_per_task, eps) = ((CHUNK / d).max(1), eps as f32);
    in_place(x, |s| {
        s.par_chunks_mut(rows_per_task * d).for_each(|rows| {
            for row in rows.chunks_mut(d) {
                dispatch!(rms_norm_row_body(row, &w, eps));
            }
        })
    })
}

/// Rotary position embedding of `x` `[B, H, n, d]` at positions `start..start + n`, with
/// the `cos`/`sin` tables `[positions, d]`: `x · cos + rotate_half(x) · sin` per element
/// (`rotate_half` = `[−x₂, x₁]` on the halves), in one pass instead of Burn's eleven ops
/// (narrows, a negation, a concatenation, two products and a sum).
pub fn rope(
    x: Tensor<4>,
    cos: &Tensor<2>,
    sin: &Tensor<2>,
    start: usize,
) -> Result<Tensor<4>, Tensor<4>> {
    let [_, _, n, d] = x.dims();
    let [positions, td] = cos.dims();
    let fits = td == d
        && d.is_multiple_of(2)
        && d > 0
        && sin.dims() == [positions, d]
        && start + n <= positions;
    if !fits || !is_cpu_f32(cos) || !is_cpu_f32(sin) {
        return Err(x);
    }
    let rows = |t: &Tensor<2>| with_view(t, |v| v[start * d..(start + n) * d].to_vec());
    let (Some(c), Some(s)) = (rows(cos), rows(sin)) else {
        return Err(x);
    };
    let half = d / 2;
    in_place(x, |v| {
        for (r, row) in v.chunks_mut(d).enumerate() {
            let i = r % n;
            let (c, s) = (&c[i * d..(i + 1) * d], &s[i * d..(i + 1) * d]);
            let (x1, x2) = row.split_at_mut(half);
            for j in 0..half {
                let (a, b) = (x1[j], x2[j]);
                x1[j] = a * c[j] + -b * s[j];
                x2[j] = b * c[j + half] + a * s[j + half];
            }
        }
    })
}

/// SAM's `LayerNorm2d` on `[N, C, H, W]`: each pixel normalised over its `C` channels
/// (biased variance), then `weight`/`bias` per channel.
pub fn layer_norm_2d(
    x: Tensor<4>,
    weight: &Tensor<1>,
    bias: &Tensor<1>,
    eps: f64,
) -> Result<Tensor<4>, Tensor<4>> {
    let [_, c, h, w_] = x.dims();
    let pixels = h * w_;
    let Some((w, b)) = affine_params(weight, bias, c).filter(|_| pixels > 0) else {
        return Err(x);
    };
    let eps = eps as f32;
    // Tasks: one image, a run of pixels, every channel of them.
    let run = (CHUNK / c).clamp(LANES, pixels.max(LANES));
    in_place(x, |s| {
        s.par_chunks_mut(c * pixels).for_each(|image| {
            let starts: Vec<usize> = (0..pixels).step_by(run).collect();
            let image_ptr = SendPtr(image.as_mut_ptr());
            starts.par_iter().for_each(|&p0| {
                let len = run.min(pixels - p0);
                // SAFETY: tasks touch disjoint pixel runs `p0..p0 + len` of every channel
                // plane of this image, all inside `image`.
                let plane = |ch: usize| unsafe {
                    std::slice::from_raw_parts_mut(image_ptr.get().add(ch * pixels + p0), len)
                };
                dispatch!(layer_norm_2d_body(&plane, c, len, &w, &b, eps));
            });
        })
    })
}

/// A norm's `[n]` scale and shift on the host; `None` (Burn's op then) unless both are f32
/// on the CPU backend with `n > 0` values.
fn affine_params(weight: &Tensor<1>, bias: &Tensor<1>, n: usize) -> Option<(Vec<f32>, Vec<f32>)> {
    let fits = |t: &Tensor<1>| is_cpu_f32(t) && t.dims() == [n];
    (n > 0 && fits(weight) && fits(bias)).then(|| (host_vec(weight), host_vec(bias)))
}

/// `y = x·Wᵀ + b` for `x` `[rows, in]` and `W` `[out, in]` (PyTorch's layout) on the CPU
/// backend; `Err(x)` for another backend or dtype, a strided weight or mismatched shapes.
///
/// One row (decode) goes to [`gemv`]: Burn's one-row matmul is `gemm`'s single-threaded
/// GEMV (one core's bandwidth). More rows go to `gemm` over the weight in place, with the
/// bias written into the output first and accumulated into (Burn adds it in a second,
/// broadcast pass: 10 M elements per CLIP-L layer at 448 px).
pub fn linear(
    x: Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Result<Tensor<2>, Tensor<2>> {
    let [rows, d_in] = x.dims();
    let [d_out, w_in] = weight.dims();
    let bias_fits = bias.is_none_or(|b| is_cpu_f32(b) && b.dims() == [d_out]);
    if w_in != d_in || rows == 0 || d_in == 0 || d_out == 0 || !bias_fits || !is_cpu_f32(&x) {
        return Err(x);
    }
    let bias = bias.map(host_vec);
    let out = with_view(weight, |w| {
        // `x` may be a view (the projectors' inputs are transposes and concatenations of
        // the vision tower's outputs): read through its strides rather than copied.
        with_strided(&x, |xv| {
            let xs = &xv.data[xv.offset..];
            let [rs, cs] = xv.strides;
            let mut y = match &bias {
                Some(b) => b.repeat(rows),
                None => vec![0.0; rows * d_out],
            };
            if rows == 1 {
                if cs == 1 {
                    gemv(&mut y, w, &xs[..d_in]);
                } else {
                    let row: Vec<f32> = (0..d_in).map(|i| xs[i * cs]).collect();
                    gemv(&mut y, w, &row);
                }
            } else {
                let parallel = rows * d_out * d_in >= PARALLEL_GEMM;
                matmul_into(
                    &mut y,
                    [rows, d_out, d_in],
                    (xs, rs, cs),
                    (w, 1, d_in),
                    bias.is_some(),
                    parallel,
                );
            }
            y
        })
    })
    .flatten();
    match out {
        Some(y) => Ok(Tensor::from_data(
            burn::tensor::TensorData::new(y, [rows, d_out]),
            &x.device(),
        )),
        None => Err(x),
    }
}

/// `y = x·Wᵀ + b` for `x` `[rows, in]` and a packed `W` `[out, in]` on the CPU backend
/// ([`qgemm::qmatmul`]: integer block dot products, the matrix never unpacked); `Err(x)` for
/// another backend or dtype or mismatched shapes.
pub fn qlinear(
    x: Tensor<2>,
    weight: &QuantMatrix,
    bias: Option<&Tensor<1>>,
) -> Result<Tensor<2>, Tensor<2>> {
    let [rows, d_in] = x.dims();
    let d_out = weight.rows();
    let bias_fits = bias.is_none_or(|b| is_cpu_f32(b) && b.dims() == [d_out]);
    if weight.cols() != d_in || rows == 0 || !bias_fits || !is_cpu_f32(&x) {
        return Err(x);
    }
    let device = x.device();
    let mut y = match bias.map(host_vec) {
        Some(b) => b.repeat(rows),
        None => vec![0.0; rows * d_out],
    };
    let out = with_strided(&x, |xv| {
        let [rs, cs] = xv.strides;
        let xs = &xv.data[xv.offset..];
        let dense: Vec<f32>;
        let values = if cs == 1 && rs == d_in {
            &xs[..rows * d_in]
        } else {
            dense = (0..rows * d_in)
                .map(|i| xs[(i / d_in) * rs + (i % d_in) * cs])
                .collect();
            &dense[..]
        };
        qgemm::qmatmul(&mut y, values, weight, false);
    });
    match out {
        Some(()) => Ok(Tensor::from_data(
            burn::tensor::TensorData::new(y, [rows, d_out]),
            &device,
        )),
        None => Err(x),
    }
}

/// A 2-D convolution without bias (one group, no dilation) of `x` `[N, C, H, W]` with
/// `weight` `[O, C, kh, kw]` on the CPU backend, as one matrix product per image:
/// `[O, C·kh·kw] · [C·kh·kw, Ho·Wo]` over `x`'s patches (im2col); `Err(x)` for another
/// backend or dtype, a strided weight or mismatched shapes.
///
/// Used for CLIP's patch embedding (14×14, stride 14, 3 → 1024 channels at 448 px: 9–11 ms
/// against 21–24 for Burn's CPU `conv2d`, alternating in one process). The neck's 1×1 and
/// 3×3 convolutions measured no faster this way (Burn's im2col is quicker than this one,
/// and the products are the same `gemm`), so they stay on Burn's op.
pub fn conv2d(
    x: Tensor<4>,
    weight: &Tensor<4>,
    stride: usize,
    padding: usize,
) -> Result<Tensor<4>, Tensor<4>> {
    let [n, c, h, w] = x.dims();
    let [o, wc, kh, kw] = weight.dims();
    let fits = h + 2 * padding >= kh && w + 2 * padding >= kw;
    if wc != c || n * c * o * kh * kw == 0 || stride == 0 || !fits || !is_cpu_f32(&x) {
        return Err(x);
    }
    let (ho, wo) = (
        (h + 2 * padding - kh) / stride + 1,
        (w + 2 * padding - kw) / stride + 1,
    );
    let (k, pixels) = (c * kh * kw, ho * wo);
    let out = with_view(weight, |wv| {
        with_strided(&x, |xv| {
            let [s0, s1, s2, s3] = xv.strides;
            let mut y = vec![0f32; n * o * pixels];
            let mut col = vec![0f32; k * pixels];
            let parallel = o * pixels * k >= PARALLEL_GEMM;
            for (i, y) in y.chunks_mut(o * pixels).enumerate() {
                let image = xv.offset + i * s0;
                col.par_chunks_mut(pixels)
                    .enumerate()
                    .for_each(|(row, col)| {
                        let (ci, dy, dx) = (row / (kh * kw), row / kw % kh, row % kw);
                        for (oy, col) in col.chunks_mut(wo).enumerate() {
                            let iy = (oy * stride + dy) as isize - padding as isize;
                            if iy < 0 || iy >= h as isize {
                                col.fill(0.0);
                                continue;
                            }
                            let at = image + ci * s1 + iy as usize * s2;
                            for (ox, v) in col.iter_mut().enumerate() {
                                let ix = (ox * stride + dx) as isize - padding as isize;
                                *v = if ix < 0 || ix >= w as isize {
                                    0.0
                                } else {
                                    xv.data[at + ix as usize * s3]
                                };
                            }
                        }
                    });
                matmul_into(
                    y,
                    [o, pixels, k],
                    (wv, k, 1),
                    (&col, pixels, 1),
                    false,
                    parallel,
                );
            }
            y
        })
    })
    .flatten();
    match out {
        Some(y) => Ok(Tensor::from_data(
            burn::tensor::TensorData::new(y, [n, o, ho, wo]),
            &x.device(),
        )),
        None => Err(x),
    }
}

/// `Ry · X · Rxᵀ` for every `[h, w]` plane of `x` `[B, C, h, w]`, with `ry` `[ho, h]` and
/// `rx` `[wo, w]` host matrices (a separable resize, see `crate::kernels::resize`), on the CPU
/// backend; `Err(x)` for another backend or dtype. Burn's batched matmul broadcasts the
/// matrices over the planes; here they are read once, in place.
pub fn resize(
    x: Tensor<4>,
    ry: &[f32],
    rx: &[f32],
    (ho, wo): (usize, usize),
) -> Result<Tensor<4>, Tensor<4>> {
    let [b, c, h, w] = x.dims();
    if ry.len() != ho * h || rx.len() != wo * w || b * c * h * w * ho * wo == 0 || !is_cpu_f32(&x) {
        return Err(x);
    }
    let out = with_strided(&x, |xv| {
        let [s0, s1, s2, s3] = xv.strides;
        let mut y = vec![0f32; b * c * ho * wo];
        let mut rows = vec![0f32; h * wo];
        for (plane, y) in y.chunks_mut(ho * wo).enumerate() {
            let at = xv.offset + plane / c * s0 + plane % c * s1;
            // X · Rxᵀ: `[h, w] · [w, wo]`, Rx read transposed through its strides.
            let parallel = h * wo * w >= PARALLEL_GEMM;
            matmul_into(
                &mut rows,
                [h, wo, w],
                (&xv.data[at..], s2, s3),
                (rx, 1, w),
                false,
                parallel,
            );
            let parallel = ho * wo * h >= PARALLEL_GEMM;
            matmul_into(y, [ho, wo, h], (ry, h, 1), (&rows, wo, 1), false, parallel);
        }
        y
    });
    match out {
        Some(y) => Ok(Tensor::from_data(
            burn::tensor::TensorData::new(y, [b, c, ho, wo]),
            &x.device(),
        )),
        None => Err(x),
    }
}

/// Queries per attention task: a 128-row score block of a 1025-key CLIP head is 512 KiB,
/// in L2 between the two products.
const QUERY_BLOCK: usize = 128;

/// Scaled-dot-product attention on `[B, H, L, d]` queries and `[B, H/g, L, d]` keys and
/// values (grouped-query attention), with an optional `[B, Lk]` key-padding mask (`true` =
/// hidden), for the CPU backend; `Err` hands the inputs back (another backend or dtype,
/// mismatched shapes, an empty sequence) for Burn's op.
///
/// Each task takes one head and a block of [`QUERY_BLOCK`] queries: `S = Q·Kᵀ` with `gemm`
/// into a block-sized buffer that stays in cache, the softmax of `scale · S` in place
/// (causal rows cut at their last visible key, and the block's products cut at the
/// block's), then `O = S·V`. Burn's tiled attention does the same arithmetic with a scalar
/// `exp` and 64-key tiles (one CLIP-L layer's heads at 448 px: 89 ms, here 32 ms, PyTorch's
/// SDPA 36 ms).
#[allow(clippy::type_complexity)]
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    key_padding: Option<Tensor<2, burn::tensor::Bool>>,
    scale: f32,
    causal: bool,
) -> Result<
    Tensor<4>,
    (
        Tensor<4>,
        Tensor<4>,
        Tensor<4>,
        Option<Tensor<2, burn::tensor::Bool>>,
    ),
> {
    let [b, h, lq, d] = q.dims();
    let [kb, kh, lk, kd] = k.dims();
    let [vb, vh, vl, dv] = v.dims();
    // Grouped-query attention: query head `i` reads key/value head `i / (h / kh)`.
    let shapes_agree =
        [kb, vb] == [b, b] && kh == vh && kh > 0 && h.is_multiple_of(kh) && kd == d && vl == lk;
    let mask_agrees = key_padding.as_ref().is_none_or(|m| m.dims() == [b, lk]);
    if !shapes_agree
        || !mask_agrees
        || !is_cpu_f32(&q)
        || !is_cpu_f32(&k)
        || !is_cpu_f32(&v)
        || lq == 0
        || lk == 0
        || d == 0
        || dv == 0
    {
        return Err((q, k, v, key_padding));
    }
    let device = q.device();
    // The hidden keys of each batch row, as indices: usually none or a few padded
    // patches, so masking a score row costs what it hides rather than a test per key.
    let hidden: Vec<Vec<usize>> = match &key_padding {
        Some(m) => m
            .clone()
            .into_data()
            .try_to_vec::<bool>()
            .expect("a bool tensor's data is bool")
            .chunks(lk)
            .map(|row| (0..lk).filter(|&j| row[j]).collect())
            .collect(),
        None => vec![Vec::new(); b],
    };
    let group = h / kh;
    // Output rows go straight into the `[B, Lq, H, dv]` layout that merging the heads
    // reads, so neither the inputs' head split nor the output's merge is a copy.
    let mut out = vec![0.0f32; b * lq * h * dv];
    let out_ptr = SendPtr(out.as_mut_ptr());
    let blocks = lq.div_ceil(QUERY_BLOCK);
    let done = with_strided(&q, |q| {
        with_strided(&k, |k| {
            with_strided(&v, |v| {
                (0..b * h).into_par_iter().for_each(|bh| {
                    let (bi, hi) = (bh / h, bh % h);
                    let kv = hi / group;
                    let q_head = q.at([bi, hi, 0, 0]);
                    let k_head = k.at([bi, kv, 0, 0]);
                    let v_head = v.at([bi, kv, 0, 0]);
                    let hidden = &hidden[bi];
                    (0..blocks)
                        .into_par_iter()
                        .for_each_init(Vec::new, |scores, block| {
                            let q0 = block * QUERY_BLOCK;
                            let rows = QUERY_BLOCK.min(lq - q0);
                            // Keys the block's last query sees.
                            let keys = if causal {
                                (q0 + rows + lk).saturating_sub(lq).min(lk)
                            } else {
                                lk
                            };
                            if keys == 0 {
                                return; // every row fully masked: zero, as in Burn
                            }
                            scores.resize(rows * keys, 0.0);
                            // S = Q[q0..q0+rows] · K[..keys]ᵀ (K read transposed through
                            // its strides).
                            matmul_into(
                                scores,
                                [rows, keys, d],
                                (&q_head[q0 * q.strides[2]..], q.strides[2], q.strides[3]),
                                (k_head, k.strides[3], k.strides[2]),
                                false,
                                false,
                            );
                            for (r, row) in scores.chunks_mut(keys).enumerate() {
                                let visible = if causal {
                                    (q0 + r + 1 + lk).saturating_sub(lq).min(keys)
                                } else {
                                    keys
                                };
                                row[visible..].fill(f32::NEG_INFINITY);
                                for &j in hidden.iter().take_while(|&&j| j < visible) {
                                    row[j] = f32::NEG_INFINITY;
                                }
                            }
                            dispatch!(softmax_rows_body(scores, keys, scale));
                            // O = P · V[..keys], written in place into the merged-heads rows.
                            // SAFETY: row `r` of this block is `out[((bi·lq + q0 + r)·h +
                            // hi)·dv ..][..dv]`, inside `out`, and no other task writes it
                            // (each task owns one head's block of queries); `out` outlives
                            // the parallel loop.
                            unsafe {
                                matmul_raw(
                                    out_ptr.get().add(((bi * lq + q0) * h + hi) * dv),
                                    h * dv,
                                    [rows, dv, keys],
                                    (scores, keys, 1),
                                    (v_head, v.strides[2], v.strides[3]),
                                    false,
                                    false,
                                )
                            };
                        });
                })
            })
        })
    })
    .flatten()
    .flatten();
    if done.is_none() {
        return Err((q, k, v, key_padding));
    }
    Ok(
        Tensor::<4>::from_data(burn::tensor::TensorData::new(out, [b, lq, h, dv]), &device)
            .swap_dims(1, 2),
    )
}

#[inline(always)]
fn quick_gelu_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v *= sigmoid(1.702 * *v);
    }
}

#[inline(always)]
fn gelu_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v *= 0.5 + 0.5 * erf(*v * std::f32::consts::FRAC_1_SQRT_2);
    }
}

#[inline(always)]
fn silu_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v *= sigmoid(*v);
    }
}

/// Softmax of `scale ·` each `keys`-long row of `scores` in place; `−∞` entries (hidden
/// keys) get 0, and a row with nothing visible is all zeros (as in Burn).
///
/// `exp` runs over the whole block at once rather than row by row, so that short rows
/// (SAM's image-to-token attention has 6 keys) still fill the vector lanes.
#[inline(always)]
fn softmax_rows_body(scores: &mut [f32], keys: usize, scale: f32) {
    for row in scores.chunks_exact_mut(keys) {
        let max = lane_fold(row, f32::NEG_INFINITY, |m, v| if v > m { v } else { m });
        // Shifting an all-hidden row by 0 keeps it at −∞, so its `exp` is 0.
        let max = if max == f32::NEG_INFINITY { 0.0 } else { max };
        for v in row.iter_mut() {
            *v = (*v - max) * scale;
        }
    }
    for v in scores.iter_mut() {
        *v = exp(*v);
    }
    for row in scores.chunks_exact_mut(keys) {
        let sum = lane_sum(row, |v| v);
        if sum > 0.0 {
            let inv = 1.0 / sum;
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

#[inline(always)]
fn rms_norm_row_body(row: &mut [f32], w: &[f32], eps: f32) {
    let ms = lane_sum(row, |v| v * v) / row.len() as f32;
    let inv = (ms + eps).sqrt().recip();
    for (v, w) in row.iter_mut().zip(w) {
        *v = *v * inv * w;
    }
}

#[inline(always)]
fn layer_norm_row_body(row: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = lane_sum(row, |v| v) / n;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, w), b) in row.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * inv * w + b;
    }
}

#[inline(always)]
fn layer_norm_2d_body<'a>(
    plane: &dyn Fn(usize) -> &'a mut [f32],
    channels: usize,
    len: usize,
    w: &[f32],
    b: &[f32],
    eps: f32,
) {
    let n = channels as f32;
    let mut mean = vec![0.0f32; len];
    for ch in 0..channels {
        for (m, v) in mean.iter_mut().zip(plane(ch).iter()) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0f32; len];
    for ch in 0..channels {
        for ((s, v), m) in var.iter_mut().zip(plane(ch).iter()).zip(&mean) {
            *s += (v - m) * (v - m);
        }
    }
    var.iter_mut()
        .for_each(|s| *s = 1.0 / (*s / n + eps).sqrt());
    for ch in 0..channels {
        let (w, b) = (w[ch], b[ch]);
        for ((v, m), inv) in plane(ch).iter_mut().zip(&mean).zip(&var) {
            *v = (*v - m) * inv * w + b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn cpu_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values, shape), &Device::flex())
    }

    #[test]
    fn rms_norm_matches_the_formula() {
        let (rows, d) = (5, 48);
        let xs: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 37) % 23) as f32 * 0.3 - 3.0)
            .collect();
        let ws: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 * 0.01).collect();
        let got = rms_norm(
            cpu_tensor(xs.clone(), [rows, d]),
            &cpu_tensor(ws.clone(), [d]),
            1e-5,
        )
        .unwrap_or_else(|_| panic!())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
        for r in 0..rows {
            let row = &xs[r * d..(r + 1) * d];
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
            for j in 0..d {
                let want = row[j] as f64 / (ms + 1e-5).sqrt() * ws[j] as f64;
                let g = got[r * d + j] as f64;
                assert!(
                    (g - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "[{r}, {j}]: {g} vs {want}"
                );
            }
        }
    }

    /// The fused RoPE against Burn's own ops (the router's fallback), on a strided input (a
    /// head split, as the model hands it over) at a non-zero start.
    #[test]
    fn rope_matches_burns_ops_on_a_head_split_view() {
        let (n, h, d, positions, start) = (4, 3, 8, 16, 5);
        let xs: Vec<f32> = (0..n * h * d).map(|i| (i as f32 * 0.71).sin()).collect();
        let table = |f: fn(f32) -> f32| -> Vec<f32> {
            (0..positions * d).map(|i| f(i as f32 * 0.13)).collect()
        };
        let (cos, sin) = (
            cpu_tensor(table(f32::cos), [positions, d]),
            cpu_tensor(table(f32::sin), [positions, d]),
        );
        let x = || cpu_tensor(xs.clone(), [1, n, h, d]).swap_dims(1, 2);
        let got = rope(x(), &cos, &sin, start).unwrap_or_else(|_| panic!());
        let c = cos.clone().narrow(0, start, n).reshape([1, 1, n, d]);
        let s = sin.clone().narrow(0, start, n).reshape([1, 1, n, d]);
        let (x1, x2) = (x().narrow(3, 0, d / 2), x().narrow(3, d / 2, d / 2));
        let want = x() * c + Tensor::cat(vec![x2.neg(), x1], 3) * s;
        assert_eq!(got.dims(), [1, h, n, d]);
        let (got, want) = (
            got.into_data().try_to_vec::<f32>().unwrap(),
            want.into_data().try_to_vec::<f32>().unwrap(),
        );
        assert_eq!(got, want, "the same operations per element");
    }

    #[test]
    fn gelu_matches_the_exact_formula() {
        let xs: Vec<f32> = (0..30_000)
            .map(|i| (i as f32 - 15_000.0) * 0.0007)
            .collect();
        let got = gelu(cpu_tensor(xs.clone(), [30_000]))
            .unwrap_or_else(|_| panic!())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (&x, &g) in xs.iter().zip(&got) {
            let x64 = x as f64;
            let want = 0.5 * x64 * (1.0 + libm::erf(x64 / std::f64::consts::SQRT_2));
            assert!(
                (g as f64 - want).abs() <= 5e-7 * (1.0 + x64.abs()),
                "gelu({x}): {g} vs {want}"
            );
        }
    }

    #[test]
    fn element_wise_kernels_match_the_formulas() {
        let xs: Vec<f32> = (0..40_000)
            .map(|i| (i as f32 - 20_000.0) * 0.0011)
            .collect();
        let g = quick_gelu(cpu_tensor(xs.clone(), [200, 200])).unwrap_or_else(|_| panic!());
        let s = silu(cpu_tensor(xs.clone(), [40_000])).unwrap_or_else(|_| panic!());
        let g = g.into_data().try_to_vec::<f32>().unwrap();
        let s = s.into_data().try_to_vec::<f32>().unwrap();
        for (i, &x) in xs.iter().enumerate() {
            let x64 = x as f64;
            let want_g = x64 / (1.0 + (-1.702 * x64).exp());
            let want_s = x64 / (1.0 + (-x64).exp());
            assert!(
                (g[i] as f64 - want_g).abs() <= 1e-6 * (1.0 + want_g.abs()),
                "gelu({x})"
            );
            assert!(
                (s[i] as f64 - want_s).abs() <= 1e-6 * (1.0 + want_s.abs()),
                "silu({x})"
            );
        }
    }

    #[test]
    fn linear_matches_the_definition_and_leaves_the_weight_shared() {
        // Shapes cover the one-row GEMV (serial and threaded, a width that is not a multiple
        // of 32 and a row count that is not one of 4) and the multi-row `gemm` path; `x`
        // row-major and as a transposed view (read through its strides).
        for &(rows, d_in, d_out, with_bias, x_transposed) in &[
            (1, 37, 9, true, false),
            (1, 1000, 1030, true, false),
            (1, 2048, 257, false, false),
            (1, 40, 9, true, true),
            (3, 37, 9, true, false),
            (70, 300, 130, true, false),
            (70, 300, 130, false, false),
            (70, 300, 130, true, true),
        ] {
            let value = |i: usize, m: usize| ((i * 7919 % m) as f32 / m as f32) - 0.5;
            let xs: Vec<f32> = (0..rows * d_in).map(|i| value(i, 101)).collect();
            let ws: Vec<f32> = (0..d_out * d_in).map(|i| value(i, 89)).collect();
            let bs: Vec<f32> = (0..d_out).map(|i| value(i, 13)).collect();
            let weight = cpu_tensor(ws.clone(), [d_out, d_in]);
            let bias = with_bias.then(|| cpu_tensor(bs.clone(), [d_out]));
            let x = if x_transposed {
                let xt: Vec<f32> = (0..d_in * rows)
                    .map(|i| xs[(i % rows) * d_in + i / rows])
                    .collect();
                cpu_tensor(xt, [d_in, rows]).swap_dims(0, 1)
            } else {
                cpu_tensor(xs.clone(), [rows, d_in])
            };
            let y = linear(x, &weight, bias.as_ref())
                .unwrap_or_else(|_| panic!("CPU f32 operands take the kernel"));
            assert_eq!(y.dims(), [rows, d_out]);
            let y = y.into_data().try_to_vec::<f32>().unwrap();
            for r in 0..rows {
                for o in 0..d_out {
                    let dot: f64 = (0..d_in)
                        .map(|k| xs[r * d_in + k] as f64 * ws[o * d_in + k] as f64)
                        .sum();
                    let want = dot + if with_bias { bs[o] as f64 } else { 0.0 };
                    let got = y[r * d_out + o] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{rows}x{d_in}->{d_out} [{r},{o}]: {got} vs {want}"
                    );
                }
            }
            // The weight was read in place, not consumed or changed.
            assert_eq!(weight.into_data().try_to_vec::<f32>().unwrap(), ws);
        }
        // Mismatched widths are handed back for Burn's op to report.
        let weight = cpu_tensor(vec![0.0; 6], [2, 3]);
        assert!(linear(cpu_tensor(vec![0.0; 4], [1, 4]), &weight, None).is_err());
    }

    #[test]
    fn resize_matches_the_definition() {
        let (b, c, h, w, ho, wo) = (2, 3, 7, 5, 11, 4);
        let value = |i: usize, m: usize| ((i * 7919 % m) as f32 / m as f32) - 0.5;
        let xs: Vec<f32> = (0..b * c * h * w).map(|i| value(i, 97)).collect();
        let ry: Vec<f32> = (0..ho * h).map(|i| value(i, 31)).collect();
        let rx: Vec<f32> = (0..wo * w).map(|i| value(i, 37)).collect();
        // Row-major, and the same values as a transposed view.
        let transposed: Vec<f32> = (0..xs.len())
            .map(|i| {
                let (plane, x, y) = (i / (h * w), i / h % w, i % h);
                xs[plane * h * w + y * w + x]
            })
            .collect();
        for x in [
            cpu_tensor(xs.clone(), [b, c, h, w]),
            cpu_tensor(transposed, [b, c, w, h]).swap_dims(2, 3),
        ] {
            let got = resize(x, &ry, &rx, (ho, wo))
                .unwrap_or_else(|_| panic!("CPU f32 operands take the kernel"));
            assert_eq!(got.dims(), [b, c, ho, wo]);
            let got = got.into_data().try_to_vec::<f32>().unwrap();
            for plane in 0..b * c {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut want = 0f64;
                        for y in 0..h {
                            for x in 0..w {
                                want += ry[oy * h + y] as f64
                                    * xs[plane * h * w + y * w + x] as f64
                                    * rx[ox * w + x] as f64;
                            }
                        }
                        let g = got[(plane * ho + oy) * wo + ox] as f64;
                        assert!(
                            (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn conv2d_matches_burns_convolution() {
        use burn::tensor::{module, ops::ConvOptions};
        // (N, C, H, W, O, kernel, stride, padding, x as a channels-last view): the neck's
        // 1×1 and 3×3, CLIP's patch embedding (stride = kernel), a strided input.
        for &(n, c, h, w, o, kk, stride, padding, permuted) in &[
            (2, 16, 8, 8, 12, 1, 1, 0, false),
            (2, 16, 8, 8, 12, 1, 1, 0, true),
            (2, 6, 9, 7, 5, 3, 1, 1, false),
            (1, 3, 28, 28, 8, 14, 14, 0, false),
            (1, 4, 10, 10, 3, 3, 2, 1, true),
        ] {
            let value = |i: usize, m: usize| ((i * 7919 % m) as f32 / m as f32) - 0.5;
            let xs: Vec<f32> = (0..n * c * h * w).map(|i| value(i, 97)).collect();
            let ws: Vec<f32> = (0..o * c * kk * kk).map(|i| value(i, 83)).collect();
            let x = if permuted {
                // The same values stored [N, H, W, C], viewed as [N, C, H, W].
                let mut nhwc = vec![0f32; xs.len()];
                for (i, v) in xs.iter().enumerate() {
                    let (b, ci, y, xx) = (i / (c * h * w), i / (h * w) % c, i / w % h, i % w);
                    nhwc[((b * h + y) * w + xx) * c + ci] = *v;
                }
                cpu_tensor(nhwc, [n, h, w, c]).permute([0, 3, 1, 2])
            } else {
                cpu_tensor(xs.clone(), [n, c, h, w])
            };
            let weight = cpu_tensor(ws, [o, c, kk, kk]);
            let want = module::conv2d(
                cpu_tensor(xs, [n, c, h, w]),
                weight.clone(),
                None,
                ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1),
            );
            let got = conv2d(x, &weight, stride, padding)
                .unwrap_or_else(|_| panic!("CPU f32 operands take the kernel"));
            assert_eq!(got.dims(), want.dims());
            let got = got.into_data().try_to_vec::<f32>().unwrap();
            let want = want.into_data().try_to_vec::<f32>().unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{n}x{c}x{h}x{w} k{kk} s{stride} p{padding} [{i}]: {g} vs {w}"
                );
            }
        }
        // A channel mismatch is handed back for Burn's op to report.
        let weight = cpu_tensor(vec![0.0; 8], [2, 4, 1, 1]);
        assert!(conv2d(cpu_tensor(vec![0.0; 12], [1, 3, 2, 2]), &weight, 1, 0).is_err());
    }

    /// Training: autodiff tensors (inputs or weights) never enter the kernels, which would
    /// cut the graph or panic on a non-Flex primitive; each hands them back to Burn's ops.
    #[cfg(feature = "train")]
    #[test]
    fn autodiff_tensors_are_handed_back() {
        let ad = Device::flex().autodiff();
        let t = |v: Vec<f32>, d: &Device| Tensor::<2>::from_data(TensorData::new(v, [2, 3]), d);
        let x = t(vec![0.5; 6], &ad).require_grad();
        let plain = t(vec![0.5; 6], &Device::flex());
        let w = Tensor::<2>::from_data(TensorData::new(vec![0.1f32; 12], [4, 3]), &ad);
        let w_plain =
            Tensor::<2>::from_data(TensorData::new(vec![0.1f32; 12], [4, 3]), &Device::flex());
        assert!(linear(x.clone(), &w_plain, None).is_err());
        assert!(
            linear(plain.clone(), &w, None).is_err(),
            "an autodiff weight"
        );
        assert!(
            gelu(x.clone()).is_err() && silu(x.clone()).is_err() && quick_gelu(x.clone()).is_err()
        );
        let ones = Tensor::<1>::from_data(TensorData::new(vec![1f32; 3], [3]), &ad);
        assert!(layer_norm(x.clone(), &ones, &ones, 1e-5).is_err());
        let x4 = x.clone().reshape([1, 1, 2, 3]);
        assert!(resize(
            x4.clone(),
            &[1.0, 0.0, 0.0, 1.0],
            &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            (2, 3)
        )
        .is_err());
        let w4 = Tensor::<4>::from_data(TensorData::new(vec![0.1f32; 4], [4, 1, 1, 1]), &ad);
        assert!(conv2d(x4.clone(), &w4, 1, 0).is_err());
        assert!(attention(x4.clone(), x4.clone(), x4, None, 1.0, true).is_err());
        // The plain CPU tensors still take the kernels.
        assert!(linear(plain, &w_plain, None).is_ok());
    }

    #[test]
    fn in_place_kernels_leave_shared_and_strided_inputs_alone() {
        let xs: Vec<f32> = (0..600).map(|i| i as f32 * 0.01 - 3.0).collect();
        let want: Vec<f64> = xs
            .iter()
            .map(|&x| x as f64 / (1.0 + (-x as f64).exp()))
            .collect();
        let close = |got: Tensor<2>, want: &[f64]| {
            let got = got.into_data().try_to_vec::<f32>().unwrap();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (*g as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()),
                    "{g} vs {w}"
                );
            }
        };
        let x = cpu_tensor(xs.clone(), [20, 30]);
        // Shared: the kernel works on a copy.
        close(silu(x.clone()).unwrap_or_else(|_| panic!()), &want);
        // A narrowed view (offset into a larger buffer) and a transpose.
        close(
            silu(x.clone().narrow(0, 10, 10)).unwrap_or_else(|_| panic!()),
            &want[300..],
        );
        let t = silu(x.clone().swap_dims(0, 1)).unwrap_or_else(|_| panic!());
        close(t.swap_dims(0, 1), &want);
        assert_eq!(x.into_data().try_to_vec::<f32>().unwrap(), xs);
    }

    /// Attention in f64, straight from the definition.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dims: [usize; 5],
        causal: bool,
        hidden: &[bool],
    ) -> Vec<f64> {
        let [heads, lq, lk, d, dv] = dims;
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = vec![0.0; heads * lq * dv];
        for h in 0..heads {
            for i in 0..lq {
                let visible = if causal {
                    (i + 1 + lk).saturating_sub(lq).min(lk)
                } else {
                    lk
                };
                let s: Vec<f64> = (0..visible)
                    .map(|j| {
                        if hidden[j] {
                            return f64::NEG_INFINITY;
                        }
                        (0..d)
                            .map(|t| {
                                q[(h * lq + i) * d + t] as f64 * k[(h * lk + j) * d + t] as f64
                            })
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                if max == f64::MIN || sum == 0.0 {
                    continue; // no visible key: zeros
                }
                for c in 0..dv {
                    out[(h * lq + i) * dv + c] = (0..visible)
                        .map(|j| e[j] / sum * v[(h * lk + j) * dv + c] as f64)
                        .sum();
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_definition() {
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7919 + seed * 104_729) % 1013) as f32 / 1013.0 - 0.5) * 4.0)
                .collect()
        };
        // Prefill-like (queries span several blocks), decode-like (one query, many keys),
        // and more queries than keys.
        for (lq, lk, causal) in [
            (70, 70, true),
            (70, 70, false),
            (1, 75, true),
            (3, 130, true),
            (130, 5, false),
        ] {
            let (heads, d, dv) = (3, 8, 5);
            let (q, k, v) = (
                values(heads * lq * d, 1),
                values(heads * lk * d, 2),
                values(heads * lk * dv, 3),
            );
            // Hide keys 2 and 4 from every query (a padded image token, say).
            let hidden: Vec<bool> = (0..lk).map(|j| j == 2 || j == 4).collect();
            let got = attention(
                cpu_tensor(q.clone(), [1, heads, lq, d]),
                cpu_tensor(k.clone(), [1, heads, lk, d]),
                cpu_tensor(v.clone(), [1, heads, lk, dv]),
                Some(Tensor::from_data(
                    TensorData::new(hidden.clone(), [1, lk]),
                    &Device::flex(),
                )),
                1.0 / (d as f32).sqrt(),
                causal,
            )
            .unwrap_or_else(|_| panic!("CPU attention declined"))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
            let want = reference(&q, &k, &v, [heads, lq, lk, d, dv], causal, &hidden);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "lq {lq} lk {lk} causal {causal} element {i}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn attention_reads_strided_views_in_place() {
        // The layouts the model hands over: heads split from `[B, L, H·d]` (a transpose
        // view), keys narrowed out of a longer cache, two batch rows.
        let (b, heads, lq, lk, cap, d) = (2, 3, 20, 9, 12, 8);
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7919 + seed * 104_729) % 1013) as f32 / 1013.0 - 0.5) * 4.0)
                .collect()
        };
        let q = cpu_tensor(values(b * lq * heads * d, 1), [b, lq, heads, d]).swap_dims(1, 2);
        let k = cpu_tensor(values(b * heads * cap * d, 2), [b, heads, cap, d]).narrow(2, 0, lk);
        let v = cpu_tensor(values(b * lk * heads * d, 3), [b, lk, heads, d]).swap_dims(1, 2);
        let got = attention(q.clone(), k.clone(), v.clone(), None, 0.3, true)
            .unwrap_or_else(|_| panic!("CPU attention declined"));
        assert_eq!(got.dims(), [b, heads, lq, d]);
        // Same inputs laid out row-major.
        let want = attention(
            crate::kernels::contiguous(q),
            crate::kernels::contiguous(k),
            crate::kernels::contiguous(v),
            None,
            0.3,
            true,
        )
        .unwrap_or_else(|_| panic!("CPU attention declined"));
        let got = got.into_data().try_to_vec::<f32>().unwrap();
        let want = want.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn grouped_query_attention_reads_the_shared_head() {
        let (lq, lk, d) = (4, 9, 8);
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 31 + seed * 17) % 23) as f32 * 0.1 - 1.1)
                .collect()
        };
        let q = values(4 * lq * d, 1);
        let (k, v) = (values(2 * lk * d, 2), values(2 * lk * d, 3));
        // Reference: each kv head repeated for its two query heads.
        let repeat = |x: &[f32]| -> Vec<f32> {
            x.chunks(lk * d)
                .flat_map(|head| head.iter().chain(head).copied())
                .collect()
        };
        let want = reference(
            &q,
            &repeat(&k),
            &repeat(&v),
            [4, lq, lk, d, d],
            true,
            &[false; 9],
        );
        let got = attention(
            cpu_tensor(q, [1, 4, lq, d]),
            cpu_tensor(k, [1, 2, lk, d]),
            cpu_tensor(v, [1, 2, lk, d]),
            None,
            1.0 / (d as f32).sqrt(),
            true,
        )
        .unwrap_or_else(|_| panic!("CPU attention declined"))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{g} vs {w}"
            );
        }
    }

    #[test]
    fn layer_norms_match_the_definition() {
        let (rows, d) = (37, 300);
        let xs: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 7919) % 997) as f32 * 0.01 - 3.0)
            .collect();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..d).map(|i| i as f32 * -0.003).collect();
        let (wt, bt) = (cpu_tensor(w.clone(), [d]), cpu_tensor(b.clone(), [d]));
        let got = layer_norm(cpu_tensor(xs.clone(), [1, rows, d]), &wt, &bt, 1e-5)
            .unwrap_or_else(|_| panic!())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (r, row) in xs.chunks(d).enumerate() {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            for j in 0..d {
                let want = (row[j] as f64 - mean) / (var + 1e-5).sqrt() * w[j] as f64 + b[j] as f64;
                let g = got[r * d + j] as f64;
                assert!(
                    (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "row {r} col {j}: {g} vs {want}"
                );
            }
        }
        // LayerNorm2d: channels strided by H·W.
        let (n, c, h, w2) = (2, 6, 5, 7);
        let xs: Vec<f32> = (0..n * c * h * w2)
            .map(|i| ((i * 31) % 101) as f32 * 0.05 - 2.0)
            .collect();
        let wc: Vec<f32> = (0..c).map(|i| 1.0 + i as f32 * 0.1).collect();
        let bc: Vec<f32> = (0..c).map(|i| i as f32 * 0.2).collect();
        let got = layer_norm_2d(
            cpu_tensor(xs.clone(), [n, c, h, w2]),
            &cpu_tensor(wc.clone(), [c]),
            &cpu_tensor(bc.clone(), [c]),
            1e-6,
        )
        .unwrap_or_else(|_| panic!())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
        let px = h * w2;
        for img in 0..n {
            for p in 0..px {
                let at = |ch: usize| img * c * px + ch * px + p;
                let mean = (0..c).map(|ch| xs[at(ch)] as f64).sum::<f64>() / c as f64;
                let var = (0..c)
                    .map(|ch| (xs[at(ch)] as f64 - mean).powi(2))
                    .sum::<f64>()
                    / c as f64;
                for ch in 0..c {
                    let want = (xs[at(ch)] as f64 - mean) / (var + 1e-6).sqrt() * wc[ch] as f64
                        + bc[ch] as f64;
                    let g = got[at(ch)] as f64;
                    assert!(
                        (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{img} {ch} {p}: {g} vs {want}"
                    );
                }
            }
        }
    }
}
