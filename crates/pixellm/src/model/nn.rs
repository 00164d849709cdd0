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

use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor};

use super::params::Params;
use crate::error::Result;
use crate::kernels;
use crate::kernels::quant::{DeviceQuantMatrix, QuantMatrix};

// `x` in f32 and back: the casts around the f32 statistics of the norms (defined with the
// backend router, whose Burn fallbacks use them too).
pub use crate::kernels::{from_f32, to_f32};

/// A `[rows, cols]` weight matrix: a device tensor, or blocks of a quantised format kept
/// packed (`--quant`; GGUF `Q8_0`/`Q4_0`/`Q4_1`), shared between tied uses.
// A Burn tensor handle is large (640 bytes) next to an `Arc`; boxing it would put one more
// indirection on every dense product for a saving of bytes per layer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Matrix {
    /// A tensor in the model's dtype.
    Dense(Tensor<2>),
    /// Packed blocks on the host (CPU backend; [`kernels::qlinear`] multiplies by them in
    /// place).
    Packed(Arc<QuantMatrix>),
    /// Packed blocks in a GPU device's buffers ([`kernels::device_qlinear`]).
    DevicePacked(Arc<DeviceQuantMatrix>),
}

impl Matrix {
    /// `parts` stacked by rows into one matrix of their kind (dense where
    /// [`kernels::stacks_dense_products`] says it pays, packed in one format and width), or
    /// `None`.
    fn stack(parts: &[&Matrix]) -> Option<Matrix> {
        match parts.first()? {
            Self::Dense(first) => {
                let dense = parts
                    .iter()
                    .map(|m| match m {
                        Self::Dense(w) => Some(w.clone()),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                kernels::stacks_dense_products(&first.device())
                    .then(|| Self::Dense(Tensor::cat(dense, 0)))
            }
            Self::Packed(_) => {
                let host = parts
                    .iter()
                    .map(|m| match m {
                        Self::Packed(q) => Some(q.as_ref()),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                QuantMatrix::stack_rows(&host).map(|m| Self::Packed(Arc::new(m)))
            }
            Self::DevicePacked(_) => {
                let device = parts
                    .iter()
                    .map(|m| match m {
                        Self::DevicePacked(q) => Some(q.as_ref()),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                DeviceQuantMatrix::stack_rows(&device).map(|m| Self::DevicePacked(Arc::new(m)))
            }
        }
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(t) => t.dims(),
            Self::Packed(m) => [m.rows(), m.cols()],
            Self::DevicePacked(m) => [m.rows(), m.cols()],
        }
    }
}

/// `y = x·Wᵀ + b` with `W` stored `[out, in]` (PyTorch `nn.Linear`).
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Matrix,
    /// `[out]`.
    pub bias: Option<Tensor<1>>,
}

impl Linear {
    /// Loads `weight` (and `bias` when `bias`) from `p`, the layer's own key, as a dense
    /// tensor.
    pub fn load(p: &Params, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: Matrix::Dense(p.tensor("weight", [d_out, d_in])?),
            bias: Self::load_bias(p, d_out, bias)?,
        })
    }

    /// [`Linear::load`] with the weight packed or dense as `p`'s quantisation policy says
    /// ([`Params::matrix`]): the LLM's matrices.
    pub fn load_quantizable(p: &Params, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: p.matrix("weight", [d_out, d_in])?,
            bias: Self::load_bias(p, d_out, bias)?,
        })
    }

    fn load_bias(p: &Params, d_out: usize, bias: bool) -> Result<Option<Tensor<1>>> {
        bias.then(|| p.tensor("bias", [d_out])).transpose()
    }

    /// Applies the layer to the last dimension of `x` ([`kernels::linear`], or
    /// [`kernels::qlinear`] for a packed weight).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.weight {
            Matrix::Dense(w) => kernels::linear(x, w, self.bias.as_ref()),
            Matrix::Packed(w) => kernels::qlinear(x, w, self.bias.as_ref()),
            Matrix::DevicePacked(w) => kernels::device_qlinear(x, w, self.bias.as_ref(), None),
        }
    }

    /// `residual + self.forward(x)`: a residual connection after the layer, fused where a
    /// kernel can ([`kernels::linear_residual`]).
    pub fn forward_residual<const D: usize>(&self, x: Tensor<D>, residual: Tensor<D>) -> Tensor<D> {
        match &self.weight {
            Matrix::Dense(w) => kernels::linear_residual(x, w, self.bias.as_ref(), residual),
            Matrix::Packed(w) => residual + kernels::qlinear(x, w, self.bias.as_ref()),
            Matrix::DevicePacked(w) => {
                kernels::device_qlinear(x, w, self.bias.as_ref(), Some(residual))
            }
        }
    }
}

/// Several projections of one input run as one product: their `[out_i, in]` weights
/// stacked at load into one `[Σ out_i, in]` matrix and the output split back (LLaMA's
/// q/k/v and gate/up: one matrix product per step instead of three and two, so fewer
/// kernel launches on a GPU and fewer trips through the thread pool for packed matrices on
/// the CPU). Parts that cannot share one matrix (packed in different formats, bias on some
/// only) or where stacking does not pay (dense on the CPU: [`kernels::stacks_dense_products`])
/// stay separate.
#[derive(Debug, Clone)]
pub struct FusedLinear<const N: usize> {
    /// One stacked layer, or the `N` parts one by one.
    layers: Vec<Linear>,
    /// `out_i` of each part, in order.
    widths: [usize; N],
}

impl<const N: usize> FusedLinear<N> {
    /// Stacks `parts` (each `[out_i, in]`, the same `in`).
    pub fn new(parts: [Linear; N]) -> Self {
        let widths = std::array::from_fn(|i| parts[i].weight.dims()[0]);
        let weights: Vec<&Matrix> = parts.iter().map(|l| &l.weight).collect();
        let weight = Matrix::stack(&weights);
        let bias = match parts.iter().filter(|l| l.bias.is_some()).count() {
            0 => Some(None),
            n if n == parts.len() => Some(Some(Tensor::cat(
                parts.iter().filter_map(|l| l.bias.clone()).collect(),
                0,
            ))),
            _ => None,
        };
        let layers = match (weight, bias) {
            (Some(weight), Some(bias)) => vec![Linear { weight, bias }],
            _ => parts.into(),
        };
        Self { layers, widths }
    }

    /// Each part's output, in order.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> [Tensor<D>; N] {
        match self.layers.as_slice() {
            [one] if N > 1 => {
                let y = one.forward(x);
                let starts: [usize; N] =
                    std::array::from_fn(|i| self.widths[..i].iter().sum::<usize>());
                std::array::from_fn(|i| y.clone().narrow(D - 1, starts[i], self.widths[i]))
            }
            layers => std::array::from_fn(|i| layers[i].forward(x.clone())),
        }
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
        kernels::rms_norm(x, &self.weight, self.eps)
    }
}

/// A lookup table `[vocab, d]`.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// `[vocab, d]`, dense or packed (then the looked-up rows are unpacked on the host).
    pub weight: Matrix,
}

impl Embedding {
    /// Loads `weight` from `p`, the table's own key, packed or dense as `p`'s quantisation
    /// policy says ([`Params::matrix`]).
    pub fn load(p: &Params, vocab: usize, d: usize) -> Result<Self> {
        Ok(Self {
            weight: p.matrix("weight", [vocab, d])?,
        })
    }

    /// The rows of `ids` (each below the vocabulary size), on `device`; a packed table's
    /// rows come out in `dtype`.
    ///
    /// # Shapes
    /// ids `[n]` -> `[n, d]`
    pub fn forward(&self, ids: &[i64], device: &Device, dtype: burn::tensor::DType) -> Tensor<2> {
        match &self.weight {
            Matrix::Dense(w) => w
                .clone()
                .select(0, kernels::upload_ids(ids.to_vec(), device)),
            Matrix::Packed(m) => packed_rows(m, ids, device, dtype),
            Matrix::DevicePacked(m) => {
                device_rows(m, kernels::upload_ids(ids.to_vec(), device), dtype)
            }
        }
    }

    /// [`Embedding::forward`] with the ids already on the device (`on_device`, `[n]`; the
    /// same values as `ids`): a decode step feeds the argmax it just computed back without
    /// uploading it. A packed table (CPU only) unpacks the rows of `ids` on the host.
    pub fn forward_on_device(
        &self,
        on_device: Tensor<1, Int>,
        ids: &[i64],
        dtype: burn::tensor::DType,
    ) -> Tensor<2> {
        match &self.weight {
            Matrix::Dense(w) => w.clone().select(0, on_device),
            Matrix::Packed(m) => packed_rows(m, ids, &on_device.device(), dtype),
            Matrix::DevicePacked(m) => device_rows(m, on_device, dtype),
        }
    }
}

/// The rows `ids` of a packed table on a GPU device, from the whole table unpacked there
/// (a model loader keeps lookup tables dense on GPUs, `kernels::host_packed_on`; this is
/// the correct, slow answer for a table packed by hand).
fn device_rows(
    m: &DeviceQuantMatrix,
    ids: Tensor<1, Int>,
    dtype: burn::tensor::DType,
) -> Tensor<2> {
    kernels::dequantize_device(m, dtype).select(0, ids)
}

/// The rows `ids` of a packed table, unpacked on the host and uploaded in `dtype`.
fn packed_rows(
    m: &QuantMatrix,
    ids: &[i64],
    device: &Device,
    dtype: burn::tensor::DType,
) -> Tensor<2> {
    let mut rows = Vec::with_capacity(ids.len() * m.cols());
    for &id in ids {
        m.dequantize_row(id as usize, &mut rows);
    }
    kernels::upload(rows, [ids.len(), m.cols()], device, dtype)
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

/// LLaMA's SwiGLU activation `silu(gate) · up` ([`kernels::swiglu`]).
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    kernels::swiglu(gate, up)
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
