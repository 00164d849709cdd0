//! PixelLM in the browser: wasm-bindgen bindings over the `pixellm` library.
//!
//! The library code is the native one; only I/O differs: files arrive as bytes from
//! `fetch`/`File`, the device is created asynchronously (WebGPU when the browser has it,
//! the CPU backend otherwise) and every host read is awaited (`PixelLm::segment_async`).

use std::collections::BTreeMap;

use burn::tensor::{DType, Device};
use js_sys::{Array, Function, Object, Reflect, Uint8Array};
use pixellm::config::{ClipVisionConfig, PixelLmConfig};
use pixellm::image::{decode_image, mask_png, overlay_png};
use pixellm::model::PixelLmModel;
use pixellm::tokenizer::Tokenizer;
use pixellm::weights::WeightFiles;
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

fn weight_files(files: &mut BTreeMap<String, Vec<u8>>, what: &str) -> Result<WeightFiles, JsError> {
    let names: Vec<String> = files
        .keys()
        .filter(|n| n.ends_with(".safetensors") || n.ends_with(".bin") || n.ends_with(".gguf"))
        .cloned()
        .collect();
    if names.is_empty() {
        return Err(js_err(format!(
            "{what}: no weights (*.safetensors or pytorch_model-*.bin) among the files"
        )));
    }
    let mut weights = WeightFiles::new();
    for name in names {
        let bytes = files.remove(&name).expect("listed above");
        weights.extend(WeightFiles::from_bytes(&name, bytes).map_err(js_err)?);
    }
    Ok(weights)
}

fn take(files: &BTreeMap<String, Vec<u8>>, name: &str, what: &str) -> Result<Vec<u8>, JsError> {
    files
        .get(name)
        .cloned()
        .ok_or_else(|| js_err(format!("{what}: `{name}` is missing")))
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
        let mut model_files = files(&model_files)?;
        let mut clip_files = files(&clip_files)?;
        let config =
            PixelLmConfig::from_bytes(&take(&model_files, "config.json", "model")?, "config.json")
                .map_err(js_err)?;
        let clip_config = ClipVisionConfig::from_bytes(
            &take(&clip_files, "config.json", "vision tower")?,
            "vision tower config.json",
        )
        .map_err(js_err)?;
        let tokenizer = Tokenizer::from_bytes(
            model_files
                .get("tokenizer.model")
                .map(Vec::as_slice)
                .unwrap_or(&[]),
            model_files.get("tokenizer.json").map(Vec::as_slice),
            model_files.get("added_tokens.json").map(Vec::as_slice),
        )
        .map_err(js_err)?;
        let weights = weight_files(&mut model_files, "model")?;
        let clip_weights = weight_files(&mut clip_files, "vision tower")?;
        let (device, backend) = device(prefer_webgpu).await;
        let mut progress = |done: u64, total: u64| {
            let _ = on_progress.call2(
                &JsValue::NULL,
                &(done as f64).into(),
                &(total as f64).into(),
            );
        };
        let model = PixelLmModel::load(
            &config,
            &clip_config,
            &weights,
            &clip_weights,
            &device,
            DType::F32,
            &mut progress,
        )
        .map_err(js_err)?;
        Ok(WebPixelLm {
            model: PixelLm::new(model, tokenizer).map_err(js_err)?,
            backend,
        })
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
        let names = pixellm::pipeline::target_names(&seg.text, seg.targets.len());
        let targets = Array::new();
        for (t, name) in seg.targets.iter().zip(names) {
            let o = Object::new();
            set(&o, "index", (t.index as f64).into());
            set(&o, "name", name.into());
            set(&o, "score", (t.score as f64).into());
            set(&o, "area", (t.area as f64).into());
            set(
                &o,
                "bbox",
                match t.bbox {
                    Some(b) => b
                        .iter()
                        .map(|&v| JsValue::from(v as f64))
                        .collect::<Array>()
                        .into(),
                    None => JsValue::NULL,
                },
            );
            set(
                &o,
                "mask_png",
                Uint8Array::from(mask_png(seg.mask(t.index), w, h).as_slice()).into(),
            );
            targets.push(&o);
        }
        let masks: Vec<&[f32]> = (0..seg.targets.len()).map(|i| seg.mask(i)).collect();
        let out = Object::new();
        set(&out, "text", seg.text.clone().into());
        set(
            &out,
            "token_ids",
            seg.token_ids
                .iter()
                .map(|&i| JsValue::from(i as f64))
                .collect::<Array>()
                .into(),
        );
        set(&out, "width", (w as f64).into());
        set(&out, "height", (h as f64).into());
        set(&out, "targets", targets.into());
        set(
            &out,
            "overlay_png",
            Uint8Array::from(overlay_png(&image, &masks).as_slice()).into(),
        );
        let timings = Object::new();
        for (k, v) in &seg.timings_ms {
            set(&timings, k, (*v).into());
        }
        set(&out, "timings_ms", timings.into());
        set(
            &out,
            "warnings",
            seg.warnings
                .iter()
                .map(|w| JsValue::from(w.as_str()))
                .collect::<Array>()
                .into(),
        );
        set(&out, "backend", self.backend.clone().into());
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
