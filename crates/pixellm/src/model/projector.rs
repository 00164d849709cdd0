//! The two-layer MLPs that move features between the vision, language and mask spaces.
//!
//! `mm_projector` / `out_mm_projector` (Linear, GELU-erf, Linear; `docs/model.md` §6) and
//! `text_hidden_fcs.0` (Linear, ReLU, Linear, Dropout(0); `docs/model.md` §9). PyTorch
//! keys the layers of an `nn.Sequential` by index, so the fields are named after those
//! indices.

use burn::tensor::{activation, Tensor};

use super::nn::Linear;
use super::params::Params;
use crate::error::Result;

/// Which non-linearity sits between the two layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU.
    Gelu,
    /// ReLU.
    Relu,
}

/// `Linear → activation → Linear`, keyed `{name}.0` and `{name}.2`.
#[derive(Debug, Clone)]
pub struct TwoLayerMlp {
    layer_0: Linear,
    layer_2: Linear,
    activation: Activation,
}

impl TwoLayerMlp {
    /// Loads `0.{weight,bias}` (`[hidden, d_in]`) and `2.{weight,bias}` (`[d_out, hidden]`)
    /// from `p`, the MLP's own key.
    pub fn load(p: &Params, dims: (usize, usize, usize), activation: Activation) -> Result<Self> {
        let (d_in, hidden, d_out) = dims;
        Ok(Self {
            layer_0: Linear::load(&p.pp("0"), d_in, hidden, true)?,
            layer_2: Linear::load(&p.pp("2"), hidden, d_out, true)?,
            activation,
        })
    }

    /// Applies the MLP to the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let h = self.layer_0.forward(x);
        let h = match self.activation {
            Activation::Gelu => super::nn::gelu(h),
            Activation::Relu => activation::relu(h),
        };
        self.layer_2.forward(h)
    }
}
