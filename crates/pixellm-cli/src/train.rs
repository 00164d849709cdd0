//! `pixellm train` (the interface is fixed: other tools call it exactly so).

use std::path::PathBuf;

use pixellm::backend::{Backend, Precision};
use pixellm::train::{self, Event, Init, TrainOptions};

use crate::progress::{self, Bar};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Training data: a MUSE-format JSON file (`pixellm data synth` writes one).
    #[arg(long)]
    data: PathBuf,
    /// Validation data, scored by generation at each checkpoint (`val_giou` in the log).
    #[arg(long)]
    val: Option<PathBuf>,
    /// Output model directory (loadable alone by segment, eval and the web page).
    #[arg(long)]
    out: PathBuf,
    /// Fine-tune this model directory (the released format included).
    #[arg(long, conflicts_with = "config")]
    init: Option<PathBuf>,
    /// Start from fresh weights for this config.json (its folder holds the tokenizer; its
    /// `vision_tower` names a folder with the CLIP config.json).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Optimiser steps in all.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Images per step, each with all its questions.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Peak learning rate (linear warm-up, then linear decay to 0).
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    /// all, or official (LoRA r 8 on q/v; CLIP, LLM body, neck, prompt encoder frozen).
    #[arg(long, default_value = "all")]
    train: String,
    /// cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Stop after this many minutes with a checkpoint (continue with --resume).
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Continue the run in --out from its last checkpoint, exactly.
    #[arg(long)]
    resume: bool,
    /// Folder the data's images are relative to.
    #[arg(long)]
    images_root: Option<PathBuf>,
    /// CLIP directory for --init (default: resolved from its config).
    #[arg(long)]
    vision_tower: Option<PathBuf>,
    /// Warm-up steps (default: 5 % of --steps, at most 100).
    #[arg(long)]
    warmup: Option<usize>,
    /// Seed of the initial weights and the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weight of the target refinement loss (0 = the released code's loss).
    #[arg(long, default_value_t = 2.0)]
    refine_weight: f64,
    /// A checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 200)]
    save_every: usize,
    /// A train_log.jsonl line every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Validation questions scored at each checkpoint.
    #[arg(long, default_value_t = 64)]
    val_questions: usize,
    /// dtype of the exported model.safetensors: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    save_dtype: String,
}

pub fn train(args: TrainArgs) -> pixellm::Result<()> {
    let backend: Backend = args.backend.parse()?;
    let save: Precision = args.save_dtype.parse()?;
    let init = match (&args.init, &args.config) {
        (Some(dir), _) => Some(Init::Model {
            dir: dir.clone(),
            vision_tower: args.vision_tower.clone(),
        }),
        (None, Some(c)) => Some(Init::Config(c.clone())),
        (None, None) => None,
    };
    if init.is_none() && !args.resume {
        return Err(pixellm::Error::config(
            "pixellm train",
            "give --init MODEL_DIR or --config FILE, or --resume",
        ));
    }
    let opts = TrainOptions {
        data: args.data,
        val: args.val,
        images_root: args.images_root,
        out: args.out.clone(),
        init,
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        warmup: args.warmup.unwrap_or((args.steps / 20).clamp(1, 100)),
        mode: args.train.parse()?,
        max_minutes: args.max_minutes,
        resume: args.resume,
        seed: args.seed,
        refine_weight: args.refine_weight,
        save_every: args.save_every,
        log_every: args.log_every,
        val_questions: if args.val_questions == 0 {
            0
        } else {
            args.val_questions
        },
        save_dtype: save.dtype(),
    };
    let device = backend.device()?;
    let mut bar: Option<Bar> = None;
    let mut smoothed = f64::NAN;
    train::train(&opts, &device, &mut |e| match e {
        Event::Note(line) => progress::note(&line),
        Event::Step {
            step,
            total,
            loss,
            lr,
        } => {
            let b = bar.get_or_insert_with(|| Bar::new("train", total as u64));
            smoothed = if smoothed.is_nan() {
                loss
            } else {
                0.9 * smoothed + 0.1 * loss
            };
            b.set(step as u64, &format!("loss {smoothed:.4} lr {lr:.2e}"));
        }
        Event::Saved { step, val_giou } => {
            let v = val_giou
                .map(|g| format!(", val gIoU {g:.4}"))
                .unwrap_or_default();
            if progress::interactive() {
                if let Some(b) = &bar {
                    b.println(&format!("checkpoint at step {step}{v}"));
                    return;
                }
            }
            progress::note(&format!(
                "checkpoint at step {step}{v} in {}",
                args.out.display()
            ));
        }
    })?;
    if let Some(b) = bar {
        b.finish(&format!("done; model in {}", args.out.display()));
    }
    Ok(())
}
