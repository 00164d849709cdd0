//! f32 matrix products on CUDA in full f32.
//!
//! Burn 0.22's CUDA matmul (cubek `Strategy::Auto`) runs f32 operands on the tensor cores
//! in TF32 (10-bit mantissa) on every card since Ampere, with no switch to turn that off:
//! results then differ from the CPU and from the official PyTorch code (whose f32 matmuls
//! are full f32 by default) by ~1e-3 relative. Here f32 products on a CUDA device go to
//! cubek's `SimpleUnit` routine instead, which multiplies in f32 registers.
//! [`set_allow_tf32`](super::set_allow_tf32)`(true)` keeps Burn's TF32 path (faster; like
//! PyTorch's `allow_tf32`; the CLI sets it from `PIXELLM_ALLOW_TF32=1`). Half-precision
//! products are untouched (they use the tensor cores either way). Feature `cuda`.

// `Err` hands the operands back to the caller (moved, not cloned), as in the CPU kernels.
#![allow(clippy::result_large_err)]

use burn::backend::Cube;
use burn::tensor::{DType, Tensor};
use cubek::cubecl::ir::{ElemType, FloatKind};
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::matmul::launch::launch_ref;
use cubek::matmul::multi_level;
use cubek::matmul::strategy::Strategy;
use cubek::std::InputBinding;

use super::tf32_allowed;

/// Whether `t` is an f32 tensor on a CUDA device that [`matmul`] would take.
pub fn applies<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32
        && !tf32_allowed()
        && t.clone()
            .try_into_primitive::<Cube>()
            .is_ok_and(|p| matches!(p.device, cubek::cubecl::Device::Cuda(_)))
}

/// `lhs @ rhs` (batch dimensions broadcast) in f32 on CUDA, or `Err` with the operands
/// when they are not both f32 CUDA tensors (or TF32 is allowed).
pub fn matmul<const D: usize>(
    lhs: Tensor<D>,
    rhs: Tensor<D>,
) -> Result<Tensor<D>, (Tensor<D>, Tensor<D>)> {
    if D < 2 || !applies(&lhs) || rhs.dtype() != DType::F32 {
        return Err((lhs, rhs));
    }
    let (ld, rd) = (lhs.dims(), rhs.dims());
    let mut od = ld;
    od[D - 1] = rd[D - 1];
    for i in 0..D - 2 {
        od[i] = ld[i].max(rd[i]);
    }
    let out = Tensor::<D>::empty(od, (&lhs.device(), DType::F32));
    let (Ok(l), Ok(r), Ok(o)) = (
        lhs.clone().try_into_primitive::<Cube>(),
        rhs.clone().try_into_primitive::<Cube>(),
        out.try_into_primitive::<Cube>(),
    ) else {
        return Err((lhs, rhs));
    };
    let f32 = ElemType::Float(FloatKind::F32);
    let mut elems = MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: f32,
        rhs: f32,
        out: f32,
    });
    let strategy = Strategy::MultiLevel(multi_level::Strategy::SimpleUnit(Default::default()));
    let client = o.client.clone();
    match launch_ref(
        &strategy,
        &client,
        InputBinding::new(l.binding(), f32),
        InputBinding::new(r.binding(), f32),
        o.clone().binding(),
        &mut elems,
    ) {
        Ok(()) => Ok(Tensor::from_primitive::<Cube>(o)),
        // Shapes the unit routine cannot take fall back to Burn's product.
        Err(_) => Err((lhs, rhs)),
    }
}
