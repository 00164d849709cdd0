//! The scalar math the CPU kernels are built on, written so that the compiler vectorises
//! it: a branch-free `exp` (Cephes' polynomial, ≤ 2 ulp), `erf`, `sigmoid`, sums and folds
//! over [`LANES`] partial results, and [`dispatch!`], which runs a loop body with the widest
//! SIMD instruction set the CPU has.
//!
//! Why not libm's: Burn 0.22's CPU backend evaluates `exp` with the scalar libm `expf`, one
//! element at a time (see [`super`]); these forms compute the same functions over whole
//! vector registers.

/// Calls `$body` with the widest SIMD instruction set the CPU has (checked once per call;
/// the check is a cached load).
macro_rules! dispatch {
    ($body:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512(f: impl FnOnce()) { f() }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(f: impl FnOnce()) { f() }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                unsafe { avx512(#[inline(always)] || $body($($arg),*)) }
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA.
                unsafe { avx2(#[inline(always)] || $body($($arg),*)) }
            } else {
                $body($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body($($arg),*)
        }
    }};
}
pub(super) use dispatch;

/// Lanes the bodies below are written for: one AVX-512 register, two AVX2 ones.
pub(super) const LANES: usize = 16;

/// `f` folded over `values` in [`LANES`] partial results (vectorises), then over those.
#[inline(always)]
pub(super) fn lane_fold(values: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = f(*l, v);
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(init, |a, &v| f(a, v))
}

/// `Σ f(v)` with [`LANES`] partial sums, so that it vectorises (a single running sum
/// would pin the order of the additions).
#[inline(always)]
pub(super) fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f(v);
        }
    }
    chunks.remainder().iter().map(|&v| f(v)).sum::<f32>() + lanes.iter().sum::<f32>()
}

/// `Σ a·b` with [`LANES`] partial sums (vectorises).
#[inline(always)]
pub(super) fn lane_sum_product(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (mut ac, mut bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (a, b) in (&mut ac).zip(&mut bc) {
        for ((l, a), b) in lanes.iter_mut().zip(a).zip(b) {
            *l += a * b;
        }
    }
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    tail + lanes.iter().sum::<f32>()
}

/// `1 / (1 + e^−x)`.
#[inline(always)]
pub(super) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `erf(x)` to < 5e-7 absolute (PyTorch's vectorised CPU erf is of the same order): the odd/even rational approximation on [−4, 4] of Eigen's
/// `generic_fast_erf_float` (outside it erf is ±1 in f32), branch-free so that it
/// vectorises.
#[inline(always)]
pub(super) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_6e-3;
    p = p * x2 + -1.609_603_3e-2;
    let mut q = -1.456_607_2e-5f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_474e-2;
    x * p / q
}

/// `e^x` to ≤ 2 ulp over f32's normal range, 0 below it, `f32::MAX`-ish above: Cephes'
/// `expf` written without branches or table lookups so that it vectorises.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let k = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scaled = e * f32::from_bits(((k + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        scaled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_2_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert!(exp(200.0) > 1e38);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn erf_is_within_5e7_of_libm() {
        let mut worst = 0.0f64;
        let mut x = -7.0f32;
        while x < 7.0 {
            worst = worst.max((erf(x) as f64 - libm::erf(x as f64)).abs());
            x += 0.000_77;
        }
        // The rational form is within 9e-8 in exact arithmetic; f32 evaluation adds ~6 ulp.
        assert!(worst < 5e-7, "worst absolute error {worst}");
        assert_eq!(erf(0.0), 0.0);
        assert!(erf(f32::NAN).is_nan());
    }
}
