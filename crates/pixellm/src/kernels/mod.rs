//! The backend router: one function per op the model's layers need, taking and returning
//! Burn tensors and choosing inside how the op runs on the tensors' backend.
//!
//! [`crate::model`] is backend-free; everything that depends on which backend holds a
//! tensor lives here:
//! - `cpu` (feature `cpu`, native only): vectorised, multi-threaded kernels for the ops
//!   where Burn's CPU backend falls short, and an optional CBLAS loaded at run time
//!   ([`crate::backend::load_cpu_blas`]);
//! - `cuda` (feature `cuda`): f32 products in full f32 (Burn's own run in TF32;
//!   [`set_allow_tf32`]);
//! - Burn's own ops everywhere else, with f32 convolutions for half models on GPU backends
//!   ([`burn_conv2d`]).
//!
//! A CPU kernel hands its inputs back when it does not apply (another backend or dtype, an
//! autodiff tensor, a shape it does not take) and the router then runs Burn's op, so every
//! other backend and dtype keeps one code path. Autodiff tensors (training) never enter the
//! CPU kernels (see `on_cpu`).
//!
//! Also here, because the router itself needs them: [`to_f32`]/[`from_f32`] and
//! [`upload`] (host values to a device in a dtype, and [`upload_ids`] / [`upload_mask`]),
//! which the model uses through `model::nn` and `model::params`, and [`counts`] (the
//! device work a pass does: launches, compilations, uploads, reads).

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{activation, module, Bool, DType, Device, Int, Tensor, TensorData};

pub mod counts;
#[cfg(all(feature = "cpu", not(target_family = "wasm")))]
pub(crate) mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
#[cfg(feature = "cuda")]
mod cuda;
pub mod quant;

/// `cpu_kernel_or!(x = kernel(args))`: on the native CPU backend, returns
/// `cpu::kernel(args)` from the enclosing function when the kernel takes the
/// input, else rebinds `x` to the input it handed back, for the Burn ops that follow.
macro_rules! cpu_kernel_or {
    ($inputs:pat = $kernel:ident($($arg:expr),*)) => {
        #[cfg(all(feature = "cpu", not(target_family = "wasm")))]
        let $inputs = match cpu::$kernel($($arg),*) {
            Ok(out) => return out,
            Err(inputs) => inputs,
        };
    };
}

/// `cube_kernel_or!(x = kernel(args))`: where a CubeCL backend is compiled in (wgpu,
/// CUDA), returns `cube::kernel(args)` from the enclosing function when the kernel takes
/// the input, else rebinds `x` to the input it handed back.
macro_rules! cube_kernel_or {
    ($inputs:pat = $kernel:ident($($arg:expr),*)) => {
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        let $inputs = match cube::$kernel($($arg),*) {
            Ok(out) => return out,
            Err(inputs) => inputs,
        };
    };
}

/// Whether `x` is on the CPU backend and not an autodiff tensor. Training takes Burn's own,
/// differentiable ops: the CPU kernels would cut an autodiff tensor's graph, and its
/// primitive is not a Flex tensor (`Device`'s equality ignores autodiff, so the device test
/// alone passes it). The one backend test of the router; the CPU kernels add "and f32".
fn on_cpu<const D: usize>(x: &Tensor<D>) -> bool {
    #[cfg(feature = "cpu")]
    let cpu = !x.is_autodiff() && x.device() == Device::flex();
    #[cfg(not(feature = "cpu"))]
    let cpu = {
        let _ = x;
        false
    };
    cpu
}

/// `x` laid out row-major: a copy when `x` is a strided view (a transpose, a broadcast),
/// free otherwise. Burn has no explicit op for it; reshaping to one dimension and back
/// forces it.
pub fn contiguous<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    x.reshape([dims.iter().product::<usize>()]).reshape(dims)
}

static ALLOW_TF32: AtomicBool = AtomicBool::new(false);

/// Lets f32 matrix products (and attention) on CUDA devices run in Burn's TF32 path:
/// faster, ~1e-3 relative off the official code, like PyTorch's `allow_tf32`. Off by
/// default: f32 on CUDA is full f32 (cubek's unit routine). A process-wide setting, read
/// at each product; set it before running a model. Without the `cuda` feature it changes
/// nothing (only CUDA runs f32 products in TF32). The CLI sets it from the environment
/// variable `PIXELLM_ALLOW_TF32` (`1` or `true`).
pub fn set_allow_tf32(allow: bool) {
    ALLOW_TF32.store(allow, Ordering::Relaxed);
}

/// Whether [`set_allow_tf32`] allowed TF32 products on CUDA.
pub fn tf32_allowed() -> bool {
    ALLOW_TF32.load(Ordering::Relaxed)
}

/// `y = x·Wᵀ + b` on the last dimension of `x`, with `W` (`weight`) stored `[out, in]`
/// (PyTorch `nn.Linear`) and `b` (`bias`) `[out]`.
///
/// f32 on the native CPU backend goes to the CPU kernel (its own GEMV for one row, the
/// bias fused into the GEMM otherwise). Elsewhere the product is folded to one 2-D
/// `[rows, in] @ [in, out]` matmul over a transposed view: Burn's batched `linear` with a
/// strided weight materialises it per call on the CPU backend (6× slower at decode shapes,
/// measured), the 2-D path reads it in place.
pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Tensor<D> {
    let mut dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let d_out = weight.dims()[0];
    dims[D - 1] = d_out;
    let x = x.reshape([rows, d_in]);
    #[cfg(all(feature = "cpu", not(target_family = "wasm")))]
    let x = match cpu::linear(x, weight, bias) {
        Ok(y) => return y.reshape(dims),
        Err(x) => x,
    };
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    let x = match cube::gemv(x, weight, bias, None) {
        Ok(y) => return y.reshape(dims),
        Err(x) => x,
    };
    let mut y = match gemv_chunks(weight, rows) {
        Some(chunks) => matmul(
            x.reshape([1, 1, d_in]),
            weight
                .clone()
                .reshape([chunks, d_out / chunks, d_in])
                .swap_dims(1, 2),
        ),
        None => matmul(x, weight.clone().transpose()).unsqueeze(),
    }
    .reshape([rows, d_out]);
    if let Some(b) = bias {
        y = y + b.clone().unsqueeze();
    }
    y.reshape(dims)
}

/// `residual + linear(x, weight, bias)` (a residual connection after a projection): for
/// one row on a CubeCL backend one fused launch ([`linear`]'s GEMV adding the residual),
/// elsewhere [`linear`] then the sum.
pub fn linear_residual<const D: usize>(
    x: Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    residual: Tensor<D>,
) -> Tensor<D> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    let x = {
        let (dims, rdims) = (x.dims(), residual.dims());
        let d_out = weight.dims()[0];
        let one_row = dims[..D - 1].iter().product::<usize>() == 1;
        if one_row && rdims[D - 1] == d_out && rdims.iter().product::<usize>() == d_out {
            let x2 = x.reshape([1, dims[D - 1]]);
            let r2 = residual.clone().reshape([1, d_out]);
            match cube::gemv(x2, weight, bias, Some(&r2)) {
                Ok(y) => return y.reshape(rdims),
                Err(x2) => x2.reshape(dims),
            }
        } else {
            x
        }
    };
    residual + linear(x, weight, bias)
}

/// [`linear`] with a packed weight ([`quant::QuantMatrix`]): on the CPU backend the
/// matrix is multiplied in its blocks (integer dot products with 8-bit activations,
/// `kernels/cpu/qgemm.rs`), with f16/bf16 activations computed in f32 and cast back.
/// Elsewhere (no packed kernel yet) the matrix is dequantised for the call: correct, but
/// as slow as it sounds, which is why [`packed_on`] keeps loaders from packing there.
pub fn qlinear<const D: usize>(
    x: Tensor<D>,
    weight: &quant::QuantMatrix,
    bias: Option<&Tensor<1>>,
) -> Tensor<D> {
    let mut dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    dims[D - 1] = weight.rows();
    let dtype = x.dtype();
    let x = x.reshape([rows, d_in]);
    #[cfg(all(feature = "cpu", not(target_family = "wasm")))]
    let x = {
        let (x32, b32) = (to_f32(x), bias.map(|b| to_f32(b.clone())));
        match cpu::qlinear(x32, weight, b32.as_ref()) {
            Ok(y) => return from_f32(y, dtype).reshape(dims),
            Err(x) => from_f32(x, dtype),
        }
    };
    let dense = upload(
        weight.dequantize(),
        [weight.rows(), weight.cols()],
        &x.device(),
        dtype,
    );
    linear(x, &dense, bias).reshape(dims)
}

/// Whether dense projections of one input on `device` are better stacked into one matrix
/// (`model::nn::FusedLinear`): yes on the GPU backends (one launch instead of two or
/// three), no on the CPU backend, where the split outputs are strided views that Burn's
/// CPU ops copy (measured on the mid shape, f32, 2 cores, stacked vs separate: decode
/// 6.24 / 6.06 vs 6.51 / 6.67 tok/s, prefill 2.98 / 3.03 vs 2.52 / 2.66 s). Packed
/// matrices (the CPU's) are always stacked: one pass of the packed product instead of
/// three pays there (SmolLM2 Q4_1 decode 0.76× → 0.85× llama.cpp).
pub fn stacks_dense_products(device: &Device) -> bool {
    !crate::backend::is_cpu(device)
}

/// Refuses a quantisation that asks for packed weights (`q8`, `q4`) on a device without
/// packed kernels ([`packed_on`]), rather than load a model that is no smaller there.
pub fn check_quant(quant: quant::Quant, device: &Device) -> crate::error::Result<()> {
    match quant {
        quant::Quant::Q8 | quant::Quant::Q4 if !packed_on(device) => Err(crate::Error::Backend(format!(
            "--quant {} keeps the weights packed, which this build runs only on the native CPU backend and the GPU backends (wgpu, CUDA); use one of those or --quant none",
            quant.name()
        ))),
        _ => Ok(()),
    }
}

/// Whether weights on `device` may be held packed: where [`qlinear`] multiplies them in
/// their blocks on the host (the native CPU backend: [`quant::QuantMatrix`]) or
/// [`device_qlinear`] on the device (the CubeCL backends: [`quant::DeviceQuantMatrix`]).
pub fn packed_on(device: &Device) -> bool {
    host_packed_on(device) || device_packed_on(device)
}

/// Whether packed matrices on `device` stay on the host ([`quant::QuantMatrix`], the CPU
/// kernels), which also lets a packed embedding unpack the rows it looks up there.
pub fn host_packed_on(device: &Device) -> bool {
    #[cfg(all(feature = "cpu", not(target_family = "wasm")))]
    let yes = *device == Device::flex();
    #[cfg(not(all(feature = "cpu", not(target_family = "wasm"))))]
    let yes = {
        let _ = device;
        false
    };
    yes
}

/// Whether packed matrices on `device` live in its buffers ([`quant::DeviceQuantMatrix`]):
/// every device of a CubeCL backend (wgpu, WebGPU, CUDA), the only non-CPU backends.
pub fn device_packed_on(device: &Device) -> bool {
    cfg!(any(feature = "wgpu", feature = "cuda")) && !crate::backend::is_cpu(device)
}

/// `x · Wᵀ (+ bias) (+ residual)` on the last dimension of `x` with a packed weight held on
/// a GPU device: one row (decode) multiplies in the blocks in one launch (`kernels/cube.rs`);
/// more rows unpack the matrix on the device for one [`linear`] (a transient dense copy of
/// this one matrix).
pub fn device_qlinear<const D: usize>(
    x: Tensor<D>,
    weight: &quant::DeviceQuantMatrix,
    bias: Option<&Tensor<1>>,
    residual: Option<Tensor<D>>,
) -> Tensor<D> {
    let mut dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    dims[D - 1] = weight.rows();
    let x = x.reshape([rows, d_in]);
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    let x = if rows == 1 {
        let r = residual
            .as_ref()
            .map(|r| r.clone().reshape([1, weight.rows()]));
        match cube::qgemv(x, weight, bias, r.as_ref()) {
            Ok(y) => return y.reshape(dims),
            Err(x) => x,
        }
    } else {
        x
    };
    let dense = dequantize_device(weight, x.dtype());
    let y = linear(x, &dense, bias).reshape(dims);
    match residual {
        Some(r) => r + y,
        None => y,
    }
}

/// IEEE half-precision bit patterns (`[n, 1]` integers) as f32 values, from Burn's float
/// ops: `±mant · 2⁻²⁴` for subnormals, `±(1024 + mant) · 2^(exp − 25)` otherwise.
fn half_bits_to_f32(bits: Tensor<2, Int>) -> Tensor<2> {
    let sign = bits.clone().bitwise_right_shift_scalar(15).float();
    let exp = bits
        .clone()
        .bitwise_right_shift_scalar(10)
        .bitwise_and_scalar(31);
    let mant = bits.bitwise_and_scalar(1023).float();
    let subnormal = exp.clone().equal_elem(0);
    let exp = exp.float();
    // 2^(exp − 25) as a power of an exact 2 (integer exponents: exact where `exp(x·ln 2)`
    // is not).
    let two = Tensor::<2>::full(exp.dims(), 2.0, (&exp.device(), exp.dtype()));
    let normal = (mant.clone() + 1024.0) * two.powf(exp - 25.0);
    let sub = mant * 5.960_464_5e-8;
    let magnitude = normal.mask_where(subnormal, sub);
    magnitude * (sign * -2.0 + 1.0)
}

/// A packed matrix on its device unpacked into a `[rows, cols]` tensor in `dtype`: the
/// CubeCL kernel, else [`burn_dequantize`].
pub fn dequantize_device(weight: &quant::DeviceQuantMatrix, dtype: DType) -> Tensor<2> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let Some(t) = cube::dequantize(weight, dtype) {
        return t;
    }
    burn_dequantize(weight, dtype)
}

/// [`dequantize_device`] from Burn's integer ops (shifts and masks of the words; the
/// reference the kernel is tested against).
pub fn burn_dequantize(weight: &quant::DeviceQuantMatrix, dtype: DType) -> Tensor<2> {
    let blocks = weight.rows() * weight.cols() / quant::BLOCK;
    let per_block = quant::DeviceQuantMatrix::words_per_block(weight.format());
    let device = weight.scales.device();
    let shifts = upload_ids(vec![0, 8, 16, 24], &device)
        .cast(weight.words.dtype())
        .reshape([1, 1, 4]);
    let bytes = weight
        .words
        .clone()
        .reshape([blocks, per_block, 1])
        .bitwise_right_shift(shifts)
        .bitwise_and_scalar(255);
    let per_row = weight.cols() / quant::BLOCK;
    let halves = |table: &Tensor<1, Int>| {
        let rows = weight.rows();
        let words = quant::DeviceQuantMatrix::half_words_per_row(per_row);
        let shifts = upload_ids(vec![0, 16], &device)
            .cast(table.dtype())
            .reshape([1, 1, 2]);
        let bits = table
            .clone()
            .reshape([rows, words, 1])
            .bitwise_right_shift(shifts)
            .bitwise_and_scalar(0xFFFF)
            .reshape([rows, 2 * words])
            .narrow(1, 0, per_row)
            .reshape([blocks, 1]);
        half_bits_to_f32(bits)
    };
    let scales = halves(&weight.scales);
    let values = match weight.format() {
        quant::QuantFormat::Q8_0 => {
            let q = bytes.reshape([blocks, quant::BLOCK]);
            let negative = q.clone().greater_equal_elem(128).float() * 256.0;
            (q.float() - negative) * scales
        }
        format => {
            let bytes = bytes.reshape([blocks, 16]);
            let q = Tensor::cat(
                vec![
                    bytes.clone().bitwise_and_scalar(15),
                    bytes.bitwise_right_shift_scalar(4),
                ],
                1,
            )
            .float();
            match (format, &weight.mins) {
                (quant::QuantFormat::Q4_1, Some(mins)) => q * scales + halves(mins),
                _ => (q - 8.0) * scales,
            }
        }
    };
    from_f32(to_f32(values), dtype).reshape([weight.rows(), weight.cols()])
}

/// For a one-row product on the CPU backend that the CPU `linear` kernel does not take (f16
/// / bf16), the number of row blocks to split the weight into so that the blocks' GEMVs
/// run on every core.
///
/// Burn's CPU matmul sends a one-row product to `gemm`'s GEMV, which runs on one thread
/// whatever the matrix size: at decode that reads the weights at one core's memory
/// bandwidth (mid shape: 2.2 tokens/s on 2 cores, PyTorch 5.0). Viewed as a batch of
/// `[out/chunks, in]` blocks (a free reshape of the `[out, in]` weight), the product is
/// spread over the thread pool one block per task. `None`: one plain matmul.
#[cfg(all(feature = "cpu", not(target_family = "wasm")))]
fn gemv_chunks(weight: &Tensor<2>, rows: usize) -> Option<usize> {
    // Below ~1M weights the product is faster than a trip through the thread pool.
    const MIN_WEIGHTS: usize = 1 << 20;
    let [d_out, d_in] = weight.dims();
    if rows != 1 || d_out * d_in < MIN_WEIGHTS || !on_cpu(weight) {
        return None;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 {
        return None;
    }
    // Burn parallelises a batched matmul over its batch from 4 blocks on. Prefer a block
    // count that is a multiple of the thread count (balanced), else any divisor of `out`
    // (LLaMA's 32009-row head splits into 7).
    let min_chunks = threads.max(4);
    let balanced =
        (min_chunks..=4 * min_chunks).find(|c| c % threads == 0 && d_out.is_multiple_of(*c));
    balanced.or_else(|| (min_chunks..=4 * min_chunks).find(|c| d_out.is_multiple_of(*c)))
}

#[cfg(not(all(feature = "cpu", not(target_family = "wasm"))))]
fn gemv_chunks(_weight: &Tensor<2>, _rows: usize) -> Option<usize> {
    None
}

/// `lhs @ rhs` with batch dimensions broadcast: Burn's matmul, except f32 on CUDA, which
/// goes through cubek's unit routine (feature `cuda`) so that it stays f32 (Burn's would run
/// in TF32; [`set_allow_tf32`]).
pub fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "cuda")]
    let (lhs, rhs) = match cuda::matmul(lhs, rhs) {
        Ok(y) => return y,
        Err(operands) => operands,
    };
    lhs.matmul(rhs)
}

/// Scaled-dot-product attention on `[B, H, L, d]` queries and `[B, H/g, L, d]` keys and
/// values (grouped-query attention when `g > 1`), through Burn's
/// `attention` op, or on the CPU backend through `gemm` and a vectorised softmax
/// (the CPU kernels: Burn's CPU attention computes its softmax with a scalar `exp`), or for
/// one query on a CubeCL backend through one fused kernel (`kernels/cube.rs`).
///
/// `key_padding`: `[B, Lk]`, `true` = the key is hidden from every query. `causal`: key `j`
/// is hidden from query `i` when `j > i + Lk − Lq` (bottom-right aligned, so a decode step
/// sees every cached key). A query that sees no key gets zeros.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    key_padding: Option<Tensor<2, burn::tensor::Bool>>,
    causal: bool,
) -> Tensor<4> {
    let d = q.dims()[3];
    let scale = 1.0 / (d as f64).sqrt();
    cpu_kernel_or!((q, k, v, key_padding) = attention(q, k, v, key_padding, scale as f32, causal));
    // One query (a decode step) on a CubeCL backend: one fused launch.
    cube_kernel_or!(
        (q, k, v, key_padding) = attention_step(q, k, v, key_padding, scale as f32, causal)
    );
    burn_attention(q, k, v, key_padding, causal)
}

/// [`attention`] from Burn's ops (the reference the fused kernels are tested against; on
/// CUDA in f32, two full-f32 products around a softmax).
pub fn burn_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    key_padding: Option<Tensor<2, burn::tensor::Bool>>,
    causal: bool,
) -> Tensor<4> {
    let [b, h, lq, d] = q.dims();
    let lk = k.dims()[2];
    let scale = 1.0 / (d as f64).sqrt();
    // Burn's attention (without autotune: separate kernels) multiplies f32 in TF32 on CUDA.
    #[cfg(feature = "cuda")]
    if cuda::applies(&q) {
        return attention_unfused(
            q,
            repeat_kv(k, h),
            repeat_kv(v, h),
            key_padding,
            scale,
            causal,
        );
    }
    let mask = key_padding.map(|m| m.reshape([b, 1, 1, lk]).expand([b, h, lq, lk]));
    module::attention(
        q,
        repeat_kv(k, h),
        repeat_kv(v, h),
        mask,
        None,
        burn::tensor::ops::AttentionModuleOptions {
            scale: Some(scale),
            softcap: None,
            is_causal: causal,
        },
    )
}

/// [`attention`] as two [`matmul`]s around a softmax, with the same masking rules (keys
/// and values already repeated to the query heads).
#[cfg(feature = "cuda")]
fn attention_unfused(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    key_padding: Option<Tensor<2, burn::tensor::Bool>>,
    scale: f64,
    causal: bool,
) -> Tensor<4> {
    let [b, h, lq, _] = q.dims();
    let lk = k.dims()[2];
    let device = q.device();
    let mut scores = matmul(q, k.swap_dims(2, 3)) * scale;
    if let Some(m) = key_padding {
        let m = m.reshape([b, 1, 1, lk]).expand([b, h, lq, lk]);
        scores = scores.mask_fill(m, f32::NEG_INFINITY);
    }
    // Bottom-right aligned: a one-query step (decode) sees every key.
    if causal && lq > 1 {
        let hidden: Vec<bool> = (0..lq)
            .flat_map(|i| (0..lk).map(move |j| j > i + lk - lq))
            .collect();
        let m = upload_mask(hidden, [lq, lk], &device);
        scores = scores.mask_fill(
            m.reshape([1, 1, lq, lk]).expand([b, h, lq, lk]),
            f32::NEG_INFINITY,
        );
    }
    let p = activation::softmax(scores, 3);
    // A query that sees no key: softmax of all -inf is NaN; it gets zeros.
    let p = p.clone().mask_fill(p.is_nan(), 0.0);
    matmul(p, v)
}

/// `[B, kv_heads, L, d]` -> `[B, heads, L, d]`: each key/value head repeated for its group
/// of query heads.
fn repeat_kv(x: Tensor<4>, heads: usize) -> Tensor<4> {
    let [b, kv, l, d] = x.dims();
    if kv == heads {
        return x;
    }
    let rep = heads / kv;
    x.reshape([b, kv, 1, l, d])
        .expand([b, kv, rep, l, d])
        .reshape([b, heads, l, d])
}

/// 2-D convolution without bias, one group, square `stride` and `padding`
/// (`weight` `[O, C, kh, kw]`): `[N, C, H, W]` -> `[N, O, Ho, Wo]`. On the native CPU
/// backend as one matrix product per image (the CPU `conv2d` kernel), [`burn_conv2d`]
/// elsewhere.
pub fn conv2d(x: Tensor<4>, weight: &Tensor<4>, stride: usize, padding: usize) -> Tensor<4> {
    cpu_kernel_or!(x = conv2d(x, weight, stride, padding));
    burn_conv2d(
        x,
        weight,
        ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1),
    )
}

/// Burn's `conv2d` without bias, in f32 for a half model on a GPU backend: Burn's GPU
/// convolutions accumulate in the half type (measured cost: `conv_operands`).
pub fn burn_conv2d(x: Tensor<4>, weight: &Tensor<4>, options: ConvOptions<2>) -> Tensor<4> {
    let (x, weight, back) = conv_operands(x, weight);
    conv_result(module::conv2d(x, weight, None, options), back)
}

/// Burn's `conv_transpose2d` with bias, in f32 for a half model on a GPU backend, as
/// [`burn_conv2d`].
pub fn conv_transpose2d(
    x: Tensor<4>,
    weight: &Tensor<4>,
    bias: &Tensor<1>,
    options: ConvTransposeOptions<2>,
) -> Tensor<4> {
    let (x, weight, back) = conv_operands(x, weight);
    let bias = match back {
        Some(_) => to_f32(bias.clone()),
        None => bias.clone(),
    };
    conv_result(
        module::conv_transpose2d(x, weight, Some(bias), options),
        back,
    )
}

/// The operands of a convolution, as f32 copies when `x` is f16/bf16 on a GPU backend, and
/// the dtype to cast the result back to in that case ([`conv_result`]).
///
/// Burn 0.22's GPU convolutions (direct kernels, no autotune) accumulate in the operands'
/// type, so a 3×3×256 sum runs in bf16. Kit masks vs the f32 goldens (IoU), half → f32
/// convolutions: CUDA bf16 (H200) 0.9856 → 0.9949–0.9971, CUDA f16 0.9980 → 0.9995,
/// lavapipe f16 0.9979 → 0.9992 (the CPU, whose convolutions accumulate in f32: 0.9994).
/// The official code convolves through cuDNN, which accumulates in f32. The casts cost
/// little: the convolutions' weights are ~1.6 M values, their inputs one image's maps.
fn conv_operands(x: Tensor<4>, weight: &Tensor<4>) -> (Tensor<4>, Tensor<4>, Option<DType>) {
    let dtype = x.dtype();
    if dtype == DType::F32 || on_cpu(&x) {
        return (x, weight.clone(), None);
    }
    (to_f32(x), to_f32(weight.clone()), Some(dtype))
}

/// A convolution's result back in the model's dtype when [`conv_operands`] made f32 copies.
fn conv_result(y: Tensor<4>, back: Option<DType>) -> Tensor<4> {
    match back {
        Some(dtype) => y.cast(dtype),
        None => y,
    }
}

/// `Ry · X · Rxᵀ` on the two last dimensions of `x`, with row matrix `ry` (`[ho, h]`) and
/// column matrix `rx` (`[wo, w]`), both host-side (a separable resize,
/// `model::interpolate`). On the native CPU backend in f32 the CPU kernel reads the
/// matrices once, in place; elsewhere they are uploaded to `device` in `dtype` and Burn's
/// batched matmul broadcasts them over the planes.
///
/// # Shapes
/// `[B, C, h, w]` -> `[B, C, ho, wo]`
pub fn resize(
    x: Tensor<4>,
    ry: Vec<f32>,
    rx: Vec<f32>,
    out: (usize, usize),
    device: &Device,
    dtype: DType,
) -> Tensor<4> {
    #[cfg(all(feature = "cpu", not(target_family = "wasm")))]
    let x = match dtype {
        DType::F32 => match cpu::resize(x, &ry, &rx, out) {
            Ok(y) => return y,
            Err(x) => x,
        },
        _ => x,
    };
    let [_, _, h, w] = x.dims();
    let ry = upload(ry, [1, 1, out.0, h], device, dtype);
    let rxt = upload(rx, [1, 1, out.1, w], device, dtype).swap_dims(2, 3);
    matmul(ry, matmul(x, rxt))
}

/// `nn.LayerNorm` over the last dimension (biased variance), scaled by `weight` and shifted
/// by `bias` (`[d]` each): statistics in f32, as PyTorch does for half-precision inputs.
/// On the native CPU backend in one pass per row (the CPU kernel) instead of Burn's six
/// element-wise ops.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    weight: &Tensor<1>,
    bias: &Tensor<1>,
    eps: f64,
) -> Tensor<D> {
    cpu_kernel_or!(x = layer_norm(x, weight, bias, eps));
    let dtype = x.dtype();
    let x = to_f32(x);
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    let y = from_f32((x - mean) / (var + eps).sqrt(), dtype);
    y * weight.clone().unsqueeze() + bias.clone().unsqueeze()
}

/// LLaMA's RMSNorm over the last dimension: `x · rsqrt(mean(x²) + ε)` in f32, cast back,
/// then scaled by `weight` (`[d]`) — the order of transformers' `LlamaRMSNorm`.
///
/// On the native CPU backend in one pass per row (the CPU kernel), on CubeCL backends in one
/// launch (`kernels/cube.rs`), elsewhere (training) [`burn_rms_norm`].
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: &Tensor<1>, eps: f64) -> Tensor<D> {
    cpu_kernel_or!(x = rms_norm(x, weight, eps));
    cube_kernel_or!(x = rms_norm(x, weight, eps));
    burn_rms_norm(x, weight, eps)
}

/// [`rms_norm`] from Burn's ops (the reference the fused kernels are tested against).
pub fn burn_rms_norm<const D: usize>(x: Tensor<D>, weight: &Tensor<1>, eps: f64) -> Tensor<D> {
    let dtype = x.dtype();
    let x = to_f32(x);
    let ms = x.clone().square().mean_dim(D - 1);
    from_f32(x * (ms + eps).sqrt().recip(), dtype) * weight.clone().unsqueeze()
}

/// Writes RoPE(`k`) and `v` (`[B, kv_heads, n, d]`, the new keys before rotation and the
/// values) at positions `start..start + n` of the caches `keys`/`values`
/// (`[B, kv_heads, capacity, d]`) and returns the caches: on CubeCL backends in place in
/// one launch, elsewhere [`rope`] then two slice assignments (in place where Burn can).
pub fn rope_kv_write(
    keys: Tensor<4>,
    values: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    cos: &Tensor<2>,
    sin: &Tensor<2>,
    start: usize,
) -> (Tensor<4>, Tensor<4>) {
    cube_kernel_or!((keys, values, k, v) = rope_kv_write(keys, values, k, v, cos, sin, start));
    let k = rope(k, cos, sin, start);
    let [b, h, n, d] = k.dims();
    let ranges = [0..b, 0..h, start..start + n, 0..d];
    (
        keys.slice_assign(ranges.clone(), k),
        values.slice_assign(ranges, v),
    )
}

/// Rotary position embedding of `x` (`[B, heads, n, d]`) at positions `start..start + n`
/// with the `cos`/`sin` tables (`[positions, d]`): `x · cos + rotate_half(x) · sin`.
///
/// On the native CPU backend and CubeCL backends one fused kernel each (the CubeCL one
/// reads `x` through its strides and returns it contiguous), elsewhere [`burn_rope`].
pub fn rope(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>, start: usize) -> Tensor<4> {
    cpu_kernel_or!(x = rope(x, cos, sin, start));
    cube_kernel_or!(x = rope(x, cos, sin, start));
    burn_rope(x, cos, sin, start)
}

/// [`rope`] from Burn's ops (the reference the fused kernels are tested against).
pub fn burn_rope(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>, start: usize) -> Tensor<4> {
    let [_, _, n, d] = x.dims();
    let cos = cos.clone().narrow(0, start, n).reshape([1, 1, n, d]);
    let sin = sin.clone().narrow(0, start, n).reshape([1, 1, n, d]);
    // rotate_half: `[x1, x2] -> [−x2, x1]` on the two halves of the last dimension.
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.clone().narrow(3, d / 2, d / 2);
    x * cos + Tensor::cat(vec![x2.neg(), x1], 3) * sin
}

/// SAM's `LayerNorm2d` on `[N, C, H, W]`: each pixel normalised over its `C` channels
/// (biased variance, in f32), then `weight`/`bias` (`[C]`) per channel.
pub fn layer_norm_2d(x: Tensor<4>, weight: &Tensor<1>, bias: &Tensor<1>, eps: f64) -> Tensor<4> {
    cpu_kernel_or!(x = layer_norm_2d(x, weight, bias, eps));
    let dtype = x.dtype();
    let x = to_f32(x);
    let mean = x.clone().mean_dim(1);
    let centered = x - mean;
    let var = centered.clone().square().mean_dim(1);
    let y = from_f32(centered / (var + eps).sqrt(), dtype);
    let c = weight.dims()[0];
    y * weight.clone().reshape([1, c, 1, 1]) + bias.clone().reshape([1, c, 1, 1])
}

/// CLIP's `quick_gelu`: `x · σ(1.702 x)`.
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    cpu_kernel_or!(x = quick_gelu(x));
    x.clone() * activation::sigmoid(x * 1.702)
}

/// Exact (erf) GELU, PyTorch's `nn.GELU()`.
///
/// In training (autodiff tensors) as `x·(1 + erf(x/√2))/2` from Burn's `erf`, whose
/// derivative is exact: the derivative of Burn 0.22.1's own `gelu` on wgpu is off by
/// 6e-4 relative (measured on lavapipe against an f64 reference; the CPU's by 4e-8), which
/// made a training step's gradients differ between the backends by 1e-3.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.is_autodiff() {
        return (x.clone() * x.div_scalar(std::f64::consts::SQRT_2).erf().add_scalar(1.0))
            .mul_scalar(0.5);
    }
    cpu_kernel_or!(x = gelu(x));
    activation::gelu(x)
}

/// `silu`: `x · σ(x)`.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    cpu_kernel_or!(x = silu(x));
    activation::silu(x)
}

/// LLaMA's MLP activation `silu(gate) · up` (same shapes): on CubeCL backends one fused
/// launch reading both operands in place (the halves of the stacked gate/up product),
/// elsewhere [`silu`] then the product.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    cube_kernel_or!((gate, up) = swiglu(gate, up));
    silu(gate) * up
}

/// `x` in f32 (no-op when it already is).
pub fn to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dtype() == DType::F32 {
        x
    } else {
        x.cast(DType::F32)
    }
}

/// `x` (f32) back in `dtype` (no-op for f32).
pub fn from_f32<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if dtype == DType::F32 {
        x
    } else {
        x.cast(dtype)
    }
}

/// Creates a float tensor of `shape` from host values on `device`, in `dtype`.
pub fn upload<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &Device,
    dtype: DType,
) -> Tensor<D> {
    counts::note_upload();
    let data = TensorData::new(values, shape);
    let t = Tensor::<D>::from_data(data, (device, DType::F32));
    if dtype == DType::F32 {
        t
    } else {
        t.cast(dtype)
    }
}

/// Creates an integer tensor `[n]` (token ids, row indices) from host values on `device`.
pub fn upload_ids(ids: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    counts::note_upload();
    let n = ids.len();
    Tensor::from_data(TensorData::new(ids, [n]), device)
}

/// Creates a boolean tensor of `shape` (a mask) from host values on `device`.
pub fn upload_mask<const D: usize>(
    values: Vec<bool>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D, Bool> {
    counts::note_upload();
    Tensor::from_data(TensorData::new(values, shape), device)
}
