//! The trainable state: every checkpoint tensor by its Hugging Face name, with AdamW's
//! moments, initialised by name, saved and loaded as safetensors.
//!
//! The model code stays the inference code: [`ParamStore::tensor_map`] hands the model
//! builder (through `Params::from_map`) the stored tensors as autodiff leaves, so a
//! forward pass of the ordinary modules records a graph back to them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::tensor::{Dtype as StDtype, TensorView};

use crate::config::{ClipVisionConfig, PixelLmConfig};
use crate::data::synth::Rng;
use crate::model::params::{Params, TensorMap};
use crate::model::PixelLmModel;
use crate::pipeline::read_f32;
use crate::weights::WeightFiles;
use crate::{Error, Result};

/// What `pixellm train --train` updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainMode {
    /// Every tensor except the Fourier positional-encoding buffers.
    All,
    /// PixelLM's recipe: CLIP, the LLM body, the neck and the prompt encoder frozen; LoRA
    /// (r 8, α 16) on the LLM's q/v projections; embeddings, LM head, `text_hidden_fcs`,
    /// the mask decoder and both projectors trained.
    Official,
}

impl std::str::FromStr for TrainMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Self::All),
            "official" => Ok(Self::Official),
            _ => Err(Error::config(
                "--train",
                format!("`{s}`: expected all or official"),
            )),
        }
    }
}

/// LoRA rank and α of the official recipe.
pub const LORA_RANK: usize = 8;
/// LoRA α of the official recipe.
pub const LORA_ALPHA: f32 = 16.0;

/// One named tensor.
#[derive(Debug, Clone)]
pub struct Param {
    /// Checkpoint name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Shape as the model asks for it.
    pub shape: Vec<usize>,
    /// Flat values (no autodiff).
    pub value: Tensor<1>,
    /// Updated by the optimiser.
    pub trainable: bool,
    /// AdamW first moment.
    pub exp_avg: Option<Tensor<1>>,
    /// AdamW second moment.
    pub exp_avg_sq: Option<Tensor<1>>,
}

/// Every tensor of a model, by name.
#[derive(Debug, Clone)]
pub struct ParamStore {
    /// In the loader's order.
    pub params: Vec<Param>,
    index: HashMap<String, usize>,
    /// LoRA pairs `(base index, A index, B index)`: the model sees `W + α/r · B·A`.
    lora: Vec<(usize, usize, usize)>,
    device: Device,
}

/// The `(name, shape)` list a configuration needs, from the loader itself.
pub fn names_and_shapes(
    config: &PixelLmConfig,
    clip: &ClipVisionConfig,
) -> Result<Vec<(String, Vec<usize>)>> {
    let device = Device::flex();
    let (root, vision) = (RefCell::new(Vec::new()), RefCell::new(Vec::new()));
    PixelLmModel::from_params(
        config,
        clip,
        &Params::recording(&root, &device, DType::F32),
        &Params::recording(&vision, &device, DType::F32),
    )?;
    let mut all = root.into_inner();
    all.extend(vision.into_inner());
    // Each name once (tied tensors are asked for twice).
    let mut seen = std::collections::HashSet::new();
    all.retain(|(n, _)| seen.insert(n.clone()));
    Ok(all)
}

/// Whether `name` is a constant buffer (never trained).
fn is_buffer(name: &str) -> bool {
    name.ends_with("positional_encoding_gaussian_matrix")
}

/// Deterministic initial values for `name` (PyTorch/Hugging Face defaults by kind):
/// linear and convolution weights U(±1/√fan_in), biases 0, norm scales 1, token embeddings
/// N(0, 1), CLIP's position table N(0, 0.02), SAM's learned tokens N(0, 0.02) (see below), CLIP's class embedding N(0, 1/√D), the Fourier
/// matrices N(0, 1).
fn init_values(name: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng::new(seed ^ h);
    let mut normal = |std: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                // Box–Muller.
                let u1 = rng.f32().max(1e-7);
                let u2 = rng.f32();
                std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect()
    };
    if is_buffer(name) {
        return normal(1.0);
    }
    if name.ends_with("class_embedding") {
        return normal(1.0 / (shape[0] as f32).sqrt());
    }
    if shape.len() == 1 {
        return vec![if name.ends_with("bias") { 0.0 } else { 1.0 }; n];
    }
    // Token embeddings N(0, 1), PyTorch's `nn.Embedding` default, not Hugging Face's
    // N(0, 0.02) (meant for weights that get overwritten by a checkpoint): with 0.02 the
    // residual stream of a fresh model is the attention layers' average of the whole
    // sequence, and the LLM states that feed the codebook start out alike for every target
    // (cosine 0.99 between two targets' states, measured), which the decoder then learns to
    // ignore.
    if name.ends_with("embed_tokens.weight") {
        return normal(1.0);
    }
    if name.ends_with("position_embedding.weight") {
        return normal(0.02);
    }
    // SAM initialises its learned tokens N(0, 1); its prompts (points, boxes) are of that
    // size too. PixelLM's prompt is a 1/6-weighted sum of projected LLM states, far smaller,
    // and a from-scratch model with N(0, 1) tokens learned to ignore it: after 1,500 steps
    // both targets of a question got the same "every object" mask (their prompt embeddings
    // at cosine 0.999). Small tokens leave the prompt the decoder's main input.
    if [
        "iou_token.weight",
        "mask_tokens.weight",
        "level_embed.weight",
        "no_mask_embed.weight",
    ]
    .iter()
    .any(|s| name.ends_with(s))
    {
        return normal(0.02);
    }
    let fan_in = match shape.len() {
        2 => shape[1],
        // ConvTranspose2d weights are [in, out, k, k]: PyTorch's fan_in is out·k·k.
        4 if name.contains("output_upscaling") || name.contains("upsample_2x") => {
            shape[1] * shape[2] * shape[3]
        }
        4 => shape[1] * shape[2] * shape[3],
        _ => shape[shape.len() - 1],
    };
    let a = 1.0 / (fan_in.max(1) as f32).sqrt();
    (0..n).map(|_| (rng.f32() * 2.0 - 1.0) * a).collect()
}

fn upload(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), (device, DType::F32))
}

/// Which parameters `mode` trains.
fn trainable(name: &str, mode: TrainMode) -> bool {
    if is_buffer(name) {
        return false;
    }
    match mode {
        TrainMode::All => true,
        TrainMode::Official => {
            name == "model.embed_tokens.weight"
                || name == "lm_head.weight"
                || name.contains("text_hidden_fcs")
                || name.contains("mask_decoder")
                || name.contains("mm_projector")
        }
    }
}

/// The LLM projections LoRA adapts in the official recipe.
fn lora_target(name: &str) -> bool {
    name.starts_with("model.layers.")
        && (name.ends_with("self_attn.q_proj.weight") || name.ends_with("self_attn.v_proj.weight"))
}

impl ParamStore {
    /// Fresh, initialised weights for a configuration.
    pub fn init(
        config: &PixelLmConfig,
        clip: &ClipVisionConfig,
        mode: TrainMode,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let names = names_and_shapes(config, clip)?;
        let params = names
            .into_iter()
            .map(|(name, shape)| {
                let value = upload(init_values(&name, &shape, seed), device);
                Param {
                    trainable: trainable(&name, mode),
                    name,
                    shape,
                    value,
                    exp_avg: None,
                    exp_avg_sq: None,
                }
            })
            .collect();
        Ok(Self::new(params, mode, seed, device))
    }

    /// The weights of opened checkpoint files (the model's and the vision tower's).
    pub fn from_files(
        config: &PixelLmConfig,
        clip: &ClipVisionConfig,
        weights: &WeightFiles,
        clip_weights: &WeightFiles,
        mode: TrainMode,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let names = names_and_shapes(config, clip)?;
        let mut params = Vec::with_capacity(names.len());
        for (name, shape) in names {
            let files = if name.starts_with("vision_model.") {
                clip_weights
            } else {
                weights
            };
            let values = files.read_f32(&name, &shape)?;
            params.push(Param {
                trainable: trainable(&name, mode),
                value: upload(values, device),
                name,
                shape,
                exp_avg: None,
                exp_avg_sq: None,
            });
        }
        Ok(Self::new(params, mode, seed, device))
    }

    fn new(mut params: Vec<Param>, mode: TrainMode, seed: u64, device: &Device) -> Self {
        let mut lora = Vec::new();
        if mode == TrainMode::Official {
            let targets: Vec<usize> = (0..params.len())
                .filter(|&i| lora_target(&params[i].name))
                .collect();
            for base in targets {
                let (name, shape) = (params[base].name.clone(), params[base].shape.clone());
                let (out, inp) = (shape[0], shape[1]);
                // PEFT: A ~ U(±1/√in) (kaiming_uniform a=√5), B = 0, so training starts at W.
                let a = init_values(&format!("{name}.lora_A"), &[LORA_RANK, inp], seed);
                let ai = params.len();
                params.push(Param {
                    name: format!("{name}.lora_A"),
                    shape: vec![LORA_RANK, inp],
                    value: upload(a, device),
                    trainable: true,
                    exp_avg: None,
                    exp_avg_sq: None,
                });
                let bi = params.len();
                params.push(Param {
                    name: format!("{name}.lora_B"),
                    shape: vec![out, LORA_RANK],
                    value: upload(vec![0.0; out * LORA_RANK], device),
                    trainable: true,
                    exp_avg: None,
                    exp_avg_sq: None,
                });
                lora.push((base, ai, bi));
            }
        }
        let index = params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        Self {
            params,
            index,
            lora,
            device: device.clone(),
        }
    }

    /// The device the values live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Trainable values.
    pub fn trainable_count(&self) -> usize {
        self.params
            .iter()
            .filter(|p| p.trainable)
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    /// All values.
    pub fn total_count(&self) -> usize {
        self.lora_free()
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    /// The parameters that make up the model (LoRA factors excluded).
    fn lora_free(&self) -> impl Iterator<Item = &Param> {
        self.params
            .iter()
            .filter(|p| !p.name.ends_with(".lora_A") && !p.name.ends_with(".lora_B"))
    }

    /// The tensors the model builder reads. With `leaves`, trainable ones are fresh
    /// autodiff leaves that require gradients (returned too, in `params` order, `None` for
    /// frozen ones) and frozen ones autodiff constants; without, the plain values.
    pub fn tensor_map(&self, leaves: bool) -> (TensorMap, Vec<Option<Tensor<1>>>) {
        let mut tracked: Vec<Option<Tensor<1>>> = Vec::with_capacity(self.params.len());
        let mut values: Vec<Tensor<1>> = Vec::with_capacity(self.params.len());
        for p in &self.params {
            if !leaves {
                values.push(p.value.clone());
                tracked.push(None);
            } else if p.trainable {
                let leaf = p.value.clone().autodiff().require_grad();
                values.push(leaf.clone());
                tracked.push(Some(leaf));
            } else {
                values.push(p.value.clone().autodiff());
                tracked.push(None);
            }
        }
        let scale = LORA_ALPHA / LORA_RANK as f32;
        for &(base, a, b) in &self.lora {
            let shape = &self.params[base].shape;
            let (out, inp) = (shape[0], shape[1]);
            let delta = values[b]
                .clone()
                .reshape([out, LORA_RANK])
                .matmul(values[a].clone().reshape([LORA_RANK, inp]))
                .mul_scalar(scale)
                .reshape([out * inp]);
            values[base] = values[base].clone() + delta;
        }
        let map = self
            .params
            .iter()
            .zip(values)
            .map(|(p, v)| (p.name.clone(), (p.shape.clone(), v)))
            .collect();
        (map, tracked)
    }

    /// The model on the store's device, for inference (no autodiff).
    pub fn model(&self, config: &PixelLmConfig, clip: &ClipVisionConfig) -> Result<PixelLmModel> {
        let (map, _) = self.tensor_map(false);
        let p = Params::from_map(&map, &self.device, DType::F32);
        PixelLmModel::from_params(config, clip, &p, &p)
    }

    /// The weights as the released format stores them (LoRA merged), split into the
    /// PixelLM file's tensors and the vision tower's (`vision_model.*`), as safetensors
    /// bytes in `dtype` (f32, f16 or bf16).
    pub fn export(&self, dtype: DType) -> Result<(Vec<u8>, Vec<u8>)> {
        let (map, _) = self.tensor_map(false);
        let mut model = Vec::new();
        let mut vision = Vec::new();
        for p in self.lora_free() {
            let values = read_f32(map[&p.name].1.clone())?;
            let bytes = encode(&values, dtype);
            let entry = (p.name.clone(), p.shape.clone(), bytes);
            if p.name.starts_with("vision_model.") {
                vision.push(entry);
            } else {
                model.push(entry);
            }
        }
        Ok((serialize(&model, dtype)?, serialize(&vision, dtype)?))
    }

    /// Everything needed to continue exactly: f32 values (LoRA factors unmerged) and the
    /// AdamW moments, as safetensors bytes.
    pub fn state(&self) -> Result<Vec<u8>> {
        let mut entries = Vec::new();
        for p in &self.params {
            let mut put = |suffix: &str, t: &Tensor<1>| -> Result<()> {
                entries.push((
                    format!("{}{suffix}", p.name),
                    p.shape.clone(),
                    encode(&read_f32(t.clone())?, DType::F32),
                ));
                Ok(())
            };
            put("", &p.value)?;
            if let (Some(m), Some(v)) = (&p.exp_avg, &p.exp_avg_sq) {
                put("#exp_avg", m)?;
                put("#exp_avg_sq", v)?;
            }
        }
        serialize(&entries, DType::F32)
    }

    /// Restores [`ParamStore::state`] bytes into a store of the same layout.
    pub fn load_state(&mut self, bytes: &[u8], label: &str) -> Result<()> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| Error::format(label, e.to_string()))?;
        let device = self.device.clone();
        let read = |name: &str, shape: &[usize]| -> Result<Option<Tensor<1>>> {
            let t = match st.tensor(name) {
                Ok(t) => t,
                Err(_) => return Ok(None),
            };
            if t.dtype() != StDtype::F32 || t.shape() != shape {
                return Err(Error::Tensor {
                    file: label.to_string(),
                    name: name.to_string(),
                    msg: format!("{:?} {:?}, expected F32 {shape:?}", t.dtype(), t.shape()),
                });
            }
            let values: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok(Some(upload(values, &device)))
        };
        for p in self.params.iter_mut() {
            p.value = read(&p.name, &p.shape)?.ok_or_else(|| Error::MissingTensor {
                name: p.name.clone(),
                searched: label.to_string(),
                expected: p.shape.clone(),
            })?;
            p.exp_avg = read(&format!("{}#exp_avg", p.name), &p.shape)?;
            p.exp_avg_sq = read(&format!("{}#exp_avg_sq", p.name), &p.shape)?;
        }
        Ok(())
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.index.get(name).map(|&i| &self.params[i])
    }
}

fn encode(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn serialize(entries: &[(String, Vec<usize>, Vec<u8>)], dtype: DType) -> Result<Vec<u8>> {
    let st_dtype = match dtype {
        DType::F16 => StDtype::F16,
        DType::BF16 => StDtype::BF16,
        _ => StDtype::F32,
    };
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(st_dtype, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::format("<safetensors>", e.to_string()))
        })
        .collect::<Result<_>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::format("<safetensors>", e.to_string()))
}

/// Reads a file into memory, naming it on error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}
