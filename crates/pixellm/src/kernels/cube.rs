//! Fused decode kernels for the CubeCL backends (wgpu: Vulkan, Metal, DX12, WebGPU; CUDA),
//! one `#[cube]` source compiled at run time to WGSL, SPIR-V or CUDA C++.
//!
//! Each replaces a chain of Burn ops that launches one kernel per op (a decode step is
//! launch-bound on a GPU: `docs/performance.md`):
//! - [`rms_norm`]: LLaMA's RMSNorm in one launch (Burn's ops: square, mean, add, sqrt,
//!   reciprocal, two products and the casts around the f32 statistics: 7–9 launches);
//! - [`rope`]: the rotary embedding of `[B, heads, n, d]` queries or keys in one launch,
//!   reading any strides (so the heads split of the stacked q/k/v output needs no copy;
//!   Burn's ops: two products, a negation, a concatenation of two halves and a sum: 6);
//! - [`rope_kv_write`]: RoPE of the new keys and the write of keys and values into the
//!   cache slots, in place, in one launch (Burn's ops: RoPE's 6, a copy of the values'
//!   strided view, two slice assignments);
//! - [`gemv`]: a one-row product `x · Wᵀ` with the bias and a residual added in the same
//!   launch (Burn's: cubek's matmul, whose default routine tiles for many rows, then one
//!   launch per addition);
//! - [`qgemv`] / [`dequantize`]: products with packed `Q8_0`/`Q4_0`/`Q4_1` weights
//!   ([`DeviceQuantMatrix`]): a one-row product reads the blocks and multiplies in the same
//!   pass; more rows unpack the matrix for one Burn matmul (`--quant` on GPU backends);
//! - [`swiglu`]: LLaMA's MLP activation `silu(gate) · up` in one launch, reading the two
//!   halves of the stacked gate/up product in place (Burn's ops: the sigmoid's chain, two
//!   products: 5–6);
//! - [`attention_step`]: attention of one query per head over the cached keys (a decode
//!   step; grouped-query heads read their shared key/value head in place) in one launch
//!   (Burn's attention without autotune: two products, the scale, the mask, a six-op
//!   NaN-safe softmax and the key/value head copies: 13–15).
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

use super::quant::{DeviceQuantMatrix, QuantFormat};
use cubecl::prelude::*;

/// Workgroup size for one row of RMSNorm: a power of two (the tree reduction), at most 256
/// (WebGPU's default limit on invocations per workgroup).
fn row_threads(d: usize) -> usize {
    d.next_power_of_two().clamp(32, 256)
}

/// The sum of every unit's `partial` over the workgroup (`threads` units), returned to
/// every unit: the partials in shared memory, added by one unit (`threads` additions and two
/// barriers; a tree of barriers in a loop does not lower to every target).
#[cube]
fn cube_sum(partial: f32, #[comptime] threads: usize) -> f32 {
    let unit = UNIT_POS as usize;
    let mut partials = Shared::<[f32]>::new_slice(threads);
    partials[unit] = partial;
    sync_cube();
    let mut total = Shared::<f32>::new();
    if unit == 0 {
        let mut sum = f32::new(0.0);
        let mut t = 0u32;
        while t < threads as u32 {
            sum += partials[t as usize];
            t += 1u32;
        }
        *total = sum;
    }
    sync_cube();
    *total
}

/// A product's output value `row`: the f32 `sum` rounded to `F`, then `+ bias[row]` and
/// `+ residual[row]` in `F` (the rounding of Burn's matmul followed by its additions).
#[cube]
#[allow(clippy::too_many_arguments)]
fn write_row<F: Float>(
    out: &mut [F],
    bias: &[F],
    residual: &[F],
    row: usize,
    sum: f32,
    #[comptime] has_bias: bool,
    #[comptime] has_residual: bool,
) {
    let mut y = F::cast_from(sum);
    if has_bias {
        y += bias[row];
    }
    if has_residual {
        y += residual[row];
    }
    out[row] = y;
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
    let mean = cube_sum(partial, threads) / f32::cast_from(d);
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

/// One invocation per output value of `[rows, width]`: `silu(gate) · up` with `silu(g) = g ·
/// σ(g)` in f32, rounded to `F` before the product (the rounding of Burn's `silu(gate) * up`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn swiglu_kernel<F: Float>(
    gate: &[F],
    up: &[F],
    out: &mut [F],
    width: u32,
    gate_row: u32,
    gate_col: u32,
    up_row: u32,
    up_col: u32,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= out.len() {
        terminate!();
    }
    let row = pos / width as usize;
    let col = pos % width as usize;
    let g = f32::cast_from(gate[row * gate_row as usize + col * gate_col as usize]);
    let silu = F::cast_from(g / (f32::new(1.0) + (-g).exp()));
    out[pos] = silu * up[row * up_row as usize + col * up_col as usize];
}

/// The row and column strides of `t` read as a `[rows, last]` matrix (the leading
/// dimensions must collapse into one), or `None`.
fn matrix_strides(t: &CubeTensor) -> Option<(u32, u32)> {
    if t.meta.is_tiled() {
        return None;
    }
    let shape: Vec<usize> = t.meta.shape().iter().copied().collect();
    let strides: Vec<usize> = t.meta.strides().iter().copied().collect();
    let n = shape.len();
    if n == 0 {
        return None;
    }
    let col = strides[n - 1];
    let row = if n >= 2 { strides[n - 2] } else { 0 };
    // Every leading dimension steps by the rows below it.
    for k in 0..n.saturating_sub(2) {
        if shape[k] > 1 && strides[k] != strides[k + 1] * shape[k + 1] {
            return None;
        }
    }
    Some((u32::try_from(row).ok()?, u32::try_from(col).ok()?))
}

/// `silu(gate) · up` (same shape `[.., width]`, any collapsible strides), contiguous; or
/// the inputs back.
pub fn swiglu<const D: usize>(
    gate: Tensor<D>,
    up: Tensor<D>,
) -> Result<Tensor<D>, (Tensor<D>, Tensor<D>)> {
    let dims = gate.dims();
    let numel = dims.iter().product::<usize>();
    if gate.is_autodiff()
        || up.dims() != dims
        || up.dtype() != gate.dtype()
        || !matches!(gate.dtype(), DType::F32 | DType::F16 | DType::BF16)
        || numel == 0
        || numel.div_ceil(256) > u16::MAX as usize
    {
        return Err((gate, up));
    }
    let (Some(gp), Some(up_p)) = (primitive(&gate), primitive(&up)) else {
        return Err((gate, up));
    };
    let (Some((gr, gc)), Some((ur, uc))) = (matrix_strides(&gp), matrix_strides(&up_p)) else {
        return Err((gate, up));
    };
    let client = gp.client.clone();
    let out = empty_device_contiguous_dtype(
        client.clone(),
        gp.device.clone(),
        gp.meta.shape().clone(),
        gp.dtype,
    );
    swiglu_kernel::launch(
        &client,
        CubeCount::Static(numel.div_ceil(256) as u32, 1, 1),
        CubeDim::new_1d(256),
        gp.into_buffer_arg(),
        up_p.into_buffer_arg(),
        out.clone().into_buffer_arg(),
        dims[D - 1] as u32,
        gr,
        gc,
        ur,
        uc,
        burn::backend::cubecl::dtype_to_storage_type(gate.dtype()),
    );
    Ok(Tensor::from_primitive::<Cube>(out))
}

/// Workgroup size of [`attention_step_kernel`].
const STEP_THREADS: usize = 128;

/// One workgroup per (batch, head) of a one-query attention: scores of the keys strided
/// over the workgroup into `scores` (f32, `[B·H, lk]`), the max and the sum of their
/// exponentials reduced in shared memory, then each output value `Σ_j p_j · v_j`. The
/// softmax is Burn's NaN-safe one: the max clamped to f32's lowest finite value, the sum to
/// its smallest normal, so a query that sees no key gets zeros. Products and sums in f32.
#[cube(launch)]
// `masked` is a compile-time flag: its `if` removes the mask read from the unmasked kernel,
// which one `&&` with the runtime test would not promise.
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
fn attention_step_kernel<F: Float, B: Int>(
    q: &[F],
    k: &[F],
    v: &[F],
    mask: &[B],
    scores: &mut [f32],
    out: &mut [F],
    heads: u32,
    group: u32,
    lk: u32,
    d: u32,
    q_strides: Sequence<u32>,
    k_strides: Sequence<u32>,
    v_strides: Sequence<u32>,
    mask_strides: Sequence<u32>,
    scale: f32,
    #[comptime] masked: bool,
    #[define(F, B)] _dtypes: [ElemType; 2],
) {
    let unit = UNIT_POS as usize;
    let threads = STEP_THREADS;
    let b = CUBE_POS / heads as usize;
    let h = CUBE_POS % heads as usize;
    let kv = h / group as usize;
    let lk = lk as usize;
    let d = d as usize;
    let q_base = b * *q_strides.index(0) as usize + h * *q_strides.index(1) as usize;
    let q_i = *q_strides.index(3) as usize;
    let k_base = b * *k_strides.index(0) as usize + kv * *k_strides.index(1) as usize;
    let (k_j, k_i) = (*k_strides.index(2) as usize, *k_strides.index(3) as usize);
    let v_base = b * *v_strides.index(0) as usize + kv * *v_strides.index(1) as usize;
    let (v_j, v_i) = (*v_strides.index(2) as usize, *v_strides.index(3) as usize);
    let m_base = b * *mask_strides.index(0) as usize;
    let m_j = *mask_strides.index(1) as usize;
    let s_base = CUBE_POS * lk;

    // WGSL has no infinity: a hidden key's score is f32's lowest value, which no product
    // of finite values scaled by 1/√d reaches, and its exponential is set to 0 below.
    let hidden = f32::new(f32::MIN);
    let mut local_max = hidden;
    let mut j = unit;
    while j < lk {
        let mut dot = f32::new(0.0);
        let mut i = 0usize;
        while i < d {
            dot +=
                f32::cast_from(q[q_base + i * q_i]) * f32::cast_from(k[k_base + j * k_j + i * k_i]);
            i += 1usize;
        }
        let mut score = dot * scale;
        if masked {
            if u32::cast_from(mask[m_base + j * m_j]) != 0u32 {
                score = hidden;
            }
        }
        scores[s_base + j] = score;
        if score > local_max {
            local_max = score;
        }
        j += threads;
    }
    let mut partials = Shared::<[f32]>::new_slice(threads);
    let mut max = Shared::<f32>::new();
    partials[unit] = local_max;
    sync_cube();
    if unit == 0 {
        let mut m = hidden;
        let mut t = 0u32;
        while t < threads as u32 {
            let p = partials[t as usize];
            if p > m {
                m = p;
            }
            t += 1u32;
        }
        *max = m;
    }
    sync_cube();

    let m = *max;
    let mut local_sum = f32::new(0.0);
    let mut j = unit;
    while j < lk {
        let score = scores[s_base + j];
        let mut e = f32::new(0.0);
        if score != hidden {
            e = (score - m).exp();
        }
        scores[s_base + j] = e;
        local_sum += e;
        j += threads;
    }
    let mut sum = cube_sum(local_sum, threads);
    if sum < f32::new(f32::MIN_POSITIVE) {
        sum = f32::new(f32::MIN_POSITIVE);
    }
    // The exponentials each unit wrote to `scores` are read by every unit below.
    sync_storage();
    sync_cube();

    let o_base = CUBE_POS * d;
    let mut i = unit;
    while i < d {
        let mut acc = f32::new(0.0);
        let mut j = 0usize;
        while j < lk {
            acc += scores[s_base + j] / sum * f32::cast_from(v[v_base + j * v_j + i * v_i]);
            j += 1usize;
        }
        out[o_base + i] = F::cast_from(acc);
        i += threads;
    }
}

/// Attention of one query per head (`q` `[B, H, 1, d]`) over `k`, `v` (`[B, H/g, Lk, d]`,
/// any strides: the cache's narrowed views are read in place), `key_padding` `[B, Lk]`
/// (`true` hides a key; any strides), as a contiguous `[B, H, 1, d]`; or the inputs back
/// (more than one query, a layout or dtype the kernel does not read).
#[allow(clippy::type_complexity)]
pub fn attention_step(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    key_padding: Option<Tensor<2, burn::tensor::Bool>>,
    scale: f32,
    _causal: bool,
) -> Result<
    Tensor<4>,
    (
        Tensor<4>,
        Tensor<4>,
        Tensor<4>,
        Option<Tensor<2, burn::tensor::Bool>>,
    ),
> {
    let [b, heads, lq, d] = q.dims();
    let [kb, kv_heads, lk, kd] = k.dims();
    // One query: a causal mask, bottom-right aligned, hides nothing.
    let applies = lq == 1
        && !q.is_autodiff()
        && kb == b
        && kd == d
        && v.dims() == k.dims()
        && kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && lk > 0
        && b * heads <= u16::MAX as usize
        && k.dtype() == q.dtype()
        && v.dtype() == q.dtype()
        && matches!(q.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && key_padding.as_ref().is_none_or(|m| {
            m.dims() == [b, lk]
                && matches!(
                    m.dtype(),
                    DType::Bool(burn::tensor::BoolStore::U8 | burn::tensor::BoolStore::U32)
                )
        });
    let parts = (primitive(&q), primitive(&k), primitive(&v));
    let (true, (Some(qp), Some(kp), Some(vp))) = (applies, parts) else {
        return Err((q, k, v, key_padding));
    };
    let mask = match &key_padding {
        Some(m) => m.clone().try_into_primitive::<Cube>().ok(),
        // Never read (`masked` is false): any buffer of the bool type will do.
        None => Tensor::<1, burn::tensor::Bool>::empty([1], &q.device())
            .try_into_primitive::<Cube>()
            .ok(),
    };
    let Some(mp) = mask else {
        return Err((q, k, v, key_padding));
    };
    let strides = |t: &CubeTensor| -> Option<Vec<u32>> {
        (!t.meta.is_tiled())
            .then(|| {
                t.meta
                    .strides()
                    .iter()
                    .map(|&s| u32::try_from(s).ok())
                    .collect()
            })
            .flatten()
    };
    let (Some(qs), Some(ks), Some(vs), Some(ms)) =
        (strides(&qp), strides(&kp), strides(&vp), strides(&mp))
    else {
        return Err((q, k, v, key_padding));
    };
    let ms = if key_padding.is_some() {
        ms
    } else {
        vec![0, 0]
    };
    let seq = |s: Vec<u32>| {
        let mut out = SequenceArg::new();
        for v in s {
            out.push(v);
        }
        out
    };
    let client = qp.client.clone();
    let out = empty_device_contiguous_dtype(
        client.clone(),
        qp.device.clone(),
        qp.meta.shape().clone(),
        qp.dtype,
    );
    let scores = empty_device_contiguous_dtype(
        client.clone(),
        qp.device.clone(),
        [b * heads * lk].into(),
        DType::F32,
    );
    let dtypes = [
        burn::backend::cubecl::dtype_to_storage_type(q.dtype()),
        burn::backend::cubecl::dtype_to_storage_type(mp.dtype),
    ];
    attention_step_kernel::launch(
        &client,
        CubeCount::Static((b * heads) as u32, 1, 1),
        CubeDim::new_1d(STEP_THREADS as u32),
        qp.into_buffer_arg(),
        kp.into_buffer_arg(),
        vp.into_buffer_arg(),
        mp.into_buffer_arg(),
        scores.into_buffer_arg(),
        out.clone().into_buffer_arg(),
        heads as u32,
        (heads / kv_heads) as u32,
        lk as u32,
        d as u32,
        seq(qs),
        seq(ks),
        seq(vs),
        seq(ms),
        scale,
        key_padding.is_some(),
        dtypes,
    );
    Ok(Tensor::from_primitive::<Cube>(out))
}

/// One invocation per new key/value element of `[B, kv_heads, n, d]`: the key rotated as
/// [`rope_kernel`] does, written with the value into position `start + t` of the
/// `[B, kv_heads, capacity, d]` caches.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rope_kv_write_kernel<F: Float>(
    k: &[F],
    v: &[F],
    cos: &[F],
    sin: &[F],
    keys: &mut [F],
    values: &mut [F],
    kv_heads: u32,
    n: u32,
    d: u32,
    start: u32,
    capacity: u32,
    count: u32,
    k_strides: Sequence<u32>,
    v_strides: Sequence<u32>,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= count as usize {
        terminate!();
    }
    let d = d as usize;
    let n = n as usize;
    let kv_heads = kv_heads as usize;
    let i = pos % d;
    let t = (pos / d) % n;
    let h = (pos / (d * n)) % kv_heads;
    let b = pos / (d * n * kv_heads);
    let k_row = b * *k_strides.index(0) as usize
        + h * *k_strides.index(1) as usize
        + t * *k_strides.index(2) as usize;
    let k_i = *k_strides.index(3) as usize;
    let half = d / 2;
    let table = (start as usize + t) * d + i;
    let c = k[k_row + i * k_i] * cos[table];
    let dst = ((b * kv_heads + h) * capacity as usize + start as usize + t) * d + i;
    if i < half {
        keys[dst] = c + (-k[k_row + (i + half) * k_i]) * sin[table];
    } else {
        keys[dst] = c + k[k_row + (i - half) * k_i] * sin[table];
    }
    values[dst] = v[b * *v_strides.index(0) as usize
        + h * *v_strides.index(1) as usize
        + t * *v_strides.index(2) as usize
        + i * *v_strides.index(3) as usize];
}

/// Writes RoPE(`k`) and `v` (`[B, kv_heads, n, d]`, any strides) at positions
/// `start..start + n` of `keys`/`values` (`[B, kv_heads, capacity, d]`) in place and returns
/// the caches; or everything back where the kernel does not apply (a cache shared with
/// another tensor is never written in place).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub fn rope_kv_write(
    keys: Tensor<4>,
    values: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    cos: &Tensor<2>,
    sin: &Tensor<2>,
    start: usize,
) -> Result<(Tensor<4>, Tensor<4>), (Tensor<4>, Tensor<4>, Tensor<4>, Tensor<4>)> {
    let [b, kv_heads, n, d] = k.dims();
    let [cb, ch, capacity, cd] = keys.dims();
    let count = b * kv_heads * n * d;
    let dtype = k.dtype();
    let applies = !k.is_autodiff()
        && !keys.is_autodiff()
        && v.dims() == k.dims()
        && values.dims() == keys.dims()
        && [cb, ch, cd] == [b, kv_heads, d]
        && start + n <= capacity
        && start + n <= cos.dims()[0]
        && d.is_multiple_of(2)
        && count > 0
        && count.div_ceil(256) <= u16::MAX as usize
        && [
            v.dtype(),
            keys.dtype(),
            values.dtype(),
            cos.dtype(),
            sin.dtype(),
        ]
        .iter()
        .all(|t| *t == dtype)
        && matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
    let parts = (
        primitive(&keys),
        primitive(&values),
        primitive(&k),
        primitive(&v),
        primitive(cos),
        primitive(sin),
    );
    let (true, (Some(kc), Some(vc), Some(kp), Some(vp), Some(cp), Some(sp))) = (applies, parts)
    else {
        return Err((keys, values, k, v));
    };
    let writable = |t: &CubeTensor| plain(t) && t.can_mut();
    let strides = |t: &CubeTensor| -> Option<SequenceArg<u32>> {
        if t.meta.is_tiled() {
            return None;
        }
        let mut out = SequenceArg::new();
        for &s in t.meta.strides().iter() {
            out.push(u32::try_from(s).ok()?);
        }
        Some(out)
    };
    let (Some(ks), Some(vs)) = (strides(&kp), strides(&vp)) else {
        return Err((keys, values, k, v));
    };
    if !plain(&cp) || !plain(&sp) {
        return Err((keys, values, k, v));
    }
    // Only the primitives hold the caches now: `can_mut` says whether anything else does.
    drop((keys, values));
    if !writable(&kc) || !writable(&vc) {
        return Err((
            Tensor::from_primitive::<Cube>(kc),
            Tensor::from_primitive::<Cube>(vc),
            k,
            v,
        ));
    }
    let client = kc.client.clone();
    rope_kv_write_kernel::launch(
        &client,
        CubeCount::Static(count.div_ceil(256) as u32, 1, 1),
        CubeDim::new_1d(256),
        kp.into_buffer_arg(),
        vp.into_buffer_arg(),
        cp.into_buffer_arg(),
        sp.into_buffer_arg(),
        kc.clone().into_buffer_arg(),
        vc.clone().into_buffer_arg(),
        kv_heads as u32,
        n as u32,
        d as u32,
        start as u32,
        capacity as u32,
        count as u32,
        ks,
        vs,
        burn::backend::cubecl::dtype_to_storage_type(dtype),
    );
    Ok((
        Tensor::from_primitive::<Cube>(kc),
        Tensor::from_primitive::<Cube>(vc),
    ))
}

/// Workgroup size of [`gemv_kernel`].
const GEMV_THREADS: usize = 128;

/// One workgroup per output value: `Σ_i x_i · W[row, i]` strided over the workgroup in
/// f32, the partials summed in shared memory, rounded to `F`, then `+ bias[row]` and
/// `+ residual[row]` in `F` (the rounding of Burn's matmul followed by its additions).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn gemv_kernel<F: Float>(
    x: &[F],
    w: &[F],
    bias: &[F],
    residual: &[F],
    out: &mut [F],
    rows: u32,
    d_in: u32,
    x_col: u32,
    w_row: u32,
    w_col: u32,
    #[comptime] has_bias: bool,
    #[comptime] has_residual: bool,
    #[define(F)] _dtype: ElemType,
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let unit = UNIT_POS as usize;
    let threads = GEMV_THREADS;
    let base = row * w_row as usize;
    let mut partial = f32::new(0.0);
    let mut i = unit;
    while i < d_in as usize {
        partial +=
            f32::cast_from(x[i * x_col as usize]) * f32::cast_from(w[base + i * w_col as usize]);
        i += threads;
    }
    let sum = cube_sum(partial, threads);
    if unit == 0 {
        write_row::<F>(out, bias, residual, row, sum, has_bias, has_residual);
    }
}

/// `x · Wᵀ (+ bias) (+ residual)` for one row `x` (`[1, in]`, any strides), `weight`
/// `[out, in]` (any strides: the transposed view is read in place), `bias` and `residual`
/// `[out]`/`[1, out]`, as `[1, out]`; or the inputs back.
pub fn gemv(
    x: Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    residual: Option<&Tensor<2>>,
) -> Result<Tensor<2>, Tensor<2>> {
    let [rows_x, d_in] = x.dims();
    let [d_out, w_in] = weight.dims();
    let dtype = x.dtype();
    let applies = rows_x == 1
        && w_in == d_in
        && d_in > 0
        && d_out > 0
        && !x.is_autodiff()
        && !weight.is_autodiff()
        && weight.dtype() == dtype
        && bias.is_none_or(|b| b.dims() == [d_out] && b.dtype() == dtype)
        && residual.is_none_or(|r| r.dims() == [1, d_out] && r.dtype() == dtype)
        && matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
    let (true, Some(xp), Some(wp)) = (applies, primitive(&x), primitive(weight)) else {
        return Err(x);
    };
    let Some((bp, rp)) = epilogue(&x.device(), dtype, d_out, bias, residual) else {
        return Err(x);
    };
    if xp.meta.is_tiled() || wp.meta.is_tiled() {
        return Err(x);
    }
    let (xs, ws) = (xp.meta.strides(), wp.meta.strides());
    let (Ok(x_col), Ok(w_row), Ok(w_col)) = (
        u32::try_from(xs[1]),
        u32::try_from(ws[0]),
        u32::try_from(ws[1]),
    ) else {
        return Err(x);
    };
    let client = xp.client.clone();
    let out =
        empty_device_contiguous_dtype(client.clone(), xp.device.clone(), [1, d_out].into(), dtype);
    gemv_kernel::launch(
        &client,
        grid(d_out),
        CubeDim::new_1d(GEMV_THREADS as u32),
        xp.into_buffer_arg(),
        wp.into_buffer_arg(),
        bp.into_buffer_arg(),
        rp.into_buffer_arg(),
        out.clone().into_buffer_arg(),
        d_out as u32,
        d_in as u32,
        x_col,
        w_row,
        w_col,
        bias.is_some(),
        residual.is_some(),
        burn::backend::cubecl::dtype_to_storage_type(dtype),
    );
    Ok(Tensor::from_primitive::<Cube>(out))
}

/// The comptime code of a block format in the packed kernels.
fn format_code(format: QuantFormat) -> u32 {
    match format {
        QuantFormat::Q8_0 => 0,
        QuantFormat::Q4_0 => 1,
        QuantFormat::Q4_1 => 2,
    }
}

/// Block `b`'s f16 value from a row's table of two-to-a-word halves starting at word
/// `base`, as f32 (exact: normal and subnormal halves; scales are never infinite).
#[cube]
fn half_at<I: Int>(words: &[I], base: usize, b: usize) -> f32 {
    let w = u32::cast_from(words[base + b / 2]);
    let h = (w >> ((b % 2) * 16) as u32) & 65535u32;
    let sign = h >> 15u32;
    let exp = (h >> 10u32) & 31u32;
    let mant = h & 1023u32;
    // Normal: the f32 with the same sign-less mantissa and the exponent rebased (15 → 127).
    let mut v = f32::reinterpret(((exp + 112u32) << 23u32) | (mant << 13u32));
    if exp == 0u32 {
        // Subnormal: mant · 2⁻²⁴.
        v = f32::cast_from(mant) * f32::new(5.9604645e-8);
    }
    if sign == 1u32 {
        v = -v;
    }
    v
}

/// One workgroup per output value of a one-row product with packed weights: blocks strided
/// over the workgroup, each block's dot product with `x` from its words (the integer
/// values times `x`, then the scale; `Q4_0`'s offset of 8 and `Q4_1`'s minimum through the
/// block's sum of `x`), in f32; the partials summed in shared memory; rounded to `F`, then
/// `+ bias` and `+ residual` in `F`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn qgemv_kernel<F: Float, I: Int>(
    x: &[F],
    words: &[I],
    scales: &[I],
    mins: &[I],
    bias: &[F],
    residual: &[F],
    out: &mut [F],
    rows: u32,
    cols: u32,
    x_col: u32,
    #[comptime] format: u32,
    #[comptime] has_bias: bool,
    #[comptime] has_residual: bool,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let unit = UNIT_POS as usize;
    let threads = GEMV_THREADS;
    let blocks = cols as usize / 32;
    // `div_ceil` has no `#[cube]` expansion.
    #[allow(clippy::manual_div_ceil)]
    let halves = (blocks + 1) / 2;
    let x_col = x_col as usize;
    let mut partial = f32::new(0.0);
    let mut b = unit;
    while b < blocks {
        let block = row * blocks + b;
        let d = half_at::<I>(scales, row * halves, b);
        let x_base = b * 32;
        let mut acc = f32::new(0.0);
        if format == 0 {
            let mut k = 0usize;
            while k < 8 {
                let w = u32::cast_from(words[block * 8 + k]);
                let mut byte = 0u32;
                while byte < 4 {
                    let q = (w >> (byte * 8)) & 255u32;
                    let mut v = f32::cast_from(q);
                    if q >= 128u32 {
                        v -= f32::new(256.0);
                    }
                    acc += v * f32::cast_from(x[(x_base + k * 4 + byte as usize) * x_col]);
                    byte += 1u32;
                }
                k += 1usize;
            }
            partial += acc * d;
        } else {
            let mut sum_x = f32::new(0.0);
            let mut k = 0usize;
            while k < 4 {
                let w = u32::cast_from(words[block * 4 + k]);
                let mut byte = 0u32;
                while byte < 4 {
                    let q = (w >> (byte * 8)) & 255u32;
                    let j = x_base + k * 4 + byte as usize;
                    let lo = f32::cast_from(x[j * x_col]);
                    let hi = f32::cast_from(x[(j + 16) * x_col]);
                    acc += f32::cast_from(q & 15u32) * lo + f32::cast_from(q >> 4u32) * hi;
                    sum_x += lo + hi;
                    byte += 1u32;
                }
                k += 1usize;
            }
            if format == 1 {
                partial += (acc - f32::new(8.0) * sum_x) * d;
            } else {
                partial += acc * d + sum_x * half_at::<I>(mins, row * halves, b);
            }
        }
        b += threads;
    }
    let sum = cube_sum(partial, threads);
    if unit == 0 {
        write_row::<F>(out, bias, residual, row, sum, has_bias, has_residual);
    }
}

/// One invocation per value of a packed `[rows, cols]` matrix: the value as the host's
/// dequantisation computes it (`q · d`, `(q − 8) · d`, `q · d + m` in f32), cast to `F`.
#[cube(launch)]
fn dequantize_kernel<F: Float, I: Int>(
    words: &[I],
    scales: &[I],
    mins: &[I],
    out: &mut [F],
    count: u32,
    cols: u32,
    #[comptime] format: u32,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let pos = ABSOLUTE_POS;
    if pos >= count as usize {
        terminate!();
    }
    let block = pos / 32;
    let j = pos % 32;
    let blocks = cols as usize / 32;
    let row = block / blocks;
    let b = block % blocks;
    // `div_ceil` has no `#[cube]` expansion.
    #[allow(clippy::manual_div_ceil)]
    let halves = (blocks + 1) / 2;
    let d = half_at::<I>(scales, row * halves, b);
    if format == 0 {
        let w = u32::cast_from(words[block * 8 + j / 4]);
        let q = (w >> (((j % 4) * 8) as u32)) & 255u32;
        let mut v = f32::cast_from(q);
        if q >= 128u32 {
            v -= f32::new(256.0);
        }
        out[pos] = F::cast_from(v * d);
    } else {
        let jj = j % 16;
        let w = u32::cast_from(words[block * 4 + jj / 4]);
        let byte = (w >> (((jj % 4) * 8) as u32)) & 255u32;
        let mut q = byte & 15u32;
        if j >= 16 {
            q = byte >> 4u32;
        }
        if format == 1 {
            out[pos] = F::cast_from((f32::cast_from(q) - f32::new(8.0)) * d);
        } else {
            out[pos] = F::cast_from(f32::cast_from(q) * d + half_at::<I>(mins, row * halves, b));
        }
    }
}

/// The primitives of a packed matrix's buffers (`mins` stands in with `scales` where the
/// format has none: never read).
fn quant_buffers(w: &DeviceQuantMatrix) -> Option<(CubeTensor, CubeTensor, CubeTensor)> {
    let words = w.words.clone().try_into_primitive::<Cube>().ok()?;
    let scales = w.scales.clone().try_into_primitive::<Cube>().ok()?;
    let mins = w
        .mins
        .as_ref()
        .unwrap_or(&w.scales)
        .clone()
        .try_into_primitive::<Cube>()
        .ok()?;
    [&words, &scales, &mins]
        .iter()
        .all(|t| plain(t))
        .then_some((words, scales, mins))
}

/// `x · Wᵀ (+ bias) (+ residual)` for one row `x` (`[1, in]`) with a packed `w`, as
/// `[1, out]`; or `x` back.
pub fn qgemv(
    x: Tensor<2>,
    w: &DeviceQuantMatrix,
    bias: Option<&Tensor<1>>,
    residual: Option<&Tensor<2>>,
) -> Result<Tensor<2>, Tensor<2>> {
    let [rows_x, d_in] = x.dims();
    let (d_out, dtype) = (w.rows(), x.dtype());
    let applies = rows_x == 1
        && d_in == w.cols()
        && d_in.is_multiple_of(32)
        && !x.is_autodiff()
        && bias.is_none_or(|b| b.dims() == [d_out] && b.dtype() == dtype)
        && residual.is_none_or(|r| r.dims() == [1, d_out] && r.dtype() == dtype)
        && matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
    let (true, Some(xp), Some((wp, sp, mp))) = (applies, primitive(&x), quant_buffers(w)) else {
        return Err(x);
    };
    let Some((bp, rp)) = epilogue(&x.device(), dtype, d_out, bias, residual) else {
        return Err(x);
    };
    let Ok(x_col) = u32::try_from(xp.meta.strides()[1]) else {
        return Err(x);
    };
    if xp.meta.is_tiled() {
        return Err(x);
    }
    let client = xp.client.clone();
    let out =
        empty_device_contiguous_dtype(client.clone(), xp.device.clone(), [1, d_out].into(), dtype);
    let dtypes = [
        burn::backend::cubecl::dtype_to_storage_type(dtype),
        burn::backend::cubecl::dtype_to_storage_type(wp.dtype),
    ];
    qgemv_kernel::launch(
        &client,
        grid(d_out),
        CubeDim::new_1d(GEMV_THREADS as u32),
        xp.into_buffer_arg(),
        wp.into_buffer_arg(),
        sp.into_buffer_arg(),
        mp.into_buffer_arg(),
        bp.into_buffer_arg(),
        rp.into_buffer_arg(),
        out.clone().into_buffer_arg(),
        d_out as u32,
        d_in as u32,
        x_col,
        format_code(w.format()),
        bias.is_some(),
        residual.is_some(),
        dtypes,
    );
    Ok(Tensor::from_primitive::<Cube>(out))
}

/// `w` unpacked into a `[rows, cols]` tensor in `dtype` on its device, or `None` where the
/// kernel does not apply.
pub fn dequantize(w: &DeviceQuantMatrix, dtype: DType) -> Option<Tensor<2>> {
    let count = w.rows() * w.cols();
    let cubes = count.div_ceil(256);
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
        || count == 0
        || count > u32::MAX as usize
    {
        return None;
    }
    let (wp, sp, mp) = quant_buffers(w)?;
    let client = sp.client.clone();
    let out = empty_device_contiguous_dtype(
        client.clone(),
        sp.device.clone(),
        [w.rows(), w.cols()].into(),
        dtype,
    );
    let dtypes = [
        burn::backend::cubecl::dtype_to_storage_type(dtype),
        burn::backend::cubecl::dtype_to_storage_type(wp.dtype),
    ];
    dequantize_kernel::launch(
        &client,
        grid(cubes),
        CubeDim::new_1d(256),
        wp.into_buffer_arg(),
        sp.into_buffer_arg(),
        mp.into_buffer_arg(),
        out.clone().into_buffer_arg(),
        count as u32,
        w.cols() as u32,
        format_code(w.format()),
        dtypes,
    );
    Some(Tensor::from_primitive::<Cube>(out))
}

/// At least `cubes` workgroups, laid out within the per-dimension limit of 65,535 (the
/// kernels read their linear position and skip the surplus).
fn grid(cubes: usize) -> CubeCount {
    let x = cubes.clamp(1, u16::MAX as usize);
    CubeCount::Static(x as u32, cubes.div_ceil(x) as u32, 1)
}

/// The bias and residual buffers of a one-row product with `d_out` outputs (a one-value
/// stand-in for each one absent: never read), or `None` where one cannot be read flat.
fn epilogue(
    device: &burn::tensor::Device,
    dtype: DType,
    d_out: usize,
    bias: Option<&Tensor<1>>,
    residual: Option<&Tensor<2>>,
) -> Option<(CubeTensor, CubeTensor)> {
    let buffer = |t: Option<Tensor<1>>| {
        t.unwrap_or_else(|| Tensor::<1>::empty([1], (device, dtype)))
            .try_into_primitive::<Cube>()
            .ok()
            .filter(plain)
    };
    Some((
        buffer(bias.cloned())?,
        buffer(residual.map(|r| r.clone().reshape([d_out])))?,
    ))
}

/// The CubeCL tensor behind `t`, or `None` on another backend.
fn primitive<const D: usize>(t: &Tensor<D>) -> Option<CubeTensor> {
    t.clone().try_into_primitive::<Cube>().ok()
}

/// Row-major and untiled: read as a flat slice from its binding's start (a view's offset
/// is part of the binding; the buffer may be longer than the tensor).
fn plain(t: &CubeTensor) -> bool {
    !t.meta.is_tiled() && t.is_contiguous()
}
