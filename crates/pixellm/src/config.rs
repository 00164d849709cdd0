//! Model configuration read from Hugging Face `config.json` files.
//!
//! Two levels, as in candle: serde structs that mirror the JSON (every field optional,
//! missing ones take the Hugging Face defaults of transformers 4.31), resolved into plain
//! structs the model code uses.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// LLaMA language-model hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Model width `H`.
    pub hidden_size: usize,
    /// SwiGLU MLP width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: usize,
    /// RMSNorm ε.
    pub rms_norm_eps: f64,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// Rows of `embed_tokens` / `lm_head`.
    pub vocab_size: usize,
    /// Longest sequence the RoPE tables cover.
    pub max_position_embeddings: usize,
    /// `lm_head` shares `embed_tokens`' weight.
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// PixelLM's own settings on top of the LLaMA ones (`docs/model.md` §1.2, §2.1).
#[derive(Debug, Clone, PartialEq)]
pub struct PixelLmConfig {
    /// The language model.
    pub llm: LlamaConfig,
    /// Width of the vision tower features (`mm_hidden_size`; 1024 for CLIP ViT-L).
    pub mm_hidden_size: Option<usize>,
    /// Decoder width (`out_dim`, 256).
    pub out_dim: usize,
    /// Input resolution of the vision tower (`resize_vision_tower_size`, 448).
    pub image_size: usize,
    /// `vision_tower` / `mm_vision_tower`: where the CLIP weights come from.
    pub vision_tower: Option<String>,
    /// `mm_vision_select_layer` (−2).
    pub vision_select_layer: i64,
    /// Number of visual scales (`image_feature_scale_num`, hard-coded 2 in PixelLM).
    pub scales: usize,
    /// Attention heads of the pixel decoder's two-way transformers (`mask_decoder_heads`,
    /// a pixellm-rs field for smaller models; SAM's 8 when absent).
    pub decoder_heads: usize,
    /// MLP width of those transformers (`mask_decoder_mlp_dim`; SAM's 2048 when absent).
    pub decoder_mlp_dim: usize,
    /// Shape-defining LLaMA fields absent from `config.json` (their Hugging Face defaults
    /// apply); named in shape-mismatch errors, where a missing field is the likely cause.
    pub defaulted: Vec<&'static str>,
}

/// CLIP vision-tower hyper-parameters (HF `CLIPVisionConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    /// Width `D`.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// The resolution the checkpoint was trained at (its position table covers it).
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// LayerNorm ε.
    pub layer_norm_eps: f64,
}

#[derive(Deserialize, Default)]
struct HfLlama {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    rope_scaling: Option<Value>,
    // PixelLM / LLaVA fields.
    mm_hidden_size: Option<usize>,
    out_dim: Option<usize>,
    resize_vision_tower_size: Option<usize>,
    vision_tower: Option<String>,
    mm_vision_tower: Option<String>,
    mm_vision_select_layer: Option<i64>,
    image_feature_scale_num: Option<usize>,
    // pixellm-rs: a smaller pixel decoder.
    mask_decoder_heads: Option<usize>,
    mask_decoder_mlp_dim: Option<usize>,
}

#[derive(Deserialize, Default)]
struct HfClipVision {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_channels: Option<usize>,
    image_size: Option<usize>,
    patch_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    hidden_act: Option<String>,
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_json(&bytes, &path.display().to_string())
}

fn parse_json(bytes: &[u8], label: &str) -> Result<Value> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::config(label, format!("not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(Error::config(label, "expected a JSON object"));
    }
    Ok(v)
}

/// Deserialises a config object, naming the offending field on a type error.
fn typed<T: serde::de::DeserializeOwned>(v: Value, label: &str) -> Result<T> {
    serde_path_to_error::deserialize(v)
        .map_err(|e| Error::config(label, format!("field `{}`: {}", e.path(), e.inner())))
}

fn positive(label: &str, field: &str, v: usize) -> Result<usize> {
    if v == 0 {
        return Err(Error::config(label, format!("`{field}` must be positive")));
    }
    Ok(v)
}

impl LlamaConfig {
    fn from_hf(h: &HfLlama, label: &str) -> Result<Self> {
        if let Some(act) = &h.hidden_act {
            if act != "silu" {
                return Err(Error::config(
                    label,
                    format!("hidden_act `{act}` is not supported (LLaMA uses `silu`)"),
                ));
            }
        }
        if h.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(Error::config(label, "rope_scaling is not supported"));
        }
        let heads = positive(
            label,
            "num_attention_heads",
            h.num_attention_heads.unwrap_or(32),
        )?;
        let hidden = positive(label, "hidden_size", h.hidden_size.unwrap_or(4096))?;
        let kv_heads = positive(
            label,
            "num_key_value_heads",
            h.num_key_value_heads.unwrap_or(heads),
        )?;
        if hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(Error::config(
                label,
                format!("hidden_size {hidden}, num_attention_heads {heads} and num_key_value_heads {kv_heads} must divide evenly"),
            ));
        }
        if (hidden / heads) % 2 != 0 {
            return Err(Error::config(label, "the head size must be even for RoPE"));
        }
        Ok(Self {
            hidden_size: hidden,
            intermediate_size: positive(
                label,
                "intermediate_size",
                h.intermediate_size.unwrap_or(11008),
            )?,
            num_hidden_layers: positive(
                label,
                "num_hidden_layers",
                h.num_hidden_layers.unwrap_or(32),
            )?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            rms_norm_eps: h.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: h.rope_theta.unwrap_or(10000.0),
            vocab_size: positive(label, "vocab_size", h.vocab_size.unwrap_or(32000))?,
            max_position_embeddings: positive(
                label,
                "max_position_embeddings",
                h.max_position_embeddings.unwrap_or(2048),
            )?,
            tie_word_embeddings: h.tie_word_embeddings.unwrap_or(false),
        })
    }
}

impl PixelLmConfig {
    /// Reads a PixelLM `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        Self::from_value(v, &path.display().to_string())
    }

    /// Parses a PixelLM `config.json` held in memory.
    pub fn from_bytes(bytes: &[u8], label: &str) -> Result<Self> {
        Self::from_value(parse_json(bytes, label)?, label)
    }

    fn from_value(v: Value, label: &str) -> Result<Self> {
        let h: HfLlama = typed(v, label)?;
        let select = h.mm_vision_select_layer.unwrap_or(-2);
        if select != -2 {
            return Err(Error::config(
                label,
                format!("mm_vision_select_layer = {select}; PixelLM checkpoints use -2"),
            ));
        }
        let scales = h.image_feature_scale_num.unwrap_or(2);
        if scales != 2 {
            return Err(Error::config(
                label,
                format!("image_feature_scale_num = {scales}; PixelLM hard-codes 2"),
            ));
        }
        let out_dim = positive(label, "out_dim", h.out_dim.unwrap_or(256))?;
        let decoder_heads = positive(
            label,
            "mask_decoder_heads",
            h.mask_decoder_heads.unwrap_or(8),
        )?;
        // Token-to-image attention runs at half the width (SAM's downsample 2).
        if out_dim % 16 != 0 || (out_dim / 2) % decoder_heads != 0 {
            return Err(Error::config(
                label,
                format!("out_dim {out_dim} must be a multiple of 16 and its half of mask_decoder_heads {decoder_heads}"),
            ));
        }
        Ok(Self {
            llm: LlamaConfig::from_hf(&h, label)?,
            mm_hidden_size: h.mm_hidden_size,
            out_dim,
            decoder_heads,
            decoder_mlp_dim: positive(
                label,
                "mask_decoder_mlp_dim",
                h.mask_decoder_mlp_dim.unwrap_or(2048),
            )?,
            image_size: positive(
                label,
                "resize_vision_tower_size",
                h.resize_vision_tower_size.unwrap_or(448),
            )?,
            vision_tower: h.vision_tower.clone().or(h.mm_vision_tower.clone()),
            vision_select_layer: select,
            scales,
            defaulted: [
                ("hidden_size", h.hidden_size.is_none()),
                ("intermediate_size", h.intermediate_size.is_none()),
                ("num_hidden_layers", h.num_hidden_layers.is_none()),
                ("num_attention_heads", h.num_attention_heads.is_none()),
                ("vocab_size", h.vocab_size.is_none()),
            ]
            .into_iter()
            .filter_map(|(name, missing)| missing.then_some(name))
            .collect(),
        })
    }
}

impl ClipVisionConfig {
    /// Reads a CLIP `config.json`: a `CLIPVisionModel` one (flat) or a full `CLIPModel`
    /// one whose `vision_config` lists only the fields that differ from the defaults.
    pub fn from_file(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        Self::from_value(v, &path.display().to_string())
    }

    /// Same as [`ClipVisionConfig::from_file`] for bytes in memory.
    pub fn from_bytes(bytes: &[u8], label: &str) -> Result<Self> {
        Self::from_value(parse_json(bytes, label)?, label)
    }

    fn from_value(v: Value, label: &str) -> Result<Self> {
        let vision = match (v.get("vision_config"), v.get("vision_config_dict")) {
            (Some(c), _) if c.is_object() => c.clone(),
            (_, Some(c)) if c.is_object() => c.clone(),
            _ => v,
        };
        let h: HfClipVision = typed(vision, label)?;
        if let Some(act) = &h.hidden_act {
            if act != "quick_gelu" {
                return Err(Error::config(
                    label,
                    format!("hidden_act `{act}` is not supported (CLIP uses `quick_gelu`)"),
                ));
            }
        }
        let heads = positive(
            label,
            "num_attention_heads",
            h.num_attention_heads.unwrap_or(12),
        )?;
        let hidden = positive(label, "hidden_size", h.hidden_size.unwrap_or(768))?;
        if hidden % heads != 0 {
            return Err(Error::config(
                label,
                "hidden_size must be a multiple of num_attention_heads",
            ));
        }
        Ok(Self {
            hidden_size: hidden,
            intermediate_size: positive(
                label,
                "intermediate_size",
                h.intermediate_size.unwrap_or(3072),
            )?,
            num_hidden_layers: positive(
                label,
                "num_hidden_layers",
                h.num_hidden_layers.unwrap_or(12),
            )?,
            num_attention_heads: heads,
            num_channels: positive(label, "num_channels", h.num_channels.unwrap_or(3))?,
            image_size: positive(label, "image_size", h.image_size.unwrap_or(224))?,
            patch_size: positive(label, "patch_size", h.patch_size.unwrap_or(32))?,
            layer_norm_eps: h.layer_norm_eps.unwrap_or(1e-5),
        })
    }

    /// `openai/clip-vit-large-patch14-336`, the tower of the released checkpoints.
    pub fn clip_vit_large_patch14_336() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 336,
            patch_size: 14,
            layer_norm_eps: 1e-5,
        }
    }
}

/// Finds the CLIP directory: an explicit one, else the config's `vision_tower` as a path
/// (absolute, next to the model directory, or inside it), else the Hugging Face cache
/// (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`:
/// `models--ORG--NAME/snapshots/*`).
pub fn resolve_vision_tower(
    explicit: Option<&Path>,
    config_value: Option<&str>,
    model_dir: &Path,
) -> Result<PathBuf> {
    resolve_in(explicit, config_value, model_dir, &hf_hub_dirs())
}

fn resolve_in(
    explicit: Option<&Path>,
    config_value: Option<&str>,
    model_dir: &Path,
    hubs: &[PathBuf],
) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        if dir.is_dir() {
            return Ok(dir.to_path_buf());
        }
        return Err(Error::config(
            dir.display().to_string(),
            "--vision-tower is not a directory",
        ));
    }
    let Some(name) = config_value else {
        return Err(Error::config(
            model_dir.join("config.json").display().to_string(),
            "no `vision_tower` / `mm_vision_tower` field; pass --vision-tower DIR (openai/clip-vit-large-patch14-336)",
        ));
    };
    let mut tried = Vec::new();
    let as_path = Path::new(name);
    let base = as_path.file_name().map(PathBuf::from).unwrap_or_default();
    let parent = model_dir.parent().unwrap_or(Path::new("."));
    let mut candidates = vec![
        as_path.to_path_buf(),
        parent.join(name),
        model_dir.join(name),
        parent.join(&base),
    ];
    if name.contains('/') && !as_path.is_absolute() {
        let repo = format!("models--{}", name.replace('/', "--"));
        for hub in hubs {
            let snapshots = hub.join(&repo).join("snapshots");
            if let Ok(entries) = std::fs::read_dir(&snapshots) {
                let mut snaps: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                snaps.sort();
                candidates.extend(snaps);
            } else {
                candidates.push(snapshots);
            }
        }
    }
    for c in candidates {
        if c.join("config.json").is_file() {
            return Ok(c);
        }
        let shown = c.display().to_string();
        if !tried.contains(&shown) {
            tried.push(shown);
        }
    }
    Err(Error::config(
        model_dir.join("config.json").display().to_string(),
        format!(
            "vision tower `{name}` not found (looked for a config.json in: {}); pass --vision-tower DIR",
            tried.join(", ")
        ),
    ))
}

fn hf_hub_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("HF_HUB_CACHE") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("HF_HOME") {
        dirs.push(PathBuf::from(d).join("hub"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cache/huggingface/hub"));
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_vision_config_takes_defaults_for_missing_fields() {
        let json = br#"{"architectures":["CLIPModel"],"vision_config":{"hidden_size":1024,"image_size":336,"intermediate_size":4096,"num_attention_heads":16,"num_hidden_layers":24,"patch_size":14},"text_config":{}}"#;
        let c = ClipVisionConfig::from_bytes(json, "clip").unwrap();
        assert_eq!(c, ClipVisionConfig::clip_vit_large_patch14_336());
    }

    #[test]
    fn llama_defaults_are_the_7b_ones() {
        let c = PixelLmConfig::from_bytes(b"{}", "cfg").unwrap();
        assert_eq!(c.llm.hidden_size, 4096);
        assert_eq!(c.llm.num_key_value_heads, 32);
        assert_eq!(c.image_size, 448);
        assert_eq!(c.out_dim, 256);
    }

    #[test]
    fn vision_tower_is_found_next_to_the_model_and_in_the_hf_cache() {
        let root = std::env::temp_dir().join(format!("pixellm-resolve-{}", std::process::id()));
        let model = root.join("PixelLM-7B/hf_model");
        let hub = root.join("hub");
        let snap = hub.join("models--openai--clip-vit-large-patch14-336/snapshots/abc123");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        let name = Some("openai/clip-vit-large-patch14-336");
        let found = resolve_in(None, name, &model, std::slice::from_ref(&hub)).unwrap();
        assert_eq!(found, snap);

        // A copy next to the model directory wins over the cache.
        let local = root.join("PixelLM-7B/clip-vit-large-patch14-336");
        std::fs::create_dir_all(&local).unwrap();
        std::fs::write(local.join("config.json"), "{}").unwrap();
        assert_eq!(
            resolve_in(None, name, &model, std::slice::from_ref(&hub)).unwrap(),
            local
        );

        // Nothing anywhere: the error lists where it looked.
        let e = resolve_in(None, Some("org/missing"), &model, &[hub])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("org/missing") && e.contains("models--org--missing"),
            "{e}"
        );
        assert!(resolve_in(None, None, &model, &[])
            .unwrap_err()
            .to_string()
            .contains("--vision-tower"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn bad_json_names_the_file() {
        let e = PixelLmConfig::from_bytes(b"{not json", "dir/config.json").unwrap_err();
        assert!(e.to_string().contains("dir/config.json"), "{e}");
        let e = PixelLmConfig::from_bytes(br#"{"hidden_size": "big"}"#, "c.json").unwrap_err();
        assert!(e.to_string().contains("c.json"), "{e}");
        let e = PixelLmConfig::from_bytes(br#"{"num_attention_heads": 0}"#, "c.json").unwrap_err();
        assert!(e.to_string().contains("num_attention_heads"), "{e}");
    }
}
