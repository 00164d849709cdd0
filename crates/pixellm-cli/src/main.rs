//! `pixellm`: PixelLM segmentation from the command line.

mod output;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pixellm::backend::{Backend, Precision};
use pixellm::pipeline::DEFAULT_MAX_NEW_TOKENS;
use pixellm::{PixelLm, Progress, SegmentRequest};

#[derive(Parser)]
#[command(
    name = "pixellm",
    version,
    about = "PixelLM: answer a question about an image with text and one mask per target"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer a question about an image and write one mask per target.
    Segment(SegmentArgs),
    /// List the backends compiled into this build and the devices each one sees.
    Devices,
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
    let result = match cli.command {
        Command::Segment(args) => segment(args),
        Command::Devices => devices(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn segment(args: SegmentArgs) -> pixellm::Result<()> {
    let backend: Backend = args.backend.parse()?;
    let precision: Precision = args.dtype.parse()?;
    let device = backend.device()?;
    let image = pixellm::image::load_image(&args.image)?;
    let mut shown = 0;
    let model = PixelLm::load(
        &args.model,
        args.vision_tower.as_deref(),
        &device,
        precision.dtype(),
        &mut |p| match p {
            Progress::Step(s) => eprint!("{s}… "),
            Progress::Done(_, ms) => eprintln!("{ms:.0} ms"),
            Progress::Bytes { done, total } => {
                // One update per percent: smooth on a terminal, short in a log.
                let pct = if total == 0 { 100 } else { done * 100 / total };
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
