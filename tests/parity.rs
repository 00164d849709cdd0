//! Parity with the official PixelLM: every golden tensor of every conformance-kit case,
//! stage by stage, on every backend this machine has (see `common::backends`).
//!
//! Goldens come from the official PyTorch code in f32 (tests/fixtures/conformance). Each
//! stage is fed the golden input of that stage where one exists, so a failure points at
//! the stage that broke rather than at everything after it.

mod common;

use std::sync::OnceLock;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use common::*;
use pixellm::backend::Backend;
use pixellm::image::{load_image, ClipInput};
use pixellm::model::llm::KvCache;
use pixellm::model::ImageFeatures;
use pixellm::pipeline::read_f32;
use pixellm::{PixelLm, SegmentRequest};

const TOL: f64 = 1e-4;

/// The kit model, loaded once per backend.
fn models() -> &'static [(Backend, PixelLm)] {
    static MODELS: OnceLock<Vec<(Backend, PixelLm)>> = OnceLock::new();
    MODELS.get_or_init(|| {
        backends()
            .iter()
            .map(|(b, device)| {
                let m = PixelLm::load(
                    &kit().join("checkpoint"),
                    None,
                    device,
                    DType::F32,
                    pixellm::Quant::Stored,
                    &mut |_| {},
                )
                .unwrap_or_else(|e| panic!("{b}: loading the kit model: {e}"));
                (*b, m)
            })
            .collect()
    })
}

fn cases() -> &'static [Case] {
    static CASES_: OnceLock<Vec<Case>> = OnceLock::new();
    CASES_.get_or_init(|| present_cases().into_iter().map(Case::load).collect())
}

/// Runs `f` for every (backend, model, case), one test at a time: the backends run their
/// own thread pools / GPU queues, and eight tests fighting over two cores is ten times
/// slower than taking turns.
fn each(mut f: impl FnMut(&str, &PixelLm, &Case)) {
    let _turn = turn();
    assert!(!models().is_empty(), "no backend available");
    for (b, m) in models() {
        for c in cases() {
            f(&format!("[{b}] {}", c.name), m, c);
        }
    }
}

/// The kit's CLIP input, built by our preprocessing from image.png.
fn clip_input(m: &PixelLm, c: &Case) -> ClipInput {
    let img = load_image(&c.dir.join("image.png")).unwrap();
    m.preprocess(&img).unwrap()
}

/// Image features computed from the golden pixel values (isolates the model from the
/// image front end).
fn features(m: &PixelLm, c: &Case, input: &ClipInput) -> ImageFeatures {
    let pixels = m.model().pixels(c.g("clip.pixel_values").values.clone());
    m.model().encode_image(pixels, &input.patch_valid)
}

#[test]
fn preprocessing_matches_exactly() {
    each(|tag, m, c| {
        let input = clip_input(m, c);
        let golden = c.g("clip.pixel_values");
        assert_close(
            &format!("{tag} pixel_values"),
            &input.pixel_values,
            &[1, 3, 448, 448],
            golden,
            0.0,
        );
        let key: Vec<f32> = input
            .clip_key_mask()
            .iter()
            .map(|&v| v as u8 as f32)
            .collect();
        assert_eq!(
            key,
            c.g("clip.attention_mask").values,
            "{tag} clip attention mask"
        );
        assert_eq!(
            input.resized,
            (
                c.json["image"]["clip_resized_height"].as_u64().unwrap() as usize,
                c.json["image"]["clip_resized_width"].as_u64().unwrap() as usize
            ),
            "{tag} resized size"
        );
    });
}

#[test]
fn common_goldens() {
    let common = goldens(&kit().join("common_golden.safetensors"));
    for (b, m) in models() {
        let model = m.model();
        check(
            &format!("[{b}] position_embedding_resized"),
            model.vision().position_embedding(),
            &common["clip.position_embedding_resized"],
            TOL,
        );
        check(
            &format!("[{b}] dense_pe"),
            model.dense_pe(),
            &common["decoder.dense_pe"],
            TOL,
        );
        check(
            &format!("[{b}] dense_embeddings"),
            model.dense_embeddings(),
            &common["decoder.dense_embeddings"],
            TOL,
        );
    }
    let seg = &common["fusion.multiseg_scalar"].values;
    assert!(
        seg.iter()
            .all(|&v| v == pixellm::model::codebook::MULTISEG_SCALAR),
        "multiseg_scalar {seg:?}"
    );
    assert_eq!(common["fusion.multiscale_scalar"].values, vec![0.5, 0.5]);
}

#[test]
fn vision_tower_projectors_and_neck() {
    each(|tag, m, c| {
        let input = clip_input(m, c);
        let f = features(m, c, &input);
        check(
            &format!("{tag} clip embeddings"),
            f.vision.embeddings.clone(),
            c.g("clip.hidden_states.embeddings"),
            TOL,
        );
        check(
            &format!("{tag} clip select_m2"),
            f.vision.deep.clone(),
            c.g("clip.hidden_states.select_m2"),
            TOL,
        );
        check(
            &format!("{tag} clip pre_m11"),
            f.vision.shallow.clone(),
            c.g("clip.hidden_states.pre_m11"),
            TOL,
        );
        check(
            &format!("{tag} llm_in_16x16"),
            f.llm_in.clone(),
            c.g("proj.llm_in_16x16"),
            TOL,
        );
        check(
            &format!("{tag} llm_image_tokens"),
            f.llm_tokens.clone(),
            c.g("proj.llm_image_tokens"),
            TOL,
        );
        let [s, p, h] = f.mask_features.dims();
        check(
            &format!("{tag} mask_features"),
            f.mask_features.clone().reshape([s, 1, p, h]),
            c.g("proj.mask_features"),
            TOL,
        );
        check(
            &format!("{tag} neck_out"),
            f.decoder_features.clone(),
            c.g("tf.neck_out"),
            TOL,
        );
    });
}

/// Golden inputs embeds, our LLM: hidden states and logits of the prompt pass.
#[test]
fn language_model_prompt_pass() {
    each(|tag, m, c| {
        let input = clip_input(m, c);
        let f = features(m, c, &input);
        let ids = c.ids("/input_ids");
        let (embeds, _) = m.model().splice_image(&ids, &f.llm_tokens).unwrap();
        check(
            &format!("{tag} prompt inputs_embeds"),
            embeds,
            c.g("llm.prompt.inputs_embeds"),
            TOL,
        );
        let hidden = m.forced_hidden_states(&ids, &f, &input).unwrap();
        check(
            &format!("{tag} prompt last_hidden_state"),
            hidden.clone(),
            c.g("llm.prompt.last_hidden_state"),
            TOL,
        );
        let logits = m.model().llm().logits(hidden);
        check(
            &format!("{tag} prompt logits"),
            logits.clone(),
            c.g("llm.prompt.logits"),
            TOL,
        );
        let [_, e, v] = logits.dims();
        check(
            &format!("{tag} prompt logits_last"),
            logits.narrow(1, e - 1, 1).reshape([1, v]),
            c.g("llm.prompt.logits_last"),
            TOL,
        );
        // Attention mask: ones for text, the 16×16 validity grid for the image tokens.
        let p = c.json["image_token_position"].as_u64().unwrap() as usize;
        let mut mask = vec![1f32; ids.len() - 1 + 256];
        for (i, v) in input.llm_valid.iter().enumerate() {
            mask[p + i] = *v as u8 as f32;
        }
        assert_eq!(
            mask,
            c.g("llm.prompt.attention_mask").values,
            "{tag} LLM attention mask"
        );
    });
}

/// Greedy decoding through the KV cache reproduces the official no-cache generation:
/// identical ids and per-step logits.
#[test]
fn greedy_generation_with_kv_cache() {
    each(|tag, m, c| {
        let input = clip_input(m, c);
        let f = features(m, c, &input);
        let ids = c.ids("/input_ids");
        let expected = c.ids("/generation/new_token_ids");
        let llm = m.model().llm();
        let device: &Device = m.model().device();
        let e = ids.len() - 1 + 256;
        let p = c.json["image_token_position"].as_u64().unwrap() as usize;
        let mut padding = vec![false; p];
        padding.extend(input.llm_valid.iter().map(|v| !v));
        let mut cache = KvCache::new(
            llm.config(),
            e + expected.len(),
            &padding,
            device,
            DType::F32,
        )
        .unwrap();
        let (embeds, _) = m.model().splice_image(&ids, &f.llm_tokens).unwrap();
        let h = llm.config().hidden_size;
        let mut last = llm
            .forward(embeds, &mut cache)
            .unwrap()
            .narrow(1, e - 1, 1)
            .reshape([1, h]);
        let (mut got, mut step_logits) = (Vec::new(), Vec::new());
        for _ in 0..expected.len() {
            let logits = read_f32(llm.logits(last.clone())).unwrap();
            let id = logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 {
                        (i, v)
                    } else {
                        best
                    }
                })
                .0 as i64;
            step_logits.extend(logits);
            got.push(id);
            last = llm
                .forward(llm.embed(&[id], device), &mut cache)
                .unwrap()
                .reshape([1, h]);
        }
        assert_eq!(got, expected, "{tag} greedy ids");
        let v = llm.config().vocab_size;
        assert_close(
            &format!("{tag} gen.step_logits"),
            &step_logits,
            &[expected.len(), v],
            c.g("gen.step_logits"),
            TOL,
        );
    });
}

/// The segmentation path, teacher-forced on the case's answer, stage by stage.
#[test]
fn teacher_forced_masks() {
    each(|tag, m, c| {
        let input = clip_input(m, c);
        let f = features(m, c, &input);
        let ids = c.ids("/teacher_forced/input_ids");
        let (embeds, _) = m.model().splice_image(&ids, &f.llm_tokens).unwrap();
        check(
            &format!("{tag} tf.inputs_embeds"),
            embeds,
            c.g("tf.inputs_embeds"),
            TOL,
        );
        let hidden = m.forced_hidden_states(&ids, &f, &input).unwrap();
        let positions = c.ids("/teacher_forced/seg_hidden_positions_expanded");
        let [_, e, h] = hidden.dims();
        let index = Tensor::<1, Int>::from_data(
            TensorData::new(positions.clone(), [positions.len()]),
            m.model().device(),
        );
        let seg_hidden = hidden.reshape([e, h]).select(0, index);
        check(
            &format!("{tag} tf.last_hidden_at_seg"),
            seg_hidden.clone(),
            c.g("tf.last_hidden_at_seg"),
            TOL,
        );

        let out = m.model().decode_masks(seg_hidden, &f.decoder_features);
        check(
            &format!("{tag} tf.text_hidden_fcs_at_seg"),
            out.projected.clone(),
            c.g("tf.text_hidden_fcs_at_seg"),
            TOL,
        );
        check(
            &format!("{tag} tf.pred_embeddings"),
            out.prompt_embeddings.clone(),
            c.g("tf.pred_embeddings"),
            TOL,
        );
        check(
            &format!("{tag} tf.sparse_embeddings"),
            out.prompt_embeddings.clone(),
            c.g("tf.sparse_embeddings"),
            TOL,
        );
        for (l, level) in [(0, &out.level0), (1, &out.level1)] {
            check(
                &format!("{tag} level{l} tokens"),
                level.tokens.clone(),
                c.g(&format!("tf.decoder.level{l}.transformer_tokens")),
                TOL,
            );
            check(
                &format!("{tag} level{l} iou_pred"),
                level.iou_pred.clone(),
                c.g(&format!("tf.decoder.level{l}.iou_pred")),
                TOL,
            );
            check(
                &format!("{tag} level{l} masks"),
                level.masks.clone(),
                c.g(&format!("tf.decoder.level{l}.masks")),
                TOL,
            );
        }
        check(
            &format!("{tag} tf.low_res_masks_fused"),
            out.low_res.clone(),
            c.g("tf.low_res_masks_fused"),
            TOL,
        );

        let logits = m
            .model()
            .postprocess(out.low_res, input.resized, input.original);
        let [n, _, h0, w0] = logits.dims();
        let (values, _) = host(logits);
        assert_close(
            &format!("{tag} tf.pred_masks"),
            &values,
            &[n, h0, w0],
            c.g("tf.pred_masks"),
            TOL,
        );
        let golden = &c.g("tf.pred_masks").values;
        let plane = h0 * w0;
        for t in 0..n {
            let iou = iou(
                &values[t * plane..(t + 1) * plane],
                &golden[t * plane..(t + 1) * plane],
            );
            assert!(iou >= 0.9999, "{tag} target {t}: binary mask IoU {iou}");
        }
    });
}

/// The public one-call API on a forced answer: masks, scores and ids as the goldens.
#[test]
fn segment_with_forced_answer() {
    each(|tag, m, c| {
        let img = load_image(&c.dir.join("image.png")).unwrap();
        let answer = c.json["teacher_forced"]["answer"].as_str().unwrap();
        let request = SegmentRequest {
            question: c.json["question"].as_str().unwrap().into(),
            answer: Some(answer.into()),
            max_new_tokens: 8,
        };
        let mut streamed = String::new();
        let seg = m
            .segment(&img, &request, &mut |s| streamed.push_str(s))
            .unwrap();
        assert_eq!(streamed, answer, "{tag} streamed text");
        let n = c.json["teacher_forced"]["num_targets"].as_u64().unwrap() as usize;
        assert_eq!(seg.targets.len(), n, "{tag} targets");
        let (h0, w0) = seg.size;
        assert_close(
            &format!("{tag} segment masks"),
            &seg.masks,
            &[n, h0, w0],
            c.g("tf.pred_masks"),
            TOL,
        );
        let scores: Vec<f32> = seg.targets.iter().map(|t| t.score).collect();
        assert_close(
            &format!("{tag} mask scores"),
            &scores,
            &[n],
            c.g("tf.mask_scores"),
            TOL,
        );
        let full = c.ids("/teacher_forced/input_ids");
        assert!(
            full.ends_with(&seg.token_ids),
            "{tag} answer ids are the tail of the teacher-forced ids"
        );
        assert_eq!(
            *seg.token_ids.last().unwrap(),
            2,
            "{tag} answer ends with </s>"
        );
    });
}

/// Generation through the public API: ids and text of the official greedy run.
#[test]
fn segment_generates_official_ids() {
    each(|tag, m, c| {
        let img = load_image(&c.dir.join("image.png")).unwrap();
        let request = SegmentRequest {
            question: c.json["question"].as_str().unwrap().into(),
            answer: None,
            max_new_tokens: 8,
        };
        let mut streamed = String::new();
        let seg = m
            .segment(&img, &request, &mut |s| streamed.push_str(s))
            .unwrap();
        assert_eq!(
            seg.token_ids,
            c.ids("/generation/new_token_ids"),
            "{tag} generated ids"
        );
        assert_eq!(streamed, seg.text, "{tag} streamed = final text");
        assert_eq!(
            seg.text,
            c.json["generation"]["decoded_new_text"].as_str().unwrap(),
            "{tag} decoded text"
        );
        assert!(
            seg.targets.is_empty(),
            "{tag}: random weights emit no codebook tokens"
        );
    });
}

/// Deterministic values in (−2, 2) for kernel inputs.
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (i as f32 * 0.618 + seed as f32 * 1.37).sin() * 2.0)
        .collect()
}

fn tensor<const D: usize>(
    v: Vec<f32>,
    shape: [usize; D],
    device: &Device,
    dtype: DType,
) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(v, shape), (device, DType::F32)).cast(dtype)
}

/// The relative tolerance of a fused kernel against Burn's ops in `dtype`: f32 to 1e-5 (the
/// sums run in another order); f16/bf16 to one rounding of the type, since the kernel may
/// round an intermediate once where Burn's ops round it twice (or fuse a multiply-add).
fn kernel_tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        _ => 1.6e-2,
    }
}

/// The dtypes a backend runs: f32 everywhere, f16 on the GPU backends (the CPU kernels
/// take f32 only and hand half precision to Burn's ops, which `kernels::*` and
/// `burn_*` then both run).
fn kernel_dtypes(b: Backend) -> Vec<DType> {
    match b {
        Backend::Cpu => vec![DType::F32],
        _ => vec![DType::F32, DType::F16],
    }
}

/// The fused RMSNorm (CPU kernel, CubeCL kernel) against Burn's ops, on every backend, at
/// widths below, at and above one workgroup (256) and not a power of two, one and many rows.
#[test]
fn fused_rms_norm_matches_burn_ops() {
    let _turn = turn();
    for (b, device) in backends() {
        for dtype in kernel_dtypes(*b) {
            for (rows, d) in [(1usize, 64usize), (3, 576), (5, 100), (1, 2048)] {
                let x = tensor(values(rows * d, 1), [1, rows, d], device, dtype);
                let w = tensor(values(d, 2), [d], device, dtype);
                let (ours, _) = host(pixellm::kernels::rms_norm(x.clone(), &w, 1e-5));
                let (want, _) = host(pixellm::kernels::burn_rms_norm(x, &w, 1e-5));
                let err = rel_err(&ours, &want);
                assert!(
                    err <= kernel_tol(dtype),
                    "[{b}] {dtype:?} rms_norm [{rows}, {d}]: relative error {err:.2e}"
                );
            }
        }
    }
}

/// The fused RoPE against Burn's ops: contiguous queries and the strided view the heads
/// split makes (`[B, n, heads, d]` swapped), at a decode position and over a prefill.
#[test]
fn fused_rope_matches_burn_ops() {
    let _turn = turn();
    let (positions, d) = (40usize, 16usize);
    for (b, device) in backends() {
        for dtype in kernel_dtypes(*b) {
            let cos = tensor(values(positions * d, 3), [positions, d], device, dtype);
            let sin = tensor(values(positions * d, 4), [positions, d], device, dtype);
            for (heads, n, start) in [(4usize, 1usize, 17usize), (2, 7, 0), (3, 5, 30)] {
                let v = values(2 * heads * n * d, 5);
                let contiguous = tensor(v.clone(), [2, heads, n, d], device, dtype);
                let strided = tensor(v, [2, n, heads, d], device, dtype).swap_dims(1, 2);
                for (what, x) in [("contiguous", contiguous), ("strided", strided)] {
                    let (ours, _) = host(pixellm::kernels::rope(x.clone(), &cos, &sin, start));
                    let (want, _) = host(pixellm::kernels::burn_rope(x, &cos, &sin, start));
                    let err = rel_err(&ours, &want);
                    assert!(
                        err <= kernel_tol(dtype),
                        "[{b}] {dtype:?} rope {what} heads {heads} n {n} start {start}: relative error {err:.2e}"
                    );
                }
            }
        }
    }
}

/// The fused one-query attention against Burn's ops: grouped-query heads, keys and values
/// read as narrowed views of a longer cache, with and without hidden keys (one batch row
/// hides every key: zeros, as Burn's NaN-safe softmax gives).
#[test]
fn fused_attention_step_matches_burn_ops() {
    let _turn = turn();
    let (heads, kv_heads, d, capacity) = (4usize, 2usize, 16usize, 24usize);
    for (b, device) in backends() {
        for dtype in kernel_dtypes(*b) {
            let q = tensor(values(2 * heads * d, 6), [2, heads, 1, d], device, dtype);
            let keys = tensor(
                values(2 * kv_heads * capacity * d, 7),
                [2, kv_heads, capacity, d],
                device,
                dtype,
            );
            let vals = tensor(
                values(2 * kv_heads * capacity * d, 8),
                [2, kv_heads, capacity, d],
                device,
                dtype,
            );
            for lk in [1usize, 9, capacity] {
                let k = keys.clone().narrow(2, 0, lk);
                let v = vals.clone().narrow(2, 0, lk);
                // Batch 0 hides every third key; batch 1 hides all of them.
                let hidden: Vec<bool> = (0..2 * lk)
                    .map(|i| if i < lk { i % 3 == 1 } else { true })
                    .collect();
                let mask = Tensor::<2, burn::tensor::Bool>::from_data(
                    TensorData::new(hidden, [2, lk]),
                    device,
                );
                for (what, mask) in [("open", None), ("hidden keys", Some(mask))] {
                    let (ours, _) = host(pixellm::kernels::attention(
                        q.clone(),
                        k.clone(),
                        v.clone(),
                        mask.clone(),
                        true,
                    ));
                    let (want, _) = host(pixellm::kernels::burn_attention(
                        q.clone(),
                        k.clone(),
                        v.clone(),
                        mask,
                        true,
                    ));
                    let err = rel_err(&ours, &want);
                    assert!(
                        err <= kernel_tol(dtype),
                        "[{b}] {dtype:?} attention step, {lk} keys, {what}: relative error {err:.2e}"
                    );
                    if what == "hidden keys" {
                        let row = heads * d;
                        assert!(
                            ours[row..].iter().all(|&x| x == 0.0),
                            "[{b}] {dtype:?} a query that sees no key gets zeros"
                        );
                    }
                }
            }
        }
    }
}

/// The fused SwiGLU against Burn's `silu(gate) * up`, on the two halves of a stacked
/// product (strided views) and on contiguous operands.
#[test]
fn fused_swiglu_matches_burn_ops() {
    let _turn = turn();
    let (n, width) = (3usize, 40usize);
    for (b, device) in backends() {
        for dtype in kernel_dtypes(*b) {
            let stacked = tensor(values(n * 2 * width, 9), [1, n, 2 * width], device, dtype);
            let halves = (
                stacked.clone().narrow(2, 0, width),
                stacked.narrow(2, width, width),
            );
            let plain = (
                tensor(values(n * width, 10), [1, n, width], device, dtype),
                tensor(values(n * width, 11), [1, n, width], device, dtype),
            );
            for (what, (gate, up)) in [("stacked halves", halves), ("contiguous", plain)] {
                let (ours, _) = host(pixellm::kernels::swiglu(gate.clone(), up.clone()));
                let (want, _) = host(pixellm::kernels::silu(gate) * up);
                let err = rel_err(&ours, &want);
                assert!(
                    err <= kernel_tol(dtype),
                    "[{b}] {dtype:?} swiglu {what}: relative error {err:.2e}"
                );
            }
        }
    }
}

/// The fused one-row product (with bias, with a residual) against Burn's matmul and
/// additions, for a row-major weight and for a transposed view read in place.
#[test]
fn fused_gemv_matches_burn_ops() {
    let _turn = turn();
    let (d_in, d_out) = (300usize, 70usize);
    for (b, device) in backends() {
        for dtype in kernel_dtypes(*b) {
            let x = tensor(values(d_in, 12), [1, 1, d_in], device, dtype);
            let bias = tensor(values(d_out, 13), [d_out], device, dtype);
            let residual = tensor(values(d_out, 14), [1, 1, d_out], device, dtype);
            let rows = tensor(values(d_out * d_in, 15), [d_out, d_in], device, dtype);
            let columns =
                tensor(values(d_out * d_in, 15), [d_in, d_out], device, dtype).transpose();
            for (what, w) in [("row-major", rows), ("transposed view", columns)] {
                let reference = x
                    .clone()
                    .reshape([1, d_in])
                    .matmul(w.clone().transpose())
                    .reshape([1, 1, d_out]);
                let with_bias = reference.clone() + bias.clone().reshape([1, 1, d_out]);
                let checks = [
                    (
                        "plain",
                        pixellm::kernels::linear(x.clone(), &w, None),
                        reference,
                    ),
                    (
                        "bias",
                        pixellm::kernels::linear(x.clone(), &w, Some(&bias)),
                        with_bias.clone(),
                    ),
                    (
                        "bias + residual",
                        pixellm::kernels::linear_residual(
                            x.clone(),
                            &w,
                            Some(&bias),
                            residual.clone(),
                        ),
                        residual.clone() + with_bias,
                    ),
                ];
                for (case, ours, want) in checks {
                    let err = rel_err(&host(ours).0, &host(want).0);
                    assert!(
                        err <= kernel_tol(dtype),
                        "[{b}] {dtype:?} gemv {what} {case}: relative error {err:.2e}"
                    );
                }
            }
        }
    }
}

/// The fused RoPE + cache write against RoPE then two slice assignments: the caches after
/// a prefill and a decode step, from strided key/value views. A cache another tensor still
/// holds is not written in place: that tensor keeps its values.
#[test]
fn fused_rope_kv_write_matches_burn_ops() {
    let _turn = turn();
    let (kv_heads, d, capacity) = (2usize, 16usize, 12usize);
    for (b, device) in backends() {
        for dtype in kernel_dtypes(*b) {
            let cos = tensor(values(capacity * d, 16), [capacity, d], device, dtype);
            let sin = tensor(values(capacity * d, 17), [capacity, d], device, dtype);
            let zeros = || Tensor::<4>::zeros([1, kv_heads, capacity, d], (device, dtype));
            let (mut ours, mut want) = ((zeros(), zeros()), (zeros(), zeros()));
            for (step, (start, n)) in [(0usize, 5usize), (5, 1), (6, 1)].into_iter().enumerate() {
                // `[1, n, kv_heads, d]` swapped: the heads split of a projection's output.
                let k = tensor(
                    values(n * kv_heads * d, 18 + step as u32),
                    [1, n, kv_heads, d],
                    device,
                    dtype,
                )
                .swap_dims(1, 2);
                let v = tensor(
                    values(n * kv_heads * d, 28 + step as u32),
                    [1, n, kv_heads, d],
                    device,
                    dtype,
                )
                .swap_dims(1, 2);
                ours = pixellm::kernels::rope_kv_write(
                    ours.0,
                    ours.1,
                    k.clone(),
                    v.clone(),
                    &cos,
                    &sin,
                    start,
                );
                let rotated = pixellm::kernels::burn_rope(k, &cos, &sin, start);
                let ranges = [0..1, 0..kv_heads, start..start + n, 0..d];
                want = (
                    want.0.slice_assign(ranges.clone(), rotated),
                    want.1.slice_assign(ranges, v),
                );
                for (what, o, w) in [("keys", &ours.0, &want.0), ("values", &ours.1, &want.1)] {
                    let err = rel_err(&host(o.clone()).0, &host(w.clone()).0);
                    assert!(
                        err <= kernel_tol(dtype),
                        "[{b}] {dtype:?} {what} after writing {start}..{}: relative error {err:.2e}",
                        start + n
                    );
                }
            }
            // A cache that is shared: written by copy, the other holder unchanged.
            let held = ours.0.clone();
            let before = host(held.clone()).0;
            let k = tensor(values(kv_heads * d, 40), [1, kv_heads, 1, d], device, dtype);
            let (keys, _) =
                pixellm::kernels::rope_kv_write(ours.0, ours.1, k.clone(), k, &cos, &sin, 7);
            assert_eq!(
                host(held).0,
                before,
                "[{b}] {dtype:?} a shared cache was written in place"
            );
            assert_ne!(
                host(keys).0,
                before,
                "[{b}] {dtype:?} the new key was not written"
            );
        }
    }
}

/// Packed matrices on the device (`--quant` on GPU backends) against dequantize-then-matmul
/// on the host, for every block format: the unpacking kernel and Burn's integer-op
/// unpacking against the host's values; one row (the packed GEMV, with bias and residual)
/// and five rows (unpacked, then a matmul) against the product with the host-unpacked
/// matrix.
#[test]
fn packed_device_products_match_dequantize_then_matmul() {
    use pixellm::kernels::quant::{DeviceQuantMatrix, QuantFormat, QuantMatrix};
    let _turn = turn();
    let (d_in, d_out) = (96usize, 40usize);
    for (b, device) in backends() {
        for dtype in kernel_dtypes(*b) {
            for format in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4_1] {
                let host =
                    QuantMatrix::quantize(format, d_out, d_in, &values(d_out * d_in, 50)).unwrap();
                let packed = DeviceQuantMatrix::upload(&host, device);
                let unpacked = host.dequantize();
                let reference = tensor(unpacked.clone(), [d_out, d_in], device, dtype);
                let tag = format!("[{b}] {dtype:?} {format}");
                let kernel = host_f32(pixellm::kernels::dequantize_device(&packed, dtype));
                let burn = host_f32(pixellm::kernels::burn_dequantize(&packed, dtype));
                let exact = host_f32(reference.clone());
                for (what, got) in [("kernel", kernel), ("Burn ops", burn)] {
                    let err = rel_err(&got, &exact);
                    assert!(
                        err <= 1e-6,
                        "{tag} unpacking ({what}): relative error {err:.2e}"
                    );
                }
                let bias = tensor(values(d_out, 51), [d_out], device, dtype);
                let residual = tensor(values(d_out, 52), [1, 1, d_out], device, dtype);
                for n in [1usize, 5] {
                    let x = tensor(values(n * d_in, 53), [1, n, d_in], device, dtype);
                    let ours =
                        pixellm::kernels::device_qlinear(x.clone(), &packed, Some(&bias), None);
                    let want = pixellm::kernels::linear(x.clone(), &reference, Some(&bias));
                    let err = rel_err(&host_f32(ours), &host_f32(want.clone()));
                    assert!(
                        err <= kernel_tol(dtype),
                        "{tag} {n} rows: relative error {err:.2e}"
                    );
                    if n == 1 {
                        let ours = pixellm::kernels::device_qlinear(
                            x,
                            &packed,
                            Some(&bias),
                            Some(residual.clone()),
                        );
                        let err = rel_err(&host_f32(ours), &host_f32(residual.clone() + want));
                        assert!(
                            err <= kernel_tol(dtype),
                            "{tag} one row + residual: relative error {err:.2e}"
                        );
                    }
                }
                assert!(
                    packed.bytes() < (d_out * d_in * 4) as u64 / 3,
                    "{tag}: {} bytes on the device",
                    packed.bytes()
                );
            }
        }
    }
}

fn host_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    host(t).0
}
