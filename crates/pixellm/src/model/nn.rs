//! Small layers shared by every part of the model: linear, norms, embedding, the
//! activations, and the head split/merge around attention.
//!
//! Linear weights stay in the checkpoint's `[out, in]` layout and are multiplied transposed:
//! no copy at load, and decode-shaped GEMVs read the weight row-major, which is 3–10× faster
//! on GPUs than the `[in, out]` layout Burn's own `Linear` uses (Burn 0.22 on an H200, one
//! f16 `x[1, k] · W` per call at the 7B decode shapes, 4096 × 4096 to 4096 × 32000:
//! 41–77 µs against 114–289 µs on CUDA, 58–118 µs against 295–733 µs through wgpu).
//!
//! The layers hold weights and shapes; how an op runs on the tensors' backend (CPU kernels,
//! CUDA f32 products, Burn's ops) is [`crate::kernels`]' choice.

use burn::tensor::{Int, Tensor};

use super::params::Params;
use crate::error::Result;
use crate::kernels;

// `x` in f32 and back: the casts around the f32 statistics of the norms (defined with the
// backend router, whose Burn fallbacks use them too).
pub use crate::kernels::{from_f32, to_f32};

/// `y = x·Wᵀ + b` with `W` stored `[out, in]` (PyTorch `nn.Linear`).
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor<2>,
    /// `[out]`.
    pub bias: Option<Tensor<1>>,
}

impl Linear {
    /// Loads `weight` (and `bias` when `bias`) from `p`, the layer's own key.
    pub fn load(p: &Params, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: p.tensor("weight", [d_out, d_in])?,
            bias: if bias {
                Some(p.tensor("bias", [d_out])?)
            } else {
                None
            },
        })
    }

    /// Applies the layer to the last dimension of `x` ([`kernels::linear`]).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        kernels::linear(x, &self.weight, self.bias.as_ref())
    }
}

/// `nn.LayerNorm` over the last dimension (biased variance).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Scale `[d]`.
    pub weight: Tensor<1>,
    /// Shift `[d]`.
    pub bias: Tensor<1>,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` from `p`, the layer's own key.
    pub fn load(p: &Params, d: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: p.tensor("weight", [d])?,
            bias: p.tensor("bias", [d])?,
            eps,
        })
    }

    /// Normalises the last dimension of `x` (statistics in f32, as PyTorch does for
    /// half-precision inputs; [`kernels::layer_norm`]).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        kernels::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// SAM's `LayerNorm2d`: normalises the channel dimension of `[N, C, H, W]`.
#[derive(Debug, Clone)]
pub struct LayerNorm2d {
    /// Scale `[C]`.
    pub weight: Tensor<1>,
    /// Shift `[C]`.
    pub bias: Tensor<1>,
    /// Added to the variance (1e-6 in SAM).
    pub eps: f64,
}

impl LayerNorm2d {
    /// Loads `weight` and `bias` from `p`, the layer's own key.
    pub fn load(p: &Params, channels: usize) -> Result<Self> {
        Ok(Self {
            weight: p.tensor("weight", [channels])?,
            bias: p.tensor("bias", [channels])?,
            eps: 1e-6,
        })
    }

    /// [`kernels::layer_norm_2d`].
    ///
    /// # Shapes
    /// `[N, C, H, W]` -> `[N, C, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        kernels::layer_norm_2d(x, &self.weight, &self.bias, self.eps)
    }
}

/// LLaMA `RMSNorm`: `x · rsqrt(mean(x²) + ε) · w`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// Scale `[d]`.
    pub weight: Tensor<1>,
    /// Added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    /// Loads `weight` from `p`, the layer's own key.
    pub fn load(p: &Params, d: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: p.tensor("weight", [d])?,
            eps,
        })
    }

    /// Normalises the last dimension of `x`: in f32, cast back, then scaled — the order
    /// of transformers' `LlamaRMSNorm`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x = to_f32(x);
        let ms = x.clone().square().mean_dim(D - 1);
        from_f32(x * (ms + self.eps).sqrt().recip(), dtype) * self.weight.clone().unsqueeze()
    }
}

/// A lookup table `[vocab, d]`.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// `[vocab, d]`.
    pub weight: Tensor<2>,
}

impl Embedding {
    /// Loads `weight` from `p`, the table's own key.
    pub fn load(p: &Params, vocab: usize, d: usize) -> Result<Self> {
        Ok(Self {
            weight: p.tensor("weight", [vocab, d])?,
        })
    }

    /// # Shapes
    /// ids `[n]` -> `[n, d]`
    pub fn forward(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        self.weight.clone().select(0, ids)
    }
}

/// CLIP's `quick_gelu`: `x · σ(1.702 x)` ([`kernels::quick_gelu`]).
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    kernels::quick_gelu(x)
}

/// Exact (erf) GELU, PyTorch's `nn.GELU()` ([`kernels::gelu`]; in training composed from
/// `erf`, whose derivative is exact on every backend).
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    kernels::gelu(x)
}

/// `silu`: `x · σ(x)` ([`kernels::silu`]).
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    kernels::silu(x)
}

/// Multi-head scaled dot-product attention on `[B, L, heads·d]` inputs
/// ([`kernels::attention`]).
///
/// `key_padding`: `[B, Lk]`, `true` = the key is hidden from every query.
pub fn multi_head_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    key_padding: Option<Tensor<2, burn::tensor::Bool>>,
) -> Tensor<3> {
    let q = split_heads(q, heads);
    let k = split_heads(k, heads);
    let v = split_heads(v, heads);
    let out = kernels::attention(q, k, v, key_padding, false);
    merge_heads(out)
}

/// `x` laid out row-major (defined with the kernels, which need it too).
pub use crate::kernels::contiguous;

/// `[B, L, heads·d]` -> `[B, heads, L, d]`.
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, l, c] = x.dims();
    x.reshape([b, l, heads, c / heads]).swap_dims(1, 2)
}

/// `[B, heads, L, d]` -> `[B, L, heads·d]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, l, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, l, h * d])
}
