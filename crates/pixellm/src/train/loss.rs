//! PixelLM's training losses on logits at the original image size (the official
//! `model/PixelLM.py`, weights from `train_ds.py`):
//!
//! `L = 1.0·CE(answer tokens) + 2.0·BCE(mask) + 0.5·DICE(mask) + λ·refine`
//!
//! - BCE: sigmoid cross-entropy, the mean over a mask's pixels, summed over masks and
//!   divided by the batch's mask count.
//! - DICE: `1 − (2Σ(p/1000·t) + ε) / (Σp/1000 + Σt/1000 + ε)`, ε = 1e-6, per mask, the same
//!   normalisation (the official `scale = 1000` makes ε effectively 1e-3 pixels).
//! - refine (the paper's target refinement loss): BCE restricted to the pixels that two or
//!   more of one question's *predicted* masks claim (logit > 0), per mask, same
//!   normalisation. The official `overlap_loss` is commented out and could not run as
//!   written (docs/training.md); with λ = 2 (the BCE weight, as its commented-out call
//!   scaled it) a contested pixel weighs twice an uncontested one.

use burn::tensor::{activation, Tensor};

/// Sigmoid cross-entropy per pixel: `softplus(x) − x·t = −log σ(−x) − x·t`, through
/// Burn's overflow-free `log_sigmoid` (whose derivative is exact at 0, unlike the
/// `max(x, 0) + log(1 + e^{−|x|})` form, whose pieces disagree there).
pub fn bce_pixels<const D: usize>(logits: Tensor<D>, target: Tensor<D>) -> Tensor<D> {
    activation::log_sigmoid(logits.clone().neg()).neg() - logits * target
}

/// `[N, H, W]` -> `[N]`: the sum over each mask's pixels, rows first, then columns.
///
/// Two short reductions instead of one over `H·W`: Burn 0.22.1's wgpu backend returns
/// wrong sums for a reduced axis of ~190,000 elements and more (measured on lavapipe:
/// 329×583 = 191,807 values summed to −16.2 instead of −21.3; 262,144 and 300,000 wrong as
/// well, 150,000 right), the size of an original-resolution mask.
pub fn per_mask_sum(x: Tensor<3>) -> Tensor<1> {
    let n = x.dims()[0];
    x.sum_dim(2).sum_dim(1).reshape([n])
}

/// The sum of all values, in chunks of at most 2^16 (see [`per_mask_sum`] for why).
pub fn chunked_sum(x: Tensor<1>) -> Tensor<1> {
    const CHUNK: usize = 1 << 16;
    let n = x.dims()[0];
    if n <= CHUNK {
        return x.sum().reshape([1]);
    }
    let parts: Vec<Tensor<1>> = (0..n)
        .step_by(CHUNK)
        .map(|start| {
            x.clone()
                .narrow(0, start, CHUNK.min(n - start))
                .sum()
                .reshape([1])
        })
        .collect();
    Tensor::cat(parts, 0).sum().reshape([1])
}

/// Per-mask mean BCE of `[N, H, W]` logits against 0/1 targets: `[N]`.
pub fn bce_per_mask(logits: Tensor<3>, target: Tensor<3>) -> Tensor<1> {
    let [_, h, w] = logits.dims();
    per_mask_sum(bce_pixels(logits, target)).div_scalar((h * w) as f64)
}

/// Per-mask DICE loss of `[N, H, W]` logits (the official scale 1000, ε 1e-6): `[N]`.
pub fn dice_per_mask(logits: Tensor<3>, target: Tensor<3>) -> Tensor<1> {
    let p = activation::sigmoid(logits).div_scalar(1000.0);
    // As the official code: the numerator scales the prediction only.
    let numerator = per_mask_sum(p.clone() * target.clone()).mul_scalar(2.0);
    let denominator = per_mask_sum(p) + per_mask_sum(target).div_scalar(1000.0);
    (numerator.add_scalar(1e-6) / denominator.add_scalar(1e-6))
        .neg()
        .add_scalar(1.0)
}

/// Per-mask refinement loss of one question's `[N, H, W]` logits: the mean over pixels
/// of BCE on the pixels that ≥ 2 of the question's predictions claim (logit > 0): `[N]`.
/// The contested-pixel weight is a constant (no gradient through the threshold).
pub fn refine_per_mask(logits: Tensor<3>, target: Tensor<3>) -> Tensor<1> {
    let [_, h, w] = logits.dims();
    let claimed = logits.clone().detach().greater_elem(0.0).float().sum_dim(0);
    let contested = claimed.greater_equal_elem(2.0).float();
    per_mask_sum(bce_pixels(logits, target) * contested).div_scalar((h * w) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t3(v: Vec<f32>, shape: [usize; 3], device: &Device) -> Tensor<3> {
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    fn scalar(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// Finite differences of each loss against the autodiff gradient, in f64-safe steps.
    #[test]
    fn gradients_match_finite_differences() {
        let device = Device::flex().autodiff();
        // No logit within the step of 0, where the refinement's claim mask would flip.
        let x: Vec<f32> = (0..2 * 3 * 4)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.4 + 0.1)
            .collect();
        let t: Vec<f32> = (0..2 * 3 * 4).map(|i| (i % 3 == 0) as u8 as f32).collect();
        type Loss = fn(Tensor<3>, Tensor<3>) -> Tensor<1>;
        let losses: [(&str, Loss); 3] = [
            ("bce", bce_per_mask),
            ("dice", dice_per_mask),
            ("refine", refine_per_mask),
        ];
        for (name, f) in losses {
            let eval = |xv: &[f32]| -> f64 {
                let xs = t3(xv.to_vec(), [2, 3, 4], &Device::flex());
                let ts = t3(t.clone(), [2, 3, 4], &Device::flex());
                scalar(f(xs, ts).sum().reshape([1]))[0] as f64
            };
            let leaf = t3(x.clone(), [2, 3, 4], &device).require_grad();
            let loss = f(leaf.clone(), t3(t.clone(), [2, 3, 4], &device)).sum();
            let grads = loss.backward();
            let g = leaf
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            for i in 0..x.len() {
                let h = 1e-2f32;
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[i] += h;
                xm[i] -= h;
                let fd = (eval(&xp) - eval(&xm)) / (2.0 * h as f64);
                assert!(
                    (fd - g[i] as f64).abs() < 2e-3 + 2e-2 * fd.abs(),
                    "{name}[{i}]: finite difference {fd}, autodiff {}",
                    g[i]
                );
            }
        }
    }

    #[test]
    fn values_match_the_definitions() {
        let device = Device::flex();
        // Perfect, confident prediction: BCE ~ 0, DICE ~ 0.
        let x = t3(vec![20.0, -20.0, -20.0, 20.0], [1, 2, 2], &device);
        let t = t3(vec![1.0, 0.0, 0.0, 1.0], [1, 2, 2], &device);
        assert!(scalar(bce_per_mask(x.clone(), t.clone()))[0] < 1e-6);
        assert!(scalar(dice_per_mask(x, t.clone()))[0] < 1e-4);
        // Logit 0 everywhere: BCE = ln 2; DICE = 1 − (2·0.5·2/1000 + ε) / ((0.5·4 + 2)/1000 + ε),
        // about 0.5 (ε is not negligible at the 1/1000 scale).
        let z = t3(vec![0.0; 4], [1, 2, 2], &device);
        assert!((scalar(bce_per_mask(z.clone(), t.clone()))[0] - 2f32.ln()).abs() < 1e-6);
        let want = 1.0 - (0.002 + 1e-6) / (0.004 + 1e-6);
        assert!((scalar(dice_per_mask(z, t.clone()))[0] - want).abs() < 1e-6);
        // Refinement: only pixels claimed by both masks count.
        let two = t3(
            vec![1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0, -1.0],
            [2, 2, 2],
            &device,
        );
        let tt = t3(
            vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [2, 2, 2],
            &device,
        );
        let r = scalar(refine_per_mask(two, tt));
        // Pixel 0 is claimed by both: mask 0 (target 1) BCE(1, 1), mask 1 BCE(1, 0); /4.
        let b = |x: f32, t: f32| x.max(0.0) - x * t + (1.0 + (-x.abs()).exp()).ln();
        assert!((r[0] - b(1.0, 1.0) / 4.0).abs() < 1e-6, "{r:?}");
        assert!((r[1] - b(1.0, 0.0) / 4.0).abs() < 1e-6, "{r:?}");
    }
}
