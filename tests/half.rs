//! Half precision (f16, bf16) on every backend that supports it: weights converted once at
//! load, f32 islands where the official code keeps them. Binary masks must agree with the
//! f32 goldens at IoU ≥ 0.99 (bf16: 8 mantissa bits) or ≥ 0.999 (f16), and greedy ids must
//! be identical on the kit prompts. The f16 bar catches a stage that accumulates in the
//! half type where the official code does not: GPU convolutions in f16 gave 0.9979–0.9985
//! on lavapipe, 0.9992–0.9996 in f32 (the CPU: 0.9994–0.9996).
//!
//! Packed weights (`--quant`) are held to the same bars in f32 where the backend multiplies
//! packed matrices (the CPU; elsewhere `q8`/`q4` are refused at load, which is checked too):
//! q8 ≥ 0.99 with identical greedy ids (a flip allowed only at a near-tie of the f32 model,
//! see `near_tie_only`); q4 ≥ 0.95 on masks, its greedy ids reported.

mod common;

use burn::tensor::DType;
use common::*;
use pixellm::image::load_image;
use pixellm::{PixelLm, Quant, SegmentRequest};

fn run(dtype: DType, quant: Quant) {
    let bar = match (dtype, quant) {
        (_, Quant::Q4) => 0.95,
        (DType::F16, _) => 0.999,
        _ => 0.99,
    };
    let mut ran = 0;
    for (b, device) in backends() {
        if !device.supports_dtype(dtype) {
            eprintln!("[{b}] {dtype:?} not supported by this device: skipped");
            continue;
        }
        let loaded = PixelLm::load(
            &kit().join("checkpoint"),
            None,
            device,
            dtype,
            quant,
            &mut |_| {},
        );
        if quant != Quant::None && !pixellm::kernels::packed_on(device) {
            let e = loaded
                .err()
                .unwrap_or_else(|| panic!("[{b}] --quant {} loaded", quant.name()));
            assert!(
                e.to_string()
                    .contains("runs only on the native CPU backend and the GPU backends"),
                "[{b}] {e}"
            );
            eprintln!("[{b}] --quant {} refused: {e}", quant.name());
            continue;
        }
        let m = loaded.unwrap_or_else(|e| panic!("[{b}] loading in {dtype:?}: {e}"));
        // The same weights unpacked: the reference for the packed model's near-ties.
        let dense = (quant != Quant::None).then(|| {
            PixelLm::load(
                &kit().join("checkpoint"),
                None,
                device,
                dtype,
                Quant::None,
                &mut |_| {},
            )
            .unwrap()
        });
        if let Some(dense) = &dense {
            let (packed, unpacked) = (m.model().weight_bytes(), dense.model().weight_bytes());
            eprintln!(
                "[{b}] --quant {}: {packed} weight bytes, {unpacked} unpacked",
                quant.name()
            );
            assert!(packed < unpacked, "[{b}] packing saved nothing");
        }
        for name in present_cases() {
            let c = Case::load(name);
            let tag = format!("[{b} {dtype:?} --quant {}] {name}", quant.name());
            let img = load_image(&c.dir.join("image.png")).unwrap();
            let question = c.json["question"].as_str().unwrap().to_string();

            let forced = SegmentRequest {
                question: question.clone(),
                answer: Some(c.json["teacher_forced"]["answer"].as_str().unwrap().into()),
                max_new_tokens: 8,
            };
            let seg = m.segment(&img, &forced, &mut |_| {}).unwrap();
            let golden = c.g("tf.pred_masks");
            let plane = seg.size.0 * seg.size.1;
            assert_eq!(seg.targets.len(), golden.shape[0], "{tag}: targets");
            for t in 0..seg.targets.len() {
                let iou = iou(seg.mask(t), &golden.values[t * plane..(t + 1) * plane]);
                eprintln!("{tag} target {t}: IoU {iou:.5} vs the f32 golden");
                assert!(iou >= bar, "{tag} target {t}: IoU {iou} < {bar}");
            }

            let generate = SegmentRequest {
                question,
                answer: None,
                max_new_tokens: 8,
            };
            let seg = m.segment(&img, &generate, &mut |_| {}).unwrap();
            if quant == Quant::Q4 {
                // Measured, not asserted: 4 bits move this random model's logits by more
                // than its margins (docs/performance.md).
                let golden = c.ids("/generation/new_token_ids");
                let same = golden
                    .iter()
                    .zip(&seg.token_ids)
                    .take_while(|(a, b)| a == b);
                eprintln!(
                    "{tag}: greedy ids identical for {} of {} tokens",
                    same.count(),
                    golden.len()
                );
            } else if let Some(dense) = &dense {
                near_tie_only(&tag, &seg.token_ids, &c, &img, dense, quant);
            } else {
                assert_eq!(
                    seg.token_ids,
                    c.ids("/generation/new_token_ids"),
                    "{tag}: greedy ids"
                );
            }
        }
        ran += 1;
    }
    eprintln!("{dtype:?}: ran on {ran} backend(s)");
}

#[test]
fn f16_masks_and_greedy_ids() {
    run(DType::F16, Quant::None);
}

#[test]
fn bf16_masks_and_greedy_ids() {
    run(DType::BF16, Quant::None);
}

#[test]
fn q8_masks_and_greedy_ids() {
    run(DType::F32, Quant::Q8);
}

#[test]
fn q4_masks() {
    run(DType::F32, Quant::Q4);
}

/// Greedy ids of a packed model against the golden ones: identical, except that from the
/// first step where the f32 model (`dense`, the same weights unpacked) itself puts its top
/// two tokens within 2 % of the top logit, the packed model may pick the other one. Block
/// quantisation moves the kit's logits by ~1–2 % (random weights, 64-wide rows: Q8_0's
/// rounding is ~3× bf16's on them), so a near-tie can flip; anywhere else a difference is a
/// bug. The margin at a flip is printed.
fn near_tie_only(
    tag: &str,
    ids: &[i64],
    c: &Case,
    img: &pixellm::image::RgbImage,
    dense: &PixelLm,
    quant: Quant,
) {
    let golden = c.ids("/generation/new_token_ids");
    let Some(k) = (0..golden.len()).find(|&k| ids.get(k) != Some(&golden[k])) else {
        eprintln!("{tag}: greedy ids identical");
        return;
    };
    let question = c.json["question"].as_str().unwrap();
    let prompt = pixellm::tokenizer::llava_v1_prompt(question, None);
    let mut prefix = dense.tokenizer().encode_with_image(&prompt);
    prefix.extend(&golden[..k]);
    let enc = dense.encode(img).unwrap();
    let h = dense
        .forced_hidden_states(&prefix, &enc.features, &enc.input)
        .unwrap();
    let [_, e, width] = h.dims();
    let logits = dense
        .model()
        .llm()
        .logits(h.narrow(1, e - 1, 1).reshape([1, width]));
    let mut logits = pixellm::pipeline::read_f32(logits).unwrap();
    logits.sort_by(|a, b| b.total_cmp(a));
    let margin = (logits[0] - logits[1]) / logits[0].abs().max(1e-6);
    eprintln!(
        "{tag}: greedy ids identical for {k} of {} tokens; then a near-tie of the f32 model (top-2 margin {:.2} %)",
        golden.len(),
        margin * 100.0
    );
    assert!(
        margin < 0.02,
        "{tag} (--quant {}): greedy ids {ids:?} differ from {golden:?} at step {k}, where the f32 model's top-2 margin is {:.2} % (not a near-tie)",
        quant.name(),
        margin * 100.0
    );
}
