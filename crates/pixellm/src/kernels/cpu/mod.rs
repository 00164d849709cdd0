//! Vectorised, multi-threaded CPU kernels for the ops where Burn's CPU backend falls short:
//! everything built on `exp`, one-row products, and anything that would copy a view.
//! Native only (feature `cpu`, not wasm32: no threads there).
//!
//! Burn 0.22's CPU backend (`flex`) evaluates `exp`, `sigmoid`, `silu` and the softmax inside
//! its attention with the scalar libm `expf`, one element at a time, on one thread (mid
//! shape: CLIP's `quick_gelu` 49 ms per layer, an attention 112 ms against PyTorch's SDPA
//! 36 ms); it sends a one-row product to `gemm`'s single-threaded GEMV (decode at one core's
//! bandwidth); and it copies strided views element by element. The kernels here compute the
//! same functions with a branch-free `exp` (Cephes' polynomial, ≤ 2 ulp) that the compiler
//! vectorises, over every core.
//!
//! They reach the tensors' buffers through the backend's own tensor
//! ([`burn::tensor::Tensor::try_into_primitive`]): a uniquely owned buffer is changed in
//! place, a shared one (a weight, a residual stream) and a strided view (split heads, a
//! narrowed KV cache) are read where they are. Each entry point returns `Err(x)` untouched
//! when a tensor is not f32 on the CPU backend, and the caller ([`crate::kernels`]) then
//! uses Burn's op, so every other backend and dtype keeps one code path.
//!
//! By concern, each layer using only the ones before it:
//! - `views`: reaching a tensor's f32 values in place or as a strided view;
//! - `math`: the vectorisable scalar functions and the SIMD dispatch;
//! - `blas`: an optional CBLAS loaded at run time;
//! - `gemm`: the matrix products (CBLAS or the `gemm` crate) and a parallel GEMV;
//! - `ops`: the kernels the router calls.

pub(crate) mod blas;
mod gemm;
mod math;
mod ops;
mod qgemm;
mod views;

pub(super) use ops::{
    attention, conv2d, gelu, layer_norm, layer_norm_2d, linear, qlinear, quick_gelu, resize,
    rms_norm, rope, silu,
};
