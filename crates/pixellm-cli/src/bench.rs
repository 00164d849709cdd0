//! `pixellm bench`: per-stage speed and memory of PixelLM at real shapes, with random
//! weights (no checkpoint needed).
//!
//! Every stage is timed after warm-up with the device synchronised at its end, so the time
//! is the stage's own work. Decode is also compared with its physical floor: the LLM weight
//! bytes every generated token must read, divided by the device copy bandwidth the bench
//! measures itself.

use std::fmt::Write as _;
use std::str::FromStr;

use burn::tensor::{DType, Device, Distribution, Tensor};
use serde_json::{json, Value};
use std::time::Instant;

use pixellm::config::{ClipVisionConfig, LlamaConfig, PixelLmConfig};
use pixellm::error::{Error, Result};
use pixellm::generate::greedy;
use pixellm::image::{self as img, RgbImage};
use pixellm::kernels::counts::{Watch, Work};
use pixellm::model::llm::KvCache;
use pixellm::model::{PixelLmModel, IMAGE_TOKEN_INDEX};
use pixellm::pipeline::read_f32;
use pixellm::Quant;

/// Model sizes the bench can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The bundled tiny test model (LLaMA 64×4, tiny CLIP).
    Tiny,
    /// TinyLlama-sized LLM (2048 wide, 22 layers, GQA 32/4) with the real CLIP ViT-L/14.
    Mid,
    /// PixelLM-7B: LLaMA 4096×32 and CLIP ViT-L/14 at 448.
    B7,
    /// PixelLM-13B: LLaMA 5120×40 and CLIP ViT-L/14 at 448.
    B13,
}

impl Shape {
    /// Name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Tiny => "tiny",
            Shape::Mid => "mid",
            Shape::B7 => "7b",
            Shape::B13 => "13b",
        }
    }

    /// The PixelLM and CLIP configurations of this shape.
    pub fn configs(self) -> Result<(PixelLmConfig, ClipVisionConfig)> {
        let tiny = || PixelLmConfig::from_bytes(TINY_CONFIG.as_bytes(), "tiny config.json");
        Ok(match self {
            Shape::Tiny => (
                tiny()?,
                ClipVisionConfig::from_bytes(TINY_CLIP_CONFIG.as_bytes(), "tiny clip config.json")?,
            ),
            Shape::B7 => (
                PixelLmConfig::from_bytes(CONFIG_7B.as_bytes(), "models/pixellm-7b/config.json")?,
                ClipVisionConfig::clip_vit_large_patch14_336(),
            ),
            Shape::B13 => (
                PixelLmConfig::from_bytes(CONFIG_13B.as_bytes(), "models/pixellm-13b/config.json")?,
                ClipVisionConfig::clip_vit_large_patch14_336(),
            ),
            Shape::Mid => {
                let mut c = PixelLmConfig::from_bytes(
                    CONFIG_7B.as_bytes(),
                    "models/pixellm-7b/config.json",
                )?;
                c.llm = LlamaConfig {
                    hidden_size: 2048,
                    intermediate_size: 5632,
                    num_hidden_layers: 22,
                    num_attention_heads: 32,
                    num_key_value_heads: 4,
                    rms_norm_eps: 1e-5,
                    rope_theta: 10000.0,
                    vocab_size: 32000,
                    max_position_embeddings: 2048,
                    tie_word_embeddings: false,
                };
                (c, ClipVisionConfig::clip_vit_large_patch14_336())
            }
        })
    }
}

impl FromStr for Shape {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tiny" => Ok(Shape::Tiny),
            "mid" => Ok(Shape::Mid),
            "7b" => Ok(Shape::B7),
            "13b" => Ok(Shape::B13),
            _ => Err(Error::Backend(format!(
                "unknown shape `{s}`; expected tiny, mid, 7b or 13b"
            ))),
        }
    }
}

const TINY_CONFIG: &str =
    include_str!("../../../tests/fixtures/conformance/checkpoint/config.json");
const TINY_CLIP_CONFIG: &str =
    include_str!("../../../tests/fixtures/conformance/clip-vit-tiny-patch14-336/config.json");
const CONFIG_7B: &str = include_str!("../../../models/pixellm-7b/config.json");
const CONFIG_13B: &str = include_str!("../../../models/pixellm-13b/config.json");

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Model size.
    pub shape: Shape,
    /// Text tokens of the prompt (the 256 image tokens come on top).
    pub prompt_tokens: usize,
    /// Tokens generated per iteration (EOS is ignored so every run decodes this many).
    pub new_tokens: usize,
    /// Targets the pixel decoder segments.
    pub targets: usize,
    /// Timed iterations (after one warm-up iteration).
    pub iters: usize,
    /// How the LLM's matrices are held (`--quant`; random weights quantised at build).
    pub quant: Quant,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            shape: Shape::Tiny,
            prompt_tokens: 300,
            new_tokens: 32,
            targets: 2,
            iters: 3,
            quant: Quant::None,
        }
    }
}

/// Timings of one stage.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Stage name.
    pub name: String,
    /// Milliseconds of each timed iteration.
    pub samples_ms: Vec<f64>,
    /// The stage's physical floor in ms, where one is meaningful.
    pub floor_ms: Option<f64>,
    /// Device work of the stage in the warm-up iteration (launches, compilations,
    /// uploads, reads).
    pub work: Work,
}

impl Stage {
    /// Median of the samples.
    pub fn median(&self) -> f64 {
        let mut v = self.samples_ms.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            0.0
        } else if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }

    /// Smallest sample.
    pub fn min(&self) -> f64 {
        self.samples_ms
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
    }

    /// Largest sample.
    pub fn max(&self) -> f64 {
        self.samples_ms.iter().copied().fold(0.0, f64::max)
    }
}

/// Everything `pixellm bench` reports.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The options the bench ran with.
    pub options: BenchOptions,
    /// Device description (adapter name).
    pub device: String,
    /// Float dtype.
    pub dtype: DType,
    /// Per-stage timings, in pipeline order, then end-to-end.
    pub stages: Vec<Stage>,
    /// Measured device copy bandwidth, GB/s (read + write).
    pub copy_gb_s: f64,
    /// LLM weight bytes read per decoded token.
    pub decode_bytes_per_token: u64,
    /// Bytes the model's weights occupy on the device (packed matrices at their blocks'
    /// size).
    pub weight_bytes: u64,
    /// Milliseconds to build the random-weight model.
    pub build_ms: f64,
    /// Peak resident host memory (bytes), where the OS tells.
    pub peak_host_bytes: Option<u64>,
    /// Device memory in use after the run, where the backend tells.
    pub device_memory: Option<String>,
    /// Device work per decoded token ([`DecodeCounts`]).
    pub decode: DecodeCounts,
}

/// What one decode step does on the device, counted in the warm-up iteration
/// (`pixellm::kernels::counts`): the numbers that decide GPU decode speed where timings
/// cannot be trusted (CI's software Vulkan), and that are the same there as on a real GPU.
#[derive(Debug, Clone, Default)]
pub struct DecodeCounts {
    /// Decode steps counted (one forward of one token, its logits and argmax each).
    pub steps: usize,
    /// Kernel launches per step (mean); `None` where launches are not observed (the CPU
    /// backend launches no kernels).
    pub launches_per_token: Option<f64>,
    /// Most launches of one step.
    pub max_launches: Option<u64>,
    /// Host→device uploads per step (mean).
    pub uploads_per_token: f64,
    /// Device→host reads per step (mean).
    pub reads_per_token: f64,
    /// Kernels first launched after the first two steps: compilations on the decode path
    /// (each one a stall on the first token that reaches it).
    pub compilations_after_warmup: Option<u64>,
    /// Decoder layers of the LLM.
    pub llm_layers: usize,
    /// Launches of the last counted step, by kernel.
    pub by_kernel: std::collections::BTreeMap<String, u64>,
}

impl DecodeCounts {
    fn from_steps(steps: &[Work], layers: usize, device: &Device) -> Self {
        let n = steps.len().max(1) as f64;
        let observed = Watch::observes_launches() && !pixellm::backend::is_cpu(device);
        let sum = |f: fn(&Work) -> u64| steps.iter().map(f).sum::<u64>() as f64 / n;
        Self {
            steps: steps.len(),
            launches_per_token: observed.then(|| sum(|w| w.launches)),
            max_launches: observed.then(|| steps.iter().map(|w| w.launches).max().unwrap_or(0)),
            uploads_per_token: sum(|w| w.uploads),
            reads_per_token: sum(|w| w.reads),
            compilations_after_warmup: observed
                .then(|| steps.iter().skip(2).map(|w| w.new_kernels).sum()),
            llm_layers: layers,
            by_kernel: steps
                .last()
                .map(|w| w.by_kernel.clone())
                .unwrap_or_default(),
        }
    }

    /// Launches per decoder layer per token (the whole step's launches, head and argmax
    /// included, over the layer count).
    pub fn launches_per_layer(&self) -> Option<f64> {
        self.launches_per_token
            .map(|l| l / self.llm_layers.max(1) as f64)
    }
}

impl BenchReport {
    /// Decode throughput (median).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.stages
            .iter()
            .find(|s| s.name == "decode")
            .map_or(0.0, |s| self.options.new_tokens as f64 / (s.median() / 1e3))
    }

    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let o = &self.options;
        let _ = writeln!(
            t,
            "pixellm bench: shape {} | {} | {:?} | prompt {} + 256 image tokens, {} new tokens, {} targets, {} iterations",
            o.shape.name(), self.device, self.dtype, o.prompt_tokens, o.new_tokens, o.targets, o.iters
        );
        let _ = writeln!(
            t,
            "{:<26} {:>11} {:>11} {:>11} {:>11} {:>8}",
            "stage", "median ms", "min ms", "max ms", "floor ms", "×floor"
        );
        for s in &self.stages {
            let (floor, ratio) = match s.floor_ms {
                Some(f) => (format!("{f:.2}"), format!("{:.1}", s.median() / f)),
                None => ("-".into(), "-".into()),
            };
            let _ = writeln!(
                t,
                "{:<26} {:>11.2} {:>11.2} {:>11.2} {:>11} {:>8}",
                s.name,
                s.median(),
                s.min(),
                s.max(),
                floor,
                ratio
            );
        }
        let _ = writeln!(
            t,
            "decode: {:.2} tokens/s ({:.1} ms/token); floor: {:.1} MB of weights per token at {:.1} GB/s measured copy bandwidth",
            self.decode_tokens_per_s(),
            1e3 / self.decode_tokens_per_s().max(1e-9),
            self.decode_bytes_per_token as f64 / 1e6,
            self.copy_gb_s
        );
        let _ = writeln!(
            t,
            "model build (random weights): {:.0} ms; weights: {:.1} MB ({})",
            self.build_ms,
            self.weight_bytes as f64 / 1e6,
            self.options.quant.name()
        );
        let d = &self.decode;
        match d.launches_per_token {
            Some(l) => {
                let _ = writeln!(
                    t,
                    "decode step on the device: {l:.1} kernel launches ({:.1} per layer × {} layers, head and argmax included), {:.1} uploads, {:.1} reads, {} compilations after warm-up",
                    d.launches_per_layer().unwrap_or(0.0),
                    d.llm_layers,
                    d.uploads_per_token,
                    d.reads_per_token,
                    d.compilations_after_warmup.unwrap_or(0)
                );
            }
            None => {
                let _ = writeln!(
                    t,
                    "decode step: {:.1} uploads, {:.1} reads (no kernel launches on this backend)",
                    d.uploads_per_token, d.reads_per_token
                );
            }
        }
        if let Some(b) = self.peak_host_bytes {
            let _ = writeln!(t, "peak host memory: {:.2} GB", b as f64 / 1e9);
        }
        if let Some(m) = &self.device_memory {
            let _ = writeln!(t, "device memory: {m}");
        }
        t
    }

    /// The report as JSON (for `--json FILE` and the PyTorch comparison script).
    pub fn to_json(&self) -> Value {
        let o = &self.options;
        json!({
            "shape": o.shape.name(),
            "device": self.device,
            "dtype": format!("{:?}", self.dtype),
            "prompt_tokens": o.prompt_tokens,
            "new_tokens": o.new_tokens,
            "targets": o.targets,
            "iters": o.iters,
            "stages": self.stages.iter().map(|s| json!({
                "name": s.name, "median_ms": s.median(), "min_ms": s.min(), "max_ms": s.max(),
                "floor_ms": s.floor_ms, "samples_ms": s.samples_ms,
                "launches": s.work.launches, "uploads": s.work.uploads, "reads": s.work.reads,
            })).collect::<Vec<_>>(),
            "llm_layers": self.decode.llm_layers,
            "decode_steps_counted": self.decode.steps,
            "launches_per_decode_token": self.decode.launches_per_token,
            "max_launches_per_decode_token": self.decode.max_launches,
            "launches_per_layer_per_decode_token": self.decode.launches_per_layer(),
            "uploads_per_decode_token": self.decode.uploads_per_token,
            "reads_per_decode_token": self.decode.reads_per_token,
            "compilations_after_warmup": self.decode.compilations_after_warmup,
            "decode_launches_by_kernel": self.decode.by_kernel,
            "decode_tokens_per_s": self.decode_tokens_per_s(),
            "copy_gb_s": self.copy_gb_s,
            "decode_bytes_per_token": self.decode_bytes_per_token,
            "weight_bytes": self.weight_bytes,
            "quant": o.quant.name(),
            "build_ms": self.build_ms,
            "peak_host_bytes": self.peak_host_bytes,
            "device_memory": self.device_memory,
        })
    }
}

fn dtype_bytes(dtype: DType) -> u64 {
    match dtype {
        DType::F32 => 4,
        DType::F64 => 8,
        _ => 2,
    }
}

/// LLM weight bytes one decode step reads: every layer's projections and the LM head (at
/// the packed format's bytes per value under `quant`; the head at 8 bits at most), and the
/// norms.
fn decode_bytes(c: &LlamaConfig, dtype: DType, quant: Quant) -> u64 {
    let (h, i) = (c.hidden_size as u64, c.intermediate_size as u64);
    let kv = (c.num_key_value_heads * c.head_dim()) as u64;
    let layers = c.num_hidden_layers as u64 * (2 * h * h + 2 * h * kv + 3 * h * i);
    let head = c.vocab_size as u64 * h;
    let bytes = |values: u64, quant: Quant| match quant.target(None) {
        Some(f) if h.is_multiple_of(32) => values / 32 * f.block_bytes() as u64,
        _ => values * dtype_bytes(dtype),
    };
    let norms = (2 * c.num_hidden_layers as u64 + 1) * h * dtype_bytes(dtype);
    bytes(layers, quant) + bytes(head, quant.for_output()) + norms
}

/// Best-of-5 bandwidth of an elementwise copy over 256 MB (f32) on `device`, GB/s.
///
/// On the CPU backend the copy runs on every core ([`host_copy_bandwidth`]): Burn's CPU
/// element-wise ops use one thread, which would put the floor at one core's bandwidth
/// while decode reads the weights on all of them.
fn copy_bandwidth(device: &Device, dtype: DType) -> Result<f64> {
    #[cfg(all(feature = "cpu", not(target_family = "wasm")))]
    if *device == Device::flex() {
        return Ok(host_copy_bandwidth());
    }
    let n = 64 << 20;
    let x = Tensor::<1>::random([n], Distribution::Default, (device, dtype));
    let mut best = f64::INFINITY;
    for i in 0..6 {
        let t = Instant::now();
        let y = x.clone().mul_scalar(1.0001);
        sync(device)?;
        let dt = t.elapsed().as_secs_f64();
        drop(y);
        if i > 0 {
            best = best.min(dt);
        }
    }
    Ok(2.0 * (n as u64 * dtype_bytes(dtype)) as f64 / best / 1e9)
}

/// Best-of-5 bandwidth of `y = 1.0001·x` over 256 MB of f32 in host memory, split over
/// the thread pool, GB/s (read + write).
#[cfg(all(feature = "cpu", not(target_family = "wasm")))]
fn host_copy_bandwidth() -> f64 {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let n = 64 << 20;
    let x = vec![1.0f32; n];
    let mut y = vec![0.0f32; n];
    let mut best = f64::INFINITY;
    for i in 0..6 {
        let t = Instant::now();
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y = x * 1.0001));
        let dt = t.elapsed().as_secs_f64();
        if i > 0 {
            best = best.min(dt);
        }
    }
    std::hint::black_box(&y);
    2.0 * (n * 4) as f64 / best / 1e9
}

fn sync(device: &Device) -> Result<()> {
    device
        .sync()
        .map_err(|e| Error::Backend(format!("device synchronisation failed: {e:?}")))
}

fn peak_host_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A deterministic 640×480 test image (smooth gradients: no decode cost, realistic resize).
fn test_image() -> RgbImage {
    RgbImage::from_fn(640, 480, |x, y| {
        ::image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    })
}

/// Builds the model at `options.shape` with random weights on `device` and times every
/// stage. `log` receives progress lines.
pub fn run(
    device: &Device,
    dtype: DType,
    options: &BenchOptions,
    log: &mut dyn FnMut(&str),
) -> Result<BenchReport> {
    let (config, clip_config) = options.shape.configs()?;
    let context = config.llm.max_position_embeddings;
    let expanded = options.prompt_tokens + 256;
    if expanded + options.new_tokens > context {
        return Err(Error::Prompt(format!(
            "{} prompt tokens + 256 image tokens + {} new tokens exceed the context of {context}",
            options.prompt_tokens, options.new_tokens
        )));
    }
    log(&format!(
        "building the {} model with random weights…",
        options.shape.name()
    ));
    let t = Instant::now();
    let model = PixelLmModel::random(&config, &clip_config, device, dtype, options.quant)?;
    sync(device)?;
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    log("measuring copy bandwidth…");
    let copy_gb_s = copy_bandwidth(device, dtype)?;

    let image = test_image();
    let h = config.llm.hidden_size;
    let vocab = config.llm.vocab_size as i64;
    // BOS, system text, the image placeholder, then the question: the real prompt's layout.
    let mut ids: Vec<i64> = (0..options.prompt_tokens as i64)
        .map(|i| 3 + (i * 7919) % (vocab - 3))
        .collect();
    ids[0] = 1;
    ids.insert(options.prompt_tokens.min(35), IMAGE_TOKEN_INDEX);
    let seg_hidden = Tensor::<2>::random(
        [6 * options.targets, h],
        Distribution::Uniform(-1.0, 1.0),
        (device, dtype),
    );

    let names = [
        "preprocess",
        "vision tower",
        "projectors + neck",
        "prefill",
        "decode",
        "pixel decoder",
        "postprocess",
        "end to end",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    // Device work is counted in the warm-up iteration only: collecting kernel ids costs a
    // hash per launch, which the timed iterations must not pay.
    let mut work = vec![Work::default(); names.len()];
    let mut steps: Vec<Work> = Vec::new();
    for iter in 0..=options.iters {
        let mut watch = (iter == 0).then(Watch::start);
        log(&if iter == 0 {
            "warm-up iteration…".to_string()
        } else {
            format!("iteration {iter}/{}…", options.iters)
        });
        let mut times = Vec::with_capacity(names.len());
        let start = Instant::now();
        let mut lap = Instant::now();
        let mut stop = |times: &mut Vec<f64>, watch: &mut Option<Watch>| -> Result<()> {
            sync(device)?;
            let now = Instant::now();
            if let Some(w) = watch {
                work[times.len()] = w.lap();
            }
            times.push((now - lap).as_secs_f64() * 1e3);
            lap = now;
            Ok(())
        };

        let input = img::preprocess(&image, config.image_size, clip_config.patch_size)?;
        let pixels = model.pixels(input.pixel_values.clone());
        stop(&mut times, &mut watch)?;
        let vision = model.run_vision(pixels, &input.patch_valid);
        stop(&mut times, &mut watch)?;
        let features = model.project_image(vision);
        stop(&mut times, &mut watch)?;

        let e = ids.len() - 1 + model.llm_grid().pow(2);
        let llm = model.llm();
        let p = ids
            .iter()
            .position(|&i| i == IMAGE_TOKEN_INDEX)
            .unwrap_or(0);
        let mut padding = vec![false; p];
        padding.extend(input.llm_valid.iter().map(|v| !v));
        let mut cache = KvCache::new(
            llm.config(),
            e + options.new_tokens,
            &padding,
            device,
            dtype,
        )?;
        let (embeds, _) = model.splice_image(&ids, &features.llm_tokens)?;
        let last = llm
            .forward(embeds, &mut cache)?
            .narrow(1, e - 1, 1)
            .reshape([1, h]);
        stop(&mut times, &mut watch)?;
        // Laps between consecutive tokens: one decode step each (forward, head, argmax,
        // the id read). The first lap is the prefill's argmax, not a step.
        let mut step_laps = Vec::new();
        let generated = greedy(
            llm,
            &mut cache,
            last,
            options.new_tokens,
            &[],
            &mut |_, _| {
                if let Some(w) = &mut watch {
                    step_laps.push(w.lap());
                }
            },
        )?;
        if watch.is_some() {
            steps = step_laps.split_off(1.min(step_laps.len()));
        }
        debug_assert_eq!(generated.len(), options.new_tokens);
        stop(&mut times, &mut watch)?;

        let masks = model.decode_masks(seg_hidden.clone(), &features.decoder_features);
        stop(&mut times, &mut watch)?;
        let logits = model.postprocess(masks.low_res, input.resized, input.original);
        let values = read_f32(logits)?;
        let (h0, w0) = input.original;
        for t in 0..options.targets {
            let m = &values[t * h0 * w0..(t + 1) * h0 * w0];
            let _ = (img::mask_stats(m, w0, h0), img::mask_score(m));
        }
        stop(&mut times, &mut watch)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        if watch.is_some() {
            let (last, stages) = work.split_last_mut().expect("stage names");
            *last = stages.iter().fold(Work::default(), |mut all, w| {
                all += w.clone();
                all
            });
        }
        if iter > 0 {
            for (s, t) in samples.iter_mut().zip(times) {
                s.push(t);
            }
        }
    }

    let bytes = decode_bytes(&config.llm, dtype, options.quant);
    let decode_floor = options.new_tokens as f64 * bytes as f64 / (copy_gb_s * 1e9) * 1e3;
    let stages = names
        .iter()
        .zip(samples)
        .zip(work)
        .map(|((name, samples_ms), work)| Stage {
            name: name.to_string(),
            samples_ms,
            floor_ms: (*name == "decode").then_some(decode_floor),
            work,
        })
        .collect();
    Ok(BenchReport {
        options: options.clone(),
        device: match pixellm::backend::describe(device) {
            // The CPU's products can come from a loaded BLAS: part of what was measured.
            cpu if cpu == "CPU" => format!("CPU, matmul: {}", pixellm::backend::cpu_matmul()),
            other => other,
        },
        dtype,
        stages,
        copy_gb_s,
        decode_bytes_per_token: bytes,
        weight_bytes: model.weight_bytes(),
        build_ms,
        peak_host_bytes: peak_host_bytes(),
        device_memory: device.memory_pool_usage().map(|u| format!("{u:?}")),
        decode: DecodeCounts::from_steps(&steps, config.llm.num_hidden_layers, device),
    })
}
