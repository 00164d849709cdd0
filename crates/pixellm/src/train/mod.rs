//! Training PixelLM on the inference module tree (`pixellm train`): the paper's losses,
//! AdamW, global gradient-norm clipping, checkpoints that resume exactly, and an output
//! folder that is a complete model directory.
//!
//! The forward pass is the inference code itself. Burn's autodiff is a run-time decorator
//! of the device; the weights live in a [`store::ParamStore`] under their checkpoint names
//! and are handed to the ordinary model builder as autodiff leaves every step. Output
//! folder (`--out`):
//!
//! ```text
//! config.json, tokenizer files      the model's configuration (vision_tower = "vision_tower")
//! model.safetensors                 PixelLM weights, Hugging Face names
//! vision_tower/                     the CLIP tower: config.json, model.safetensors
//! train_log.jsonl                   one JSON object per logged step
//! train_state.safetensors           f32 weights and AdamW moments (for --resume)
//! train_state.json                  step, options, data order: the manifest
//! ```

pub mod loss;
pub mod step;
pub mod store;

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor};
use serde_json::{json, Value};
use web_time::Instant;

use crate::config::{resolve_vision_tower, ClipVisionConfig, PixelLmConfig};
use crate::data::muse::{Dataset, Entry};
use crate::data::synth::Rng;
use crate::eval::{self, PROMPT_SUFFIX};
use crate::model::params::Params;
use crate::model::PixelLmModel;
use crate::output::{OutputDir, WRITTEN_BY};
use crate::pipeline::PixelLm;
use crate::tokenizer::prompt::seg_token_strings;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightFiles;
use crate::{Error, Result};
pub use step::Example;
use step::{example_loss, Question};
use store::{ParamStore, TrainMode};

/// Where the weights start.
#[derive(Debug, Clone)]
pub enum Init {
    /// Fine-tune a model directory (the released format included).
    Model {
        /// The PixelLM directory.
        dir: PathBuf,
        /// Its CLIP directory (default: resolved from the config).
        vision_tower: Option<PathBuf>,
    },
    /// Fresh weights for a `config.json` whose folder holds the tokenizer files and whose
    /// `vision_tower` names a folder with the CLIP `config.json`.
    Config(PathBuf),
}

/// Everything `pixellm train` takes.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// MUSE-format training data.
    pub data: PathBuf,
    /// MUSE-format validation data (scored by generation during training).
    pub val: Option<PathBuf>,
    /// Folder the data's images are relative to.
    pub images_root: Option<PathBuf>,
    /// The output model directory.
    pub out: PathBuf,
    /// Where the weights start (ignored with `resume`).
    pub init: Option<Init>,
    /// Optimiser steps in all.
    pub steps: usize,
    /// Images per step (each with all its questions).
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: usize,
    /// What is trained.
    pub mode: TrainMode,
    /// Stop (with a checkpoint) after this many minutes of this run.
    pub max_minutes: Option<f64>,
    /// Continue the run in `out`.
    pub resume: bool,
    /// Seed of the initial weights and the data order.
    pub seed: u64,
    /// Weight λ of the target refinement loss (0 = the released code).
    pub refine_weight: f64,
    /// A checkpoint every this many steps (and at the end).
    pub save_every: usize,
    /// A log line every this many steps.
    pub log_every: usize,
    /// Validation questions scored at each checkpoint (0 = none).
    pub val_questions: usize,
    /// Dtype of the exported `model.safetensors` (f32, f16, bf16).
    pub save_dtype: DType,
}

/// What the trainer reports as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    /// A phase message.
    Note(String),
    /// A step finished.
    Step {
        /// Steps done.
        step: usize,
        /// Steps in all.
        total: usize,
        /// Its loss.
        loss: f64,
        /// Learning rate used.
        lr: f64,
    },
    /// A checkpoint was written.
    Saved {
        /// At this step.
        step: usize,
        /// Validation gIoU when scored.
        val_giou: Option<f64>,
    },
}

/// The loss weights of the official code.
const CE_WEIGHT: f64 = 1.0;
const BCE_WEIGHT: f64 = 2.0;
const DICE_WEIGHT: f64 = 0.5;
/// AdamW as PixelLM: β (0.9, 0.95), ε 1e-8, no weight decay; global norm clip 1.0.
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.95;
const EPS: f64 = 1e-8;
const CLIP_NORM: f64 = 1.0;
/// The manifest of a training folder.
pub const MANIFEST: &str = "train_state.json";
/// The CLIP folder inside a trained model directory.
pub const VISION_DIR: &str = "vision_tower";
const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.model",
    "tokenizer.json",
    "added_tokens.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// The model definition being trained: configs, their JSON, the tokenizer files.
struct Definition {
    config: PixelLmConfig,
    clip: ClipVisionConfig,
    config_json: Value,
    clip_json: Value,
    tokenizer: Tokenizer,
    tokenizer_files: Vec<(String, Vec<u8>)>,
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::config(path.display().to_string(), format!("not valid JSON: {e}")))
}

impl Definition {
    /// From a model directory or a config file's folder.
    fn open(config_path: &Path, vision_tower: Option<&Path>) -> Result<Self> {
        let dir = config_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let config = PixelLmConfig::from_file(config_path)?;
        let clip_dir = resolve_vision_tower(vision_tower, config.vision_tower.as_deref(), dir)?;
        let clip_path = clip_dir.join("config.json");
        let clip = ClipVisionConfig::from_file(&clip_path)?;
        let mut config_json = read_json(config_path)?;
        config_json["vision_tower"] = VISION_DIR.into();
        config_json["mm_vision_tower"] = VISION_DIR.into();
        let tokenizer = Tokenizer::from_dir(dir)?;
        let mut tokenizer_files = Vec::new();
        for name in TOKENIZER_FILES {
            let p = dir.join(name);
            if p.is_file() {
                tokenizer_files.push((
                    name.to_string(),
                    std::fs::read(&p).map_err(|e| Error::io(&p, e))?,
                ));
            }
        }
        Ok(Self {
            config,
            clip,
            config_json,
            clip_json: read_json(&clip_path)?,
            tokenizer,
            tokenizer_files,
        })
    }
}

/// The examples of one data entry: every question, its answer with codebook groups, its
/// masks. The question is asked as written or with the evaluation suffix ([`PROMPT_SUFFIX`]),
/// drawn from `rng`, so that the model answers both.
fn example(entry: &Entry, rng: &mut Rng) -> Result<Example> {
    let image = crate::image::load_image(&entry.image_path)?;
    if (image.height() as usize, image.width() as usize) != (entry.height, entry.width) {
        return Err(Error::format(
            entry.file_name.clone(),
            format!(
                "the image is {}×{} but the data says {}×{}",
                image.height(),
                image.width(),
                entry.height,
                entry.width
            ),
        ));
    }
    let group = seg_token_strings(6).join(" ");
    let mut questions = Vec::new();
    for (q, question) in entry.questions.iter().enumerate() {
        let masks = entry.target_masks(q)?;
        let answer = match &question.text_answer {
            Some(t) => t.replace(crate::data::synth::SEG_PLACEHOLDER, &group),
            None => {
                // MUSE without text answers: the official fallback names each target.
                let parts: Vec<String> = question
                    .target_names
                    .iter()
                    .map(|n| format!("{n} {group}"))
                    .collect();
                format!("Sure, {}.", parts.join(", "))
            }
        };
        let prompt = if rng.f32() < 0.5 {
            question.text.clone()
        } else {
            format!("{}{PROMPT_SUFFIX}", question.text)
        };
        questions.push(Question {
            prompt,
            answer,
            masks,
        });
    }
    Ok(Example {
        image,
        questions,
        label: entry.file_name.clone(),
    })
}

/// The example of a generated scene (its questions as written), for tests and tools that
/// train without files.
pub fn scene_example(scene: &crate::data::synth::Scene) -> Example {
    let group = seg_token_strings(6).join(" ");
    Example {
        image: scene.image.clone(),
        questions: scene
            .questions
            .iter()
            .map(|q| Question {
                prompt: q.text.clone(),
                answer: q
                    .text_answer
                    .replace(crate::data::synth::SEG_PLACEHOLDER, &group),
                masks: q
                    .targets
                    .iter()
                    .map(|&t| scene.objects[t].mask.clone())
                    .collect(),
            })
            .collect(),
        label: "<scene>".into(),
    }
}

/// The data order: epoch `e` visits the entries in a seeded permutation.
fn entry_at(n: usize, seed: u64, position: usize) -> usize {
    let (epoch, offset) = (position / n, position % n);
    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed ^ 0x5eed_0000 ^ (epoch as u64).wrapping_mul(0x9e37_79b9));
    rng.shuffle(&mut perm);
    perm[offset]
}

/// The learning rate at `step` (0-based): linear warm-up, then linear decay to 0 at the
/// last step (DeepSpeed's `WarmupDecayLR`, as PixelLM).
pub fn lr_at(step: usize, opts: &TrainOptions) -> f64 {
    let warm = opts.warmup.max(1);
    if step < warm {
        opts.lr * (step + 1) as f64 / warm as f64
    } else {
        let rest = opts.steps.saturating_sub(warm).max(1);
        opts.lr * (1.0 - (step - warm) as f64 / rest as f64).max(0.0)
    }
}

/// Scalars of one step, for the log.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepStats {
    /// The weighted total.
    pub loss: f64,
    /// Cross-entropy (mean over answer tokens).
    pub ce: f64,
    /// BCE (mean over masks).
    pub bce: f64,
    /// DICE (mean over masks).
    pub dice: f64,
    /// Refinement loss (mean over masks, before its weight).
    pub refine: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

fn scalar(t: Tensor<1>) -> Result<f64> {
    let v = crate::pipeline::read_f32(t)?;
    Ok(v.first().copied().unwrap_or(f32::NAN) as f64)
}

/// The loss of `examples` under the store's weights and its gradient for every trainable
/// parameter (`None` for frozen ones and ones the loss does not reach), in `store.params`
/// order.
///
/// The batch means (over answer tokens, over masks) are known before the forward pass, so
/// each example's share of the loss is differentiated on its own and the gradients summed.
/// On the CPU the examples run on the thread pool side by side, each with its own autodiff
/// graph (Burn keeps unrelated graphs apart, each behind its own lock): one example's ops are
/// too small to keep two cores busy (measured: 0.9 cores used), two examples at once do.
pub fn loss_and_grads(
    store: &ParamStore,
    config: &PixelLmConfig,
    clip: &ClipVisionConfig,
    tokenizer: &Tokenizer,
    examples: &[Example],
    refine_weight: f64,
) -> Result<(StepStats, Vec<Option<Tensor<1>>>)> {
    let tokens: usize = examples
        .iter()
        .map(|ex| step::supervised_tokens(tokenizer, ex))
        .sum();
    let masks: usize = examples
        .iter()
        .map(|ex| ex.questions.iter().map(|q| q.masks.len()).sum::<usize>())
        .sum();
    let (t, m) = (tokens.max(1) as f64, masks.max(1) as f64);
    let one = |ex: &Example| -> Result<([f64; 5], Vec<Option<Tensor<1>>>)> {
        let ad = store.device().clone().autodiff();
        let (map, leaves) = store.tensor_map(true);
        let params = Params::from_map(&map, &ad, DType::F32);
        let model = PixelLmModel::from_params(config, clip, &params, &params)?;
        let pixellm = PixelLm::new(model, tokenizer.clone())?;
        let s = example_loss(&pixellm, ex)?;
        let ce = s.ce.div_scalar(t);
        let bce = s.bce.div_scalar(m);
        let dice = s.dice.div_scalar(m);
        let refine = s.refine.div_scalar(m);
        let loss = ce.clone().mul_scalar(CE_WEIGHT)
            + bce.clone().mul_scalar(BCE_WEIGHT)
            + dice.clone().mul_scalar(DICE_WEIGHT)
            + refine.clone().mul_scalar(refine_weight);
        let grads = loss.backward();
        let parts = [
            scalar(loss.inner())?,
            scalar(ce.inner())?,
            scalar(bce.inner())?,
            scalar(dice.inner())?,
            scalar(refine.inner())?,
        ];
        let grads = leaves
            .iter()
            .map(|l| l.as_ref().and_then(|l| l.grad(&grads)))
            .collect();
        Ok((parts, grads))
    };
    #[cfg(not(target_family = "wasm"))]
    let results: Vec<Result<_>> = if crate::backend::is_cpu(store.device()) && examples.len() > 1 {
        use rayon::prelude::*;
        examples.par_iter().map(one).collect()
    } else {
        examples.iter().map(one).collect()
    };
    #[cfg(target_family = "wasm")]
    let results: Vec<Result<_>> = examples.iter().map(one).collect();
    // Summed in example order, whatever order the threads finished in: deterministic.
    let mut parts = [0.0; 5];
    let mut grads: Vec<Option<Tensor<1>>> = vec![None; store.params.len()];
    for r in results {
        let (p, g) = r?;
        for (a, b) in parts.iter_mut().zip(p) {
            *a += b;
        }
        for (acc, gi) in grads.iter_mut().zip(g) {
            *acc = match (acc.take(), gi) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
        }
    }
    let stats = StepStats {
        loss: parts[0],
        ce: parts[1],
        bce: parts[2],
        dice: parts[3],
        refine: parts[4],
        grad_norm: 0.0,
    };
    Ok((stats, grads))
}

/// One optimiser step on `examples`.
fn train_step(
    store: &mut ParamStore,
    def: &Definition,
    examples: &[Example],
    lr: f64,
    step: usize,
    refine_weight: f64,
) -> Result<StepStats> {
    let (mut stats, grads) = loss_and_grads(
        store,
        &def.config,
        &def.clip,
        &def.tokenizer,
        examples,
        refine_weight,
    )?;
    if !stats.loss.is_finite() {
        return Err(Error::Backend(format!(
            "step {}: the loss is {} (ce {}, bce {}, dice {}); lower --lr",
            step + 1,
            stats.loss,
            stats.ce,
            stats.bce,
            stats.dice
        )));
    }
    // Global gradient norm (DeepSpeed's gradient_clipping), then AdamW.
    let squares: Vec<Tensor<1>> = grads
        .iter()
        .flatten()
        .map(|g| loss::chunked_sum(g.clone().square()))
        .collect();
    let norm = if squares.is_empty() {
        0.0
    } else {
        scalar(Tensor::cat(squares, 0).sum().reshape([1]))?.sqrt()
    };
    stats.grad_norm = norm;
    let clip = if norm > CLIP_NORM {
        CLIP_NORM / (norm + 1e-6)
    } else {
        1.0
    };
    let t = (step + 1) as i32;
    let (bc1, bc2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
    for (p, g) in store.params.iter_mut().zip(grads) {
        let Some(g) = g else { continue };
        let g = g.mul_scalar(clip);
        let m = match p.exp_avg.take() {
            Some(m) => m.mul_scalar(BETA1) + g.clone().mul_scalar(1.0 - BETA1),
            None => g.clone().mul_scalar(1.0 - BETA1),
        };
        let v = match p.exp_avg_sq.take() {
            Some(v) => v.mul_scalar(BETA2) + g.square().mul_scalar(1.0 - BETA2),
            None => g.square().mul_scalar(1.0 - BETA2),
        };
        let update = m.clone().div_scalar(bc1) / v.clone().div_scalar(bc2).sqrt().add_scalar(EPS);
        p.value = p.value.clone() - update.mul_scalar(lr);
        p.exp_avg = Some(m);
        p.exp_avg_sq = Some(v);
    }
    Ok(stats)
}

/// Runs (or resumes) training. `report` receives progress events.
pub fn train(opts: &TrainOptions, device: &Device, report: &mut dyn FnMut(Event)) -> Result<()> {
    if opts.batch_size == 0 || opts.steps == 0 {
        return Err(Error::config("--steps/--batch-size", "must be positive"));
    }
    let data = Dataset::open(&opts.data, opts.images_root.as_deref())?;
    if data.entries.is_empty() {
        return Err(Error::format(
            opts.data.display().to_string(),
            "the dataset has no images",
        ));
    }
    let val = match &opts.val {
        Some(v) if opts.val_questions > 0 => Some(Dataset::open(v, opts.images_root.as_deref())?),
        _ => None,
    };
    report(Event::Note(format!(
        "data: {} images, {} questions{}",
        data.entries.len(),
        data.questions(),
        val.as_ref()
            .map(|v| format!(
                "; val: {} questions scored at each checkpoint",
                v.questions().min(opts.val_questions)
            ))
            .unwrap_or_default()
    )));

    let (def, mut store, mut step, secs_before, mut log) = if opts.resume {
        resume(opts, device)?
    } else {
        let (def, store) = match &opts.init {
            Some(Init::Config(path)) => {
                let def = Definition::open(path, None)?;
                let store = ParamStore::init(&def.config, &def.clip, opts.mode, opts.seed, device)?;
                (def, store)
            }
            Some(Init::Model { dir, vision_tower }) => {
                let def = Definition::open(&dir.join("config.json"), vision_tower.as_deref())?;
                let clip_dir = resolve_vision_tower(
                    vision_tower.as_deref(),
                    def.config.vision_tower.as_deref(),
                    dir,
                )?;
                let store = ParamStore::from_files(
                    &def.config,
                    &def.clip,
                    &WeightFiles::open_dir(dir)?,
                    &WeightFiles::open_dir(&clip_dir)?,
                    opts.mode,
                    opts.seed,
                    device,
                )?;
                (def, store)
            }
            None => {
                return Err(Error::config(
                    "pixellm train",
                    "give --init MODEL_DIR or --config FILE (or --resume)",
                ))
            }
        };
        if opts.out.join(MANIFEST).is_file() {
            return Err(Error::config(
                opts.out.display().to_string(),
                "holds a training run already: add --resume to continue it, or choose a new --out",
            ));
        }
        crate::output::check_dir(&opts.out, MANIFEST)?;
        (def, store, 0, 0.0, Vec::new())
    };
    report(Event::Note(format!(
        "model: {:.2} M parameters, {:.2} M trained ({}), device {}",
        store.total_count() as f64 / 1e6,
        store.trainable_count() as f64 / 1e6,
        match opts.mode {
            TrainMode::All => "all",
            TrainMode::Official => "official recipe: LoRA r 8 on q/v",
        },
        crate::backend::describe(device)
    )));
    // A checkpoint at the start of a fresh run, and when a finished run is resumed without
    // further steps (e.g. to export it again with another --save-dtype).
    if step == 0 || step >= opts.steps {
        save(opts, &def, &store, step, secs_before, &log, None)?;
    }
    let run_start = Instant::now();
    while step < opts.steps {
        let lr = lr_at(step, opts);
        let mut rng = Rng::new(opts.seed ^ (step as u64).wrapping_mul(0xa076_1d64_78bd_642f));
        let examples: Vec<Example> = (0..opts.batch_size)
            .map(|b| {
                example(
                    &data.entries
                        [entry_at(data.entries.len(), opts.seed, step * opts.batch_size + b)],
                    &mut rng,
                )
            })
            .collect::<Result<_>>()?;
        let stats = train_step(&mut store, &def, &examples, lr, step, opts.refine_weight)?;
        step += 1;
        let secs = secs_before + run_start.elapsed().as_secs_f64();
        let line = json!({
            "step": step, "loss": stats.loss, "ce": stats.ce, "bce": stats.bce,
            "dice": stats.dice, "refine": stats.refine, "lr": lr, "secs": secs,
            "grad_norm": stats.grad_norm,
        });
        if step % opts.log_every.max(1) == 0 || step == opts.steps {
            append_log(&opts.out, &line)?;
            log.push(line);
        }
        report(Event::Step {
            step,
            total: opts.steps,
            loss: stats.loss,
            lr,
        });
        let out_of_time = opts
            .max_minutes
            .is_some_and(|m| run_start.elapsed().as_secs_f64() > m * 60.0);
        if step % opts.save_every.max(1) == 0 || step == opts.steps || out_of_time {
            let val_giou = match &val {
                Some(v) => Some(validate(&store, &def, v, opts.val_questions)?),
                None => None,
            };
            if let (Some(g), Some(last)) = (val_giou, log.last_mut()) {
                if last["step"] == step {
                    last["val_giou"] = g.into();
                }
            }
            save(opts, &def, &store, step, secs, &log, val_giou)?;
            report(Event::Saved { step, val_giou });
        }
        if out_of_time {
            report(Event::Note(format!(
                "--max-minutes reached after step {step}; continue with --resume"
            )));
            break;
        }
    }
    Ok(())
}

/// Scores the first `n` validation questions by generation.
fn validate(store: &ParamStore, def: &Definition, val: &Dataset, n: usize) -> Result<f64> {
    let model = store.model(&def.config, &def.clip)?;
    let pixellm = PixelLm::new(model, def.tokenizer.clone())?;
    let preds = eval::predict(&pixellm, val, Some(n), 96, &mut |_, _| {})?;
    Ok(eval::score(val, &preds, Some(n))?.totals.giou())
}

fn append_log(out: &Path, line: &Value) -> Result<()> {
    let path = out.join("train_log.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::io(&path, e))
}

/// Writes a checkpoint: the model directory's files, the resume state, the log, and the
/// manifest last (through [`OutputDir`]: temporary files and renames).
fn save(
    opts: &TrainOptions,
    def: &Definition,
    store: &ParamStore,
    step: usize,
    secs: f64,
    log: &[Value],
    val_giou: Option<f64>,
) -> Result<()> {
    let mut dir = OutputDir::open(&opts.out, MANIFEST)?;
    let json_bytes = |v: &Value| serde_json::to_vec_pretty(v).expect("JSON values serialise");
    dir.put("config.json", &json_bytes(&def.config_json))?;
    for (name, bytes) in &def.tokenizer_files {
        dir.put(name, bytes)?;
    }
    let (model, vision) = store.export(opts.save_dtype)?;
    dir.put("model.safetensors", &model)?;
    dir.put(
        &format!("{VISION_DIR}/config.json"),
        &json_bytes(&def.clip_json),
    )?;
    dir.put(&format!("{VISION_DIR}/model.safetensors"), &vision)?;
    dir.put("train_state.safetensors", &store.state()?)?;
    let mut log_text = String::new();
    for l in log {
        log_text.push_str(&l.to_string());
        log_text.push('\n');
    }
    dir.put("train_log.jsonl", log_text.as_bytes())?;
    dir.commit(
        "train",
        json!({
            "step": step,
            "secs": secs,
            "val_giou": val_giou,
            "options": options_json(opts),
            "config": def.config_json,
            "vision_config": def.clip_json,
            "tokenizer_files": def.tokenizer_files.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        }),
    )
}

fn options_json(o: &TrainOptions) -> Value {
    json!({
        "data": o.data, "val": o.val, "images_root": o.images_root,
        "steps": o.steps, "batch_size": o.batch_size, "lr": o.lr, "warmup": o.warmup,
        "train": match o.mode { TrainMode::All => "all", TrainMode::Official => "official" },
        "seed": o.seed, "refine_weight": o.refine_weight, "save_every": o.save_every,
        "log_every": o.log_every, "val_questions": o.val_questions,
        "save_dtype": format!("{:?}", o.save_dtype),
    })
}

type Resumed = (Definition, ParamStore, usize, f64, Vec<Value>);

/// Reopens a training folder at its last checkpoint.
fn resume(opts: &TrainOptions, device: &Device) -> Result<Resumed> {
    let manifest_path = opts.out.join(MANIFEST);
    let manifest = read_json(&manifest_path)?;
    let label = manifest_path.display().to_string();
    if manifest[WRITTEN_BY]["program"] != "pixellm" {
        return Err(Error::config(label, "not a pixellm training folder"));
    }
    let saved = &manifest["options"];
    for (key, now) in [
        ("seed", json!(opts.seed)),
        ("batch_size", json!(opts.batch_size)),
        (
            "train",
            json!(match opts.mode {
                TrainMode::All => "all",
                TrainMode::Official => "official",
            }),
        ),
    ] {
        if saved[key] != now {
            return Err(Error::config(
                label,
                format!("--resume with a different {key} ({} then, {now} now) would not continue the same run", saved[key]),
            ));
        }
    }
    let def = Definition::open(
        &opts.out.join("config.json"),
        Some(&opts.out.join(VISION_DIR)),
    )?;
    let mut store = ParamStore::init(&def.config, &def.clip, opts.mode, opts.seed, device)?;
    let state_path = opts.out.join("train_state.safetensors");
    store.load_state(
        &store::read(&state_path)?,
        &state_path.display().to_string(),
    )?;
    let step = manifest["step"].as_u64().unwrap_or(0) as usize;
    let secs = manifest["secs"].as_f64().unwrap_or(0.0);
    // The log up to the checkpoint (lines written after it are dropped).
    let log_path = opts.out.join("train_log.jsonl");
    let text = std::fs::read_to_string(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let log: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["step"].as_u64().is_some_and(|s| s as usize <= step))
        .collect();
    let mut kept = String::new();
    for l in &log {
        kept.push_str(&l.to_string());
        kept.push('\n');
    }
    crate::output::replace_own_file(&opts.out, MANIFEST, "train_log.jsonl", kept.as_bytes())?;
    Ok((def, store, step, secs, log))
}
