//! `MaskDecoderMultiScale`: one SAM-style decoder level per visual scale, level 1
//! conditioned on level 0's mask (`docs/model.md` §10.3, §15.23).

use burn::tensor::{activation, ops::ConvTransposeOptions, Tensor};

use super::nn::{LayerNorm2d, Linear};
use super::params::Params;
use super::prompt_encoder::fourier_pe;
use super::two_way_transformer::{Shape, TwoWayTransformer};
use crate::error::Result;

/// SAM `MLP`: Linear layers with ReLU between them, keyed `layers.{i}`.
#[derive(Debug, Clone)]
struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    fn load(p: &Params, dims: &[usize]) -> Result<Self> {
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, d)| Linear::load(&p.pp("layers").pp(i), d[0], d[1], true))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    fn forward<const D: usize>(&self, mut x: Tensor<D>) -> Tensor<D> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = activation::relu(x);
            }
        }
        x
    }
}

/// ConvTranspose2d(k 2, s 2) → LayerNorm2d → GELU: a 2× learned upsampling, keyed `{0,1}`.
#[derive(Debug, Clone)]
struct Upscale {
    conv_weight: Tensor<4>,
    conv_bias: Tensor<1>,
    norm: LayerNorm2d,
}

impl Upscale {
    fn load(p: &Params, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(Self {
            conv_weight: p.tensor("0.weight", [c_in, c_out, 2, 2])?,
            conv_bias: p.tensor("0.bias", [c_out])?,
            norm: LayerNorm2d::load(&p.pp("1"), c_out)?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = crate::kernels::conv_transpose2d(
            x,
            &self.conv_weight,
            &self.conv_bias,
            ConvTransposeOptions::new([2, 2], [0, 0], [0, 0], [1, 1], 1),
        );
        super::nn::gelu(self.norm.forward(x))
    }
}

/// What one decoder level produced.
#[derive(Debug, Clone)]
pub struct LevelOutput {
    /// Mask logits of mask token 0 (`multimask_output = False`), `[N, 1, 2h, 2w]`.
    pub masks: Tensor<4>,
    /// IoU head output for that mask, `[N, 1]` (unused downstream, kept for parity checks).
    pub iou_pred: Tensor<2>,
    /// Transformer output tokens `[N, 6, C]`.
    pub tokens: Tensor<3>,
}

/// PixelLM's two-level mask decoder.
#[derive(Debug, Clone)]
pub struct MaskDecoderMultiScale {
    transformer: Vec<TwoWayTransformer>,
    iou_token: Tensor<2>,
    mask_tokens: Tensor<2>,
    level_embed: Tensor<2>,
    output_upscaling: Upscale,
    upsample_2x: Upscale,
    /// Only hypernetwork 0 feeds the returned mask; 1–3 are skipped (their outputs are
    /// discarded by `multimask_output = False`).
    output_hypernetwork_0: Mlp,
    iou_prediction_head: Mlp,
    /// Level-1 positional encoding `[1, C, 2g, 2g]` (`pe1`).
    pe1: Tensor<4>,
}

/// Mask tokens SAM uses (`num_multimask_outputs + 1`); all take part in attention.
const MASK_TOKENS: usize = 4;

impl MaskDecoderMultiScale {
    /// Loads the decoder from `p`, its own key (`model.mask_decoder`); `grid` is the
    /// level-0 feature side (32).
    pub fn load(p: &Params, shape: Shape, grid: usize) -> Result<Self> {
        let dim = shape.dim;
        let transformer = (0..2)
            .map(|l| TwoWayTransformer::load(&p.pp("transformer").pp(l), shape, 2))
            .collect::<Result<Vec<_>>>()?;
        let g = p.host("pe1.positional_encoding_gaussian_matrix", &[2, dim / 2])?;
        let up = dim / 8;
        Ok(Self {
            transformer,
            iou_token: p.tensor("iou_token.weight", [1, dim])?,
            mask_tokens: p.tensor("mask_tokens.weight", [MASK_TOKENS, dim])?,
            level_embed: p.tensor("level_embed.weight", [2, dim])?,
            output_upscaling: Upscale::load(&p.pp("output_upscaling"), dim, up)?,
            upsample_2x: Upscale::load(&p.pp("upsample_2x"), dim, dim)?,
            output_hypernetwork_0: Mlp::load(
                &p.pp("output_hypernetworks_mlps").pp(0),
                &[dim, dim, dim, up],
            )?,
            iou_prediction_head: Mlp::load(
                &p.pp("iou_prediction_head"),
                &[dim, dim, dim, MASK_TOKENS],
            )?,
            pe1: p.upload(
                fourier_pe(&g, 2 * grid, 2 * grid),
                [1, dim, 2 * grid, 2 * grid],
            ),
        })
    }

    /// One decoder level (`predict_masks`).
    ///
    /// # Shapes
    /// - `features`: `[1, C, g, g]` (neck output of this level's scale)
    /// - `sparse`: `[N, 1, C]` (this level's codebook embedding)
    /// - `no_mask_embed`: `[C]`
    /// - `dense_pe`: `[1, C, g, g]` (level 0 only; level 1 uses `pe1`)
    /// - `prev`: level 0's masks `[N, 1, 2g, 2g]` (level 1 only)
    pub fn level(
        &self,
        level: usize,
        features: Tensor<4>,
        sparse: Tensor<3>,
        no_mask_embed: &Tensor<1>,
        dense_pe: &Tensor<4>,
        prev: Option<&Tensor<4>>,
    ) -> LevelOutput {
        let [n, _, c] = sparse.dims();
        let fixed = Tensor::cat(vec![self.iou_token.clone(), self.mask_tokens.clone()], 0);
        let fixed = fixed.unsqueeze::<3>().expand([n, 1 + MASK_TOKENS, c]);
        // level_embed goes onto all six tokens, not only the sparse one
        // (`docs/model.md` §15.23).
        let level_embed = self
            .level_embed
            .clone()
            .narrow(0, level, 1)
            .unsqueeze::<3>();
        let tokens = Tensor::cat(vec![fixed, sparse], 1) + level_embed;

        let (src, pe) = match prev {
            None => (features, dense_pe.clone()),
            Some(prev) => {
                let src = self.upsample_2x.forward(features);
                // The channel mean of a one-channel mask is the mask itself.
                let gate = activation::sigmoid(prev.clone().mean_dim(1)) + 1.0;
                (src * gate, self.pe1.clone())
            }
        };
        let [b, _, h, w] = src.dims();
        let src = src.expand([n.max(b), c, h, w]) + no_mask_embed.clone().reshape([1, c, 1, 1]);

        let (hs, keys) = self.transformer[level].forward(src, pe, tokens);
        let iou_out = hs.clone().narrow(1, 0, 1).reshape([n, c]);
        let mask_out = hs.clone().narrow(1, 1, 1).reshape([n, c]);

        let upscaled = self
            .output_upscaling
            .forward(keys.swap_dims(1, 2).reshape([n, c, h, w]));
        let [_, cu, hu, wu] = upscaled.dims();
        let hyper = self
            .output_hypernetwork_0
            .forward(mask_out)
            .reshape([n, 1, cu]);
        let masks = crate::kernels::matmul(hyper, upscaled.reshape([n, cu, hu * wu]))
            .reshape([n, 1, hu, wu]);
        let iou_pred = self.iou_prediction_head.forward(iou_out).narrow(1, 0, 1);
        LevelOutput {
            masks,
            iou_pred,
            tokens: hs,
        }
    }
}
