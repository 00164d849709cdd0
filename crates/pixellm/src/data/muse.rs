//! Datasets in MUSE's format (PixelLM's multi-target reasoning segmentation data): the
//! JSON the official loaders read (`utils/multi_reason_seg_dataset.py`).
//!
//! ```text
//! [ { "file_name": "images/val/000017.png" | "coco_url": "…/train2017/000000123.jpg",
//!     "height": 480, "width": 640,
//!     "ann_list": [ {"id", "category_name", "rephrased_name", "bbox", "segmentation"}, … ],
//!     "questions": ["…", …],
//!     "answers": [ [ann, ann], … ],          // per question: its targets, in answer order
//!     "text_answers": ["the man {seg} …", …]  // optional; one {seg} per target
//!   }, … ]
//! ```
//!
//! `segmentation` is a COCO polygon list, an uncompressed RLE or a compressed RLE string. An
//! answer entry is an annotation object (with its `segmentation`, as MUSE stores them), or
//! an annotation `id` / an object with only an `id`, looked up in `ann_list`.
//!
//! Every structural problem is found when the file is opened, with one line naming the
//! entry: missing image, RLE size ≠ image size, an answer that references no annotation,
//! `{seg}` count ≠ targets.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::rle::{decode_segmentation, Mask};
use crate::{Error, Result};

/// One question about an image.
#[derive(Debug, Clone)]
pub struct Question {
    /// The question text.
    pub text: String,
    /// The target annotations' segmentations, in answer order.
    pub targets: Vec<Value>,
    /// Display names of the targets (`rephrased_name`, else `category_name`).
    pub target_names: Vec<String>,
    /// The answer with one `{seg}` per target, when the data has it.
    pub text_answer: Option<String>,
}

/// One image and its questions.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `file_name` as written in the data (the key predictions refer to).
    pub file_name: String,
    /// Where the image was found.
    pub image_path: PathBuf,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Its questions.
    pub questions: Vec<Question>,
}

impl Entry {
    /// The ground-truth masks of question `q`, in answer order.
    pub fn target_masks(&self, q: usize) -> Result<Vec<Mask>> {
        self.questions[q]
            .targets
            .iter()
            .enumerate()
            .map(|(k, seg)| {
                decode_segmentation(seg, (self.height, self.width)).map_err(|e| {
                    Error::format(
                        self.file_name.clone(),
                        format!("question {q}, target {k}: {e}"),
                    )
                })
            })
            .collect()
    }
}

/// How a dataset's questions are put to a model (`pixellm eval --model`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// MUSE: `"{question} Please output segmentation mask."`, the answer generated.
    Generate,
    /// refCOCO and the like (the official `validate()`): `"What is {question} in this
    /// image? Please output segmentation mask."` with the answer forced to `"[SEG0] …
    /// [SEG5]."` (teacher forcing, one target per question); `split` is the refs split read.
    TeacherForced {
        /// The split of the refs (`val`, `testA`, …).
        split: String,
    },
}

/// A segmentation dataset: MUSE's JSON ([`Dataset::open`]) or refCOCO's refs
/// ([`super::refcoco::open`]).
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The data file (MUSE JSON or refs pickle).
    pub path: PathBuf,
    /// Its images.
    pub entries: Vec<Entry>,
    /// How its questions are asked.
    pub protocol: Protocol,
}

impl Dataset {
    /// Total questions.
    pub fn questions(&self) -> usize {
        self.entries.iter().map(|e| e.questions.len()).sum()
    }

    /// Opens and checks a dataset. Images resolve relative to the JSON file's folder, or
    /// to `images_root` when given (also by base name and, for `coco_url`, by the COCO
    /// split folder).
    pub fn open(path: &Path, images_root: Option<&Path>) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let file = path.display().to_string();
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::format(&file, format!("not valid JSON: {e}")))?;
        let list = doc
            .as_array()
            .ok_or_else(|| Error::format(&file, "expected a JSON list of images (MUSE format)"))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let root = images_root.unwrap_or(base);
        let mut entries = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            entries.push(parse_entry(item, i, root, &file)?);
        }
        Ok(Self {
            path: path.to_path_buf(),
            entries,
            protocol: Protocol::Generate,
        })
    }
}

fn parse_entry(item: &Value, i: usize, root: &Path, file: &str) -> Result<Entry> {
    let name = item
        .get("file_name")
        .and_then(Value::as_str)
        .or_else(|| item.get("coco_url").and_then(Value::as_str))
        .unwrap_or("");
    let at = |msg: String| Error::format(file, format!("image {i} (`{name}`): {msg}"));
    if name.is_empty() {
        return Err(at("needs \"file_name\" or \"coco_url\"".into()));
    }
    let dim = |key: &str| {
        item.get(key)
            .and_then(Value::as_u64)
            .filter(|&v| v > 0 && v <= 1 << 16)
            .map(|v| v as usize)
            .ok_or_else(|| at(format!("needs \"{key}\": a positive integer")))
    };
    let (height, width) = (dim("height")?, dim("width")?);
    let image_path = resolve_image(item, root)
        .ok_or_else(|| at(format!("image file not found under {}", root.display())))?;
    let anns = match item.get("ann_list") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(at("\"ann_list\" must be a list".into())),
    };
    let questions = item
        .get("questions")
        .and_then(Value::as_array)
        .ok_or_else(|| at("needs \"questions\": a list of strings".into()))?;
    let answers = item
        .get("answers")
        .and_then(Value::as_array)
        .ok_or_else(|| at("needs \"answers\": one list of annotations per question".into()))?;
    if answers.len() != questions.len() {
        return Err(at(format!(
            "{} questions but {} answers",
            questions.len(),
            answers.len()
        )));
    }
    let text_answers = match item.get("text_answers") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if a.len() == questions.len() => Some(a),
        Some(_) => {
            return Err(at(
                "\"text_answers\" must be a list with one string per question".into(),
            ))
        }
    };
    let mut out = Vec::with_capacity(questions.len());
    for (q, (text, answer)) in questions.iter().zip(answers).enumerate() {
        let atq = |msg: String| at(format!("question {q}: {msg}"));
        let text = text
            .as_str()
            .ok_or_else(|| atq("the question is not a string".into()))?;
        let list = answer
            .as_array()
            .ok_or_else(|| atq("the answer must be a list of annotations".into()))?;
        let mut targets = Vec::with_capacity(list.len());
        let mut names = Vec::with_capacity(list.len());
        for (k, a) in list.iter().enumerate() {
            let ann = resolve_ann(a, &anns).ok_or_else(|| {
                atq(format!(
                    "answer {k} references no annotation (needs a \"segmentation\", or an \"id\" found in \"ann_list\")"
                ))
            })?;
            let seg = ann.get("segmentation").expect("resolve_ann checks it");
            check_segmentation(seg, (height, width))
                .map_err(|e| atq(format!("answer {k}: {e}")))?;
            targets.push(seg.clone());
            names.push(
                ann.get("rephrased_name")
                    .and_then(Value::as_str)
                    .or_else(|| ann.get("category_name").and_then(Value::as_str))
                    .unwrap_or("")
                    .to_string(),
            );
        }
        let text_answer = match text_answers {
            None => None,
            Some(t) => {
                let t = t[q]
                    .as_str()
                    .ok_or_else(|| atq("the text answer is not a string".into()))?;
                let segs = t.matches("{seg}").count();
                if segs != targets.len() {
                    return Err(atq(format!(
                        "the text answer has {segs} {{seg}} but the question has {} targets",
                        targets.len()
                    )));
                }
                Some(t.to_string())
            }
        };
        out.push(Question {
            text: text.to_string(),
            targets,
            target_names: names,
            text_answer,
        });
    }
    Ok(Entry {
        file_name: name.to_string(),
        image_path,
        height,
        width,
        questions: out,
    })
}

/// The annotation an answer entry stands for.
fn resolve_ann<'a>(a: &'a Value, anns: &'a [Value]) -> Option<&'a Value> {
    let by_id = |id: &Value| {
        anns.iter()
            .find(|x| x.get("id") == Some(id) && x.get("segmentation").is_some())
    };
    match a {
        Value::Object(o) if o.contains_key("segmentation") => Some(a),
        Value::Object(o) => o.get("id").and_then(by_id),
        Value::Number(_) => by_id(a),
        _ => None,
    }
}

/// Cheap structural checks of a segmentation (size, counts' total) without decoding.
pub(crate) fn check_segmentation(
    seg: &Value,
    size: (usize, usize),
) -> std::result::Result<(), String> {
    match seg {
        Value::Object(_) => {
            // Uncompressed RLE: sum the counts; compressed: decode the counts only.
            let (h, w) = size;
            let rle_size = seg
                .get("size")
                .and_then(Value::as_array)
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)))
                .ok_or("RLE needs \"size\": [height, width]")?;
            if rle_size != (h, w) {
                return Err(format!(
                    "RLE size {}×{} differs from the image size {h}×{w}",
                    rle_size.0, rle_size.1
                ));
            }
            let counts: Vec<u64> = match seg.get("counts") {
                Some(Value::String(s)) => super::rle::counts_from_string(s)?
                    .into_iter()
                    .map(u64::from)
                    .collect(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_u64()
                            .ok_or(format!("RLE count {v} is not a non-negative integer"))
                    })
                    .collect::<std::result::Result<_, _>>()?,
                _ => return Err("RLE needs \"counts\" (a list or a string)".into()),
            };
            let total: u64 = counts.iter().sum();
            if total != (h * w) as u64 {
                return Err(format!(
                    "RLE counts sum to {total} pixels but the image has {}",
                    h * w
                ));
            }
            Ok(())
        }
        // Polygons: rasterise (cheap at dataset sizes) to check every coordinate.
        _ => decode_segmentation(seg, size).map(|_| ()),
    }
}

fn resolve_image(item: &Value, root: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(f) = item.get("file_name").and_then(Value::as_str) {
        candidates.push(root.join(f));
        if let Some(base) = Path::new(f).file_name() {
            candidates.push(root.join(base));
            // MUSE's COCO images under refer_seg's layout.
            if f.contains("train2014") {
                candidates.push(root.join("train2014").join(base));
            }
        }
    }
    if let Some(url) = item.get("coco_url").and_then(Value::as_str) {
        if let Some(base) = url.rsplit('/').next() {
            for split in ["train2017", "val2017", "train2014", "val2014"] {
                if url.contains(split) {
                    candidates.push(root.join(split).join(base));
                }
            }
            candidates.push(root.join(base));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write_set(tag: &str, doc: &Value) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("pixellm-muse-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("img")).unwrap();
        std::fs::write(dir.join("img/a.png"), b"not read here").unwrap();
        let path = dir.join("set.json");
        std::fs::write(&path, doc.to_string()).unwrap();
        (dir, path)
    }

    fn ann(id: i64) -> Value {
        let m = Mask {
            height: 4,
            width: 6,
            data: (0..24).map(|i| (i % 5 == id as usize) as u8).collect(),
        };
        json!({"id": id, "category_name": "circle", "rephrased_name": format!("thing {id}"),
               "segmentation": m.to_rle_json()})
    }

    fn entry(answers: Value, text_answers: Value) -> Value {
        json!([{ "file_name": "img/a.png", "height": 4, "width": 6,
                 "ann_list": [ann(1), ann(2)],
                 "questions": ["q0", "q1"], "answers": answers, "text_answers": text_answers }])
    }

    #[test]
    fn opens_and_resolves_answers() {
        let doc = entry(
            json!([[ann(2), ann(1)], [{"id": 1}]]),
            json!(["b {seg} a {seg}", "a {seg}"]),
        );
        let (dir, path) = write_set("ok", &doc);
        let set = Dataset::open(&path, None).unwrap();
        assert_eq!(set.questions(), 2);
        let e = &set.entries[0];
        assert_eq!(e.questions[0].target_names, ["thing 2", "thing 1"]);
        let m = e.target_masks(1).unwrap();
        assert_eq!(
            m[0],
            decode_segmentation(&ann(1)["segmentation"], (4, 6)).unwrap()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn malformed_sets_name_the_entry() {
        let cases: Vec<(Value, &str)> = vec![
            (
                entry(json!([[{"id": 9}], []]), Value::Null),
                "question 0: answer 0 references no annotation",
            ),
            (
                entry(json!([[ann(1)], [ann(2)]]), json!(["{seg} {seg}", "{seg}"])),
                "question 0: the text answer has 2 {seg} but the question has 1 targets",
            ),
            (
                {
                    let mut bad = ann(1);
                    bad["segmentation"]["size"] = json!([5, 6]);
                    entry(json!([[bad], []]), Value::Null)
                },
                "RLE size 5×6 differs from the image size 4×6",
            ),
            (
                {
                    let mut d = entry(json!([[ann(1)], []]), Value::Null);
                    d[0]["file_name"] = json!("img/missing.png");
                    d
                },
                "image 0 (`img/missing.png`): image file not found",
            ),
            (
                entry(json!([[ann(1)]]), Value::Null),
                "2 questions but 1 answers",
            ),
            (json!({"not": "a list"}), "expected a JSON list"),
        ];
        for (i, (doc, want)) in cases.into_iter().enumerate() {
            let (dir, path) = write_set(&format!("bad{i}"), &doc);
            let err = Dataset::open(&path, None).unwrap_err().to_string();
            assert!(err.contains(want), "case {i}: {err}");
            assert!(err.contains("set.json"), "names the file: {err}");
            assert_eq!(err.lines().count(), 1);
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
