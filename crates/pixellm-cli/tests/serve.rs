//! `pixellm serve` over real HTTP on 127.0.0.1: completions with text and masks, streaming,
//! parallel requests, every error code, a bounded load test.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{json, Value};

/// A running server, stopped (SIGTERM-like kill) when dropped.
struct Served {
    child: Child,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `pixellm serve --port 0 ARGS` and waits for its address.
fn start(args: &[&str]) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pixellm"))
        .args(["serve", "--port", "0"])
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("the server prints its address")
            .unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stderr (the per-request log) so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Served { child, base }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

/// (status, JSON body) of a request.
fn call(method: &str, url: &str, key: Option<&str>, body: Option<&[u8]>) -> (u16, Value) {
    let a = agent();
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut resp = match (method, body) {
        ("GET", _) => {
            let mut r = a.get(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call().unwrap()
        }
        (_, b) => {
            let mut r = a.post(url).header("Content-Type", "application/json");
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.send(b.unwrap_or(b"")).unwrap()
        }
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn wait_ready(s: &Served) {
    let start = Instant::now();
    loop {
        let (status, _) = call("GET", &format!("{}/health", s.base), None, None);
        if status == 200 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the model did not load"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn data_uri(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn chat_body(image: &str, question: &str, max_tokens: usize, stream: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "pixellm",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image}},
            {"type": "text", "text": question},
        ]}],
        "max_tokens": max_tokens,
        "stream": stream,
    }))
    .unwrap()
}

/// Every mask decodes to the image's size.
fn check_segmentation(seg: &Value, w: u64, h: u64) -> usize {
    assert_eq!(
        (seg["width"].as_u64(), seg["height"].as_u64()),
        (Some(w), Some(h))
    );
    let targets = seg["targets"].as_array().unwrap();
    for t in targets {
        let m = pixellm::data::rle::decode_segmentation(&t["mask"], (h as usize, w as usize))
            .unwrap_or_else(|e| panic!("mask RLE: {e}"));
        assert_eq!(m.area(), t["area"].as_u64().unwrap());
    }
    targets.len()
}

const KEY: &str = "test-key";

#[test]
fn serve_answers_with_text_and_masks_and_survives_bad_requests() {
    let case = Case::load(CASES[1]);
    let image_path = case.dir.join("image.png");
    let image = data_uri(&image_path);
    let (w, h) = (300u64, 500u64);
    let model = kit().join("checkpoint-bin");
    let s = start(&[
        "--model",
        model.to_str().unwrap(),
        "--api-key",
        KEY,
        "--max-body-mb",
        "1",
        "--test-load-delay-ms",
        "1500",
    ]);
    let url = |p: &str| format!("{}{p}", s.base);
    // 503 while the model loads (held back 1.5 s for the test), then ready.
    let (status, body) = call(
        "POST",
        &url("/v1/chat/completions"),
        Some(KEY),
        Some(&chat_body(&image, "x", 4, false)),
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "model_loading");
    assert_eq!(call("GET", &url("/health"), None, None).0, 503);
    wait_ready(&s);

    // A completion: standard fields, and masks (forced through /v1/segment below; the
    // random-weight kit model generates no codebook tokens) decode to the image size.
    let (status, body) = call(
        "POST",
        &url("/v1/chat/completions"),
        Some(KEY),
        Some(&chat_body(&image, "Segment the dog.", 6, false)),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["choices"][0]["message"]["content"].is_string());
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["usage"]["completion_tokens"], 6);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    check_segmentation(&body["segmentation"], w, h);
    let text = body["choices"][0]["message"]["content"].clone();

    // /v1/segment with a forced answer: two masks, RLE and PNG forms.
    let seg_req = |fmt: &str| {
        serde_json::to_vec(&json!({
            "image": image, "prompt": "Segment the dog and the cat.",
            "answer": "Sure, the dog is [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5] and the cat is [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5].",
            "mask_format": fmt,
        }))
        .unwrap()
    };
    let (status, body) = call(
        "POST",
        &url("/v1/segment"),
        Some(KEY),
        Some(&seg_req("rle")),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["targets"].as_array().unwrap().len(), 2);
    for t in body["targets"].as_array().unwrap() {
        let m =
            pixellm::data::rle::decode_segmentation(&t["mask"], (h as usize, w as usize)).unwrap();
        assert_eq!(m.area(), t["area"].as_u64().unwrap());
    }
    let (status, body) = call(
        "POST",
        &url("/v1/segment"),
        Some(KEY),
        Some(&seg_req("png")),
    );
    assert_eq!(status, 200);
    assert!(body["targets"][0]["mask"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png;base64,"));

    // Streaming: chunks as tokens come, the masks in the last chunk before [DONE].
    let mut resp = agent()
        .post(&url("/v1/chat/completions"))
        .header("Authorization", &format!("Bearer {KEY}"))
        .header("Content-Type", "application/json")
        .send(&chat_body(&image, "Segment the dog.", 6, true)[..])
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let events = resp.body_mut().read_to_string().unwrap();
    let data: Vec<&str> = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks.len() >= 3, "role, pieces, final: {events}");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        Value::String(streamed),
        text,
        "streamed text equals the completion"
    );
    let last = chunks.last().unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string());
    check_segmentation(&last["segmentation"], w, h);

    // 8 parallel requests: all answered, identical (greedy).
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    let (status, body) = call(
                        "POST",
                        &url("/v1/chat/completions"),
                        Some(KEY),
                        Some(&chat_body(&image, "Segment the dog.", 6, false)),
                    );
                    assert_eq!(status, 200, "{body}");
                    body["choices"][0]["message"]["content"].clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|a| *a == text), "{answers:?}");

    // Errors, each in OpenAI's shape, none fatal.
    let err = |status: u16, body: Value, code: &str| {
        assert!(body["error"]["message"].is_string(), "{body}");
        assert!(body["error"]["type"].is_string(), "{body}");
        assert_eq!(body["error"]["code"], code, "{status} {body}");
    };
    let (st, b) = call(
        "POST",
        &url("/v1/chat/completions"),
        Some(KEY),
        Some(b"{not json"),
    );
    assert_eq!(st, 400);
    err(st, b, "invalid_request");
    let no_image =
        serde_json::to_vec(&json!({"messages": [{"role": "user", "content": "Segment the dog."}]}))
            .unwrap();
    let (st, b) = call(
        "POST",
        &url("/v1/chat/completions"),
        Some(KEY),
        Some(&no_image),
    );
    assert_eq!(st, 400);
    assert!(b["error"]["message"].as_str().unwrap().contains("image"));
    let broken = chat_body(
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA",
        "x",
        4,
        false,
    );
    let (st, b) = call(
        "POST",
        &url("/v1/chat/completions"),
        Some(KEY),
        Some(&broken),
    );
    assert_eq!(st, 400, "{b}");
    let remote = chat_body("https://example.com/cat.png", "x", 4, false);
    let (st, b) = call(
        "POST",
        &url("/v1/chat/completions"),
        Some(KEY),
        Some(&remote),
    );
    assert_eq!(st, 400);
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("data: URI"));
    let long_question = "dog ".repeat(3000);
    let (st, b) = call(
        "POST",
        &url("/v1/chat/completions"),
        Some(KEY),
        Some(&chat_body(&image, &long_question, 4, false)),
    );
    assert_eq!(st, 400, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("context"),
        "{b}"
    );
    let (st, b) = call("GET", &url("/v1/models"), Some("wrong"), None);
    assert_eq!(st, 401);
    err(st, b, "invalid_api_key");
    let (st, _) = call("GET", &url("/v1/models"), None, None);
    assert_eq!(st, 401);
    let big = vec![b' '; 2 << 20];
    let (st, b) = call("POST", &url("/v1/chat/completions"), Some(KEY), Some(&big));
    assert_eq!(st, 413);
    err(st, b, "request_too_large");
    let (st, b) = call("GET", &url("/v1/models"), Some(KEY), None);
    assert_eq!(st, 200);
    assert_eq!(b["object"], "list");
    let (st, _) = call("GET", &url("/nope"), Some(KEY), None);
    assert_eq!(st, 404);
    // Still up.
    assert_eq!(call("GET", &url("/health"), None, None).0, 200);
}

/// A bounded load test on loopback: a fixed number of requests from concurrent clients
/// against a short queue; every request is either answered or refused with 429, none is
/// lost, and the server stays up. Throughput and latency are printed (docs/serve.md).
#[test]
fn load_test_answers_or_refuses_every_request() {
    let case = Case::load(CASES[1]);
    let image = data_uri(&case.dir.join("image.png"));
    let model = kit().join("checkpoint-bin");
    let s = start(&["--model", model.to_str().unwrap(), "--max-queue", "2", "-q"]);
    wait_ready(&s);
    let url = format!("{}/v1/chat/completions", s.base);
    let (clients, per_client) = (8, 4);
    let start_all = Instant::now();
    let results: Vec<(u16, f64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    (0..per_client)
                        .map(|_| {
                            let t = Instant::now();
                            let (st, _) = call(
                                "POST",
                                &url,
                                None,
                                Some(&chat_body(&image, "Segment the dog.", 16, false)),
                            );
                            (st, t.elapsed().as_secs_f64() * 1e3)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let secs = start_all.elapsed().as_secs_f64();
    assert!(secs < 600.0, "the load test is bounded");
    let sent = clients * per_client;
    let ok: Vec<f64> = results.iter().filter(|r| r.0 == 200).map(|r| r.1).collect();
    let refused = results.iter().filter(|r| r.0 == 429).count();
    assert_eq!(
        ok.len() + refused,
        sent,
        "answered + refused = sent: {results:?}"
    );
    assert!(!ok.is_empty());
    let mut lat = ok.clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "load test: {sent} sent, {} answered, {refused} refused (429) in {secs:.1} s: {:.2} answers/s, latency p50 {:.0} ms p95 {:.0} ms max {:.0} ms",
        ok.len(),
        ok.len() as f64 / secs,
        pct(0.5),
        pct(0.95),
        pct(1.0)
    );
    assert_eq!(
        call("GET", &format!("{}/health", s.base), None, None).0,
        200
    );
}
