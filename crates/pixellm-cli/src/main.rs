//! `pixellm`: PixelLM segmentation from the command line.

mod bench;
mod eval;
mod output;
mod perplexity;
mod progress;
mod serve;
#[cfg(feature = "train")]
mod train;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::Device;
use clap::{Parser, Subcommand};
use pixellm::backend::{Backend, Precision};
use pixellm::pipeline::DEFAULT_MAX_NEW_TOKENS;
use pixellm::{PixelLm, Progress, Quant, SegmentRequest};

#[derive(Parser)]
#[command(
    name = "pixellm",
    version,
    about = "PixelLM: answer a question about an image with text and one mask per target"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// CBLAS library for the CPU backend's f32 matrix products: Intel MKL's libmkl_rt
    /// (scripts/fetch-mkl.sh), OpenBLAS (libopenblas.so.0), BLIS; a path or a library name.
    /// Default: the built-in kernels.
    #[arg(long, global = true, env = "PIXELLM_BLAS", value_name = "LIBRARY")]
    blas: Option<String>,
    /// No progress or phase lines on stderr (errors and warnings still print).
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Answer a question about an image and write one mask per target.
    Segment(SegmentArgs),
    /// List the backends compiled into this build and the devices each one sees.
    Devices,
    /// Time every stage at real model shapes with random weights (no checkpoint needed).
    Bench(BenchArgs),
    /// Chat with a LLaMA-architecture GGUF model (e.g. SmolLM2-135M-Instruct); without a
    /// question, an interactive session on stdin.
    Chat(ChatArgs),
    /// Score segmentations of a MUSE-format dataset (gIoU, cIoU), from a model or a
    /// predictions file.
    Eval(eval::EvalArgs),
    /// Train PixelLM (the paper's losses) into a model directory.
    #[cfg(feature = "train")]
    Train(train::TrainArgs),
    /// Perplexity of a GGUF LLaMA-family model or PixelLM's LLM over a text file (checks a
    /// quantisation against the unquantised model).
    Perplexity(perplexity::PerplexityArgs),
    /// Write a PixelLM directory with its large matrices packed (q8 or q4), once, for every
    /// command to load.
    Quantize(QuantizeArgs),
    /// An OpenAI-compatible HTTP server that answers with text and masks.
    Serve(serve::ServeArgs),
    /// Datasets: `data synth` generates multi-target shape scenes in MUSE's format.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// A seeded set of shape scenes (images, one PNG per mask, MUSE JSON).
    Synth(eval::SynthArgs),
}

#[derive(clap::Args)]
struct ChatArgs {
    /// The .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// cpu, wgpu, vulkan, metal or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// none, q8 or q4: the LLM's matrices dequantised to --dtype (none) or held packed in
    /// GGUF-compatible 8/4-bit blocks (CPU backend). Default: as stored (GGUF Q8_0, Q4_0 and
    /// Q4_1 tensors stay packed on the CPU, the rest in --dtype).
    #[arg(long, value_name = "QUANT", value_parser = parse_quant)]
    quant: Option<Quant>,
    /// Generation budget per reply.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// The question; omit it for an interactive session.
    question: Option<String>,
}

#[derive(clap::Args)]
struct QuantizeArgs {
    /// PixelLM Hugging Face directory (config.json, tokenizer, weights).
    #[arg(long)]
    model: PathBuf,
    /// CLIP vision tower directory; default: the config's `vision_tower`, resolved as
    /// `segment` does. A tower inside the model directory is written with it (packed at 8
    /// bits under q4); one elsewhere is referred to by its absolute path.
    #[arg(long)]
    vision_tower: Option<PathBuf>,
    /// q8 or q4 (what each packs: docs/quantization.md).
    #[arg(long, value_name = "QUANT", value_parser = parse_quant)]
    quant: Quant,
    /// Output directory (created; the `--out` rules of `segment` apply).
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Model size: tiny (the test model), mid (TinyLlama-sized LLM), 7b, 13b.
    #[arg(long, default_value = "tiny")]
    shape: String,
    /// cpu, wgpu, vulkan, metal or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// none, q8 or q4: the LLM's matrices dequantised to --dtype (none) or held packed in
    /// GGUF-compatible 8/4-bit blocks (CPU backend). Default: none (random weights are f32).
    #[arg(long, value_name = "QUANT", value_parser = parse_quant)]
    quant: Option<Quant>,
    /// Text tokens in the prompt (the 256 image tokens come on top).
    #[arg(long, default_value_t = 300)]
    prompt_tokens: usize,
    /// Tokens to generate per iteration.
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Targets for the pixel decoder.
    #[arg(long, default_value_t = 2)]
    targets: usize,
    /// Timed iterations (after one warm-up).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Also write the report as JSON (a new file, or one an earlier bench wrote).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SegmentArgs {
    /// PixelLM Hugging Face directory (config.json, tokenizer, *.safetensors or
    /// pytorch_model-*.bin); default: the built-in `pixellm-shapes` model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// CLIP vision tower directory (openai/clip-vit-large-patch14-336); default: the
    /// config's `vision_tower`, next to the model or in the Hugging Face cache.
    #[arg(long, requires = "model")]
    vision_tower: Option<PathBuf>,
    /// Image file (PNG, JPEG, WebP, BMP).
    #[arg(long)]
    image: PathBuf,
    /// The question; the llava_v1 conversation is built around it.
    #[arg(long)]
    prompt: String,
    /// Skip generation and use this assistant answer (may contain [SEG0]..[SEG5]).
    #[arg(long)]
    answer: Option<String>,
    /// Generation budget.
    #[arg(long, default_value_t = DEFAULT_MAX_NEW_TOKENS)]
    max_new_tokens: usize,
    /// cpu, wgpu, vulkan, metal or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// none, q8 or q4: the LLM's matrices dequantised to --dtype (none) or held packed in
    /// GGUF-compatible 8/4-bit blocks (CPU backend). Default: as stored (GGUF Q8_0, Q4_0 and
    /// Q4_1 tensors stay packed on the CPU, the rest in --dtype).
    #[arg(long, value_name = "QUANT", value_parser = parse_quant)]
    quant: Option<Quant>,
    /// Output directory: created if absent; an existing one is written into only when it
    /// is empty or holds a previous pixellm result (whose stale masks are replaced);
    /// anything else is refused. Files this program did not write are never touched.
    #[arg(long, default_value = "./pixellm-out")]
    out: PathBuf,
    /// Also write logits.safetensors (final and 128×128 mask logits).
    #[arg(long)]
    save_logits: bool,
    /// Print the prompt's token ids and pieces before running.
    #[arg(long)]
    verbose_prompt: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    progress::set_quiet(cli.quiet);
    // The library reads no environment variables: PIXELLM_ALLOW_TF32=1 lets f32 products on
    // CUDA run in TF32 (faster, ~1e-3 off; pixellm::kernels::set_allow_tf32).
    pixellm::kernels::set_allow_tf32(
        std::env::var("PIXELLM_ALLOW_TF32").is_ok_and(|v| matches!(v.as_str(), "1" | "true")),
    );
    if let Some(library) = cli.blas.as_deref().filter(|l| !l.is_empty()) {
        match pixellm::backend::load_cpu_blas(library) {
            Ok(name) => progress::note(&format!("CPU matmul: {name}")),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let result = match cli.command {
        // The server's threads wait on sockets: they must not hold one of the pool's (its
        // model thread hands each request to the pool instead).
        Command::Serve(args) => serve::serve(args),
        command => on_the_pool(move || run(command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `f` on one of the thread pool's workers rather than on the main thread.
///
/// The CPU kernels and Burn's CPU backend split their work over rayon's pool. Called from a
/// thread outside the pool, every parallel operation is handed to the pool and the caller
/// sleeps until it is done: a futex sleep and wake per operation, ~1,200 times per decoded
/// token of SmolLM2 (`perf`: ~20 % of the samples). Called from a worker, an operation's
/// first part runs on the calling thread and the others join in. Workers get the main
/// thread's 8 MiB stack.
pub(crate) fn on_the_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // Only fails when a pool exists already (then that one is used).
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(8 << 20)
        .build_global();
    rayon::scope(|_| f())
}

fn run(command: Command) -> pixellm::Result<()> {
    match command {
        Command::Segment(args) => segment(args),
        Command::Devices => devices(),
        Command::Bench(args) => bench(args),
        Command::Chat(args) => chat(args),
        Command::Eval(args) => eval::eval(args),
        Command::Serve(args) => serve::serve(args),
        Command::Perplexity(args) => perplexity::run(args),
        Command::Quantize(args) => quantize(args),
        #[cfg(feature = "train")]
        Command::Train(args) => train::train(args),
        Command::Data {
            command: DataCommand::Synth(args),
        } => eval::synth(args),
    }
}

/// `--quant`'s parser (clap shows the message of a bad value).
pub(crate) fn parse_quant(s: &str) -> Result<Quant, String> {
    Quant::parse(s).map_err(|e| match e {
        pixellm::Error::Config { msg, .. } => msg,
        e => e.to_string(),
    })
}

/// The name the built-in model is served and reported under.
pub(crate) const DEFAULT_MODEL_NAME: &str = pixellm::default_model::NAME;

/// The model built into this program (`models/pixellm-shapes`, see its model card).
pub(crate) fn default_model(
    device: &Device,
    precision: Precision,
    quant: Quant,
) -> pixellm::Result<PixelLm> {
    let start = std::time::Instant::now();
    let model = pixellm::default_model::load(device, precision.dtype(), quant)?;
    progress::note(&format!(
        "model: built-in `{DEFAULT_MODEL_NAME}` ({:.0} ms; pass --model DIR for another)",
        start.elapsed().as_secs_f64() * 1e3
    ));
    Ok(model)
}

/// Loads a PixelLM directory with its progress on stderr: one line per phase, the weight
/// bytes as a bar on a terminal.
pub(crate) fn load_model(
    model: &Path,
    vision_tower: Option<&Path>,
    device: &Device,
    precision: Precision,
    quant: Quant,
) -> pixellm::Result<PixelLm> {
    let mut bar: Option<progress::Bar> = None;
    PixelLm::load(
        model,
        vision_tower,
        device,
        precision.dtype(),
        quant,
        &mut |p| match p {
            Progress::Step(s) if s == "load weights" => {
                if progress::interactive() {
                    bar = Some(progress::Bar::new("load weights (MB)", 0));
                }
            }
            Progress::Step(_) => {}
            Progress::Done(name, ms) => {
                if let Some(b) = bar.take() {
                    b.finish("done");
                }
                progress::note(&format!("{name}: {ms:.0} ms"));
            }
            Progress::Warning(w) => eprintln!("warning: {w}"),
            Progress::Bytes { done, total } => {
                if let Some(b) = bar.as_mut() {
                    b.set_total(total / 1_000_000);
                    b.set(done / 1_000_000, "");
                }
            }
        },
    )
}

fn segment(args: SegmentArgs) -> pixellm::Result<()> {
    let backend: Backend = args.backend.parse()?;
    let precision: Precision = args.dtype.parse()?;
    let quant = args.quant.unwrap_or_default();
    output::check_target(&args.out)?;
    let device = backend.device()?;
    let image = pixellm::image::load_image(&args.image)?;
    let model = match &args.model {
        Some(dir) => load_model(dir, args.vision_tower.as_deref(), &device, precision, quant)?,
        None => default_model(&device, precision, quant)?,
    };
    if args.verbose_prompt {
        let tok = model.tokenizer();
        let prompt = pixellm::tokenizer::llava_v1_prompt(&args.prompt, args.answer.as_deref());
        let ids = tok.encode_with_image(&prompt);
        eprintln!("prompt: {} tokens", ids.len());
        for id in ids {
            let piece = if id == pixellm::model::IMAGE_TOKEN_INDEX {
                format!("<image: {} tokens>", model.model().llm_grid().pow(2))
            } else {
                tok.id_to_piece(id).unwrap_or("?").to_string()
            };
            eprintln!("{id:>7} -> {piece:?}");
        }
    }
    let request = SegmentRequest {
        question: args.prompt.clone(),
        answer: args.answer.clone(),
        max_new_tokens: args.max_new_tokens,
    };
    let mut stdout = std::io::stdout();
    let seg = model.segment(&image, &request, &mut |piece| {
        let _ = stdout.write_all(piece.as_bytes());
        let _ = stdout.flush();
    })?;
    println!();
    for w in &seg.warnings {
        eprintln!("warning: {w}");
    }
    progress::note(&timing_line(&seg));
    let written = output::write(
        &args.out,
        &image,
        &seg,
        backend,
        precision,
        args.save_logits,
    )?;
    progress::note(&format!(
        "{} target(s); wrote {} in {}",
        seg.targets.len(),
        written.join(", "),
        args.out.display()
    ));
    Ok(())
}

fn bench(args: BenchArgs) -> pixellm::Result<()> {
    let backend: Backend = args.backend.parse()?;
    let precision: Precision = args.dtype.parse()?;
    if let Some(path) = &args.json {
        pixellm::output::check_file(path)?;
    }
    let options = bench::BenchOptions {
        shape: args.shape.parse()?,
        prompt_tokens: args.prompt_tokens,
        new_tokens: args.new_tokens,
        targets: args.targets,
        iters: args.iters.max(1),
        quant: args.quant.unwrap_or(Quant::None),
    };
    let device = backend.device()?;
    let report = bench::run(&device, precision.dtype(), &options, &mut |line| {
        progress::note(line)
    })?;
    print!("{}", report.table());
    if let Some(path) = args.json {
        let mut json = report.to_json();
        json["backend"] = backend.name().into();
        json[pixellm::output::WRITTEN_BY] = pixellm::output::written_by("bench");
        let text = serde_json::to_string_pretty(&json).expect("JSON values serialise");
        pixellm::output::write_file(&path, text.as_bytes())?;
        progress::note(&format!("wrote {}", path.display()));
    }
    Ok(())
}

fn chat(args: ChatArgs) -> pixellm::Result<()> {
    use pixellm::chat::chatml::Role;
    use std::io::BufRead;

    let backend: Backend = args.backend.parse()?;
    let precision: Precision = args.dtype.parse()?;
    let device = backend.device()?;
    let start = std::time::Instant::now();
    progress::note(&format!(
        "loading {} on {}…",
        args.model.display(),
        backend.name()
    ));
    let model = pixellm::chat::ChatModel::load_gguf(
        &args.model,
        &device,
        precision.dtype(),
        args.quant.unwrap_or_default(),
    )?;
    progress::note(&format!(
        "load {}: {:.0} ms ({:.1} MB of weights)",
        args.model.display(),
        start.elapsed().as_secs_f64() * 1e3,
        model.weight_bytes() as f64 / 1e6
    ));
    let mut history: Vec<(Role, String)> = Vec::new();
    let ask = |question: String, history: &mut Vec<(Role, String)>| -> pixellm::Result<()> {
        history.push((Role::User, question));
        let mut stdout = std::io::stdout();
        let reply = model.reply(history, args.max_new_tokens, &mut |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        })?;
        println!();
        progress::note(&format!(
            "[{} prompt tokens, prefill {:.0} ms; {} tokens at {:.1} tokens/s]",
            reply.prompt_tokens,
            reply.prefill_ms,
            reply.ids.len(),
            reply.tokens_per_s()
        ));
        history.push((Role::Assistant, reply.text));
        Ok(())
    };
    if let Some(q) = args.question {
        return ask(q, &mut history);
    }
    progress::note("interactive chat: one message per line, an empty line or end of input quits");
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| pixellm::Error::io("<stdin>", e))?;
        if line.trim().is_empty() {
            break;
        }
        ask(line, &mut history)?;
    }
    Ok(())
}

fn quantize(args: QuantizeArgs) -> pixellm::Result<()> {
    pixellm::output::check_dir(&args.out, pixellm::weights::quantize::MANIFEST)?;
    let start = std::time::Instant::now();
    let mut bar = progress::Bar::new("quantize (tensors)", 0);
    let report = pixellm::weights::quantize::quantize_dir(
        &args.model,
        args.vision_tower.as_deref(),
        args.quant,
        &args.out,
        &mut |done, total| {
            bar.set_total(total as u64);
            bar.set(done as u64, "");
        },
    )?;
    bar.finish("done");
    progress::note(&format!(
        "wrote {}: {} matrices packed ({}), {} tensors as stored; {:.1} MB → {:.1} MB in {:.1} s",
        args.out.display(),
        report.packed,
        args.quant.name(),
        report.dense,
        report.bytes_in as f64 / 1e6,
        report.bytes_out as f64 / 1e6,
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn devices() -> pixellm::Result<()> {
    for backend in Backend::ALL {
        if !backend.compiled() {
            println!("{backend}: not compiled in");
            continue;
        }
        match backend.device() {
            Ok(device) => println!("{backend}: {}", pixellm::backend::describe(&device)),
            Err(e) => println!("{backend}: {e}"),
        }
    }
    Ok(())
}

/// The closing line of a run: prompt and decode speed and every stage's time, as llama.cpp
/// and candle print them.
fn timing_line(seg: &pixellm::Segmentation) -> String {
    let ms = |name: &str| {
        seg.timings_ms
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    };
    let mut parts: Vec<String> = Vec::new();
    if let Some(prefill) = ms("prefill").filter(|&v| v > 0.0) {
        parts.push(format!(
            "prompt {} tokens at {:.1} tokens/s",
            seg.prompt_tokens,
            seg.prompt_tokens as f64 / prefill * 1e3
        ));
    }
    if let Some(decode) = ms("decode") {
        let n = seg.token_ids.len();
        if decode > 0.0 && n > 0 {
            parts.push(format!(
                "decode {n} tokens at {:.1} tokens/s",
                n as f64 / decode * 1e3
            ));
        }
    }
    let stages: Vec<String> = seg
        .timings_ms
        .iter()
        .map(|(k, v)| format!("{k} {v:.0} ms"))
        .collect();
    parts.push(stages.join(", "));
    format!("[{}]", parts.join("; "))
}
