//! `pixellm`: PixelLM segmentation from the command line.

mod output;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use pixellm::backend::{Backend, Precision};
use pixellm::pipeline::DEFAULT_MAX_NEW_TOKENS;
use pixellm::{PixelLm, Progress, SegmentRequest};

/// Whether stderr ends in an unfinished progress line.
static PROGRESS_LINE_OPEN: AtomicBool = AtomicBool::new(false);

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
    /// Generation budget per reply.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// The question; omit it for an interactive session.
    question: Option<String>,
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
    /// Also write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SegmentArgs {
    /// PixelLM Hugging Face directory (config.json, tokenizer, *.safetensors or pytorch_model-*.bin).
    #[arg(long)]
    model: PathBuf,
    /// CLIP vision tower directory (openai/clip-vit-large-patch14-336); default: the
    /// config's `vision_tower`, next to the model or in the Hugging Face cache.
    #[arg(long)]
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
    /// Output directory (replaced as a whole when the run succeeds).
    #[arg(long, default_value = "./pixellm-out")]
    out: PathBuf,
    /// Also write logits.safetensors (final and 128×128 mask logits).
    #[arg(long)]
    save_logits: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(library) = cli.blas.as_deref().filter(|l| !l.is_empty()) {
        match pixellm::backend::load_cpu_blas(library) {
            Ok(name) => eprintln!("CPU matmul: {name}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let result = match cli.command {
        Command::Segment(args) => segment(args),
        Command::Devices => devices(),
        Command::Bench(args) => bench(args),
        Command::Chat(args) => chat(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error gets a line of its own even if a progress line was left open.
            if PROGRESS_LINE_OPEN.load(Ordering::Relaxed) {
                eprintln!();
            }
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn segment(args: SegmentArgs) -> pixellm::Result<()> {
    let backend: Backend = args.backend.parse()?;
    let precision: Precision = args.dtype.parse()?;
    output::check_target(&args.out)?;
    let device = backend.device()?;
    let image = pixellm::image::load_image(&args.image)?;
    let mut shown = 0;
    let model = PixelLm::load(
        &args.model,
        args.vision_tower.as_deref(),
        &device,
        precision.dtype(),
        &mut |p| match p {
            Progress::Step(s) => {
                PROGRESS_LINE_OPEN.store(true, Ordering::Relaxed);
                eprint!("{s}… ")
            }
            Progress::Done(name, ms) => {
                PROGRESS_LINE_OPEN.store(false, Ordering::Relaxed);
                if shown > 0 {
                    eprintln!("\r{name}… 100% {ms:.0} ms                         ");
                    shown = 0;
                } else {
                    eprintln!("{ms:.0} ms");
                }
            }
            Progress::Bytes { done, total } => {
                // One update per percent: smooth on a terminal, short in a log.
                let pct = (done * 100).checked_div(total).unwrap_or(100);
                if pct > shown {
                    shown = pct;
                    eprint!(
                        "\rload weights… {pct:3}% ({:.2} / {:.2} GB) ",
                        done as f64 / 1e9,
                        total as f64 / 1e9
                    );
                }
            }
        },
    )?;
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
    output::write(
        &args.out,
        &image,
        &seg,
        backend,
        precision,
        args.save_logits,
    )?;
    eprintln!(
        "{} target(s); wrote {}",
        seg.targets.len(),
        args.out.display()
    );
    Ok(())
}

fn bench(args: BenchArgs) -> pixellm::Result<()> {
    let backend: Backend = args.backend.parse()?;
    let precision: Precision = args.dtype.parse()?;
    let options = pixellm::bench::BenchOptions {
        shape: args.shape.parse()?,
        prompt_tokens: args.prompt_tokens,
        new_tokens: args.new_tokens,
        targets: args.targets,
        iters: args.iters.max(1),
    };
    let device = backend.device()?;
    let report = pixellm::bench::run(&device, precision.dtype(), &options, &mut |line| {
        eprintln!("{line}")
    })?;
    print!("{}", report.table());
    if let Some(path) = args.json {
        let mut json = report.to_json();
        json["backend"] = backend.name().into();
        let text = serde_json::to_string_pretty(&json).expect("JSON values serialise");
        std::fs::write(&path, text).map_err(|e| pixellm::Error::io(path, e))?;
    }
    Ok(())
}

fn chat(args: ChatArgs) -> pixellm::Result<()> {
    use pixellm::tokenizer::chatml::Role;
    use std::io::BufRead;

    let backend: Backend = args.backend.parse()?;
    let precision: Precision = args.dtype.parse()?;
    let device = backend.device()?;
    eprint!("loading {}… ", args.model.display());
    PROGRESS_LINE_OPEN.store(true, Ordering::Relaxed);
    let model = pixellm::chat::ChatModel::load_gguf(&args.model, &device, precision.dtype())?;
    PROGRESS_LINE_OPEN.store(false, Ordering::Relaxed);
    eprintln!("done");
    let mut history: Vec<(Role, String)> = Vec::new();
    let ask = |question: String, history: &mut Vec<(Role, String)>| -> pixellm::Result<()> {
        history.push((Role::User, question));
        let mut stdout = std::io::stdout();
        let reply = model.reply(history, args.max_new_tokens, &mut |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        })?;
        println!();
        eprintln!(
            "[{} prompt tokens, prefill {:.0} ms; {} tokens at {:.1} tokens/s]",
            reply.prompt_tokens,
            reply.prefill_ms,
            reply.ids.len(),
            reply.tokens_per_s()
        );
        history.push((Role::Assistant, reply.text));
        Ok(())
    };
    if let Some(q) = args.question {
        return ask(q, &mut history);
    }
    eprintln!("interactive chat: one message per line, an empty line or end of input quits");
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| pixellm::Error::io("<stdin>", e))?;
        if line.trim().is_empty() {
            break;
        }
        ask(line, &mut history)?;
    }
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
