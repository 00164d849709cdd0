//! `pixellm quantize`: a PixelLM directory rewritten with its large matrices packed, so that
//! a 7B is converted once instead of at every load.
//!
//! The output is an ordinary model directory: the tokenizer and config files, and one
//! `model.safetensors` in which each packed matrix is a `U8 [bytes]` tensor of GGUF-layout
//! blocks, marked in the file's `__metadata__` as `"pixellm.packed.<name>": "<format> <rows>
//! <cols>"` (`weights/safetensors.rs` reads it back and refuses a wrong block count at open).
//! Every command loads it; its blocks stay packed by default (`--quant` absent) on the CPU and
//! are dequantised elsewhere. What is packed follows the load-time policy exactly:
//! [`llm_role`] mirrors the `Linear::load_quantizable` / `Embedding::load` calls of
//! `model/llm.rs`, [`vision_role`] those of `model/vision.rs`.

use std::collections::HashMap;
use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

use super::safetensors::PACKED_PREFIX;
use super::{StoredDType, WeightFiles};
use crate::config::{resolve_vision_tower, PixelLmConfig};
use crate::error::{Error, Result};
use crate::kernels::quant::{Quant, QuantMatrix, BLOCK};
use crate::output::OutputDir;

/// The manifest `pixellm quantize` writes last.
pub const MANIFEST: &str = "quantize.json";

/// The model directory's files besides the weights that travel with it.
const MODEL_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "added_tokens.json",
    "special_tokens_map.json",
];

/// What a quantised directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantizeReport {
    /// Matrices stored packed.
    pub packed: usize,
    /// Tensors stored as they were.
    pub dense: usize,
    /// Weight bytes read (the source checkpoint's tensors).
    pub bytes_in: u64,
    /// Weight bytes written.
    pub bytes_out: u64,
}

/// The policy an LLM tensor follows under `quant` (`None`: not a packable matrix).
pub fn llm_role(name: &str, quant: Quant) -> Option<Quant> {
    const LAYER: &[&str] = &[
        ".self_attn.q_proj.weight",
        ".self_attn.k_proj.weight",
        ".self_attn.v_proj.weight",
        ".self_attn.o_proj.weight",
        ".mlp.gate_proj.weight",
        ".mlp.up_proj.weight",
        ".mlp.down_proj.weight",
    ];
    if name.starts_with("model.layers.") && LAYER.iter().any(|s| name.ends_with(s)) {
        return Some(quant);
    }
    matches!(name, "model.embed_tokens.weight" | "lm_head.weight").then(|| quant.for_output())
}

/// The policy a vision-tower tensor follows under `quant` (`None`: not a packable matrix).
pub fn vision_role(name: &str, quant: Quant) -> Option<Quant> {
    const LAYER: &[&str] = &[
        ".self_attn.q_proj.weight",
        ".self_attn.k_proj.weight",
        ".self_attn.v_proj.weight",
        ".self_attn.out_proj.weight",
        ".mlp.fc1.weight",
        ".mlp.fc2.weight",
    ];
    (name.starts_with("vision_model.encoder.layers.") && LAYER.iter().any(|s| name.ends_with(s)))
        .then(|| quant.for_vision())
}

/// Writes `model_dir` (its vision tower too when it lives inside it) to `out` with the
/// matrices packed as `quant` (`q8` or `q4`) says. `progress(done, total)` follows the
/// tensors.
pub fn quantize_dir(
    model_dir: &Path,
    vision_tower: Option<&Path>,
    quant: Quant,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<QuantizeReport> {
    if !matches!(quant, Quant::Q8 | Quant::Q4) {
        return Err(Error::config("--quant", "quantize needs --quant q8 or q4"));
    }
    let config_path = model_dir.join("config.json");
    let config = PixelLmConfig::from_file(&config_path)?;
    let mut config_json: Value = serde_json::from_slice(
        &std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?,
    )
    .map_err(|e| Error::config(config_path.display().to_string(), e.to_string()))?;
    let clip_dir = resolve_vision_tower(vision_tower, config.vision_tower.as_deref(), model_dir)?;
    // A tower inside the model directory is written with it; one elsewhere is referred to
    // by its absolute path, so the output loads from anywhere.
    let inside = clip_dir
        .canonicalize()
        .ok()
        .zip(model_dir.canonicalize().ok())
        .and_then(|(c, m)| c.strip_prefix(&m).ok().map(Path::to_path_buf))
        .filter(|rel| !rel.as_os_str().is_empty());
    if inside.is_none() {
        let absolute = clip_dir
            .canonicalize()
            .map_err(|e| Error::io(&clip_dir, e))?
            .display()
            .to_string();
        for key in ["vision_tower", "mm_vision_tower"] {
            if config_json.get(key).is_some() {
                config_json[key] = json!(absolute);
            }
        }
    }

    let weights = WeightFiles::open_dir(model_dir)?;
    let clip = match &inside {
        Some(_) => Some(WeightFiles::open_dir(&clip_dir)?),
        None => None,
    };
    let total = weights.len() + clip.as_ref().map_or(0, WeightFiles::len);
    let mut done = 0;
    let mut report = QuantizeReport {
        packed: 0,
        dense: 0,
        bytes_in: 0,
        bytes_out: 0,
    };
    let mut dir = OutputDir::open(out, MANIFEST)?;
    for name in MODEL_FILES {
        let path = model_dir.join(name);
        if *name == "config.json" {
            let text = serde_json::to_vec_pretty(&config_json).expect("JSON values serialise");
            dir.put(name, &text)?;
        } else if path.is_file() {
            dir.put(
                name,
                &std::fs::read(&path).map_err(|e| Error::io(&path, e))?,
            )?;
        }
    }
    let model = pack_file(&weights, quant, llm_role, &mut report, &mut |_| {
        done += 1;
        progress(done, total);
    })?;
    dir.put("model.safetensors", &model)?;
    if let (Some(rel), Some(clip)) = (&inside, &clip) {
        let rel = rel.to_string_lossy().replace('\\', "/");
        let clip_config = clip_dir.join("config.json");
        dir.put(
            &format!("{rel}/config.json"),
            &std::fs::read(&clip_config).map_err(|e| Error::io(&clip_config, e))?,
        )?;
        let tower = pack_file(clip, quant, vision_role, &mut report, &mut |_| {
            done += 1;
            progress(done, total);
        })?;
        dir.put(&format!("{rel}/model.safetensors"), &tower)?;
    }
    dir.commit(
        "quantize",
        json!({
            "source": model_dir,
            "quant": quant.name(),
            "packed": report.packed,
            "dense": report.dense,
            "bytes_in": report.bytes_in,
            "bytes_out": report.bytes_out,
        }),
    )?;
    Ok(report)
}

/// One safetensors file of `files`' tensors: those `role` names packed as its policy says,
/// the rest in their stored float type.
fn pack_file(
    files: &WeightFiles,
    quant: Quant,
    role: fn(&str, Quant) -> Option<Quant>,
    report: &mut QuantizeReport,
    tick: &mut dyn FnMut(usize),
) -> Result<Vec<u8>> {
    let mut names = files.names();
    names.sort();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(names.len());
    let mut notes = HashMap::new();
    for name in names {
        report.bytes_in += files.stored_bytes(&name);
        let info = files.info(&name).expect("listed").clone();
        let target = match (role(&name, quant), &info.shape[..]) {
            (Some(policy), &[_, cols]) if cols.is_multiple_of(BLOCK) => {
                policy.target(files.packed_format(&name))
            }
            _ => None,
        };
        match target {
            Some(format) => {
                let [rows, cols] = [info.shape[0], info.shape[1]];
                let m = if files.packed_format(&name) == Some(format) {
                    files.read_packed(&name, [rows, cols])?
                } else {
                    let values = files.read_f32(&name, &[rows, cols])?;
                    QuantMatrix::quantize(format, rows, cols, &values).map_err(|msg| {
                        Error::Tensor {
                            file: files.file_of(&name).unwrap_or_default().to_string(),
                            name: name.clone(),
                            msg,
                        }
                    })?
                };
                notes.insert(
                    format!("{PACKED_PREFIX}{name}"),
                    format!("{} {rows} {cols}", format.name()),
                );
                let bytes = m.bytes().to_vec();
                tensors.push((name, Dtype::U8, vec![bytes.len()], bytes));
                report.packed += 1;
            }
            None => {
                let (shape, values) = files.read_f32_any(&name)?;
                let (dtype, bytes) = match info.dtype {
                    StoredDType::F16 => (
                        Dtype::F16,
                        values
                            .iter()
                            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                            .collect(),
                    ),
                    StoredDType::BF16 => (
                        Dtype::BF16,
                        values
                            .iter()
                            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                            .collect(),
                    ),
                    _ => (
                        Dtype::F32,
                        values
                            .iter()
                            .flat_map(|&v| v.to_le_bytes())
                            .collect::<Vec<u8>>(),
                    ),
                };
                tensors.push((name, dtype, shape, bytes));
                report.dense += 1;
            }
        }
        tick(1);
    }
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::format(name, format!("building the safetensors view: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let out = safetensors::serialize(views, Some(notes))
        .map_err(|e| Error::format("model.safetensors", format!("serialising: {e}")))?;
    report.bytes_out += out.len() as u64;
    Ok(out)
}
