//! refCOCO, refCOCO+ and refCOCOg as the refer API lays them out, read into a [`Dataset`]
//! for `pixellm eval` in the official `validate()` protocol (teacher-forced, one target per
//! question; see `docs/eval.md`).
//!
//! ```text
//! refcoco/refs(unc).p      a pickle (Python 2, protocol 0–2) of a list of refs:
//!                          {ref_id, ann_id, image_id, split, file_name, category_id,
//!                           sent_ids, sentences: [{sent, raw, tokens, sent_id}, …]}
//! refcoco/instances.json   COCO: images {id, file_name, height, width},
//!                          annotations {id, image_id, segmentation, bbox, category_id}
//! ```
//!
//! (refCOCOg has `refs(umd).p` and `refs(google).p`.) The pickle is read by the project's
//! own plain-data unpickler ([`crate::weights::read_plain_pickle`]): no global, no call.
//!
//! One [`Entry`] per image, in the order the split's refs first name them; one
//! [`Question`] per sentence of each of its refs, in file order, whose text is the sentence
//! stripped and lower-cased (as the official `ValDataset` does) and whose single target is
//! the ref's annotation at the image's size. Every structural problem is found when the
//! data is opened, in one line naming the file and the entry.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::muse::{check_segmentation, Dataset, Entry, Protocol, Question};
use super::rle::{decode_segmentation, Mask};
use crate::{Error, Result};

/// The split `pixellm eval` reads when none is given.
pub const DEFAULT_SPLIT: &str = "val";

/// Whether `path` names a refs pickle (`refs(unc).p`, …): refCOCO mode in `pixellm eval`.
pub fn is_refs_pickle(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("p" | "pkl"))
}

/// One ref of the chosen split.
struct Ref {
    /// Position in the pickle's list.
    index: usize,
    ref_id: Option<i64>,
    ann_id: i64,
    image_id: i64,
    sentences: Vec<String>,
}

impl Ref {
    fn name(&self) -> String {
        match self.ref_id {
            Some(id) => format!("ref {} (ref_id {id})", self.index),
            None => format!("ref {}", self.index),
        }
    }
}

/// Opens the refs of `split` from `pickle` and `instances.json` beside it. Images resolve
/// under `images_root` (default: the pickle's folder and its parent), directly, under
/// `train2014/` or under LISA's `images/mscoco/images/train2014/`.
pub fn open(pickle: &Path, images_root: Option<&Path>, split: &str) -> Result<Dataset> {
    let file = pickle.display().to_string();
    let folder = pickle
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let instances_path = folder.join("instances.json");
    if !pickle.is_file() {
        // The I/O error names the path.
        std::fs::metadata(pickle).map_err(|e| Error::io(pickle, e))?;
        return Err(Error::format(&file, "not a file"));
    }
    if !instances_path.is_file() {
        return Err(Error::format(
            instances_path.display().to_string(),
            format!(
                "not found: refCOCO data needs the COCO annotations beside {} (the refer API's layout: refcoco/refs(unc).p, refcoco/instances.json)",
                pickle.display()
            ),
        ));
    }
    let doc = crate::weights::read_plain_pickle(pickle)?;
    let refs = select_refs(&doc, &file, split)?;
    drop(doc);

    let images_wanted: HashSet<i64> = refs.iter().map(|r| r.image_id).collect();
    let anns_wanted: HashSet<i64> = refs.iter().map(|r| r.ann_id).collect();
    let instances = read_instances(&instances_path, &images_wanted, &anns_wanted)?;
    let inst_file = instances_path.display().to_string();

    let roots: Vec<PathBuf> = match images_root {
        Some(r) => vec![r.to_path_buf()],
        None => {
            let mut v = vec![folder.to_path_buf()];
            v.extend(folder.parent().map(Path::to_path_buf));
            v
        }
    };

    // Images in the order the refs first name them, each with its refs in file order.
    let mut order: Vec<i64> = Vec::new();
    let mut by_image: HashMap<i64, Vec<&Ref>> = HashMap::new();
    for r in &refs {
        by_image
            .entry(r.image_id)
            .or_insert_with(|| {
                order.push(r.image_id);
                Vec::new()
            })
            .push(r);
    }
    let mut entries = Vec::with_capacity(order.len());
    for image_id in order {
        let its_refs = &by_image[&image_id];
        let first = its_refs[0];
        let info = instances.images.get(&image_id).ok_or_else(|| {
            Error::format(
                &file,
                format!(
                    "{}: image_id {image_id} is not among the images of {inst_file}",
                    first.name()
                ),
            )
        })?;
        let at_image = |msg: String| {
            Error::format(
                &inst_file,
                format!("image {image_id} (`{}`): {msg}", info.file_name),
            )
        };
        let dim = |v: u64, what: &str| {
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v <= 1 << 16)
                .ok_or_else(|| at_image(format!("{what} {v} is not in 1..=65536")))
        };
        let (height, width) = (dim(info.height, "height")?, dim(info.width, "width")?);
        let image_path = resolve_image(&info.file_name, &roots).ok_or_else(|| {
            let under: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
            Error::format(
                &file,
                format!(
                    "{}: image `{}` (image_id {image_id}) not found under {} (directly, in train2014/ or in images/mscoco/images/train2014/; pass --images-root)",
                    first.name(),
                    info.file_name,
                    under.join(" or ")
                ),
            )
        })?;
        let mut questions = Vec::new();
        for r in its_refs {
            let ann = instances.annotations.get(&r.ann_id).ok_or_else(|| {
                Error::format(
                    &file,
                    format!(
                        "{}: ann_id {} is not among the annotations of {inst_file}",
                        r.name(),
                        r.ann_id
                    ),
                )
            })?;
            if ann.image_id != r.image_id {
                return Err(Error::format(
                    &file,
                    format!(
                        "{}: ann_id {} belongs to image {} in {inst_file}, not to the ref's image {}",
                        r.name(),
                        r.ann_id,
                        ann.image_id,
                        r.image_id
                    ),
                ));
            }
            let seg = normalise_segmentation(&ann.segmentation, (height, width)).map_err(|m| {
                Error::format(
                    &inst_file,
                    format!("annotation {} (of {}): {m}", r.ann_id, r.name()),
                )
            })?;
            for sent in &r.sentences {
                questions.push(Question {
                    text: sent.clone(),
                    targets: vec![seg.clone()],
                    target_names: vec![sent.clone()],
                    text_answer: None,
                });
            }
        }
        entries.push(Entry {
            file_name: info.file_name.clone(),
            image_path,
            height,
            width,
            questions,
        });
    }
    Ok(Dataset {
        path: pickle.to_path_buf(),
        entries,
        protocol: Protocol::TeacherForced {
            split: split.to_string(),
        },
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "None",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// The refs of `split`, checked; an unknown split lists the ones the file has.
fn select_refs(doc: &Value, file: &str, split: &str) -> Result<Vec<Ref>> {
    let list = doc.as_array().ok_or_else(|| {
        Error::format(
            file,
            format!(
                "holds a {}, expected a list of refs (the refer API's refs pickle)",
                kind(doc)
            ),
        )
    })?;
    let mut splits: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let ref_id = r.get("ref_id").and_then(Value::as_i64);
        let name = match ref_id {
            Some(id) => format!("ref {i} (ref_id {id})"),
            None => format!("ref {i}"),
        };
        let at = |msg: String| Error::format(file, format!("{name}: {msg}"));
        let Some(obj) = r.as_object() else {
            return Err(at(format!("is a {}, expected a dict", kind(r))));
        };
        let s = obj
            .get("split")
            .and_then(Value::as_str)
            .ok_or_else(|| at("needs \"split\": a string".into()))?;
        *splits.entry(s).or_default() += 1;
        if s != split {
            continue;
        }
        let int = |key: &str| {
            obj.get(key)
                .and_then(Value::as_i64)
                .ok_or_else(|| at(format!("needs \"{key}\": an integer")))
        };
        let (ann_id, image_id) = (int("ann_id")?, int("image_id")?);
        let sentences = obj
            .get("sentences")
            .and_then(Value::as_array)
            .ok_or_else(|| at("needs \"sentences\": a list".into()))?
            .iter()
            .enumerate()
            .map(|(k, s)| {
                s.get("sent")
                    .and_then(Value::as_str)
                    .map(|t| t.trim().to_lowercase())
                    .ok_or_else(|| at(format!("sentence {k} needs \"sent\": a string")))
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(Ref {
            index: i,
            ref_id,
            ann_id,
            image_id,
            sentences,
        });
    }
    if out.is_empty() {
        let known: Vec<String> = splits
            .iter()
            .map(|(s, n)| format!("{s} ({n} refs)"))
            .collect();
        let known = if known.is_empty() {
            "none (the list is empty)".to_string()
        } else {
            known.join(", ")
        };
        return Err(Error::format(
            file,
            format!("no refs in split `{split}`; the splits it has: {known}"),
        ));
    }
    Ok(out)
}

/// An annotation's segmentation as one value [`decode_segmentation`] reads at `size`: an
/// empty list is an empty mask (as in the official loader), a list of RLEs their union.
fn normalise_segmentation(seg: &Value, size: (usize, usize)) -> std::result::Result<Value, String> {
    let (h, w) = size;
    match seg {
        Value::Array(a) if a.is_empty() => Ok(Mask::empty(h, w).to_compressed_json()),
        Value::Array(a) if a.iter().all(Value::is_object) => {
            let mut m = Mask::empty(h, w);
            for (k, rle) in a.iter().enumerate() {
                let part = decode_segmentation(rle, size).map_err(|e| format!("RLE {k}: {e}"))?;
                m.union_with(&part);
            }
            Ok(m.to_compressed_json())
        }
        _ => {
            check_segmentation(seg, size)?;
            Ok(seg.clone())
        }
    }
}

fn resolve_image(file_name: &str, roots: &[PathBuf]) -> Option<PathBuf> {
    let base = Path::new(file_name).file_name()?;
    roots
        .iter()
        .flat_map(|root| {
            [
                root.join(file_name),
                root.join("train2014").join(base),
                root.join("images/mscoco/images/train2014").join(base),
            ]
        })
        .find(|p| p.is_file())
}

// ---- instances.json ---------------------------------------------------------------------

#[derive(Deserialize)]
struct ImageInfo {
    id: i64,
    file_name: String,
    height: u64,
    width: u64,
}

#[derive(Deserialize)]
struct Annotation {
    id: i64,
    image_id: i64,
    segmentation: Value,
}

trait HasId {
    fn id(&self) -> i64;
}

impl HasId for ImageInfo {
    fn id(&self) -> i64 {
        self.id
    }
}

impl HasId for Annotation {
    fn id(&self) -> i64 {
        self.id
    }
}

/// The images and annotations the refs need.
struct Instances {
    images: HashMap<i64, ImageInfo>,
    annotations: HashMap<i64, Annotation>,
}

/// Where the reader is, for error messages: the list and the index of its element.
#[derive(Default)]
struct Position {
    list: Cell<&'static str>,
    index: Cell<usize>,
}

/// Reads `images` and `annotations`, keeping only the wanted ids: each annotation's
/// segmentation is parsed and dropped unless a ref needs it, so memory follows the split,
/// not the (hundreds of MB) file.
fn read_instances(path: &Path, images: &HashSet<i64>, anns: &HashSet<i64>) -> Result<Instances> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let pos = Position::default();
    let mut out = Instances {
        images: HashMap::new(),
        annotations: HashMap::new(),
    };
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let seen = TopLevel {
        images,
        anns,
        out: &mut out,
        pos: &pos,
    }
    .deserialize(&mut de)
    .and_then(|seen| de.end().map(|()| seen))
    .map_err(|e| {
        let at = match pos.list.get() {
            "" => String::new(),
            list => format!("{list}[{}]: ", pos.index.get()),
        };
        Error::format(&file, format!("{at}{e}"))
    })?;
    for key in ["images", "annotations"] {
        if !seen.contains(&key) {
            return Err(Error::format(
                &file,
                format!("has no \"{key}\" list (expected COCO's instances.json)"),
            ));
        }
    }
    Ok(out)
}

struct TopLevel<'a> {
    images: &'a HashSet<i64>,
    anns: &'a HashSet<i64>,
    out: &'a mut Instances,
    pos: &'a Position,
}

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    /// The lists found.
    type Value = Vec<&'static str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = Vec<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a COCO instances object with \"images\" and \"annotations\"")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut seen = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "images" => {
                    map.next_value_seed(Keep {
                        list: "images",
                        wanted: self.images,
                        out: &mut self.out.images,
                        pos: self.pos,
                    })?;
                    seen.push("images");
                }
                "annotations" => {
                    map.next_value_seed(Keep {
                        list: "annotations",
                        wanted: self.anns,
                        out: &mut self.out.annotations,
                        pos: self.pos,
                    })?;
                    seen.push("annotations");
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            self.pos.list.set("");
        }
        Ok(seen)
    }
}

/// A list of `T`, keeping the wanted ids (the first of each).
struct Keep<'a, T> {
    list: &'static str,
    wanted: &'a HashSet<i64>,
    out: &'a mut HashMap<i64, T>,
    pos: &'a Position,
}

impl<'de, T: Deserialize<'de> + HasId> DeserializeSeed<'de> for Keep<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de> + HasId> Visitor<'de> for Keep<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of {}", self.list)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        self.pos.list.set(self.list);
        let mut i = 0;
        loop {
            self.pos.index.set(i);
            let Some(item) = seq.next_element::<T>()? else {
                break;
            };
            if self.wanted.contains(&item.id()) {
                self.out.entry(item.id()).or_insert(item);
            }
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{score, Prediction};
    use serde_json::json;

    const IMG1: &str = "COCO_train2014_000000000001.jpg";
    const IMG2: &str = "COCO_train2014_000000000002.jpg";

    fn square_poly(x0: f64, y0: f64, s: f64) -> Value {
        json!([[x0, y0, x0 + s, y0, x0 + s, y0 + s, x0, y0 + s]])
    }

    fn rle_mask() -> Mask {
        let (h, w) = (12, 16);
        Mask {
            height: h,
            width: w,
            data: (0..h * w)
                .map(|i| ((i / w) > 6 && (i % w) < 5) as u8)
                .collect(),
        }
    }

    fn refs() -> Value {
        let sent = |s: &str, id: i64| json!({"sent": s, "raw": s, "tokens": s.split(' ').collect::<Vec<_>>(), "sent_id": id});
        json!([
            {"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "val", "category_id": 1,
             "file_name": "COCO_train2014_000000000001_10.jpg", "sent_ids": [0, 1],
             "sentences": [sent("left square", 0), sent(" The Big Square ", 1)]},
            {"ref_id": 1, "ann_id": 20, "image_id": 2, "split": "train", "category_id": 1,
             "file_name": "COCO_train2014_000000000002_20.jpg", "sent_ids": [2],
             "sentences": [sent("train only", 2)]},
            {"ref_id": 2, "ann_id": 20, "image_id": 2, "split": "val", "category_id": 1,
             "file_name": "COCO_train2014_000000000002_20.jpg", "sent_ids": [3],
             "sentences": [sent("the patch", 3)]},
            {"ref_id": 3, "ann_id": 11, "image_id": 1, "split": "val", "category_id": 2,
             "file_name": "COCO_train2014_000000000001_11.jpg", "sent_ids": [4],
             "sentences": [sent("bottom left", 4)]},
        ])
    }

    fn instances() -> Value {
        json!({
            "info": {"description": "test"},
            "images": [
                {"id": 2, "file_name": IMG2, "height": 12, "width": 16},
                {"id": 1, "file_name": IMG1, "height": 20, "width": 30},
                {"id": 3, "file_name": "unused.jpg", "height": 1, "width": 1},
            ],
            "annotations": [
                {"id": 10, "image_id": 1, "segmentation": square_poly(2.0, 3.0, 8.0),
                 "bbox": [2, 3, 8, 8], "category_id": 1, "area": 64, "iscrowd": 0},
                {"id": 11, "image_id": 1, "segmentation": [square_poly(0.0, 10.0, 5.0)[0].clone(), square_poly(20.0, 10.0, 4.0)[0].clone()],
                 "bbox": [0, 10, 24, 5], "category_id": 2},
                {"id": 20, "image_id": 2, "segmentation": rle_mask().to_compressed_json(),
                 "bbox": [0, 7, 5, 5], "category_id": 1, "iscrowd": 1},
                {"id": 99, "image_id": 3, "segmentation": "not decoded: unused"},
            ],
            "categories": [{"id": 1, "name": "square"}],
        })
    }

    /// A refcoco folder with images in `images/train2014/`.
    fn fixture(tag: &str, refs: &Value, instances: Option<&Value>) -> (PathBuf, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("pixellm-refcoco-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("refcoco")).unwrap();
        std::fs::create_dir_all(dir.join("images/train2014")).unwrap();
        for f in [IMG1, IMG2] {
            std::fs::write(dir.join("images/train2014").join(f), b"not read here").unwrap();
        }
        let pickle = dir.join("refcoco/refs(unc).p");
        std::fs::write(&pickle, crate::weights::write_plain_pickle(refs)).unwrap();
        if let Some(inst) = instances {
            std::fs::write(dir.join("refcoco/instances.json"), inst.to_string()).unwrap();
        }
        (dir, pickle)
    }

    #[test]
    fn builds_one_question_per_sentence_and_perfect_predictions_score_one() {
        let (dir, pickle) = fixture("ok", &refs(), Some(&instances()));
        let set = open(&pickle, Some(&dir.join("images")), "val").unwrap();
        assert!(is_refs_pickle(&pickle));
        assert_eq!(
            set.protocol,
            Protocol::TeacherForced {
                split: "val".into()
            }
        );
        assert_eq!(set.entries.len(), 2);
        assert_eq!(set.questions(), 4);
        let (e1, e2) = (&set.entries[0], &set.entries[1]);
        assert_eq!((e1.file_name.as_str(), e1.height, e1.width), (IMG1, 20, 30));
        assert_eq!(e1.image_path, dir.join("images/train2014").join(IMG1));
        let texts: Vec<_> = e1.questions.iter().map(|q| q.text.as_str()).collect();
        assert_eq!(texts, ["left square", "the big square", "bottom left"]);
        assert_eq!(e2.file_name, IMG2);
        assert_eq!(e2.questions[0].text, "the patch");
        // Polygons rasterised at the image's size; the union of two polygons; the RLE.
        let m = e1.target_masks(0).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].area(), 64);
        assert_eq!(e1.target_masks(1).unwrap(), m);
        assert_eq!(e1.target_masks(2).unwrap()[0].area(), 25 + 16);
        assert_eq!(e2.target_masks(0).unwrap()[0], rle_mask());
        // Perfect predictions (the masks themselves) score 1; none score 0.
        let mut preds = Vec::new();
        for e in &set.entries {
            for q in 0..e.questions.len() {
                preds.push(Prediction {
                    image: e.file_name.clone(),
                    question: q,
                    masks: vec![e.target_masks(q).unwrap()[0].to_compressed_json()],
                    text: None,
                });
            }
        }
        let r = score(&set, &preds, None).unwrap();
        assert_eq!(
            (r.totals.giou(), r.totals.ciou(), r.totals.questions),
            (1.0, 1.0, 4)
        );
        assert_eq!(score(&set, &[], None).unwrap().totals.giou(), 0.0);
        // Images found beside the pickle's folder (LISA's layout) without --images-root.
        std::fs::create_dir_all(dir.join("images/mscoco/images")).unwrap();
        std::fs::rename(
            dir.join("images/train2014"),
            dir.join("images/mscoco/images/train2014"),
        )
        .unwrap();
        let set = open(&pickle, None, "val").unwrap();
        assert_eq!(set.questions(), 4);
        // The train split.
        let train = open(&pickle, None, "train").unwrap();
        assert_eq!(train.questions(), 1);
        assert_eq!(train.entries[0].questions[0].text, "train only");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn malformed_data_is_one_line_naming_the_file_and_entry() {
        let mut bad_ann = refs();
        bad_ann[2]["ann_id"] = json!(77);
        let mut bad_image = refs();
        bad_image[3]["image_id"] = json!(5);
        let mut wrong_image = refs();
        wrong_image[2]["ann_id"] = json!(10);
        let mut no_sent = refs();
        no_sent[0]["sentences"][1] = json!({"raw": "x"});
        let mut rle_size = instances();
        rle_size["annotations"][2]["segmentation"]["size"] = json!([13, 16]);
        let mut bad_type = instances();
        bad_type["annotations"][1]["id"] = json!("eleven");
        let mut no_images = instances();
        no_images.as_object_mut().unwrap().remove("images");
        let cases: Vec<(Value, Option<Value>, &str, &str, &str)> = vec![
            (refs(), Some(instances()), "testA", "refs(unc).p", "no refs in split `testA`; the splits it has: train (1 refs), val (3 refs)"),
            (refs(), None, "val", "instances.json", "not found"),
            (bad_ann, Some(instances()), "val", "refs(unc).p", "ref 2 (ref_id 2): ann_id 77 is not among the annotations of"),
            (bad_image, Some(instances()), "val", "refs(unc).p", "ref 3 (ref_id 3): image_id 5 is not among the images"),
            (wrong_image, Some(instances()), "val", "refs(unc).p", "ref 2 (ref_id 2): ann_id 10 belongs to image 1"),
            (no_sent, Some(instances()), "val", "refs(unc).p", "ref 0 (ref_id 0): sentence 1 needs \"sent\""),
            (json!({"not": "a list"}), Some(instances()), "val", "refs(unc).p", "holds a dict, expected a list of refs"),
            (json!([{"ref_id": 4, "split": 3}]), Some(instances()), "val", "refs(unc).p", "ref 0 (ref_id 4): needs \"split\""),
            (refs(), Some(rle_size), "val", "instances.json", "annotation 20 (of ref 2 (ref_id 2)): RLE size 13×16 differs from the image size 12×16"),
            (refs(), Some(bad_type), "val", "instances.json", "annotations[1]: invalid type: string \"eleven\""),
            (refs(), Some(no_images), "val", "instances.json", "has no \"images\" list"),
            (refs(), Some(json!([1, 2])), "val", "instances.json", "expected a COCO instances object"),
        ];
        for (i, (r, inst, split, file, want)) in cases.into_iter().enumerate() {
            let (dir, pickle) = fixture(&format!("bad{i}"), &r, inst.as_ref());
            let err = open(&pickle, Some(&dir.join("images")), split)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "case {i}: {err}");
            assert!(err.contains(file), "case {i} names {file}: {err}");
            assert_eq!(err.lines().count(), 1, "case {i}: {err}");
            std::fs::remove_dir_all(dir).unwrap();
        }
        // A missing image file, a corrupt pickle, a GLOBAL in the pickle.
        let (dir, pickle) = fixture("noimg", &refs(), Some(&instances()));
        std::fs::remove_file(dir.join("images/train2014").join(IMG2)).unwrap();
        let err = open(&pickle, Some(&dir.join("images")), "val")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ref 2 (ref_id 2): image `COCO_train2014_000000000002.jpg` (image_id 2) not found under"), "{err}");
        let good = std::fs::read(&pickle).unwrap();
        std::fs::write(&pickle, &good[..good.len() / 2]).unwrap();
        let err = open(&pickle, None, "val").unwrap_err().to_string();
        assert!(
            err.contains("refs(unc).p: invalid pickle") && err.contains("truncated"),
            "{err}"
        );
        std::fs::write(&pickle, b"\x80\x02cos\nsystem\n(S'ls'\ntR.").unwrap();
        let err = open(&pickle, None, "val").unwrap_err().to_string();
        assert!(
            err.contains("`os.system`") && err.lines().count() == 1,
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
