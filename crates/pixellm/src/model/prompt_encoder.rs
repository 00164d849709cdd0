//! The parts of SAM's prompt encoder PixelLM uses: the random-Fourier positional encoding
//! and the "no mask" dense embedding (`docs/model.md` §10.1). Point/box/mask encoders are
//! unused.

use burn::tensor::Tensor;

use super::params::Params;
use crate::error::Result;

/// `PositionEmbeddingRandom.forward((h, w))` computed on the host in f32, as PyTorch does
/// on the CPU: `pe = [sin(2π·(2u−1)·G), cos(…)]` at pixel centres.
///
/// `gaussian`: `[2, F]`. Returns channel-major `[2F, h, w]`.
pub fn fourier_pe(gaussian: &[f32], h: usize, w: usize) -> Vec<f32> {
    let f = gaussian.len() / 2;
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let mut out = vec![0f32; 2 * f * h * w];
    for r in 0..h {
        let y = 2.0 * ((r as f32 + 1.0 - 0.5) / h as f32) - 1.0;
        for c in 0..w {
            let x = 2.0 * ((c as f32 + 1.0 - 0.5) / w as f32) - 1.0;
            for j in 0..f {
                let a = two_pi * (x * gaussian[j] + y * gaussian[f + j]);
                out[(j * h + r) * w + c] = a.sin();
                out[((f + j) * h + r) * w + c] = a.cos();
            }
        }
    }
    out
}

/// Dense prompt inputs of the two decoder levels.
#[derive(Debug, Clone)]
pub struct PromptEncoder {
    /// `no_mask_embed` `[C]`: the dense embedding when no mask prompt is given.
    pub no_mask_embed: Tensor<1>,
    /// Level-0 positional encoding `[1, C, g, g]` (`prompt_encoder.pe_layer`).
    pub dense_pe: Tensor<4>,
}

impl PromptEncoder {
    /// Loads `{no_mask_embed, pe_layer}` from `p`, the encoder's own key
    /// (`model.prompt_encoder`), and
    /// evaluates the positional encoding on the `grid`×`grid` feature map.
    pub fn load(p: &Params, dim: usize, grid: usize) -> Result<Self> {
        let g = p.host(
            "pe_layer.positional_encoding_gaussian_matrix",
            &[2, dim / 2],
        )?;
        Ok(Self {
            no_mask_embed: p.tensor("no_mask_embed.weight", [1, dim])?.reshape([dim]),
            dense_pe: p.upload(fourier_pe(&g, grid, grid), [1, dim, grid, grid]),
        })
    }

    /// The dense embedding `[1, C, h, w]` (the same for every target).
    pub fn dense_embeddings(&self, h: usize, w: usize) -> Tensor<4> {
        let c = self.no_mask_embed.dims()[0];
        self.no_mask_embed
            .clone()
            .reshape([1, c, 1, 1])
            .expand([1, c, h, w])
    }
}
