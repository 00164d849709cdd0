//! Fused decode kernels for the CubeCL backends (wgpu: Vulkan, Metal, DX12, WebGPU; CUDA),
//! one `#[cube]` source compiled at run time to WGSL, SPIR-V or CUDA C++.
//!
//! Each replaces a chain of Burn ops that launches one kernel per op (a decode step is
//! launch-bound on a GPU: `docs/performance.md`):
//! - [`rms_norm`]: LLaMA's RMSNorm in one launch (Burn's ops: square, mean, add, sqrt,
//!   reciprocal, two products and the casts around the f32 statistics: 7–9 launches);
//! - [`rope`]: the rotary embedding of `[B, heads, n, d]` queries or keys in one launch,
//!   reading any strides (so the heads split of the stacked q/k/v output needs no copy;
//!   Burn's ops: two products, a negation, a concatenation of two halves and a sum: 6).
//!
//! They use no subgroup (plane) operations, only a workgroup's shared memory, so they run
//! on every adapter, lavapipe and browsers without subgroups included; and they keep the
//! arithmetic of the Burn ops they replace (f32 statistics, the same operation order), so
//! the parity suites hold unchanged. A kernel hands its inputs back (`Err`) where it does not
//! apply (not a CubeCL tensor, an autodiff tensor, a tiled or non-contiguous layout it does
//! not read, mismatched dtypes) and the router runs Burn's ops.
//!
//! Kernel arguments are checked launches (`#[cube(launch)]`): an index past a buffer reads
//! zero instead of faulting.

// `Err` hands the operands back to the caller (moved, not cloned), as in the CPU kernels.
#![allow(clippy::result_large_err)]

use burn::backend::Cube;
use burn::tensor::{DType, Tensor};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Workgroup size for one row of RMSNorm: a power of two (the tree reduction), at most 256
/// (WebGPU's default limit on invocations per workgroup).
fn row_threads(d: usize) -> usize {
    d.next_power_of_two().clamp(32, 256)
}

/// One workgroup per row: the row's sum of squares in f32 (strided over the workgroup,
/// then a tree in shared memory), `x · 1/√(mean + ε)` in f32, cast to `F`, times `w`.
#[cube(launch)]
fn rms_norm_kernel<F: Float>(
    x: &[F],
    w: &[F],
    out: &mut [F],
    d: u32,
    eps: f32,
    #[comptime] threads: usize,
    #[define(F)] _dtype: ElemType,
) {
    let base = CUBE_POS * d as usize;
    let unit = UNIT_POS as usize;
    let mut partial = f32::new(0.0);
    let mut i = unit;
    while i < d as usize {
        let v = f32::cast_from(x[base + i]);
        partial += v * v;
        i += threads;
    }
    let mut sums = Shared::<[f32]>::new_slice(threads);
    sums[unit] = partial;
    sync_cube();
    // The partials summed by one unit: `threads` additions, no loop of barriers.
    let mut total = Shared::<f32>::new();
    if unit == 0 {
        let mut sum = f32::new(0.0);
        let mut k = 0u32;
        while k < threads as u32 {
            sum += sums[k as usize];
            k += 1u32;
        }
        *total = sum;
    }
    sync_cube();
    let mean = *total / f32::cast_from(d);
    let inv = f32::new(1.0) / (mean + eps).sqrt();
    let mut j = unit;
    while j < d as usize {
        out[base + j] = F::cast_from(f32::cast_from(x[base + j]) * inv) * w[j];
        j += threads;
    }
}

/// `x` (`[.., d]`, contiguous) normalised per row and scaled by `weight` (`[d]`), or the
/// inputs back where the kernel does not apply.
pub fn rms_norm<const D: usize>(
    x: Tensor<D>,
    weight: &Tensor<1>,
    eps: f64,
) -> Result<Tensor<D>, Tensor<D>> {
    let dims = x.dims();
    let d = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    if x.is_autodiff()
        || weight.is_autodiff()
        || weight.dtype() != x.dtype()
        || !matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
        || rows == 0
        || rows > u16::MAX as usize
    {
        return Err(x);
    }
    let (Some(xp), Some(wp)) = (primitive(&x), primitive(weight)) else {
        return Err(x);
    };
    if !plain(&xp) || !plain(&wp) {
        return Err(x);
    }
    let client = xp.client.clone();
    let out = empty_device_contiguous_dtype(
        client.clone(),
        xp.device.clone(),
        xp.meta.shape().clone(),
        xp.dtype,
    );
    let threads = row_threads(d);
    // Launch errors (a compilation failure) surface at the next read, as Burn's own do.
    rms_norm_kernel::launch(
        &client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(threads as u32),
        xp.into_buffer_arg(),
        wp.into_buffer_arg(),
        out.clone().into_buffer_arg(),
        d as u32,
        eps as f32,
        threads,
        burn::backend::cubecl::dtype_to_storage_type(x.dtype()),
    );
    Ok(Tensor::from_primitive::<Cube>(out))
}

/// One invocation per output value of `[B, H, n, d]` (contiguous out): position
/// `start + t`, `x · cos + rotate_half(x) · sin` with `rotate_half([x1, x2]) = [−x2, x1]`,
/// `x` read through its strides.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rope_kernel<F: Float>(
    x: &[F],
    cos: &[F],
    sin: &[F],
    out: &mut [F],
    heads: u32,
    n: u32,
    d: u32,
    start: u32,
    stride_b: u32,
    stride_h: u32,
    stride_t: u32,
    stride_i: u32,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= out.len() {
        terminate!();
    }
    let d = d as usize;
    let n = n as usize;
    let heads = heads as usize;
    let i = pos % d;
    let t = (pos / d) % n;
    let h = (pos / (d * n)) % heads;
    let b = pos / (d * n * heads);
    let row = b * stride_b as usize + h * stride_h as usize + t * stride_t as usize;
    let half = d / 2;
    let table = (start as usize + t) * d + i;
    let v = x[row + i * stride_i as usize];
    let c = v * cos[table];
    if i < half {
        let other = x[row + (i + half) * stride_i as usize];
        out[pos] = c + (-other) * sin[table];
    } else {
        let other = x[row + (i - half) * stride_i as usize];
        out[pos] = c + other * sin[table];
    }
}

/// RoPE of `x` (`[B, heads, n, d]`, any strides) at positions `start..start + n` with the
/// `[positions, d]` tables, as a contiguous tensor; or the input back.
pub fn rope(
    x: Tensor<4>,
    cos: &Tensor<2>,
    sin: &Tensor<2>,
    start: usize,
) -> Result<Tensor<4>, Tensor<4>> {
    let [b, heads, n, d] = x.dims();
    let positions = cos.dims()[0];
    let numel = b * heads * n * d;
    if x.is_autodiff()
        || cos.dtype() != x.dtype()
        || sin.dtype() != x.dtype()
        || !matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
        || numel == 0
        || !d.is_multiple_of(2)
        || start + n > positions
        || numel > u32::MAX as usize
    {
        return Err(x);
    }
    let (Some(xp), Some(cp), Some(sp)) = (primitive(&x), primitive(cos), primitive(sin)) else {
        return Err(x);
    };
    if xp.meta.is_tiled() || !plain(&cp) || !plain(&sp) {
        return Err(x);
    }
    let strides: Vec<usize> = xp.meta.strides().iter().copied().collect();
    if strides.len() != 4 || strides.iter().any(|&s| s > u32::MAX as usize) {
        return Err(x);
    }
    let client = xp.client.clone();
    let out = empty_device_contiguous_dtype(
        client.clone(),
        xp.device.clone(),
        xp.meta.shape().clone(),
        xp.dtype,
    );
    let cubes = numel.div_ceil(256);
    if cubes > u16::MAX as usize {
        return Err(x);
    }
    rope_kernel::launch(
        &client,
        CubeCount::Static(cubes as u32, 1, 1),
        CubeDim::new_1d(256),
        xp.into_buffer_arg(),
        cp.into_buffer_arg(),
        sp.into_buffer_arg(),
        out.clone().into_buffer_arg(),
        heads as u32,
        n as u32,
        d as u32,
        start as u32,
        strides[0] as u32,
        strides[1] as u32,
        strides[2] as u32,
        strides[3] as u32,
        burn::backend::cubecl::dtype_to_storage_type(x.dtype()),
    );
    Ok(Tensor::from_primitive::<Cube>(out))
}

/// The CubeCL tensor behind `t`, or `None` on another backend.
fn primitive<const D: usize>(t: &Tensor<D>) -> Option<CubeTensor> {
    t.clone().try_into_primitive::<Cube>().ok()
}

/// Row-major, untiled and covering its whole buffer (read as a flat slice).
fn plain(t: &CubeTensor) -> bool {
    !t.meta.is_tiled() && t.is_contiguous() && t.is_contiguous_buffer()
}
