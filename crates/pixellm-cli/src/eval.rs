//! `pixellm eval` and `pixellm data synth`.

use std::path::PathBuf;

use pixellm::backend::{Backend, Precision};
use pixellm::data::muse::Protocol;
use pixellm::data::synth::Split;
use pixellm::eval::{self, Prediction};
use pixellm::output::OutputDir;
use serde_json::json;

use crate::progress::{self, Bar};

/// `pixellm eval` (the interface is fixed: other tools call it exactly so).
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["model", "predictions"])))]
pub struct EvalArgs {
    /// The dataset: a MUSE-format JSON file, or a refCOCO/refCOCO+/refCOCOg refs pickle
    /// (`refs(unc).p`, with `instances.json` beside it: teacher-forced, as the official
    /// validate()).
    #[arg(long)]
    data: PathBuf,
    /// Folder the data's images are relative to (default: the data file's folder).
    #[arg(long)]
    images_root: Option<PathBuf>,
    /// The refs split to evaluate with a refs pickle (train, val, testA, testB; refCOCOg
    /// umd: train, val, test). Ignored for MUSE JSON.
    #[arg(long, default_value = pixellm::data::refcoco::DEFAULT_SPLIT)]
    split: String,
    /// Answer every question with this model (generation, greedy; one teacher-forced pass
    /// per question for a refs pickle).
    #[arg(long)]
    model: Option<PathBuf>,
    /// CLIP directory for --model (default: resolved as `segment` does).
    #[arg(long)]
    vision_tower: Option<PathBuf>,
    /// Score these predictions instead of running a model.
    #[arg(long)]
    predictions: Option<PathBuf>,
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
    /// Only the first N questions.
    #[arg(long)]
    limit: Option<usize>,
    /// Generation budget per question (--model).
    #[arg(long, default_value_t = pixellm::pipeline::DEFAULT_MAX_NEW_TOKENS)]
    max_new_tokens: usize,
    /// Output directory for eval.json (and predictions.json with --model).
    #[arg(long, default_value = "./pixellm-eval")]
    out: PathBuf,
}

pub fn eval(args: EvalArgs) -> pixellm::Result<()> {
    pixellm::output::check_dir(&args.out, "eval.json")?;
    let data = pixellm::data::open_dataset(&args.data, args.images_root.as_deref(), &args.split)?;
    let mode = match &data.protocol {
        Protocol::Generate => String::new(),
        Protocol::TeacherForced { split } => format!(" (split {split}, teacher-forced)"),
    };
    progress::note(&format!(
        "{}: {} images, {} questions{mode}",
        args.data.display(),
        data.entries.len(),
        data.questions()
    ));
    let (predictions, source) = match (&args.model, &args.predictions) {
        (Some(model_dir), _) => {
            let backend: Backend = args.backend.parse()?;
            let precision: Precision = args.dtype.parse()?;
            let quant = args.quant.unwrap_or_default();
            let device = backend.device()?;
            let model = crate::load_model(
                model_dir,
                args.vision_tower.as_deref(),
                &device,
                precision,
                quant,
            )?;
            let total = data.questions().min(args.limit.unwrap_or(usize::MAX));
            let mut bar = Bar::new("eval", total as u64);
            let preds = eval::predict(
                &model,
                &data,
                args.limit,
                args.max_new_tokens,
                &mut |d, _| bar.set(d as u64, ""),
            )?;
            bar.finish(&format!("{} questions answered", preds.len()));
            let mut source = json!({"model": model_dir, "backend": backend.name(), "dtype": precision.name(),
                           "quant": quant.name(), "prompt": eval::prompt_template(&data.protocol)});
            match eval::forced_answer(&model, &data.protocol) {
                None => source["max_new_tokens"] = json!(args.max_new_tokens),
                Some(answer) => source["answer"] = json!(answer),
            }
            (preds, source)
        }
        (None, Some(p)) => (eval::read_predictions(p)?, json!({"predictions": p})),
        (None, None) => unreachable!("clap requires one of --model / --predictions"),
    };
    let report = eval::score(&data, &predictions, args.limit)?;
    let mut out = OutputDir::open(&args.out, "eval.json")?;
    if args.model.is_some() {
        let list: Vec<_> = predictions.iter().map(Prediction::to_json).collect();
        out.put(
            "predictions.json",
            &serde_json::to_vec_pretty(&list).expect("JSON values serialise"),
        )?;
    }
    let mut body = report.to_json();
    body["data"] = json!(args.data);
    if let Protocol::TeacherForced { split } = &data.protocol {
        body["split"] = json!(split);
        body["protocol"] = json!("teacher-forced (official validate())");
    }
    body["source"] = source;
    out.commit("eval", body)?;
    println!("{}", report.summary());
    progress::note(&format!("wrote {}", args.out.display()));
    Ok(())
}

/// `pixellm data synth`.
#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output directory (created; another split of the same set is added to it).
    #[arg(long)]
    out: PathBuf,
    /// Number of images.
    #[arg(long)]
    n: u64,
    /// Seed: every image is a pure function of (seed, split, index).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// train, val, test_comp (held-out colour–shape pairs) or test_many (4–6 targets).
    #[arg(long, default_value = "train")]
    split: String,
}

pub fn synth(args: SynthArgs) -> pixellm::Result<()> {
    let split: Split = args.split.parse().map_err(pixellm::Error::Prompt)?;
    let manifest = format!("{}.manifest.json", split.name());
    pixellm::output::check_dir(&args.out, &manifest)?;
    let mut bar = Bar::new(&format!("synth {}", split.name()), args.n);
    pixellm::data::write_split(&args.out, args.seed, split, args.n, &mut |d| bar.set(d, ""))?;
    bar.finish(&format!("{} images", args.n));
    progress::note(&format!(
        "wrote {}",
        args.out.join(format!("{}.json", split.name())).display()
    ));
    Ok(())
}
