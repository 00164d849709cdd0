//! The segmentation codebook: hidden states of the `[SEGk]` predictions -> one prompt
//! embedding per target and visual scale (`docs/model.md` §9).

use burn::tensor::Tensor;

use super::params::Params;
use super::projector::{Activation, TwoLayerMlp};
use crate::error::Result;

/// `multiseg_scalar`: never registered, trained or saved in PixelLM; every entry is
/// `1 / len(seg_token_idx)` = 1/6, of which the first 3 are used (`docs/model.md` §15.2).
pub const MULTISEG_SCALAR: f32 = 1.0 / 6.0;

/// `text_hidden_fcs.0` plus the order-based grouping and fixed-weight fusion.
#[derive(Debug, Clone)]
pub struct Codebook {
    text_hidden_fcs: TwoLayerMlp,
    tokens_per_scale: usize,
    scales: usize,
}

impl Codebook {
    /// Loads the MLP's `{0,2}` layers from `p`, its own key (`model.text_hidden_fcs.0`).
    pub fn load(
        p: &Params,
        hidden: usize,
        out_dim: usize,
        tokens_per_scale: usize,
        scales: usize,
    ) -> Result<Self> {
        Ok(Self {
            text_hidden_fcs: TwoLayerMlp::load(p, (hidden, hidden, out_dim), Activation::Relu)?,
            tokens_per_scale,
            scales,
        })
    }

    /// Codebook tokens per target (6).
    pub fn tokens_per_target(&self) -> usize {
        self.tokens_per_scale * self.scales
    }

    /// Projects the gathered hidden states.
    ///
    /// # Shapes
    /// `[K, H]` -> `[K, out_dim]`
    pub fn project(&self, hidden: Tensor<2>) -> Tensor<2> {
        self.text_hidden_fcs.forward(hidden)
    }

    /// Groups projected codebook embeddings by order of occurrence and fuses each group
    /// of `tokens_per_scale` with weight 1/6 each. `K` must be a multiple of 6 (the caller
    /// drops all masks otherwise, as the official code does).
    ///
    /// # Shapes
    /// `[K, out_dim]` -> `[K / 6, scales, out_dim]`
    pub fn fuse(&self, projected: Tensor<2>) -> Tensor<3> {
        let [k, d] = projected.dims();
        let n = k / self.tokens_per_target();
        projected
            .reshape([n, self.scales, self.tokens_per_scale, d])
            .sum_dim(2)
            .mul_scalar(MULTISEG_SCALAR)
            .reshape([n, self.scales, d])
    }
}

#[cfg(all(test, feature = "cpu", not(target_family = "wasm")))]
mod tests {
    use burn::tensor::{DType, Device, Tensor, TensorData};

    use super::*;

    #[test]
    fn fuse_groups_by_order_and_scale_with_weight_one_sixth() {
        let device = Device::flex();
        let p = Params::random(&device, DType::F32);
        // 2 tokens per scale, 3 scales: [SEG0..5] per target; two targets; out_dim 2.
        let cb = Codebook::load(&p, 4, 2, 2, 3).unwrap();
        assert_eq!(cb.tokens_per_target(), 6);
        let rows: Vec<f32> = (0..12).flat_map(|k| [k as f32, 100.0 + k as f32]).collect();
        let x = Tensor::<2>::from_data(TensorData::new(rows, [12, 2]), &device);
        let got: Vec<f32> = cb.fuse(x).into_data().try_to_vec::<f32>().unwrap();
        // Target t, scale s fuses rows 6t + 2s and 6t + 2s + 1.
        let mut want = Vec::new();
        for t in 0..2 {
            for s in 0..3 {
                let (a, b) = ((6 * t + 2 * s) as f32, (6 * t + 2 * s + 1) as f32);
                want.push((a + b) / 6.0);
                want.push((200.0 + a + b) / 6.0);
            }
        }
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }
}
