//! Training on every backend: one step's loss and gradients agree between the CPU and wgpu,
//! the differentiable ops training relies on match f64 references, and the reductions
//! training uses stay right where Burn's wgpu reduction is not.

mod common;

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use pixellm::config::{ClipVisionConfig, PixelLmConfig};
use pixellm::data::synth::{scene, Split};
use pixellm::tokenizer::Tokenizer;
use pixellm::train::store::{ParamStore, TrainMode};
use pixellm::train::{loss_and_grads, scene_example};

fn micro() -> (PixelLmConfig, ClipVisionConfig, Tokenizer) {
    let dir: PathBuf = common::kit().parent().unwrap().join("train-micro");
    (
        PixelLmConfig::from_file(&dir.join("config.json")).unwrap(),
        ClipVisionConfig::from_file(&dir.join("vision_tower/config.json")).unwrap(),
        Tokenizer::from_dir(&dir).unwrap(),
    )
}

/// ‖a − b‖ / ‖b‖.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

type Grads = Vec<Option<Vec<f32>>>;

fn step_grads(store: &ParamStore, examples: &[pixellm::train::Example]) -> (f64, Grads) {
    let (config, clip, tok) = micro();
    let (stats, grads) = loss_and_grads(store, &config, &clip, &tok, examples, 2.0).unwrap();
    assert!(
        stats.loss.is_finite() && stats.ce > 0.0 && stats.bce > 0.0,
        "{stats:?}"
    );
    let grads = grads
        .into_iter()
        .map(|g| g.map(|g| common::host(g).0))
        .collect();
    (stats.loss, grads)
}

/// The loss agrees to 1e-4; the gradient as a whole (all tensors, L2) to 1e-4; and each
/// tensor to 1e-4 or, where f32 cannot do better, to three times what a one-ulp change of
/// the weights moves it on the CPU (tensors whose exact gradient is 0 — attention key biases,
/// which softmax ignores — are held to 1e-6 of the whole gradient's norm instead). Measured: a 1.2e-7 relative change of every weight moves
/// the out_mm_projector / neck gradients of this randomly initialised model by 6e-4 (layer
/// norms over nearly constant features), so no two f32 implementations agree closer there.
#[test]
fn one_step_has_the_same_loss_and_gradients_on_every_backend() {
    let _turn = common::turn();
    let (config, clip, _) = micro();
    let examples: Vec<_> = (0..2)
        .map(|i| scene_example(&scene(3, Split::Train, i)))
        .collect();
    let backends = common::backends();
    let (_, cpu) = &backends[0];
    let store = ParamStore::init(&config, &clip, TrainMode::All, 7, cpu).unwrap();
    let (loss, reference) = step_grads(&store, &examples);
    // How far f32 alone moves each gradient: two one-ulp nudges of every weight.
    let nudge = |f: f64| {
        let mut nudged = store.clone();
        for p in nudged.params.iter_mut() {
            p.value = p.value.clone().mul_scalar(f);
        }
        step_grads(&nudged, &examples).1
    };
    let (up, down) = (nudge(1.0 + 1.2e-7), nudge(1.0 - 1.2e-7));
    let reached = reference.iter().flatten().count();
    let norm = |g: &[f32]| g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let total: f64 = reference
        .iter()
        .flatten()
        .map(|g| norm(g).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(reached > 100, "gradients reach {reached} tensors");
    for (backend, device) in &backends[1..] {
        let store = ParamStore::init(&config, &clip, TrainMode::All, 7, device).unwrap();
        let (l, grads) = step_grads(&store, &examples);
        assert!(
            (l - loss).abs() <= 1e-4 * loss.abs(),
            "{backend}: loss {l} vs cpu {loss}"
        );
        let (mut num, mut den) = (0f64, 0f64);
        let mut worst = (0f64, String::new());
        for (i, (g, w)) in grads.iter().zip(&reference).enumerate() {
            let name = &store.params[i].name;
            match (g, w, &up[i], &down[i]) {
                (Some(g), Some(w), Some(j1), Some(j2)) => {
                    num += g
                        .iter()
                        .zip(w)
                        .map(|(a, b)| ((a - b) as f64).powi(2))
                        .sum::<f64>();
                    den += w.iter().map(|b| (*b as f64).powi(2)).sum::<f64>();
                    if norm(w) < 1e-6 * total {
                        let diff: Vec<f32> = g.iter().zip(w).map(|(a, b)| a - b).collect();
                        assert!(
                            norm(&diff) <= 1e-6 * total,
                            "{backend}: {name}: a zero gradient differs by {:e}",
                            norm(&diff)
                        );
                        continue;
                    }
                    let bound = 1e-4f64.max(3.0 * rel_l2(j1, w).max(rel_l2(j2, w)));
                    let err = rel_l2(g, w);
                    assert!(
                        err <= bound,
                        "{backend}: {name}: gradient differs by {err:e} (bound {bound:e})"
                    );
                    if err > worst.0 {
                        worst = (err, name.clone());
                    }
                }
                (None, None, _, _) => {}
                _ => panic!("{backend}: {name}: gradient present on one backend only"),
            }
        }
        let global = (num / den).sqrt();
        // The same f32 floor for all gradients together: what the two one-ulp nudges move
        // on the reference backend itself. 1e-4 wherever f32 allows it; a problem whose
        // own rounding moves its gradients further (large N(0, 1) embeddings make the
        // position table's gradient a long cancelling sum) is held to 3× that floor,
        // exactly as each tensor is above.
        let floor = |j: &[Option<Vec<f32>>]| {
            let (mut n, mut d) = (0f64, 0f64);
            for (a, b) in j.iter().zip(&reference) {
                if let (Some(a), Some(b)) = (a, b) {
                    n += a
                        .iter()
                        .zip(b)
                        .map(|(x, y)| ((x - y) as f64).powi(2))
                        .sum::<f64>();
                    d += b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>();
                }
            }
            (n / d).sqrt()
        };
        let global_bound = 1e-4f64.max(3.0 * floor(&up).max(floor(&down)));
        eprintln!(
            "{backend}: loss {l} (cpu {loss}); gradient rel. L2 {global:e} overall (bound {global_bound:e}), worst tensor {} {:e}",
            worst.1, worst.0
        );
        assert!(
            global <= global_bound,
            "{backend}: gradients differ by {global:e} overall (bound {global_bound:e})"
        );
    }
}

/// The derivatives of the activations the model trains through, against f64 references,
/// on every backend (Burn 0.22.1's own wgpu `gelu` derivative was off by 6e-4: `nn::gelu`
/// composes it from `erf` under autodiff).
#[test]
fn activation_derivatives_match_f64_on_every_backend() {
    let x: Vec<f32> = (0..2000).map(|i| (i as f32 - 1000.0) * 0.006).collect();
    let phi = |v: f64| (-v * v / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let gelu_d: Vec<f32> = x
        .iter()
        .map(|&v| {
            let v = v as f64;
            (0.5 * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)) + v * phi(v)) as f32
        })
        .collect();
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let silu_d: Vec<f32> = x
        .iter()
        .map(|&v| {
            let (v, s) = (v as f64, sig(v as f64));
            (s + v * s * (1.0 - s)) as f32
        })
        .collect();
    for (backend, device) in common::backends() {
        let ad = device.clone().autodiff();
        let grad = |f: &dyn Fn(Tensor<1>) -> Tensor<1>| {
            let leaf =
                Tensor::<1>::from_data(TensorData::new(x.clone(), [x.len()]), &ad).require_grad();
            let g = f(leaf.clone()).sum().backward();
            common::host(leaf.grad(&g).unwrap()).0
        };
        let e = rel_l2(&grad(&pixellm::model::nn::gelu), &gelu_d);
        assert!(e < 1e-5, "{backend}: gelu derivative off by {e:e}");
        let e = rel_l2(&grad(&pixellm::model::nn::silu), &silu_d);
        assert!(e < 1e-5, "{backend}: silu derivative off by {e:e}");
    }
}

/// The reductions training uses stay right where Burn 0.22.1's wgpu sum of one long axis is
/// wrong (an original-resolution mask: 329×583 values).
#[test]
fn long_reductions_agree_on_every_backend() {
    use pixellm::train::loss::{chunked_sum, per_mask_sum};
    let (h, w) = (329, 583);
    let x: Vec<f32> = (0..2 * h * w)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3)
        .collect();
    let want: Vec<f64> = x
        .chunks(h * w)
        .map(|c| c.iter().map(|&v| v as f64).sum())
        .collect();
    for (backend, device) in common::backends() {
        let t = Tensor::<3>::from_data(TensorData::new(x.clone(), [2, h, w]), device);
        let got = common::host(per_mask_sum(t.clone())).0;
        let all = common::host(chunked_sum(t.reshape([2 * h * w]))).0[0];
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() < 1e-2,
                "{backend}: per-mask sum {g} vs {w}"
            );
        }
        let total: f64 = want.iter().sum();
        assert!(
            (all as f64 - total).abs() < 1e-2,
            "{backend}: sum {all} vs {total}"
        );
    }
}
