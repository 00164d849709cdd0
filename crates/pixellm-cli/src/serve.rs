//! `pixellm serve`: an OpenAI-compatible HTTP API that answers with text and masks.
//!
//! - `POST /v1/chat/completions`: OpenAI's chat completions (`messages` with `text` and
//!   `image_url` parts, `data:` URIs only; `max_tokens`; `stream`), answered with a standard
//!   `chat.completion` plus a top-level `segmentation` object (COCO RLE masks). Streaming
//!   sends `chat.completion.chunk` server-sent events; the last chunk before `[DONE]`
//!   carries `segmentation`.
//! - `POST /v1/segment`: the CLI's request as JSON, answered in `result.json`'s shape.
//! - `GET /v1/models`, `GET /health`.
//!
//! One model in memory, run by one worker thread; requests wait in a bounded queue (429
//! when full) and are answered one at a time, greedy. Connections are served by a small
//! pool of threads that parse, validate and wait. Errors use OpenAI's shape
//! `{"error": {"message", "type", "code"}}`; nothing a client sends can take the server
//! down. SIGINT/SIGTERM stop accepting, finish the request in progress, and exit.
//!
//! Built on `tiny_http` (a synchronous HTTP/1.1 server): no async runtime to compile, and the
//! model runs on one thread anyway.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use pixellm::backend::{Backend, Precision};
use pixellm::data::rle::Mask;
use pixellm::image::{decode_image, mask_png, RgbImage};
use pixellm::{PixelLm, SegmentRequest, Segmentation};
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

use crate::progress;

/// `pixellm serve` (the interface is fixed: other tools call it exactly so).
#[derive(clap::Args)]
pub struct ServeArgs {
    /// PixelLM directory (default: the model built into this program).
    #[arg(long)]
    model: Option<PathBuf>,
    /// CLIP directory (default: resolved as `segment` does).
    #[arg(long)]
    vision_tower: Option<PathBuf>,
    /// Address to listen on (loopback by default: nothing outside this machine can reach it).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the chosen address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// cpu, wgpu, vulkan, metal or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// none, q8 or q4: the LLM's matrices dequantised to --dtype (none) or held packed in
    /// GGUF-compatible 8/4-bit blocks (CPU backend). Default: as stored.
    #[arg(long, value_name = "QUANT", value_parser = crate::parse_quant)]
    quant: Option<pixellm::Quant>,
    /// Require `Authorization: Bearer KEY` on every request but /health.
    #[arg(long, env = "PIXELLM_API_KEY")]
    api_key: Option<String>,
    /// Requests that may wait for the model; more are refused with 429.
    #[arg(long, default_value_t = 8)]
    max_queue: usize,
    /// Largest request body in MB (413 beyond).
    #[arg(long, default_value_t = 32)]
    max_body_mb: u64,
    /// Tests only: hold the model back this long after start (to observe the 503).
    #[arg(long, hide = true, default_value_t = 0)]
    test_load_delay_ms: u64,
}

/// Connection threads: each parses and validates one request and waits for its answer.
const HANDLERS: usize = 16;
/// Generation budget when a request sets none.
const DEFAULT_MAX_TOKENS: usize = 512;

/// An OpenAI-style error.
#[derive(Debug)]
struct ApiError {
    status: u16,
    kind: &'static str,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            kind: "invalid_request_error",
            code: "invalid_request",
            message: message.into(),
        }
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.code}})
    }
}

/// The model's state while the server runs.
enum ModelState {
    Loading,
    Ready(Arc<PixelLm>, String),
    Failed(String),
}

/// A unit of work for the model thread.
struct Job {
    image: RgbImage,
    request: SegmentRequest,
    /// Token pieces as they are generated (streaming only).
    pieces: Option<SyncSender<String>>,
    done: SyncSender<Result<Segmentation, pixellm::Error>>,
}

struct Shared {
    state: Arc<RwLock<ModelState>>,
    queue: SyncSender<Job>,
    api_key: Option<String>,
    max_body: u64,
    backend: String,
    dtype: String,
    requests: AtomicU64,
}

pub fn serve(args: ServeArgs) -> pixellm::Result<()> {
    let backend: Backend = args.backend.parse()?;
    let precision: Precision = args.dtype.parse()?;
    let quant = args.quant.unwrap_or_default();
    let addr = format!("{}:{}", args.host, args.port);
    let server = Server::http(&addr).map_err(|e| {
        pixellm::Error::io(
            addr.clone(),
            std::io::Error::new(std::io::ErrorKind::AddrInUse, e.to_string()),
        )
    })?;
    let server = Arc::new(server);
    let local: Option<SocketAddr> = server.server_addr().to_ip();
    eprintln!(
        "pixellm serve: listening on http://{} (loading the model…)",
        local.map_or(addr.clone(), |a| a.to_string())
    );

    let (queue, jobs) = mpsc::sync_channel::<Job>(args.max_queue.max(1));
    let shared = Arc::new(Shared {
        state: Arc::new(RwLock::new(ModelState::Loading)),
        queue,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        max_body: args.max_body_mb.saturating_mul(1 << 20),
        backend: backend.name().to_string(),
        dtype: precision.name().to_string(),
        requests: AtomicU64::new(0),
    });

    // The model loads while the server already answers (503 until ready).
    let loader = {
        let shared = shared.clone();
        let (model, vision) = (args.model.clone(), args.vision_tower.clone());
        let delay = Duration::from_millis(args.test_load_delay_ms);
        std::thread::spawn(move || {
            let start = Instant::now();
            std::thread::sleep(delay);
            let loaded = backend.device().and_then(|device| match &model {
                Some(dir) => PixelLm::load(
                    dir,
                    vision.as_deref(),
                    &device,
                    precision.dtype(),
                    quant,
                    &mut |_| {},
                )
                .map(|m| {
                    (
                        m,
                        dir.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_else(|| "pixellm".into()),
                    )
                }),
                None => crate::default_model(&device, precision, quant)
                    .map(|m| (m, crate::DEFAULT_MODEL_NAME.to_string())),
            });
            let mut state = shared.state.write().expect("state lock");
            match loaded {
                Ok((m, name)) => {
                    eprintln!(
                        "pixellm serve: model `{name}` ready on {} {} ({:.1} s)",
                        shared.backend,
                        shared.dtype,
                        start.elapsed().as_secs_f64()
                    );
                    *state = ModelState::Ready(Arc::new(m), name);
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    *state = ModelState::Failed(e.to_string());
                }
            }
        })
    };
    // The worker holds the model state, not the queue's sender: it ends when the last
    // sender (in `shared`) is dropped at shutdown.
    let worker = {
        let state = shared.state.clone();
        std::thread::spawn(move || run_jobs(&state, jobs))
    };

    // SIGINT / SIGTERM: stop accepting; the request in progress finishes.
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let (server, stopping) = (server.clone(), stopping.clone());
        let _ = ctrlc::set_handler(move || {
            if !stopping.swap(true, Ordering::SeqCst) {
                eprintln!("pixellm serve: shutting down");
            }
            server.unblock();
        });
    }

    let (work, requests) = mpsc::channel::<Request>();
    let requests = Arc::new(Mutex::new(requests));
    let handlers: Vec<_> = (0..HANDLERS)
        .map(|_| {
            let (shared, requests) = (shared.clone(), requests.clone());
            std::thread::spawn(move || loop {
                let next = requests.lock().expect("request lock").recv();
                let Ok(request) = next else { break };
                // A panic while answering one request must not end the thread.
                let shared = shared.clone();
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    handle(&shared, request)
                }));
            })
        })
        .collect();
    for request in server.incoming_requests() {
        if stopping.load(Ordering::SeqCst) {
            let _ = request.respond(error_response(&ApiError {
                status: 503,
                kind: "server_error",
                code: "shutting_down",
                message: "the server is shutting down".into(),
            }));
            break;
        }
        if work.send(request).is_err() {
            break;
        }
    }
    drop(work);
    for h in handlers {
        let _ = h.join();
    }
    // Nothing more can be queued; the worker ends once the queue is empty.
    let _ = loader.join();
    drop(shared);
    let _ = worker.join();
    eprintln!("pixellm serve: stopped");
    Ok(())
}

/// The model thread: one job at a time, in arrival order.
fn run_jobs(state: &RwLock<ModelState>, jobs: Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        let model = match &*state.read().expect("state lock") {
            ModelState::Ready(m, _) => m.clone(),
            _ => continue,
        };
        let Job {
            image,
            request,
            pieces,
            done,
        } = job;
        // On a pool worker, as the other commands run (`crate::on_the_pool`): this thread
        // waits once per request instead of once per parallel operation.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::on_the_pool(|| {
                model.segment(&image, &request, &mut |piece| {
                    if let Some(p) = &pieces {
                        let _ = p.send(piece.to_string());
                    }
                })
            })
        }))
        .unwrap_or_else(|_| {
            Err(pixellm::Error::Backend(
                "the model panicked on this request".into(),
            ))
        });
        // The stream sees the end of the pieces, then the result.
        drop(pieces);
        let _ = done.send(result);
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

fn json_response(status: u16, body: &Value) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_data(serde_json::to_vec(body).expect("JSON values serialise"))
        .with_status_code(StatusCode(status))
        .with_header(header("Content-Type", "application/json"))
}

fn error_response(e: &ApiError) -> Response<std::io::Cursor<Vec<u8>>> {
    json_response(e.status, &e.body())
}

/// Answers one request and logs one line.
fn handle(shared: &Shared, mut request: Request) {
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let n = shared.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let outcome = route(shared, &mut request, &method, &path);
    let (status, tokens) = match outcome {
        Ok(Reply::Json(status, body, tokens)) => {
            let _ = request.respond(json_response(status, &body));
            (status, tokens)
        }
        Ok(Reply::Stream(reader)) => {
            let response = Response::new(
                StatusCode(200),
                vec![
                    header("Content-Type", "text/event-stream"),
                    header("Cache-Control", "no-cache"),
                ],
                reader,
                None,
                None,
            );
            let _ = request.respond(response);
            (200, 0)
        }
        Err(e) => {
            let _ = request.respond(error_response(&e));
            (e.status, 0)
        }
    };
    if !progress::quiet() {
        eprintln!(
            "#{n} {method} {path} {status} {tokens} tokens {:.0} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    }
}

enum Reply {
    /// Status, body, generated tokens (for the log).
    Json(u16, Value, usize),
    /// A server-sent event stream.
    Stream(EventStream),
}

fn route(
    shared: &Shared,
    request: &mut Request,
    method: &Method,
    path: &str,
) -> Result<Reply, ApiError> {
    if path == "/health" && *method == Method::Get {
        return Ok(match &*shared.state.read().expect("state lock") {
            ModelState::Ready(_, name) => {
                Reply::Json(200, json!({"status": "ok", "model": name}), 0)
            }
            ModelState::Loading => Reply::Json(503, json!({"status": "loading"}), 0),
            ModelState::Failed(e) => Reply::Json(500, json!({"status": "error", "message": e}), 0),
        });
    }
    if let Some(key) = &shared.api_key {
        let given = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str().to_string())
            .unwrap_or_default();
        if given.strip_prefix("Bearer ").map(str::trim) != Some(key.as_str()) {
            return Err(ApiError {
                status: 401,
                kind: "authentication_error",
                code: "invalid_api_key",
                message: "missing or wrong API key (send Authorization: Bearer KEY)".into(),
            });
        }
    }
    let known = [
        "/v1/chat/completions",
        "/v1/segment",
        "/v1/models",
        "/health",
    ];
    if !known.contains(&path) {
        return Err(ApiError {
            status: 404,
            kind: "invalid_request_error",
            code: "not_found",
            message: format!("no such endpoint: {path} (try {})", known.join(", ")),
        });
    }
    let (model, name) = match &*shared.state.read().expect("state lock") {
        ModelState::Ready(m, name) => (m.clone(), name.clone()),
        ModelState::Loading => {
            return Err(ApiError {
                status: 503,
                kind: "server_error",
                code: "model_loading",
                message: "the model is still loading; retry shortly".into(),
            })
        }
        ModelState::Failed(e) => {
            return Err(ApiError {
                status: 500,
                kind: "server_error",
                code: "model_failed",
                message: format!("the model failed to load: {e}"),
            })
        }
    };
    match (method, path) {
        (Method::Get, "/v1/models") => Ok(Reply::Json(
            200,
            json!({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "pixellm", "created": 0}]}),
            0,
        )),
        (Method::Post, "/v1/chat/completions") => {
            let body = read_json(shared, request)?;
            chat_completions(shared, &model, &name, &body)
        }
        (Method::Post, "/v1/segment") => {
            let body = read_json(shared, request)?;
            segment(shared, &model, &body)
        }
        _ => Err(ApiError {
            status: 405,
            kind: "invalid_request_error",
            code: "method_not_allowed",
            message: format!("{method} is not allowed on {path}"),
        }),
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError {
        status: 413,
        kind: "invalid_request_error",
        code: "request_too_large",
        message: format!(
            "the request body exceeds {} MB (--max-body-mb)",
            limit >> 20
        ),
    }
}

/// Reads the body (at most `max_body` bytes) as JSON.
fn read_json(shared: &Shared, request: &mut Request) -> Result<Value, ApiError> {
    if request
        .body_length()
        .is_some_and(|n| n as u64 > shared.max_body)
    {
        return Err(too_large(shared.max_body));
    }
    let mut bytes = Vec::new();
    request
        .as_reader()
        .take(shared.max_body + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ApiError::bad(format!("reading the request body: {e}")))?;
    if bytes.len() as u64 > shared.max_body {
        return Err(too_large(shared.max_body));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))
}

/// Decodes base64 image bytes, from a `data:` URI or bare.
fn decode_base64_image(s: &str, what: &str) -> Result<RgbImage, ApiError> {
    let payload = match s.strip_prefix("data:") {
        Some(rest) => {
            let (meta, data) = rest.split_once(',').ok_or_else(|| {
                ApiError::bad(format!(
                    "{what}: a data: URI needs a comma before its payload"
                ))
            })?;
            if !meta.ends_with(";base64") {
                return Err(ApiError::bad(format!(
                    "{what}: only base64 data: URIs are supported"
                )));
            }
            data
        }
        None => s,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| ApiError::bad(format!("{what}: not valid base64: {e}")))?;
    decode_image(&bytes, what).map_err(|e| ApiError::bad(e.to_string()))
}

/// The question and image of an OpenAI `messages` list: the last user message's text
/// parts, and the last image any user message carries.
fn parse_messages(body: &Value) -> Result<(String, RgbImage), ApiError> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad("`messages` must be a non-empty list"))?;
    let mut question = None;
    let mut image_url = None;
    for (i, m) in messages.iter().enumerate() {
        if m.get("role").and_then(Value::as_str) != Some("user") {
            continue;
        }
        match m.get("content") {
            Some(Value::String(s)) => question = Some(s.clone()),
            Some(Value::Array(parts)) => {
                let mut texts = Vec::new();
                for p in parts {
                    match p.get("type").and_then(Value::as_str) {
                        Some("text") => texts.push(p.get("text").and_then(Value::as_str).unwrap_or("").to_string()),
                        Some("image_url") => {
                            let url = p
                                .get("image_url")
                                .and_then(|u| u.get("url").or(Some(u)))
                                .and_then(Value::as_str)
                                .ok_or_else(|| ApiError::bad(format!("messages[{i}]: an image_url part needs `url`")))?;
                            image_url = Some(url.to_string());
                        }
                        other => {
                            return Err(ApiError::bad(format!(
                                "messages[{i}]: unsupported content part type {other:?} (text, image_url)"
                            )))
                        }
                    }
                }
                question = Some(texts.join("\n"));
            }
            _ => {
                return Err(ApiError::bad(format!(
                    "messages[{i}]: `content` must be a string or a list of parts"
                )))
            }
        }
    }
    let question = question.ok_or_else(|| ApiError::bad("no user message"))?;
    let url = image_url
        .ok_or_else(|| ApiError::bad("no image: add an image_url part with a data: URI"))?;
    if !url.starts_with("data:") {
        return Err(ApiError::bad(
            "remote image URLs are not fetched; send the image as a data: URI (data:image/png;base64,…)",
        ));
    }
    Ok((question, decode_base64_image(&url, "image_url")?))
}

fn max_tokens(body: &Value, key: &str) -> Result<usize, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(DEFAULT_MAX_TOKENS),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| ApiError::bad(format!("`{key}` must be a positive integer"))),
    }
}

/// Queues a job (429 when the queue is full).
fn enqueue(shared: &Shared, job: Job) -> Result<(), ApiError> {
    match shared.queue.try_send(job) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => Err(ApiError {
            status: 429,
            kind: "rate_limit_error",
            code: "queue_full",
            message: "too many requests are waiting for the model (--max-queue); retry later"
                .into(),
        }),
        Err(TrySendError::Disconnected(_)) => Err(ApiError {
            status: 503,
            kind: "server_error",
            code: "shutting_down",
            message: "the server is shutting down".into(),
        }),
    }
}

fn model_error(e: pixellm::Error) -> ApiError {
    match e {
        pixellm::Error::Prompt(_) | pixellm::Error::Image { .. } => ApiError::bad(e.to_string()),
        other => ApiError {
            status: 500,
            kind: "server_error",
            code: "model_error",
            message: other.to_string(),
        },
    }
}

/// The `segmentation` object: size and one compressed-RLE mask per target.
fn segmentation_json(seg: &Segmentation) -> Value {
    let (h, w) = seg.size;
    let names = pixellm::pipeline::target_names(&seg.text, seg.targets.len());
    let targets: Vec<Value> = seg
        .targets
        .iter()
        .zip(names)
        .map(|(t, name)| {
            json!({
                "index": t.index,
                "name": name,
                "score": t.score,
                "area": t.area,
                "bbox": t.bbox,
                "mask": binary(seg, t.index).to_compressed_json(),
            })
        })
        .collect();
    json!({"width": w, "height": h, "targets": targets})
}

fn binary(seg: &Segmentation, i: usize) -> Mask {
    let (h, w) = seg.size;
    Mask {
        height: h,
        width: w,
        data: seg.mask(i).iter().map(|&v| (v > 0.0) as u8).collect(),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn completion_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "chatcmpl-{:x}{:04x}",
        now_secs(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn finish_reason(seg: &Segmentation, budget: usize) -> &'static str {
    if seg.token_ids.len() >= budget && seg.token_ids.last() != Some(&2) {
        "length"
    } else {
        "stop"
    }
}

/// The answer text without the end-of-sequence marker.
fn content(seg: &Segmentation) -> String {
    seg.text.trim_end_matches("</s>").to_string()
}

fn chat_completions(
    shared: &Shared,
    model: &PixelLm,
    name: &str,
    body: &Value,
) -> Result<Reply, ApiError> {
    let (question, image) = parse_messages(body)?;
    let budget = match body.get("max_completion_tokens") {
        Some(v) if !v.is_null() => max_tokens(body, "max_completion_tokens")?,
        _ => max_tokens(body, "max_tokens")?,
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let request = SegmentRequest {
        question,
        answer: None,
        max_new_tokens: budget,
    };
    // The prompt must fit the context before it is queued.
    let prompt_ids = model
        .tokenizer()
        .encode_with_image(&pixellm::tokenizer::llava_v1_prompt(
            &request.question,
            None,
        ));
    let context = model.model().llm().config().max_position_embeddings;
    let positions = prompt_ids.len() - 1 + model.model().llm_grid().pow(2);
    if positions >= context {
        return Err(ApiError::bad(format!(
            "the prompt takes {positions} positions but the model's context is {context}"
        )));
    }
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let id = completion_id();
    let created = now_secs();
    if !stream {
        enqueue(
            shared,
            Job {
                image,
                request,
                pieces: None,
                done: done_tx,
            },
        )?;
        let seg = done_rx
            .recv()
            .map_err(|_| ApiError::bad("the request was dropped"))?
            .map_err(model_error)?;
        let completion = seg.token_ids.len();
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content(&seg)},
                "finish_reason": finish_reason(&seg, budget),
            }],
            "usage": {"prompt_tokens": seg.prompt_tokens, "completion_tokens": completion,
                      "total_tokens": seg.prompt_tokens + completion},
            "segmentation": segmentation_json(&seg),
            "timings": seg.timings_ms.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        });
        return Ok(Reply::Json(200, body, completion));
    }
    let (piece_tx, piece_rx) = mpsc::sync_channel::<String>(4096);
    enqueue(
        shared,
        Job {
            image,
            request,
            pieces: Some(piece_tx),
            done: done_tx,
        },
    )?;
    Ok(Reply::Stream(EventStream::new(
        id,
        created,
        name.to_string(),
        budget,
        piece_rx,
        done_rx,
    )))
}

fn segment(shared: &Shared, model: &PixelLm, body: &Value) -> Result<Reply, ApiError> {
    let image = body
        .get("image")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("`image` (base64 or a data: URI) is required"))?;
    let image = decode_base64_image(image, "image")?;
    let prompt = body
        .get("prompt")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad("`prompt` is required"))?
        .to_string();
    let answer = match body.get("answer") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad("`answer` must be a string")),
    };
    let png = match body.get("mask_format").and_then(Value::as_str) {
        None | Some("rle") => false,
        Some("png") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "`mask_format` {other:?}: rle or png"
            )))
        }
    };
    let request = SegmentRequest {
        question: prompt,
        answer,
        max_new_tokens: max_tokens(body, "max_new_tokens")?,
    };
    let _ = model;
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    enqueue(
        shared,
        Job {
            image,
            request,
            pieces: None,
            done: done_tx,
        },
    )?;
    let seg = done_rx
        .recv()
        .map_err(|_| ApiError::bad("the request was dropped"))?
        .map_err(model_error)?;
    let mut result = pixellm::output::result_json(&seg, &shared.backend, &shared.dtype, None);
    let (h, w) = seg.size;
    if let Some(targets) = result["targets"].as_array_mut() {
        for t in targets.iter_mut() {
            let i = t["index"].as_u64().unwrap_or(0) as usize;
            t["mask"] = if png {
                let bytes = mask_png(seg.mask(i), w, h);
                format!(
                    "data:image/png;base64,{}",
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                )
                .into()
            } else {
                binary(&seg, i).to_compressed_json()
            };
        }
    }
    Ok(Reply::Json(200, result, seg.token_ids.len()))
}

/// Server-sent events of one streamed completion, produced as the model generates.
struct EventStream {
    id: String,
    created: u64,
    model: String,
    budget: usize,
    pieces: Receiver<String>,
    done: Receiver<Result<Segmentation, pixellm::Error>>,
    buffer: Vec<u8>,
    pos: usize,
    started: bool,
    finished: bool,
}

impl EventStream {
    fn new(
        id: String,
        created: u64,
        model: String,
        budget: usize,
        pieces: Receiver<String>,
        done: Receiver<Result<Segmentation, pixellm::Error>>,
    ) -> Self {
        Self {
            id,
            created,
            model,
            budget,
            pieces,
            done,
            buffer: Vec::new(),
            pos: 0,
            started: false,
            finished: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    }

    fn push(&mut self, event: &Value) {
        self.buffer.extend_from_slice(b"data: ");
        self.buffer
            .extend_from_slice(&serde_json::to_vec(event).expect("JSON values serialise"));
        self.buffer.extend_from_slice(b"\n\n");
    }

    /// Fills the buffer with the next events; false once everything was sent.
    fn refill(&mut self) -> bool {
        self.buffer.clear();
        self.pos = 0;
        if self.finished {
            return false;
        }
        if !self.started {
            self.started = true;
            let c = self.chunk(json!({"role": "assistant", "content": ""}), None);
            self.push(&c);
            return true;
        }
        loop {
            match self.pieces.recv_timeout(Duration::from_millis(50)) {
                Ok(piece) => {
                    let piece = piece.replace("</s>", "");
                    if !piece.is_empty() {
                        let c = self.chunk(json!({"content": piece}), None);
                        self.push(&c);
                        return true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The generation ended: drain, then the final chunk.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.finished = true;
        match self.done.recv() {
            Ok(Ok(seg)) => {
                let completion = seg.token_ids.len();
                let mut last = self.chunk(json!({}), Some(finish_reason(&seg, self.budget)));
                last["segmentation"] = segmentation_json(&seg);
                last["usage"] = json!({"prompt_tokens": seg.prompt_tokens, "completion_tokens": completion,
                                       "total_tokens": seg.prompt_tokens + completion});
                self.push(&last);
            }
            Ok(Err(e)) => {
                let e = model_error(e);
                self.push(&e.body());
            }
            Err(_) => self.push(&ApiError::bad("the request was dropped").body()),
        }
        self.buffer.extend_from_slice(b"data: [DONE]\n\n");
        true
    }
}

impl Read for EventStream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.buffer.len() && !self.refill() {
            return Ok(0);
        }
        let n = out.len().min(self.buffer.len() - self.pos);
        out[..n].copy_from_slice(&self.buffer[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
