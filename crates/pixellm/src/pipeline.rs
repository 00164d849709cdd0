//! Image + question in, answer text and one mask per target out: the official `chat.py`
//! / `evaluate()` flow with a KV cache and the image encoded once (`docs/model.md` §4–10).

use std::path::Path;

use burn::tensor::{DType, Device, Tensor};
use web_time::Instant;

use crate::config::{resolve_vision_tower, ClipVisionConfig, PixelLmConfig};
use crate::error::{Error, Result};
use crate::generate::greedy_async;
use crate::image::{self as img, ClipInput, RgbImage};
use crate::kernels::quant::Quant;
use crate::model::llm::KvCache;
use crate::model::{image_position, ImageFeatures, PixelLmModel};
use crate::tokenizer::{llava_v1_prompt, StreamDecoder, Tokenizer};
use crate::weights::WeightFiles;

/// `max_new_tokens` of the official `chat.py` and MUSE evaluation.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 512;

/// Progress of a long operation, for a progress bar or log line.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A loading step has started.
    Step(String),
    /// A loading step has finished, after `ms` milliseconds.
    Done(String, f64),
    /// Checkpoint bytes read so far, of `total`.
    Bytes {
        /// Bytes read.
        done: u64,
        /// Bytes in the opened files.
        total: u64,
    },
    /// Something worth a `warning:` line (e.g. checkpoint tensors the model never read).
    Warning(String),
}

/// A loaded PixelLM: weights on a device plus its tokenizer.
#[derive(Debug, Clone)]
pub struct PixelLm {
    model: PixelLmModel,
    tokenizer: Tokenizer,
    seg_ids: Vec<i64>,
}

/// What to run on an image.
#[derive(Debug, Clone)]
pub struct SegmentRequest {
    /// The user's question; the llava_v1 conversation is built around it.
    pub question: String,
    /// A forced assistant answer (teacher forcing, refCOCO-style evaluation): generation is
    /// skipped and the masks come from the answer's `[SEGk]` tokens.
    pub answer: Option<String>,
    /// Generation budget (ignored with `answer`).
    pub max_new_tokens: usize,
}

impl SegmentRequest {
    /// A question with the default budget and no forced answer.
    pub fn new(question: impl Into<String>) -> Self {
        Self {
            question: question.into(),
            answer: None,
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
        }
    }
}

/// One segmented target.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Order of the target's codebook group in the answer.
    pub index: usize,
    /// Mean foreground probability (`docs/model.md` §10.6).
    pub score: f32,
    /// Foreground pixels.
    pub area: usize,
    /// `[x0, y0, x1, y1]`, end exclusive; `None` for an empty mask.
    pub bbox: Option<[usize; 4]>,
}

/// The result of [`PixelLm::segment`].
#[derive(Debug, Clone)]
pub struct Segmentation {
    /// Generated (or forced) answer text.
    pub text: String,
    /// Generated ids without the prompt (EOS included when emitted), or the forced
    /// answer's ids.
    pub token_ids: Vec<i64>,
    /// One entry per target, in answer order.
    pub targets: Vec<Target>,
    /// `(H0, W0)`: the size of the input image and of every mask.
    pub size: (usize, usize),
    /// Final mask logits `[N, H0, W0]` row-major; mask = logit > 0.
    pub masks: Vec<f32>,
    /// Fused low-resolution logits `[N, 128, 128]`.
    pub low_res_masks: Vec<f32>,
    /// Milliseconds per stage, in pipeline order.
    pub timings_ms: Vec<(String, f64)>,
    /// Things the user should know (e.g. codebook tokens not a multiple of 6).
    pub warnings: Vec<String>,
    /// Positions of the prompt the LLM prefilled (image tokens included; with a forced
    /// answer, the whole sequence).
    pub prompt_tokens: usize,
}

impl Segmentation {
    /// Logits of target `i`, `H0 × W0` row-major.
    pub fn mask(&self, i: usize) -> &[f32] {
        let n = self.size.0 * self.size.1;
        &self.masks[i * n..(i + 1) * n]
    }
}

/// An image after the image-only stages ([`PixelLm::encode`]).
#[derive(Debug, Clone)]
pub struct EncodedImage {
    /// The preprocessed input (sizes, validity masks).
    pub input: ClipInput,
    /// Vision tower, projector and neck outputs.
    pub features: ImageFeatures,
    /// Milliseconds of the image stages.
    pub timings_ms: Vec<(String, f64)>,
}

/// Accumulates per-stage wall-clock times. On asynchronous backends the device is
/// synchronised at each stage boundary so the times belong to the stage that did the work.
struct Stopwatch<'a> {
    #[cfg_attr(target_family = "wasm", allow(dead_code))]
    device: &'a Device,
    start: Instant,
    laps: Vec<(String, f64)>,
}

impl<'a> Stopwatch<'a> {
    fn new(device: &'a Device) -> Self {
        Self {
            device,
            start: Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, name: &str) {
        // A browser cannot block on the GPU; there the lap includes queued work only.
        #[cfg(not(target_family = "wasm"))]
        let _ = self.device.sync();
        let now = Instant::now();
        self.laps
            .push((name.to_string(), (now - self.start).as_secs_f64() * 1e3));
        self.start = now;
    }
}

impl PixelLm {
    /// Loads a PixelLM Hugging Face directory and its CLIP vision tower onto `device`.
    ///
    /// `vision_tower`: the CLIP directory; when `None` it is resolved from the config's
    /// `vision_tower` (next to the model directory, or in the Hugging Face cache).
    pub fn load(
        model_dir: &Path,
        vision_tower: Option<&Path>,
        device: &Device,
        dtype: DType,
        quant: Quant,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self> {
        if !model_dir.is_dir() {
            return Err(Error::config(
                model_dir.display().to_string(),
                "model directory not found",
            ));
        }
        let config = PixelLmConfig::from_file(&model_dir.join("config.json"))?;
        let clip_dir =
            resolve_vision_tower(vision_tower, config.vision_tower.as_deref(), model_dir)?;
        let clip_config = ClipVisionConfig::from_file(&clip_dir.join("config.json"))?;

        let t = Instant::now();
        progress(Progress::Step("tokenizer".into()));
        let tokenizer = Tokenizer::from_dir(model_dir)?;
        progress(Progress::Done("tokenizer".into(), ms_since(t)));

        let t = Instant::now();
        progress(Progress::Step("open checkpoint files".into()));
        let weights = WeightFiles::open_dir(model_dir)?;
        let clip_weights = WeightFiles::open_dir(&clip_dir)?;
        progress(Progress::Done("open checkpoint files".into(), ms_since(t)));

        let t = Instant::now();
        progress(Progress::Step("load weights".into()));
        let model = PixelLmModel::load(
            &config,
            &clip_config,
            &weights,
            &clip_weights,
            device,
            dtype,
            quant,
            &mut |done, total| progress(Progress::Bytes { done, total }),
        )?;
        progress(Progress::Done("load weights".into(), ms_since(t)));
        let unused = model.unused_tensors();
        if !unused.is_empty() {
            const SHOWN: usize = 5;
            let more = unused.len().saturating_sub(SHOWN);
            progress(Progress::Warning(format!(
                "{} checkpoint tensor(s) were never used ({}{}): is the checkpoint for another architecture or config.json?",
                unused.len(),
                unused[..unused.len().min(SHOWN)].join(", "),
                if more > 0 { format!(", … {more} more") } else { String::new() }
            )));
        }
        Self::new(model, tokenizer)
    }

    /// Loads a model held in memory: `model` and `clip` map file names to bytes, as the
    /// directories `load` reads would hold them (`config.json`; `tokenizer.model` and/or
    /// `tokenizer.json`, `added_tokens.json`, `tokenizer_config.json`; weights as
    /// `*.safetensors`, `pytorch_model-*.bin` or `*.gguf`). For the browser (files fetched
    /// or dropped) and for a model compiled into a program. `progress(done, total)`
    /// follows the weight bytes converted.
    pub fn from_memory(
        mut model: std::collections::BTreeMap<String, Vec<u8>>,
        mut clip: std::collections::BTreeMap<String, Vec<u8>>,
        device: &Device,
        dtype: DType,
        quant: Quant,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        fn take<'f>(
            files: &'f std::collections::BTreeMap<String, Vec<u8>>,
            name: &str,
            what: &str,
        ) -> Result<&'f Vec<u8>> {
            files
                .get(name)
                .ok_or_else(|| Error::config(what, format!("`{name}` is missing")))
        }
        let config =
            PixelLmConfig::from_bytes(take(&model, "config.json", "model")?, "config.json")?;
        let clip_config = ClipVisionConfig::from_bytes(
            take(&clip, "config.json", "vision tower")?,
            "vision tower config.json",
        )?;
        let mut tokenizer = Tokenizer::from_bytes(
            model
                .get("tokenizer.model")
                .map(Vec::as_slice)
                .unwrap_or(&[]),
            model.get("tokenizer.json").map(Vec::as_slice),
            model.get("added_tokens.json").map(Vec::as_slice),
        )?;
        if let Some(cfg) = model.get("tokenizer_config.json") {
            tokenizer.apply_tokenizer_config(cfg, "tokenizer_config.json")?;
        }
        // The weight bytes are moved out of the maps, never copied: in a browser they are
        // most of the page's memory.
        let weights = |files: &mut std::collections::BTreeMap<String, Vec<u8>>,
                       what: &str|
         -> Result<WeightFiles> {
            let mut out = WeightFiles::new();
            let names: Vec<String> = files
                .keys()
                .filter(|n| {
                    n.ends_with(".safetensors") || n.ends_with(".bin") || n.ends_with(".gguf")
                })
                .cloned()
                .collect();
            for name in names {
                let bytes = files.remove(&name).expect("listed above");
                out.extend(WeightFiles::from_bytes(&name, bytes)?);
            }
            if out.is_empty() {
                return Err(Error::config(
                    what,
                    "no weights (*.safetensors or pytorch_model-*.bin) among the files",
                ));
            }
            Ok(out)
        };
        let model = PixelLmModel::load(
            &config,
            &clip_config,
            &weights(&mut model, "model")?,
            &weights(&mut clip, "vision tower")?,
            device,
            dtype,
            quant,
            progress,
        )?;
        Self::new(model, tokenizer)
    }

    /// Pairs loaded weights with a tokenizer (e.g. both built from in-memory bytes).
    pub fn new(model: PixelLmModel, tokenizer: Tokenizer) -> Result<Self> {
        let seg_ids = tokenizer.seg_token_ids();
        if seg_ids.len() != model.tokens_per_target() {
            return Err(Error::config(
                "added_tokens.json",
                format!(
                    "found {} codebook tokens [SEG0].., expected {}",
                    seg_ids.len(),
                    model.tokens_per_target()
                ),
            ));
        }
        let vocab = model.config().llm.vocab_size as i64;
        if let Some(id) = seg_ids.iter().find(|&&i| i < 0 || i >= vocab) {
            return Err(Error::config(
                "added_tokens.json",
                format!("codebook token id {id} is outside the model's vocabulary of {vocab}"),
            ));
        }
        Ok(Self {
            model,
            tokenizer,
            seg_ids,
        })
    }

    /// The network.
    pub fn model(&self) -> &PixelLmModel {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Preprocesses a decoded image for the vision tower.
    pub fn preprocess(&self, image: &RgbImage) -> Result<ClipInput> {
        let c = self.model.config();
        img::preprocess(image, c.image_size, self.model.clip_config().patch_size)
    }

    /// Runs the whole pipeline. Answer text is passed to `on_text` piece by piece as it is
    /// generated (or at once for a forced answer).
    pub fn segment(
        &self,
        image: &RgbImage,
        request: &SegmentRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Segmentation> {
        futures_lite::future::block_on(self.segment_async(image, request, on_text))
    }

    /// [`PixelLm::segment`] without blocking: the same code, with the host reads awaited
    /// (the browser build has no synchronous GPU readback).
    pub async fn segment_async(
        &self,
        image: &RgbImage,
        request: &SegmentRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Segmentation> {
        let encoded = self.encode(image)?;
        let mut seg = self.answer_async(&encoded, request, on_text).await?;
        let mut timings = encoded.timings_ms.clone();
        timings.append(&mut seg.timings_ms);
        seg.timings_ms = timings;
        Ok(seg)
    }

    /// Runs every image-only stage once (preprocess, vision tower, projectors, neck), so
    /// that several questions about one image ([`PixelLm::answer`]) share them.
    pub fn encode(&self, image: &RgbImage) -> Result<EncodedImage> {
        let device = self.model.device().clone();
        let mut clock = Stopwatch::new(&device);
        let input = self.preprocess(image)?;
        let pixels = self.model.pixels(input.pixel_values.clone());
        clock.lap("preprocess");
        let features = self.model.encode_image(pixels, &input.patch_valid);
        clock.lap("vision+projectors+neck");
        Ok(EncodedImage {
            input,
            features,
            timings_ms: clock.laps,
        })
    }

    /// Answers one question about an encoded image (generation or a forced answer, then
    /// the pixel decoder). `timings_ms` holds the question's stages only.
    pub fn answer(
        &self,
        encoded: &EncodedImage,
        request: &SegmentRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Segmentation> {
        futures_lite::future::block_on(self.answer_async(encoded, request, on_text))
    }

    /// [`PixelLm::answer`] without blocking.
    pub async fn answer_async(
        &self,
        encoded: &EncodedImage,
        request: &SegmentRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Segmentation> {
        let device = self.model.device().clone();
        let mut clock = Stopwatch::new(&device);
        let (input, features) = (&encoded.input, &encoded.features);
        let prompt = llava_v1_prompt(&request.question, None);
        let prompt_ids = self.tokenizer.encode_with_image(&prompt);
        let mut prompt_tokens = self.expanded_len(&prompt_ids);
        let (text, token_ids, seg_hidden) = match &request.answer {
            None => {
                self.generate(
                    &prompt_ids,
                    features,
                    input,
                    request.max_new_tokens,
                    on_text,
                    &mut clock,
                )
                .await?
            }
            Some(answer) => {
                let full = self
                    .tokenizer
                    .encode_with_image(&llava_v1_prompt(&request.question, Some(answer)));
                let common = prompt_ids
                    .iter()
                    .zip(&full)
                    .take_while(|(a, b)| a == b)
                    .count();
                let hidden = self.teacher_forced(&full, features, input)?;
                prompt_tokens = self.expanded_len(&full);
                clock.lap("prefill");
                on_text(answer);
                (answer.clone(), full[common..].to_vec(), hidden)
            }
        };

        let mut warnings = Vec::new();
        let per = self.model.tokens_per_target();
        let k = seg_hidden.as_ref().map_or(0, |h| h.dims()[0]);
        let (h0, w0) = input.original;
        let mut seg = Segmentation {
            text,
            token_ids,
            targets: Vec::new(),
            size: input.original,
            masks: Vec::new(),
            low_res_masks: Vec::new(),
            timings_ms: Vec::new(),
            warnings: Vec::new(),
            prompt_tokens,
        };
        match seg_hidden {
            Some(hidden) if k % per == 0 => {
                let out = self.model.decode_masks(hidden, &features.decoder_features);
                clock.lap("pixel decoder");
                let logits = self.model.postprocess(out.low_res.clone(), input.resized, input.original);
                seg.masks = read_f32_async(logits).await?;
                seg.low_res_masks = read_f32_async(out.low_res).await?;
                for i in 0..k / per {
                    let m = seg.mask(i);
                    let stats = img::mask_stats(m, w0, h0);
                    seg.targets.push(Target {
                        index: i,
                        score: img::mask_score(m),
                        area: stats.area,
                        bbox: stats.bbox,
                    });
                }
                clock.lap("postprocess");
            }
            Some(_) => warnings.push(format!(
                "the answer holds {k} codebook tokens, not a multiple of {per}: no masks (as the official code)"
            )),
            None => {}
        }
        seg.warnings = warnings;
        seg.timings_ms = clock.laps;
        Ok(seg)
    }

    /// Key-padding mask of the expanded LLM sequence: only padded image tokens are hidden.
    fn llm_key_padding(&self, image_pos: usize, input: &ClipInput) -> Vec<bool> {
        let mut mask = vec![false; image_pos];
        mask.extend(input.llm_valid.iter().map(|v| !v));
        mask
    }

    fn expanded_len(&self, ids: &[i64]) -> usize {
        ids.len() - 1 + self.model.llm_grid().pow(2)
    }

    /// Greedy generation with a KV cache. Returns the text, the generated ids and the
    /// hidden states that predicted each codebook token (`[K, H]`, `None` if `K = 0`).
    async fn generate(
        &self,
        ids: &[i64],
        features: &ImageFeatures,
        input: &ClipInput,
        max_new_tokens: usize,
        on_text: &mut dyn FnMut(&str),
        clock: &mut Stopwatch<'_>,
    ) -> Result<(String, Vec<i64>, Option<Tensor<2>>)> {
        let llm = self.model.llm();
        let e = self.expanded_len(ids);
        let (hidden, mut cache) = self.prefill(ids, features, input, max_new_tokens)?;
        let h = llm.config().hidden_size;
        let last = hidden.narrow(1, e - 1, 1).reshape([1, h]);
        clock.lap("prefill");

        let mut stream = StreamDecoder::new();
        let (mut seg_states, mut text) = (Vec::new(), String::new());
        let generated = greedy_async(
            llm,
            &mut cache,
            last,
            max_new_tokens,
            &[self.tokenizer.eos_id()],
            &mut |id, hidden| {
                if self.seg_ids.contains(&id) {
                    seg_states.push(hidden.clone());
                }
                let piece = stream.push(&self.tokenizer, id);
                if !piece.is_empty() {
                    on_text(&piece);
                    text.push_str(&piece);
                }
            },
        )
        .await?;
        let tail = stream.finish();
        if !tail.is_empty() {
            on_text(&tail);
            text.push_str(&tail);
        }
        clock.lap("decode");
        let seg = (!seg_states.is_empty()).then(|| Tensor::cat(seg_states, 0));
        Ok((text, generated, seg))
    }

    /// One forward pass over prompt + forced answer; gathers the hidden state before each
    /// codebook token (`docs/model.md` §8.2, §14.2).
    fn teacher_forced(
        &self,
        ids: &[i64],
        features: &ImageFeatures,
        input: &ClipInput,
    ) -> Result<Option<Tensor<2>>> {
        let hidden = self.forced_hidden_states(ids, features, input)?;
        let p = image_position(ids)?;
        let shift = self.model.llm_grid().pow(2) - 1;
        let positions: Vec<i64> = (0..ids.len() - 1)
            .filter(|&m| self.seg_ids.contains(&ids[m + 1]))
            .map(|m| if m < p { m } else { m + shift } as i64)
            .collect();
        if positions.is_empty() {
            return Ok(None);
        }
        let index = crate::kernels::upload_ids(positions, self.model.device());
        let [_, e, h] = hidden.dims();
        Ok(Some(hidden.reshape([e, h]).select(0, index)))
    }

    /// Final-norm hidden states `[1, E, H]` of a full multimodal sequence (no generation).
    pub fn forced_hidden_states(
        &self,
        ids: &[i64],
        features: &ImageFeatures,
        input: &ClipInput,
    ) -> Result<Tensor<3>> {
        Ok(self.prefill(ids, features, input, 0)?.0)
    }

    /// The LLM over the expanded multimodal sequence of `ids` (image features spliced at
    /// the placeholder, padded image tokens hidden), into a fresh KV cache with room for
    /// `new_tokens` more positions (capped at the context). Generation (`new_tokens > 0`)
    /// needs room for at least one token; a forced answer may fill the context exactly.
    fn prefill(
        &self,
        ids: &[i64],
        features: &ImageFeatures,
        input: &ClipInput,
        new_tokens: usize,
    ) -> Result<(Tensor<3>, KvCache)> {
        let llm = self.model.llm();
        let e = self.expanded_len(ids);
        let context = llm.config().max_position_embeddings;
        if e + new_tokens.min(1) > context {
            return Err(Error::Prompt(format!(
                "the prompt{} takes {e} positions (with {} image tokens) but the model's context is {context}",
                if new_tokens == 0 { " and answer" } else { "" },
                self.model.llm_grid().pow(2)
            )));
        }
        let p = image_position(ids)?;
        let mut cache = KvCache::new(
            llm.config(),
            (e + new_tokens).min(context),
            &self.llm_key_padding(p, input),
            self.model.device(),
            self.model.dtype(),
        )?;
        let (embeds, _) = self.model.splice_image(ids, &features.llm_tokens)?;
        let hidden = llm.forward(embeds, &mut cache)?;
        Ok((hidden, cache))
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Reads a float tensor back to the host as f32.
pub fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    futures_lite::future::block_on(read_f32_async(t))
}

/// [`read_f32`] without blocking.
pub async fn read_f32_async<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    crate::kernels::counts::note_read();
    t.into_data_async()
        .await
        .map_err(|e| Error::Backend(format!("reading a tensor back: {e:?}")))?
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| Error::Backend(format!("reading a tensor back: {e:?}")))
}

/// Display names of the `n` targets, from the words before each codebook group in the
/// answer (`"Sure, the dog is [SEG0] … [SEG5] and the cat is [SEG0] …"` gives `the dog`,
/// `the cat`); `target i` where the text names nothing.
pub fn target_names(text: &str, n: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(n);
    let mut rest = text;
    for i in 0..n {
        let name = match rest.find("[SEG0]") {
            Some(start) => {
                let name = clean_name(&rest[..start]);
                // Skip past this group's last codebook token.
                let after = &rest[start..];
                let end = after.find("[SEG5]").map_or(6, |p| p + 6);
                rest = &after[end.min(after.len())..];
                name
            }
            None => String::new(),
        };
        names.push(if name.is_empty() {
            format!("target {i}")
        } else {
            name
        });
    }
    names
}

fn clean_name(chunk: &str) -> String {
    let mut s = chunk.trim();
    for suffix in [" is", " are", ":", " -", "="] {
        s = s.strip_suffix(suffix).unwrap_or(s).trim_end();
    }
    // The clause right before the group: after the last comma / "and".
    if let Some(p) = s.rfind(", ") {
        s = &s[p + 2..];
    }
    for prefix in ["and ", ". ", "."] {
        s = s.strip_prefix(prefix).unwrap_or(s);
    }
    s.trim_matches(|c: char| c.is_whitespace() || c == ',' || c == '.')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::target_names;

    #[test]
    fn names_come_from_the_answer() {
        let text = "Sure, the red square is [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5] and the blue circle is [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5].";
        assert_eq!(target_names(text, 2), ["the red square", "the blue circle"]);
        assert_eq!(
            target_names("[SEG0][SEG1][SEG2][SEG3][SEG4][SEG5]", 1),
            ["target 0"]
        );
        assert_eq!(target_names("no groups", 2), ["target 0", "target 1"]);
    }
}
