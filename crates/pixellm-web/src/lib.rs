//! PixelLM in the browser: wasm-bindgen bindings over the `pixellm` library.
//!
//! The library code is the native one; only I/O differs: files arrive as bytes from
//! `fetch`/`File`, the device is created asynchronously (WebGPU when the browser has it,
//! the CPU backend otherwise) and every host read is awaited (`PixelLm::segment_async`).

use std::collections::BTreeMap;

use burn::tensor::{DType, Device};
use js_sys::{Array, Function, Object, Reflect, Uint8Array};
use pixellm::image::{decode_image, mask_png, overlay_png};
use pixellm::{PixelLm, SegmentRequest};
use wasm_bindgen::prelude::*;

/// A loaded model and the device it runs on.
#[wasm_bindgen]
pub struct WebPixelLm {
    model: PixelLm,
    backend: String,
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// `{name: Uint8Array}` -> name -> bytes.
fn files(obj: &Object) -> Result<BTreeMap<String, Vec<u8>>, JsError> {
    let mut out = BTreeMap::new();
    for entry in Object::entries(obj).iter() {
        let pair = Array::from(&entry);
        let name = pair
            .get(0)
            .as_string()
            .ok_or_else(|| js_err("file names must be strings"))?;
        let bytes = Uint8Array::new(&pair.get(1)).to_vec();
        out.insert(name, bytes);
    }
    Ok(out)
}

/// Creates the device: WebGPU when asked for and available, else the CPU backend.
async fn device(prefer_webgpu: bool) -> (Device, String) {
    if prefer_webgpu {
        match Device::wgpu_options().init_async().await {
            Ok(device) => {
                // Browsers may hide the adapter's name (an empty string) for privacy.
                let name = pixellm::backend::describe(&device);
                let label = if name.trim().is_empty() {
                    "WebGPU".to_string()
                } else {
                    format!("WebGPU ({name})")
                };
                return (device, label);
            }
            Err(e) => web_log(&format!("WebGPU unavailable ({e}); using the CPU backend")),
        }
    }
    (Device::flex(), "CPU (no WebGPU)".to_string())
}

fn web_log(msg: &str) {
    let console = js_sys::global();
    if let Ok(console) = Reflect::get(&console, &"console".into()) {
        if let Ok(log) = Reflect::get(&console, &"log".into()) {
            let _ = Function::from(log).call1(&JsValue::NULL, &msg.into());
        }
    }
}

#[wasm_bindgen]
impl WebPixelLm {
    /// Loads a PixelLM from in-memory files.
    ///
    /// `model_files` / `clip_files`: objects mapping file names to `Uint8Array`s (the
    /// PixelLM directory: `config.json`, `tokenizer.model` or `tokenizer.json`,
    /// `added_tokens.json`, weights as `*.safetensors` or `pytorch_model-*.bin`; the CLIP
    /// directory: `config.json` and its weights). `on_progress(done, total)` follows the
    /// weight bytes converted.
    pub async fn load(
        model_files: Object,
        clip_files: Object,
        prefer_webgpu: bool,
        on_progress: Function,
    ) -> Result<WebPixelLm, JsError> {
        console_hook();
        let model_files = files(&model_files)?;
        let clip_files = files(&clip_files)?;
        let (device, backend) = device(prefer_webgpu).await;
        let mut progress = |done: u64, total: u64| {
            let _ = on_progress.call2(
                &JsValue::NULL,
                &(done as f64).into(),
                &(total as f64).into(),
            );
        };
        // The same loader as the native programs' built-in model: one code path from
        // in-memory files to a model.
        let model = PixelLm::from_memory(
            model_files,
            clip_files,
            &device,
            DType::F32,
            pixellm::Quant::Stored,
            &mut progress,
        )
        .map_err(js_err)?;
        Ok(WebPixelLm { model, backend })
    }

    /// The backend in use: "WebGPU (adapter name)" or "CPU (no WebGPU)".
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.backend.clone()
    }

    /// Segments an encoded image (PNG/JPEG/WebP/BMP bytes).
    ///
    /// `answer`: a forced assistant answer (skip generation), or `undefined`.
    /// `on_text(piece)` receives the answer as it is generated. Returns `{text, token_ids,
    /// width, height, targets: [{index, name, score, area, bbox, mask_png: Uint8Array}],
    /// overlay_png, timings_ms, warnings, backend}`.
    pub async fn segment(
        &self,
        image: Uint8Array,
        question: String,
        answer: Option<String>,
        max_new_tokens: usize,
        on_text: Function,
    ) -> Result<JsValue, JsError> {
        let image = decode_image(&image.to_vec(), "image").map_err(js_err)?;
        let request = SegmentRequest {
            question,
            answer,
            max_new_tokens,
        };
        let mut emit = |piece: &str| {
            let _ = on_text.call1(&JsValue::NULL, &piece.into());
        };
        let seg = self
            .model
            .segment_async(&image, &request, &mut emit)
            .await
            .map_err(js_err)?;
        let (h, w) = seg.size;
        // The library's result JSON (as the CLI's result.json and the server), plus the PNG
        // bytes the page displays and offers for download.
        let doc = pixellm::output::result_json(&seg, &self.backend, "f32", None);
        let out: Object = js_sys::JSON::parse(&doc.to_string())
            .map_err(|_| js_err("result JSON did not parse"))?
            .into();
        let targets = Array::from(&Reflect::get(&out, &"targets".into()).unwrap_or_default());
        for (i, t) in seg.targets.iter().enumerate() {
            let o: Object = targets.get(i as u32).into();
            set(
                &o,
                "mask_png",
                Uint8Array::from(mask_png(seg.mask(t.index), w, h).as_slice()).into(),
            );
        }
        let masks: Vec<&[f32]> = (0..seg.targets.len()).map(|i| seg.mask(i)).collect();
        set(
            &out,
            "overlay_png",
            Uint8Array::from(overlay_png(&image, &masks).as_slice()).into(),
        );
        Ok(out.into())
    }
}

fn set(o: &Object, key: &str, value: JsValue) {
    let _ = Reflect::set(o, &key.into(), &value);
}

/// Routes Rust panics to the browser console with their message (they would otherwise
/// surface as an opaque "unreachable" trap).
fn console_hook() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            web_log(&format!("pixellm panicked: {info}"))
        }));
    });
}
