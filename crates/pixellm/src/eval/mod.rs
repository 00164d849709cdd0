//! Scoring multi-target segmentation (`pixellm eval`): [`metrics`] (gIoU, cIoU, the
//! official-compatible figures), the predictions format, and answering a dataset's
//! questions with a model.
//!
//! Predictions (what `--predictions` reads and `--model` writes): a JSON list of
//! `{"image": <file_name as in the data>, "question": <index within that image's
//! questions>, "masks": [<COCO RLE, uncompressed or compressed>, …]}` (extra fields such as
//! `text` are kept but not scored). A question with no entry counts as nothing predicted.
//!
//! MUSE data is answered by generation; refCOCO-family data ([`Protocol::TeacherForced`])
//! as the official `validate()` does it: [`refer_prompt`] with the answer forced to
//! [`refer_answer`] (`docs/model.md` §14.2).

pub mod metrics;
pub mod perplexity;

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::data::muse::{Dataset, Protocol};
use crate::data::rle::{decode_segmentation, Mask};
use crate::pipeline::{PixelLm, SegmentRequest};
use crate::{Error, Result};
use metrics::{score_question, OfficialCompat, QuestionScore, Totals};

/// The suffix the official MUSE prompts append to every question (`utils.py`
/// `LONG_QUESTION_LIST`, its second template; the official code picks one of two at
/// random, we always use this one so that runs are deterministic).
pub const PROMPT_SUFFIX: &str = " Please output segmentation mask.";

/// The question as the model is asked it in `pixellm eval`.
pub fn eval_prompt(question: &str) -> String {
    format!("{question}{PROMPT_SUFFIX}")
}

/// A referring expression as the official `validate()` asks it (refCOCO and the like).
pub fn refer_prompt(sentence: &str) -> String {
    format!("What is {sentence} in this image?{PROMPT_SUFFIX}")
}

/// The answer the official `validate()` forces: one codebook group, `"[SEG0] [SEG1] [SEG2]
/// [SEG3] [SEG4] [SEG5]."` for the released models' 6 tokens per target.
pub fn refer_answer(tokens_per_target: usize) -> String {
    format!(
        "{}.",
        crate::tokenizer::prompt::seg_token_strings(tokens_per_target).join(" ")
    )
}

/// A question of a dataset with this protocol as the model is asked it.
pub fn question_prompt(protocol: &Protocol, question: &str) -> String {
    match protocol {
        Protocol::Generate => eval_prompt(question),
        Protocol::TeacherForced { .. } => refer_prompt(question),
    }
}

/// The prompt template of a protocol, for the record (`{question}` / `{sentence}` stand for
/// the question).
pub fn prompt_template(protocol: &Protocol) -> String {
    match protocol {
        Protocol::Generate => eval_prompt("{question}"),
        Protocol::TeacherForced { .. } => refer_prompt("{sentence}"),
    }
}

/// The answer forced on `model` under a protocol (`None`: generated).
pub fn forced_answer(model: &PixelLm, protocol: &Protocol) -> Option<String> {
    match protocol {
        Protocol::Generate => None,
        Protocol::TeacherForced { .. } => {
            Some(refer_answer(model.tokenizer().seg_token_ids().len()))
        }
    }
}

/// One question's predicted masks.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// `file_name` of the image in the data.
    pub image: String,
    /// Index of the question within the image's questions.
    pub question: usize,
    /// Predicted masks.
    pub masks: Vec<Value>,
    /// The generated answer, when known.
    pub text: Option<String>,
}

impl Prediction {
    /// The JSON entry of the predictions file.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"image": self.image, "question": self.question, "masks": self.masks});
        if let Some(t) = &self.text {
            v["text"] = t.clone().into();
        }
        v
    }
}

/// Reads a predictions file; every problem names the entry.
pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::format(&file, format!("not valid JSON: {e}")))?;
    let list = doc
        .as_array()
        .ok_or_else(|| Error::format(&file, "expected a JSON list of predictions"))?;
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            let at = |m: &str| Error::format(&file, format!("prediction {i}: {m}"));
            Ok(Prediction {
                image: p
                    .get("image")
                    .and_then(Value::as_str)
                    .ok_or_else(|| at("needs \"image\": the image's file_name in the data"))?
                    .to_string(),
                question: p
                    .get("question")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| at("needs \"question\": the question's index"))?
                    as usize,
                masks: p
                    .get("masks")
                    .and_then(Value::as_array)
                    .ok_or_else(|| at("needs \"masks\": a list of COCO RLEs"))?
                    .clone(),
                text: p.get("text").and_then(Value::as_str).map(String::from),
            })
        })
        .collect()
}

/// Scores and summaries of an evaluation.
#[derive(Debug, Clone)]
pub struct Report {
    /// All questions.
    pub totals: Totals,
    /// By number of ground-truth targets: 1, 2, 3+.
    pub by_targets: [Totals; 3],
    /// What PixelLM's `ar_validate` would report.
    pub official: OfficialCompat,
    /// `(image, question, score)` per question, in data order.
    pub rows: Vec<(String, usize, QuestionScore)>,
}

impl Report {
    /// The `eval.json` body.
    pub fn to_json(&self) -> Value {
        let t = |x: &Totals| json!({"giou": x.giou(), "ciou": x.ciou(), "questions": x.questions});
        json!({
            "giou": self.totals.giou(),
            "ciou": self.totals.ciou(),
            "questions": self.totals.questions,
            "by_targets": {"1": t(&self.by_targets[0]), "2": t(&self.by_targets[1]), "3+": t(&self.by_targets[2])},
            "official_compatible": {
                "giou": self.official.giou(),
                "ciou": self.official.ciou(),
                "note": "PixelLM's ar_validate on the same masks: unmatched predictions count as IoU 1 and add nothing to I/U (its histc bug), gIoU divides the per-pair IoU sum by each image's max(predicted, GT masks) (its normalisation bug); matching is this program's IoU Hungarian, not the official 12,544 unseeded random points. See docs/eval.md.",
            },
            "rows": self.rows.iter().map(|(image, q, s)| json!({
                "image": image, "question": q, "s": s.s, "n_pred": s.n_pred, "n_gt": s.n_gt,
            })).collect::<Vec<_>>(),
        })
    }

    /// One line: gIoU, cIoU and the per-count figures.
    pub fn summary(&self) -> String {
        let b = &self.by_targets;
        format!(
            "gIoU {:.4}  cIoU {:.4}  ({} questions; 1 target {:.4} / 2 {:.4} / 3+ {:.4}; official-compatible gIoU {:.4} cIoU {:.4})",
            self.totals.giou(),
            self.totals.ciou(),
            self.totals.questions,
            b[0].giou(),
            b[1].giou(),
            b[2].giou(),
            self.official.giou(),
            self.official.ciou()
        )
    }
}

/// Scores `predictions` against the first `limit` questions of `data` (all when `None`).
/// A prediction for a question the data does not have is an error naming it.
pub fn score(data: &Dataset, predictions: &[Prediction], limit: Option<usize>) -> Result<Report> {
    let mut by_key: HashMap<(&str, usize), &Prediction> = HashMap::new();
    let known: HashMap<&str, usize> = data
        .entries
        .iter()
        .map(|e| (e.file_name.as_str(), e.questions.len()))
        .collect();
    for (i, p) in predictions.iter().enumerate() {
        match known.get(p.image.as_str()) {
            Some(&n) if p.question < n => {}
            Some(&n) => {
                return Err(Error::format(
                    "predictions",
                    format!(
                        "prediction {i}: image `{}` has {n} questions, not question {}",
                        p.image, p.question
                    ),
                ))
            }
            None => {
                return Err(Error::format(
                    "predictions",
                    format!(
                        "prediction {i}: image `{}` is not in {}",
                        p.image,
                        data.path.display()
                    ),
                ))
            }
        }
        if by_key.insert((p.image.as_str(), p.question), p).is_some() {
            return Err(Error::format(
                "predictions",
                format!(
                    "prediction {i}: a second entry for image `{}` question {}",
                    p.image, p.question
                ),
            ));
        }
    }
    let mut report = Report {
        totals: Totals::default(),
        by_targets: Default::default(),
        official: OfficialCompat::default(),
        rows: Vec::new(),
    };
    let limit = limit.unwrap_or(usize::MAX);
    'images: for e in &data.entries {
        let mut image_scores = Vec::new();
        for q in 0..e.questions.len() {
            if report.rows.len() >= limit {
                report.official.add_image(&image_scores);
                break 'images;
            }
            let gt = e.target_masks(q)?;
            let pred: Vec<Mask> = match by_key.get(&(e.file_name.as_str(), q)) {
                None => Vec::new(),
                Some(p) => p
                    .masks
                    .iter()
                    .enumerate()
                    .map(|(k, m)| {
                        decode_segmentation(m, (e.height, e.width)).map_err(|msg| {
                            Error::format(
                                "predictions",
                                format!("image `{}` question {q} mask {k}: {msg}", e.file_name),
                            )
                        })
                    })
                    .collect::<Result<_>>()?,
            };
            let s = score_question(&pred, &gt);
            report.totals.add(&s);
            report.by_targets[gt.len().clamp(1, 3) - 1].add(&s);
            image_scores.push(s.clone());
            report.rows.push((e.file_name.clone(), q, s));
        }
        report.official.add_image(&image_scores);
    }
    Ok(report)
}

/// Answers the first `limit` questions of `data` with `model`, each image encoded once: by
/// generation for MUSE data (prompt: [`eval_prompt`], greedy, `max_new_tokens`), in one
/// teacher-forced pass for refCOCO-style data (prompt: [`refer_prompt`], answer:
/// [`refer_answer`]). `progress(done, total)` after each question.
pub fn predict(
    model: &PixelLm,
    data: &Dataset,
    limit: Option<usize>,
    max_new_tokens: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Prediction>> {
    let total = data.questions().min(limit.unwrap_or(usize::MAX));
    let answer = forced_answer(model, &data.protocol);
    let mut out = Vec::with_capacity(total);
    for e in &data.entries {
        if out.len() >= total {
            break;
        }
        let image = crate::image::load_image(&e.image_path)?;
        if (image.height() as usize, image.width() as usize) != (e.height, e.width) {
            return Err(Error::format(
                data.path.display().to_string(),
                format!(
                    "image `{}` is {}×{} but the data says {}×{}",
                    e.file_name,
                    image.height(),
                    image.width(),
                    e.height,
                    e.width
                ),
            ));
        }
        let encoded = model.encode(&image)?;
        for (q, question) in e.questions.iter().enumerate() {
            if out.len() >= total {
                break;
            }
            let request = SegmentRequest {
                question: question_prompt(&data.protocol, &question.text),
                answer: answer.clone(),
                max_new_tokens,
            };
            let seg = model.answer(&encoded, &request, &mut |_| {})?;
            let (h, w) = seg.size;
            let masks = (0..seg.targets.len())
                .map(|i| {
                    Mask {
                        height: h,
                        width: w,
                        data: seg.mask(i).iter().map(|&v| (v > 0.0) as u8).collect(),
                    }
                    .to_compressed_json()
                })
                .collect();
            out.push(Prediction {
                image: e.file_name.clone(),
                question: q,
                masks,
                text: Some(seg.text),
            });
            progress(out.len(), total);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_and_the_forced_answer_are_the_official_ones() {
        assert_eq!(
            question_prompt(&Protocol::Generate, "Segment the dog."),
            "Segment the dog. Please output segmentation mask."
        );
        let refer = Protocol::TeacherForced {
            split: "val".into(),
        };
        assert_eq!(
            question_prompt(&refer, "the man on the left"),
            "What is the man on the left in this image? Please output segmentation mask."
        );
        assert_eq!(
            refer_answer(6),
            "[SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5]."
        );
        assert_eq!(
            prompt_template(&Protocol::Generate),
            "{question} Please output segmentation mask."
        );
        assert_eq!(
            prompt_template(&refer),
            "What is {sentence} in this image? Please output segmentation mask."
        );
    }
}
