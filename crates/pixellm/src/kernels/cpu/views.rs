//! How the CPU kernels reach a tensor's values: through the CPU backend's own tensor
//! ([`Tensor::try_into_primitive`]), a uniquely owned buffer changed in place ([`in_place`]),
//! a shared one (a weight, a residual stream) or a strided view (split heads, a narrowed KV
//! cache) read where it is ([`with_view`], [`with_strided`]), without the copies Burn's
//! `into_data` would make.
//!
//! Every accessor returns `Err`/`None` when a tensor is not f32 on the CPU backend
//! ([`is_cpu_f32`]), so the kernels hand it back to Burn's ops.

// `Err` hands the caller's own tensor back (as large as the `Ok` one): no extra cost.
#![allow(clippy::result_large_err)]

use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::{DType, Tensor};

use crate::kernels::on_cpu;

/// Whether `x` is an f32 tensor that the CPU kernels may take: f32 and
/// [`on_cpu`](crate::kernels) (on the CPU backend, not an autodiff tensor, whose graph the
/// kernels would cut).
pub(super) fn is_cpu_f32<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && on_cpu(x)
}

/// Runs `f` on the f32 values of `x` in place; `Err(x)` when `x` is not an f32 tensor on
/// the CPU backend.
///
/// A uniquely owned row-major buffer is changed where it is. A shared one (a residual
/// stream the caller keeps) is copied with one `memcpy` first: Burn's `into_data` copies
/// a shared tensor element by element (7 ms per million values here, measured).
pub(super) fn in_place<const D: usize>(
    x: Tensor<D>,
    f: impl FnOnce(&mut [f32]),
) -> Result<Tensor<D>, Tensor<D>> {
    if !is_cpu_f32(&x) {
        return Err(x);
    }
    let (dims, device) = (x.dims(), x.device());
    // Moved, not cloned: a uniquely owned buffer stays unique.
    let mut primitive = x
        .try_into_primitive::<Flex>()
        .expect("an f32 tensor on the CPU device is a Flex tensor");
    let layout = primitive.layout();
    let whole_buffer = layout.is_contiguous()
        && layout.start_offset() == 0
        && primitive.storage::<f32>().len() == layout.num_elements();
    if whole_buffer {
        if let Some(values) = primitive.try_storage_mut::<f32>() {
            f(values);
            return Ok(Tensor::from_primitive::<Flex>(primitive));
        }
    }
    let mut values = match primitive.as_slice::<f32>() {
        Some(values) => values.to_vec(),
        None => Tensor::<D>::from_primitive::<Flex>(primitive)
            .into_data()
            .try_into_vec::<f32>()
            .expect("an f32 tensor's data is f32"),
    };
    f(&mut values);
    Ok(Tensor::from_data(
        burn::tensor::TensorData::new(values, dims),
        &device,
    ))
}

/// A small (parameter-sized) tensor's values on the host.
pub(super) fn host_vec(t: &Tensor<1>) -> Vec<f32> {
    t.clone()
        .into_data()
        .try_to_vec::<f32>()
        .expect("an f32 tensor's data is f32")
}

/// The CPU backend's own tensor behind `x`, sharing its buffer (one more reference, no
/// copy), when `x` is an f32 tensor on the CPU backend.
pub(super) fn flex_tensor<const D: usize>(x: &Tensor<D>) -> Option<FlexTensor> {
    if !is_cpu_f32(x) {
        return None;
    }
    x.clone().try_into_primitive::<Flex>().ok()
}

/// Runs `f` on `x`'s f32 values in place when `x` is a contiguous f32 tensor on the CPU
/// backend (shared or not, so a model's weights are read where they are).
pub(super) fn with_view<const D: usize, R>(
    x: &Tensor<D>,
    f: impl FnOnce(&[f32]) -> R,
) -> Option<R> {
    flex_tensor(x)?.as_slice::<f32>().map(f)
}

/// A raw pointer through which parallel tasks write disjoint parts of one buffer
/// ([`attention`](super::ops::attention)'s output rows,
/// [`layer_norm_2d`](super::ops::layer_norm_2d)'s pixel runs, a BLAS product's row blocks).
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: every task writes rows no other task writes (see the use).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// A strided view of a CPU tensor's values: its buffer, the first element's index and the
/// stride of each dimension, in elements.
pub(super) struct StridedView<'a, const D: usize> {
    pub(super) data: &'a [f32],
    pub(super) offset: usize,
    pub(super) strides: [usize; D],
}

impl<const D: usize> StridedView<'_, D> {
    /// The buffer from element `index` on.
    pub(super) fn at(&self, index: [usize; D]) -> &[f32] {
        let at = self.offset
            + index
                .iter()
                .zip(&self.strides)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        &self.data[at..]
    }
}

/// Runs `f` on a zero-copy strided view of `x` when `x` is an f32 tensor on the CPU
/// backend with non-negative strides (views from transposes, narrows and broadcasts
/// included).
pub(super) fn with_strided<const D: usize, R>(
    x: &Tensor<D>,
    f: impl FnOnce(StridedView<'_, D>) -> R,
) -> Option<R> {
    let primitive = flex_tensor(x)?;
    let layout = primitive.layout();
    let mut strides = [0usize; D];
    for (s, &l) in strides.iter_mut().zip(layout.strides()) {
        *s = usize::try_from(l).ok()?;
    }
    Some(f(StridedView {
        data: primitive.storage::<f32>(),
        offset: layout.start_offset(),
        strides,
    }))
}
