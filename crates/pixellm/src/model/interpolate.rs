//! PyTorch `F.interpolate(mode="bilinear", align_corners=False, antialias=False)` as
//! matrices.
//!
//! A separable bilinear resize is `out = Ry · X · Rxᵀ`, with `Ry`/`Rx` holding at most two
//! non-zero weights per row. Expressing it as two matmuls makes it exact to PyTorch's
//! formula on every backend (Burn's `interpolate` semantics differ between backends and
//! versions), and lets a crop be folded into the matrices for free. The products run in
//! [`crate::kernels::resize`].

use burn::tensor::{DType, Device, Tensor};

use super::nn::{from_f32, to_f32};

/// The `[out, in]` row-stochastic matrix of a 1-D bilinear resize from `n_in` to `n_out`
/// samples (PyTorch `upsample_bilinear2d`, align_corners = False).
pub fn bilinear_weights(n_in: usize, n_out: usize) -> Vec<f32> {
    let mut m = vec![0f32; n_out * n_in];
    // PyTorch computes the scale and the source index in f32 (`area_pixel_compute_scale`).
    let scale = n_in as f32 / n_out as f32;
    for d in 0..n_out {
        let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(n_in - 1);
        let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
        let l1 = src - i0 as f32;
        let l0 = 1.0 - l1;
        m[d * n_in + i0] += l0;
        m[d * n_in + i1] += l1;
    }
    m
}

/// Composes `first` (`[mid, in]`) followed by `second` (`[out, mid]`) into `[out, in]`.
pub fn compose(second: &[f32], first: &[f32], n_out: usize, n_mid: usize, n_in: usize) -> Vec<f32> {
    let mut m = vec![0f32; n_out * n_in];
    for o in 0..n_out {
        for k in 0..n_mid {
            let w = second[o * n_mid + k];
            if w != 0.0 {
                for i in 0..n_in {
                    m[o * n_in + i] += w * first[k * n_in + i];
                }
            }
        }
    }
    m
}

/// Resizes the two last dimensions of `x` with row matrix `ry` (`[ho, h]`) and column
/// matrix `rx` (`[wo, w]`), both host-side ([`crate::kernels::resize`]).
///
/// # Shapes
/// `[B, C, h, w]` -> `[B, C, ho, wo]`
pub fn resize_with(
    x: Tensor<4>,
    ry: Vec<f32>,
    rx: Vec<f32>,
    out: (usize, usize),
    device: &Device,
    dtype: DType,
) -> Tensor<4> {
    crate::kernels::resize(x, ry, rx, out, device, dtype)
}

/// Bilinear resize of the two last dimensions of `x` to `out` (`(height, width)`),
/// computed in f32 (the official code interpolates in f32 even in bf16 runs) and returned
/// in `x`'s dtype.
pub fn bilinear(x: Tensor<4>, out: (usize, usize)) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let (device, dtype) = (x.device(), x.dtype());
    let y = resize_with(
        to_f32(x),
        bilinear_weights(h, out.0),
        bilinear_weights(w, out.1),
        out,
        &device,
        DType::F32,
    );
    from_f32(y, dtype)
}

/// Bilinear resize of a host `[C, h, w]` f32 array, computed like PyTorch's CPU kernel.
pub fn bilinear_host(x: &[f32], c: usize, h: usize, w: usize, ho: usize, wo: usize) -> Vec<f32> {
    let ry = bilinear_weights(h, ho);
    let rx = bilinear_weights(w, wo);
    let mut out = vec![0f32; c * ho * wo];
    for ch in 0..c {
        let src = &x[ch * h * w..(ch + 1) * h * w];
        for oy in 0..ho {
            let row = &ry[oy * h..(oy + 1) * h];
            for ox in 0..wo {
                let col = &rx[ox * w..(ox + 1) * w];
                let mut acc = 0f32;
                for (iy, &wy) in row.iter().enumerate() {
                    if wy == 0.0 {
                        continue;
                    }
                    let mut r = 0f32;
                    for (ix, &wx) in col.iter().enumerate() {
                        if wx != 0.0 {
                            r += wx * src[iy * w + ix];
                        }
                    }
                    acc += wy * r;
                }
                out[ch * ho * wo + oy * wo + ox] = acc;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downscale_by_two_is_average_pooling() {
        let m = bilinear_weights(4, 2);
        assert_eq!(m, vec![0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5]);
    }

    #[test]
    fn upscale_matches_pytorch_values() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.]]]]), size=(1, 4),
        // mode="bilinear", align_corners=False) -> [0, 0.25, 0.75, 1]
        let out = bilinear_host(&[0.0, 1.0], 1, 1, 2, 1, 4);
        assert_eq!(out, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn rows_sum_to_one() {
        for (i, o) in [(24, 32), (128, 448), (448, 300), (7, 3)] {
            let m = bilinear_weights(i, o);
            for r in 0..o {
                let s: f32 = m[r * i..(r + 1) * i].iter().sum();
                assert!((s - 1.0).abs() < 1e-6, "{i}->{o} row {r}: {s}");
            }
        }
    }
}
