//! The PixelLM network as one tree of Burn tensors, backend-free: the device (CPU, wgpu,
//! CUDA) and float dtype are chosen when the weights are loaded.
//!
//! Stage functions are public so tests can compare each against the conformance goldens
//! and benches can time each; [`crate::pipeline`] strings them together.

pub mod codebook;
pub mod interpolate;
pub mod llm;
pub mod mask_decoder;
pub mod neck;
pub mod nn;
pub mod params;
pub mod postprocess;
pub mod projector;
pub mod prompt_encoder;
pub mod two_way_transformer;
pub mod vision;

use burn::tensor::{Bool, DType, Device, Tensor};

use crate::config::{ClipVisionConfig, PixelLmConfig};
use crate::error::{Error, Result};
use crate::kernels::quant::Quant;
use crate::weights::WeightFiles;
use codebook::Codebook;
use llm::Llama;
use mask_decoder::{LevelOutput, MaskDecoderMultiScale};
use neck::ImageFeatureNeck;
use params::Params;
use projector::{Activation, TwoLayerMlp};
use prompt_encoder::PromptEncoder;
use vision::{VisionOutput, VisionTower};

/// The id PixelLM/LLaVA splices the image features at (defined once, with the tokenizer
/// that produces it).
pub use crate::tokenizer::IMAGE_TOKEN_INDEX;

/// PixelLM weights on one device.
#[derive(Debug, Clone)]
pub struct PixelLmModel {
    config: PixelLmConfig,
    clip_config: ClipVisionConfig,
    vision: VisionTower,
    mm_projector: TwoLayerMlp,
    out_mm_projector: TwoLayerMlp,
    llm: Llama,
    codebook: Codebook,
    neck: ImageFeatureNeck,
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoderMultiScale,
    device: Device,
    dtype: DType,
    /// Checkpoint tensors the model never read, less the documented ones (`docs/model.md`
    /// §15.25): a sign of a checkpoint for another architecture or configuration.
    unused_tensors: Vec<String>,
    /// [`PixelLmModel::weight_bytes`].
    weight_bytes: u64,
}

/// Whether an unread checkpoint tensor is one the released checkpoints are known to carry
/// unused (`docs/model.md` §15.25, §8): RoPE buffers, SAM's point/box/mask prompt encoder,
/// the IoU head, the hypernetworks of SAM's unused multimask outputs, and the parts of a full CLIP checkpoint LLaVA never runs (its text model,
/// projections, post-layernorm and the layers after the selected one).
fn documented_unused(name: &str, clip_layers_used: usize) -> bool {
    const PARTS: [&str; 11] = [
        "rotary_emb.inv_freq",
        "prompt_encoder.point_embeddings",
        "prompt_encoder.not_a_point_embed",
        "prompt_encoder.mask_downscaling",
        "iou_prediction_head",
        "text_model.",
        "text_projection",
        "visual_projection",
        "logit_scale",
        "post_layernorm",
        "position_ids",
    ];
    if PARTS.iter().any(|p| name.contains(p)) {
        return true;
    }
    // SAM's hypernetwork MLPs of the multimask outputs 1..3: PixelLM reads mask 0 only.
    if let Some(rest) = name.split("output_hypernetworks_mlps.").nth(1) {
        return !rest.starts_with("0.");
    }
    // `vision_model.encoder.layers.{i}.*` past the feature layer LLaVA reads.
    name.strip_prefix("vision_model.encoder.layers.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .is_some_and(|i| i >= clip_layers_used)
}

/// Everything derived from the image alone: computed once per image, reused for every
/// generated token and every target.
#[derive(Debug, Clone)]
pub struct ImageFeatures {
    /// CLIP hidden states.
    pub vision: VisionOutput,
    /// Deep patch features 2×2-averaged to the LLM grid, `[1, g², D]` (`proj.llm_in_16x16`).
    pub llm_in: Tensor<3>,
    /// `mm_projector` output spliced into the LLM input, `[1, g², H]`.
    pub llm_tokens: Tensor<3>,
    /// `out_mm_projector` of both scales, `[2, patches, H]` (deep first).
    pub mask_features: Tensor<3>,
    /// Neck output `[2, 256, G, G]` (deep first).
    pub decoder_features: Tensor<4>,
}

/// The pixel decoder's outputs for `N` targets.
#[derive(Debug, Clone)]
pub struct MaskOutputs {
    /// `text_hidden_fcs` of the gathered hidden states `[6N, 256]`.
    pub projected: Tensor<2>,
    /// Fused codebook embeddings `[N, 2, 256]`.
    pub prompt_embeddings: Tensor<3>,
    /// Level 0 (deep features, 64×64 masks).
    pub level0: LevelOutput,
    /// Level 1 (shallow features, 128×128 masks).
    pub level1: LevelOutput,
    /// Both levels averaged at 128×128, `[N, 1, 128, 128]`.
    pub low_res: Tensor<4>,
}

impl PixelLmModel {
    /// Builds a model of the given shapes with random weights (no checkpoint), for
    /// benchmarks at the real PixelLM sizes.
    pub fn random(
        config: &PixelLmConfig,
        clip_config: &ClipVisionConfig,
        device: &Device,
        dtype: DType,
        quant: Quant,
    ) -> Result<Self> {
        crate::kernels::check_quant(quant, device)?;
        let p = Params::random(device, dtype).with_quant(quant);
        // As `load` (one weight counter for both views).
        let clip = p.clone().with_quant(quant.for_vision());
        Self::build(config, clip_config, &p, &clip)
    }

    /// Builds the model from opened PixelLM and CLIP checkpoints onto `device` in `dtype`.
    /// `progress(done, total)` follows the checkpoint bytes read (`total` counts every
    /// tensor in the files, including the few unused ones).
    // The two checkpoints, the device and the two precision choices are each needed.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        config: &PixelLmConfig,
        clip_config: &ClipVisionConfig,
        weights: &WeightFiles,
        clip_weights: &WeightFiles,
        device: &Device,
        dtype: DType,
        quant: Quant,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        crate::kernels::check_quant(quant, device)?;
        let monitor =
            params::LoadMonitor::new(weights.total_bytes() + clip_weights.total_bytes(), progress);
        let root = Params::new(weights, device, dtype)
            .with_monitor(&monitor)
            .with_quant(quant);
        let clip = Params::new(clip_weights, device, dtype)
            .with_monitor(&monitor)
            .with_quant(quant.for_vision());
        let mut model = Self::build(config, clip_config, &root, &clip)
            .map_err(|e| with_config_hint(e, config))?;

        let clip_layers = model.vision.layers_used();
        let mut unused = monitor.unused(weights);
        unused.extend(monitor.unused(clip_weights));
        unused.retain(|n| !documented_unused(n, clip_layers));
        model.unused_tensors = unused;
        Ok(model)
    }

    /// Bytes the weights occupy on the device (dense tensors at their dtype's size, packed
    /// matrices at their blocks' size; `bench --json`'s `weight_bytes`).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Checkpoint tensors this model never read, less those the released checkpoints are
    /// known to carry unused (`docs/model.md` §15.25). Non-empty for a checkpoint of
    /// another architecture or configuration: worth a warning.
    pub fn unused_tensors(&self) -> &[String] {
        &self.unused_tensors
    }

    /// Builds the model from parameter views (the checkpoint root and the CLIP root):
    /// checkpoints, random values, in-memory tensors (training) or a recording.
    pub fn from_params(
        config: &PixelLmConfig,
        clip_config: &ClipVisionConfig,
        root: &Params,
        clip: &Params,
    ) -> Result<Self> {
        Self::build(config, clip_config, root, clip)
    }

    fn build(
        config: &PixelLmConfig,
        clip_config: &ClipVisionConfig,
        root: &Params,
        clip: &Params,
    ) -> Result<Self> {
        let (device, dtype) = (root.device(), root.dtype());
        if !device.supports_dtype(dtype) {
            return Err(Error::Backend(format!(
                "this device does not support {dtype:?} tensors; use f32{}",
                if device.supports_dtype(DType::F16) {
                    " or f16"
                } else {
                    ""
                }
            )));
        }
        let d = clip_config.hidden_size;
        if let Some(mm) = config.mm_hidden_size {
            if mm != d {
                return Err(Error::config(
                    "config.json",
                    format!("mm_hidden_size = {mm} but the vision tower's hidden_size is {d}"),
                ));
            }
        }
        let grid = config.image_size / clip_config.patch_size;
        if !grid.is_multiple_of(2) {
            return Err(Error::config(
                "config.json",
                format!(
                    "{} px / patch {} gives an odd grid {grid}; the LLM grid is half of it",
                    config.image_size, clip_config.patch_size
                ),
            ));
        }
        let h = config.llm.hidden_size;
        let m = root.pp("model");
        let vision = VisionTower::load(&clip.pp("vision_model"), clip_config, config.image_size)?;
        Ok(Self {
            vision,
            mm_projector: TwoLayerMlp::load(
                &m.pp("mm_projector"),
                (d, 2 * h, h),
                Activation::Gelu,
            )?,
            out_mm_projector: TwoLayerMlp::load(
                &m.pp("out_mm_projector"),
                (d, 2 * h, h),
                Activation::Gelu,
            )?,
            llm: Llama::load(root, &config.llm)?,
            codebook: Codebook::load(
                &m.pp("text_hidden_fcs").pp(0),
                h,
                config.out_dim,
                3,
                config.scales,
            )?,
            neck: ImageFeatureNeck::load(&m.pp("image_feature_neck"), h, config.out_dim)?,
            prompt_encoder: PromptEncoder::load(&m.pp("prompt_encoder"), config.out_dim, grid)?,
            mask_decoder: MaskDecoderMultiScale::load(
                &m.pp("mask_decoder"),
                two_way_transformer::Shape {
                    dim: config.out_dim,
                    heads: config.decoder_heads,
                    mlp_dim: config.decoder_mlp_dim,
                },
                grid,
            )?,
            config: config.clone(),
            clip_config: clip_config.clone(),
            device: device.clone(),
            dtype,
            unused_tensors: Vec::new(),
            weight_bytes: root.weight_bytes_with(clip),
        })
    }

    /// The PixelLM configuration.
    pub fn config(&self) -> &PixelLmConfig {
        &self.config
    }

    /// The vision tower configuration.
    pub fn clip_config(&self) -> &ClipVisionConfig {
        &self.clip_config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The float dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The language model.
    pub fn llm(&self) -> &Llama {
        &self.llm
    }

    /// The vision tower.
    pub fn vision(&self) -> &VisionTower {
        &self.vision
    }

    /// Codebook tokens per target.
    pub fn tokens_per_target(&self) -> usize {
        self.codebook.tokens_per_target()
    }

    /// The dense positional encoding of level 0, `[1, 256, G, G]`.
    pub fn dense_pe(&self) -> Tensor<4> {
        self.prompt_encoder.dense_pe.clone()
    }

    /// The dense prompt embedding, `[1, 256, G, G]`.
    pub fn dense_embeddings(&self) -> Tensor<4> {
        let g = self.grid();
        self.prompt_encoder.dense_embeddings(g, g)
    }

    /// Patches per side at the run resolution (32).
    pub fn grid(&self) -> usize {
        self.config.image_size / self.clip_config.patch_size
    }

    /// Side of the LLM's image grid (16): the deep features are 2×2-averaged.
    pub fn llm_grid(&self) -> usize {
        self.grid() / 2
    }

    /// Uploads host pixels `[3, S, S]` as the `[1, 3, S, S]` tower input.
    pub fn pixels(&self, values: Vec<f32>) -> Tensor<4> {
        let s = self.config.image_size;
        params::upload(values, [1, 3, s, s], &self.device, self.dtype)
    }

    /// Vision tower, projectors and neck: every image-only stage (`docs/model.md` §5–6).
    ///
    /// `patch_valid`: `[G²]`, false for patches whose top-left pixel is padding.
    pub fn encode_image(&self, pixels: Tensor<4>, patch_valid: &[bool]) -> ImageFeatures {
        self.project_image(self.run_vision(pixels, patch_valid))
    }

    /// The vision tower alone, with padded patches masked as keys.
    pub fn run_vision(&self, pixels: Tensor<4>, patch_valid: &[bool]) -> VisionOutput {
        self.vision.forward(pixels, self.key_padding(patch_valid))
    }

    /// Projectors and neck on the vision tower's output (`docs/model.md` §6).
    pub fn project_image(&self, vision: VisionOutput) -> ImageFeatures {
        let (g, lg) = (self.grid(), self.llm_grid());
        let d = self.clip_config.hidden_size;
        let h = self.config.llm.hidden_size;

        // Patch tokens of both scales (CLS dropped), deep first.
        let deep = vision.deep.clone().narrow(1, 1, g * g);
        let shallow = vision.shallow.clone().narrow(1, 1, g * g);

        // LLM tokens: bilinear 32 -> 16 (exactly a 2×2 average) on the [D, g, g] grid.
        let grid = deep.clone().swap_dims(1, 2).reshape([1, d, g, g]);
        let pooled = interpolate::bilinear(grid, (lg, lg));
        let llm_in = pooled.reshape([1, d, lg * lg]).swap_dims(1, 2);
        let llm_tokens = self.mm_projector.forward(llm_in.clone());

        let both = Tensor::cat(vec![deep, shallow], 0);
        let mask_features = self.out_mm_projector.forward(both);
        let maps = mask_features.clone().swap_dims(1, 2).reshape([2, h, g, g]);
        let decoder_features = self.neck.forward(maps);
        ImageFeatures {
            vision,
            llm_in,
            llm_tokens,
            mask_features,
            decoder_features,
        }
    }

    fn key_padding(&self, patch_valid: &[bool]) -> Option<Tensor<1, Bool>> {
        if patch_valid.iter().all(|&v| v) {
            return None;
        }
        // CLS is always visible.
        let mask: Vec<bool> = std::iter::once(false)
            .chain(patch_valid.iter().map(|v| !v))
            .collect();
        let n = mask.len();
        Some(crate::kernels::upload_mask(mask, [n], &self.device))
    }

    /// LLM input embeddings with the image tokens spliced in place of the single
    /// `IMAGE_TOKEN_INDEX` (`docs/model.md` §6.2). Returns `[1, E, H]` and the position of
    /// the first image token.
    pub fn splice_image(
        &self,
        ids: &[i64],
        image_tokens: &Tensor<3>,
    ) -> Result<(Tensor<3>, usize)> {
        let p = image_position(ids)?;
        let vocab = self.config.llm.vocab_size as i64;
        if let Some(bad) = ids
            .iter()
            .find(|&&i| i != IMAGE_TOKEN_INDEX && !(0..vocab).contains(&i))
        {
            return Err(Error::Prompt(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let mut parts = Vec::new();
        if p > 0 {
            parts.push(self.llm.embed(&ids[..p], &self.device));
        }
        parts.push(image_tokens.clone());
        if p + 1 < ids.len() {
            parts.push(self.llm.embed(&ids[p + 1..], &self.device));
        }
        Ok((Tensor::cat(parts, 1), p))
    }

    /// Codebook, prompt encoder, both decoder levels and the 128×128 fusion
    /// (`docs/model.md` §9–10.4).
    ///
    /// `seg_hidden`: final-norm hidden states that predicted the codebook tokens, `[6N, H]`.
    pub fn decode_masks(&self, seg_hidden: Tensor<2>, decoder_features: &Tensor<4>) -> MaskOutputs {
        let projected = self.codebook.project(seg_hidden);
        let prompt_embeddings = self.codebook.fuse(projected.clone());
        let g = self.grid();
        let sparse = |l: usize| prompt_embeddings.clone().narrow(1, l, 1);
        let features = |l: usize| decoder_features.clone().narrow(0, l, 1);
        let no_mask = &self.prompt_encoder.no_mask_embed;
        let dense_pe = &self.prompt_encoder.dense_pe;
        let level0 = self
            .mask_decoder
            .level(0, features(0), sparse(0), no_mask, dense_pe, None);
        let level1 = self.mask_decoder.level(
            1,
            features(1),
            sparse(1),
            no_mask,
            dense_pe,
            Some(&level0.masks),
        );
        let out = 4 * g;
        let m0 = interpolate::bilinear(level0.masks.clone(), (out, out));
        let m1 = interpolate::bilinear(level1.masks.clone(), (out, out));
        // multiscale_scalar: 1/2 each, constants like multiseg_scalar.
        let low_res = (m0 + m1).mul_scalar(0.5);
        MaskOutputs {
            projected,
            prompt_embeddings,
            level0,
            level1,
            low_res,
        }
    }

    /// Low-res logits -> f32 logits at the original image size ([`postprocess::masks`]).
    ///
    /// # Shapes
    /// `[N, 1, 128, 128]` -> `[N, 1, H0, W0]`
    pub fn postprocess(
        &self,
        low_res: Tensor<4>,
        resized: (usize, usize),
        original: (usize, usize),
    ) -> Tensor<4> {
        postprocess::masks(
            low_res,
            self.config.image_size,
            resized,
            original,
            &self.device,
        )
    }
}

/// Position of the single image placeholder in `ids`.
pub fn image_position(ids: &[i64]) -> Result<usize> {
    let mut found = ids
        .iter()
        .enumerate()
        .filter(|(_, &i)| i == IMAGE_TOKEN_INDEX)
        .map(|(p, _)| p);
    match (found.next(), found.next()) {
        (Some(p), None) => Ok(p),
        (None, _) => Err(Error::Prompt(
            "the prompt has no <image> placeholder".into(),
        )),
        (Some(_), Some(_)) => Err(Error::Prompt(
            "the prompt has more than one <image> placeholder".into(),
        )),
    }
}

/// A shape mismatch in the language model's tensors most often means `config.json`
/// lacks a field and its LLaMA-7B default applies: say so in the error.
fn with_config_hint(e: Error, config: &PixelLmConfig) -> Error {
    match e {
        Error::Tensor { file, name, msg }
            if msg.contains("expected") && !config.defaulted.is_empty() =>
        {
            let msg = format!(
                "{msg} (config.json does not set {}: the Hugging Face defaults apply)",
                config.defaulted.join(", ")
            );
            Error::Tensor { file, name, msg }
        }
        e => e,
    }
}

#[cfg(all(test, feature = "cpu", not(target_family = "wasm")))]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn documented_unused_names_are_not_reported() {
        for name in [
            "model.layers.3.self_attn.rotary_emb.inv_freq",
            "model.prompt_encoder.point_embeddings.0.weight",
            "model.mask_decoder.output_hypernetworks_mlps.2.layers.0.weight",
            "vision_model.encoder.layers.23.mlp.fc1.weight",
            "vision_model.post_layernorm.weight",
            "text_model.embeddings.token_embedding.weight",
        ] {
            assert!(documented_unused(name, 23), "{name}");
        }
        for name in [
            "model.mask_decoder.output_hypernetworks_mlps.0.layers.0.weight",
            "vision_model.encoder.layers.22.mlp.fc1.weight",
            "model.extra_head.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ] {
            assert!(!documented_unused(name, 23), "{name}");
        }
    }

    #[test]
    fn a_tensor_nothing_reads_is_reported_and_the_kit_has_none() {
        let kit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/conformance");
        let config = PixelLmConfig::from_file(&kit.join("checkpoint/config.json")).unwrap();
        let clip_dir = kit.join("clip-vit-tiny-patch14-336");
        let clip_config = ClipVisionConfig::from_file(&clip_dir.join("config.json")).unwrap();
        let clip = WeightFiles::open_dir(&clip_dir).unwrap();
        let device = Device::flex();
        let load = |weights: &WeightFiles| {
            PixelLmModel::load(
                &config,
                &clip_config,
                weights,
                &clip,
                &device,
                DType::F32,
                Quant::Stored,
                &mut |_, _| {},
            )
            .unwrap()
        };
        let mut weights = WeightFiles::open_dir(&kit.join("checkpoint")).unwrap();
        assert_eq!(load(&weights).unused_tensors(), &[] as &[String]);
        let extra = safetensors::serialize(
            [(
                "model.extra_head.weight",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &[0u8; 8])
                    .unwrap(),
            )],
            None,
        )
        .unwrap();
        weights.extend(WeightFiles::from_bytes("extra.safetensors", extra).unwrap());
        assert_eq!(
            load(&weights).unused_tensors(),
            &["model.extra_head.weight"]
        );
    }
}
