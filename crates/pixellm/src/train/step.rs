//! One image's contribution to a training step: the model's ordinary forward pass
//! (vision tower, projectors, neck, a teacher-forced LLM pass per question, the pixel
//! decoder and the postprocess to the original size) with the losses of [`super::loss`].

use burn::tensor::{activation, Int, Tensor, TensorData};

use super::loss::{bce_per_mask, dice_per_mask, refine_per_mask};
use crate::data::rle::Mask;
use crate::image::RgbImage;
use crate::model::image_position;
use crate::pipeline::PixelLm;
use crate::tokenizer::llava_v1_prompt;
use crate::{Error, Result};

/// One question of a training example.
#[derive(Debug, Clone)]
pub struct Question {
    /// The user's question as the model is asked it.
    pub prompt: String,
    /// The assistant answer, one `[SEG0] … [SEG5]` group per target.
    pub answer: String,
    /// The targets' masks at the image's size, in answer order.
    pub masks: Vec<Mask>,
}

/// One image and its questions.
#[derive(Debug, Clone)]
pub struct Example {
    /// The image.
    pub image: RgbImage,
    /// Its questions.
    pub questions: Vec<Question>,
    /// For error messages (the image's `file_name`).
    pub label: String,
}

/// Loss sums of some examples (means are taken over the whole batch, as the official
/// code does).
pub struct LossSums {
    /// Σ −log p over supervised answer tokens.
    pub ce: Tensor<1>,
    /// Supervised answer tokens.
    pub tokens: usize,
    /// Σ per-mask BCE.
    pub bce: Tensor<1>,
    /// Σ per-mask DICE.
    pub dice: Tensor<1>,
    /// Σ per-mask refinement loss.
    pub refine: Tensor<1>,
    /// Masks.
    pub masks: usize,
}

fn index(values: Vec<i64>, device: &burn::tensor::Device) -> Tensor<1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// Answer tokens (and `</s>`) the cross-entropy of `ex` covers.
pub fn supervised_tokens(tok: &crate::tokenizer::Tokenizer, ex: &Example) -> usize {
    ex.questions
        .iter()
        .map(|q| {
            let prompt_ids = tok.encode_with_image(&llava_v1_prompt(&q.prompt, None));
            let full = tok.encode_with_image(&llava_v1_prompt(&q.prompt, Some(&q.answer)));
            full.len() - answer_start(&prompt_ids, &full)
        })
        .sum()
}

/// Index of the first supervised token: after the prompt's common prefix (never the BOS).
fn answer_start(prompt_ids: &[i64], full: &[i64]) -> usize {
    prompt_ids
        .iter()
        .zip(full)
        .take_while(|(a, b)| a == b)
        .count()
        .max(1)
}

/// The losses of one example under `model` (whose tensors may be autodiff leaves).
pub fn example_loss(pixellm: &PixelLm, ex: &Example) -> Result<LossSums> {
    let model = pixellm.model();
    let device = model.device().clone();
    let tok = pixellm.tokenizer();
    let seg_ids = tok.seg_token_ids();
    let per = model.tokens_per_target();
    let input = pixellm.preprocess(&ex.image)?;
    let pixels = model.pixels(input.pixel_values.clone());
    let features = model.encode_image(pixels, &input.patch_valid);
    let shift = model.llm_grid().pow(2) - 1;
    let h = model.config().llm.hidden_size;

    let zero = || Tensor::<1>::zeros([1], &device);
    let mut ce = zero();
    let mut tokens = 0;
    let mut seg_hidden = Vec::new();
    let mut counts = Vec::new();
    for (qi, q) in ex.questions.iter().enumerate() {
        let prompt_ids = tok.encode_with_image(&llava_v1_prompt(&q.prompt, None));
        let full = tok.encode_with_image(&llava_v1_prompt(&q.prompt, Some(&q.answer)));
        let common = answer_start(&prompt_ids, &full);
        let p = image_position(&full)?;
        let pos = |m: usize| (if m < p { m } else { m + shift }) as i64;
        let hidden = pixellm.forced_hidden_states(&full, &features, &input)?;
        let e = hidden.dims()[1];
        let hidden = hidden.reshape([e, h]);

        // Cross-entropy on the answer and its </s>: position t−1 predicts token t.
        let targets: Vec<i64> = full[common..].to_vec();
        let rows: Vec<i64> = (common..full.len()).map(|t| pos(t - 1)).collect();
        let t = targets.len();
        let logits = model
            .llm()
            .logits(hidden.clone().select(0, index(rows, &device)));
        let logp = activation::log_softmax(logits, 1);
        let picked = logp.gather(1, index(targets, &device).reshape([t, 1]));
        ce = ce - picked.sum().reshape([1]);
        tokens += t;

        // The hidden state before each codebook token (`docs/model.md` §8.2).
        let seg_rows: Vec<i64> = (0..full.len() - 1)
            .filter(|&m| seg_ids.contains(&full[m + 1]))
            .map(pos)
            .collect();
        if seg_rows.len() != per * q.masks.len() {
            return Err(Error::format(
                ex.label.clone(),
                format!(
                    "question {qi}: the answer has {} codebook tokens but {} targets need {}",
                    seg_rows.len(),
                    q.masks.len(),
                    per * q.masks.len()
                ),
            ));
        }
        counts.push(q.masks.len());
        if !seg_rows.is_empty() {
            seg_hidden.push(hidden.select(0, index(seg_rows, &device)));
        }
    }

    let masks: Vec<&Mask> = ex.questions.iter().flat_map(|q| &q.masks).collect();
    let n = masks.len();
    let (mut bce, mut dice, mut refine) = (zero(), zero(), zero());
    if n > 0 {
        let out = model.decode_masks(Tensor::cat(seg_hidden, 0), &features.decoder_features);
        let (h0, w0) = input.original;
        let logits = model
            .postprocess(out.low_res, input.resized, input.original)
            .reshape([n, h0, w0]);
        let mut gt = Vec::with_capacity(n * h0 * w0);
        for m in &masks {
            if (m.height, m.width) != (h0, w0) {
                return Err(Error::format(
                    ex.label.clone(),
                    format!("a mask is {}×{}, the image {h0}×{w0}", m.height, m.width),
                ));
            }
            gt.extend(m.data.iter().map(|&v| v as f32));
        }
        let gt = Tensor::<3>::from_data(TensorData::new(gt, [n, h0, w0]), &device);
        bce = bce_per_mask(logits.clone(), gt.clone()).sum().reshape([1]);
        dice = dice_per_mask(logits.clone(), gt.clone()).sum().reshape([1]);
        let mut start = 0;
        for &k in &counts {
            if k >= 2 {
                let r = refine_per_mask(
                    logits.clone().narrow(0, start, k),
                    gt.clone().narrow(0, start, k),
                );
                refine = refine + r.sum().reshape([1]);
            }
            start += k;
        }
    }
    Ok(LossSums {
        ce,
        tokens,
        bce,
        dice,
        refine,
        masks: n,
    })
}
