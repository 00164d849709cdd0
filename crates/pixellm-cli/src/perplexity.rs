//! `pixellm perplexity`: how well a model predicts a text, the check that a quantised model
//! is still the model it was (`pixellm::eval::perplexity`).
//!
//! The interface is fixed (other tools call it): `pixellm perplexity --model M --text FILE
//! [--quant …] [--ctx N] [--max-tokens N] [--json FILE]`; `--json` writes
//! `{"perplexity": …, "tokens": …}` (plus the run's settings).

use std::path::PathBuf;

use pixellm::backend::{Backend, Precision};
use pixellm::eval::perplexity::perplexity;
use pixellm::Quant;
use serde_json::json;

use crate::progress::{self, Bar};

#[derive(clap::Args)]
pub struct PerplexityArgs {
    /// A LLaMA-architecture .gguf file, or a PixelLM directory (its LLM and tokenizer);
    /// default: the built-in model's LLM.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The UTF-8 text to score.
    #[arg(long)]
    text: PathBuf,
    /// none, q8 or q4: the LLM's matrices dequantised to --dtype (none) or held packed in
    /// GGUF-compatible 8/4-bit blocks (CPU backend). Default: as stored.
    #[arg(long, value_name = "QUANT", value_parser = crate::parse_quant)]
    quant: Option<Quant>,
    /// Tokens per window (each window is scored from an empty context); default 512, or
    /// the model's context when smaller.
    #[arg(long)]
    ctx: Option<usize>,
    /// Tokens per forward pass within a window (default: the whole window at once; 1 runs
    /// the decode kernels, token by token through the KV cache, as generation does).
    #[arg(long)]
    batch: Option<usize>,
    /// Score only the text's first N tokens.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// cpu, wgpu, vulkan, metal or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Also write `{"perplexity": …, "tokens": …}` to this file (a new file, or one an
    /// earlier run wrote).
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: PerplexityArgs) -> pixellm::Result<()> {
    let backend: Backend = args.backend.parse()?;
    let precision: Precision = args.dtype.parse()?;
    let quant = args.quant.unwrap_or_default();
    if let Some(path) = &args.json {
        pixellm::output::check_file(path)?;
    }
    let text = std::fs::read(&args.text).map_err(|e| pixellm::Error::io(&args.text, e))?;
    let text = String::from_utf8(text).map_err(|e| {
        pixellm::Error::config(
            args.text.display().to_string(),
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })?;
    let device = backend.device()?;
    let dtype = precision.dtype();
    let start = std::time::Instant::now();
    let is_gguf = args.model.as_ref().is_some_and(|m| {
        m.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    });
    // Either model type: its LLM, the text's ids and the weight bytes.
    let chat;
    let pixel;
    let (llm, mut ids, weight_bytes) = if is_gguf {
        let path = args.model.as_ref().expect("checked above");
        chat = pixellm::chat::ChatModel::load_gguf(path, &device, dtype, quant)?;
        let ids = chat.tokenizer().encode_ordinary(&text);
        (chat.llm(), ids, chat.weight_bytes())
    } else {
        pixel = match &args.model {
            Some(dir) => crate::load_model(dir, None, &device, precision, quant)?,
            None => crate::default_model(&device, precision, quant)?,
        };
        let ids = pixel.tokenizer().encode(&text, true);
        (pixel.model().llm(), ids, pixel.model().weight_bytes())
    };
    progress::note(&format!(
        "model loaded in {:.0} ms ({:.1} MB of weights, --quant {})",
        start.elapsed().as_secs_f64() * 1e3,
        weight_bytes as f64 / 1e6,
        quant.name()
    ));
    if let Some(n) = args.max_tokens {
        ids.truncate(n);
    }
    let context = llm.config().max_position_embeddings;
    let ctx = args.ctx.unwrap_or(512.min(context));
    let windows = ids.len().div_ceil(ctx.max(1));
    let mut bar = Bar::new("perplexity (windows)", windows as u64);
    let t = std::time::Instant::now();
    let batch = args.batch.unwrap_or(ctx);
    let result = perplexity(llm, &ids, ctx, batch, &device, dtype, &mut |d, _| {
        bar.set(d as u64, "")
    })?;
    let secs = t.elapsed().as_secs_f64();
    bar.finish("done");
    println!(
        "perplexity {:.4} over {} tokens ({} windows of ≤ {ctx}; {:.0} tokens/s)",
        result.perplexity,
        result.tokens,
        result.windows,
        result.tokens as f64 / secs.max(1e-9)
    );
    if let Some(path) = &args.json {
        let mut json = json!({
            "perplexity": result.perplexity,
            "tokens": result.tokens,
            "nll": result.nll,
            "windows": result.windows,
            "ctx": ctx,
            "batch": batch,
            "quant": quant.name(),
            "dtype": precision.name(),
            "backend": backend.name(),
            "weight_bytes": weight_bytes,
        });
        json[pixellm::output::WRITTEN_BY] = pixellm::output::written_by("perplexity");
        let text = serde_json::to_string_pretty(&json).expect("JSON values serialise");
        pixellm::output::write_file(path, text.as_bytes())?;
        progress::note(&format!("wrote {}", path.display()));
    }
    Ok(())
}
