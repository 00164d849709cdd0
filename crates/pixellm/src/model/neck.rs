//! `image_feature_neck`: projected CLIP features `[S, H, 32, 32]` -> decoder features
//! `[S, 256, 32, 32]` (`docs/model.md` §6.4). Never trained: the checkpoint holds its
//! random init (`docs/model.md` §15.11), so it is loaded, never re-initialised.

use burn::tensor::{ops::ConvOptions, Tensor};

use super::nn::LayerNorm2d;
use super::params::Params;
use crate::error::Result;
use crate::kernels::burn_conv2d;

/// Conv1×1 (no bias), LayerNorm2d, Conv3×3 pad 1 (no bias), LayerNorm2d — keyed `0..3`.
#[derive(Debug, Clone)]
pub struct ImageFeatureNeck {
    conv_0: Tensor<4>,
    norm_1: LayerNorm2d,
    conv_2: Tensor<4>,
    norm_3: LayerNorm2d,
}

impl ImageFeatureNeck {
    /// Loads `{0,1,2,3}` from `p`, the neck's own key (`model.image_feature_neck`).
    pub fn load(p: &Params, d_in: usize, d_out: usize) -> Result<Self> {
        Ok(Self {
            conv_0: p.tensor("0.weight", [d_out, d_in, 1, 1])?,
            norm_1: LayerNorm2d::load(&p.pp("1"), d_out)?,
            conv_2: p.tensor("2.weight", [d_out, d_out, 3, 3])?,
            norm_3: LayerNorm2d::load(&p.pp("3"), d_out)?,
        })
    }

    /// # Shapes
    /// `[S, H, h, w]` -> `[S, 256, h, w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = burn_conv2d(x, &self.conv_0, ConvOptions::new([1, 1], [0, 0], [1, 1], 1));
        let x = self.norm_1.forward(x);
        let x = burn_conv2d(x, &self.conv_2, ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
        self.norm_3.forward(x)
    }
}
