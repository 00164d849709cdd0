//! Segmentation data: COCO RLE masks ([`rle`]), datasets in MUSE's JSON format ([`muse`]),
//! refCOCO / refCOCO+ / refCOCOg in the refer API's layout ([`refcoco`]) and a seeded
//! generator of multi-target shape scenes in MUSE's format ([`synth`]).

pub mod muse;
pub mod refcoco;
pub mod rle;
pub mod synth;

use std::path::Path;

use serde_json::{json, Value};

use crate::output::OutputDir;
use crate::{Error, Result};
use synth::{Scene, Split, COLOURS, SHAPES};

/// Opens evaluation data: a refs pickle (`refs(unc).p`, see [`refcoco::is_refs_pickle`])
/// reads the refs of `split` with `instances.json` beside it ([`refcoco::open`]); anything
/// else is MUSE JSON ([`muse::Dataset::open`]), for which `split` is ignored.
pub fn open_dataset(path: &Path, images_root: Option<&Path>, split: &str) -> Result<muse::Dataset> {
    if refcoco::is_refs_pickle(path) {
        refcoco::open(path, images_root, split)
    } else {
        muse::Dataset::open(path, images_root)
    }
}

/// The MUSE-format JSON entry of one generated scene (`ann_list` holds every object with
/// an uncompressed RLE of its visible pixels and the PNG of that mask).
pub fn scene_entry(scene: &Scene, split: Split, index: u64) -> Value {
    let (w, h) = (scene.image.width(), scene.image.height());
    let stem = format!("{index:06}");
    let anns: Vec<Value> = scene
        .objects
        .iter()
        .enumerate()
        .map(|(k, o)| {
            let bbox = o.mask.bbox().map(|b| b.map(|v| v as f64));
            json!({
                "id": index * 10 + k as u64,
                "category_id": o.shape + 1,
                "category_name": SHAPES[o.shape],
                "rephrased_name": o.name(),
                "bbox": bbox,
                "area": o.mask.area(),
                "iscrowd": 0,
                "segmentation": o.mask.to_rle_json(),
                "attributes": {"color": COLOURS[o.colour].0, "shape": SHAPES[o.shape], "size": o.size_word()},
                "mask_file": format!("masks/{}/{stem}_{k}.png", split.name()),
            })
        })
        .collect();
    let answers: Vec<Value> = scene
        .questions
        .iter()
        .map(|q| Value::Array(q.targets.iter().map(|&t| anns[t].clone()).collect()))
        .collect();
    json!({
        "id": index,
        "file_name": format!("images/{}/{stem}.png", split.name()),
        "height": h,
        "width": w,
        "ann_list": anns,
        "questions": scene.questions.iter().map(|q| q.text.clone()).collect::<Vec<_>>(),
        "answers": answers,
        "text_answers": scene.questions.iter().map(|q| q.text_answer.clone()).collect::<Vec<_>>(),
    })
}

fn png(img: &image::RgbImage) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| Error::format("<png>", e.to_string()))?;
    Ok(out.into_inner())
}

fn mask_png(m: &rle::Mask) -> Result<Vec<u8>> {
    let img = image::GrayImage::from_raw(
        m.width as u32,
        m.height as u32,
        m.data.iter().map(|&v| v * 255).collect(),
    )
    .expect("w·h bytes");
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| Error::format("<png>", e.to_string()))?;
    Ok(out.into_inner())
}

/// Writes `n` scenes of `split` into `out`: `{split}.json` (the MUSE list),
/// `images/{split}/NNNNNN.png`, `masks/{split}/NNNNNN_K.png` (one per object) and
/// `{split}.manifest.json`, through [`OutputDir`] (a directory of other files is refused;
/// another split of the same set is added to). `progress(done)` after each scene.
pub fn write_split(
    out: &Path,
    seed: u64,
    split: Split,
    n: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let manifest = format!("{}.manifest.json", split.name());
    let mut dir = OutputDir::open(out, &manifest)?;
    let mut entries = Vec::with_capacity(n as usize);
    for i in 0..n {
        let s = synth::scene(seed, split, i);
        let entry = scene_entry(&s, split, i);
        dir.put(
            entry["file_name"].as_str().expect("set above"),
            &png(&s.image)?,
        )?;
        for (k, o) in s.objects.iter().enumerate() {
            let name = entry["ann_list"][k]["mask_file"]
                .as_str()
                .expect("set above");
            dir.put(name, &mask_png(&o.mask)?)?;
        }
        entries.push(entry);
        progress(i + 1);
    }
    // The data file is MUSE's bare list; the program's own record of what it wrote (and
    // may later replace) is the manifest beside it.
    let list = serde_json::to_vec(&Value::Array(entries)).expect("JSON values serialise");
    dir.put(&format!("{}.json", split.name()), &list)?;
    dir.commit(
        "data synth",
        json!({"seed": seed, "split": split.name(), "n": n, "data": format!("{}.json", split.name())}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_split_reads_back_with_the_same_masks() {
        let dir = std::env::temp_dir().join(format!("pixellm-synth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_split(&dir, 5, Split::Val, 3, &mut |_| {}).unwrap();
        write_split(&dir, 5, Split::TestMany, 2, &mut |_| {}).unwrap();
        let first = std::fs::read(dir.join("val.json")).unwrap();
        let set = muse::Dataset::open(&dir.join("val.json"), None).unwrap();
        assert_eq!(set.entries.len(), 3);
        for (i, e) in set.entries.iter().enumerate() {
            let s = synth::scene(5, Split::Val, i as u64);
            assert_eq!(e.questions.len(), s.questions.len());
            for (q, sq) in s.questions.iter().enumerate() {
                let masks = e.target_masks(q).unwrap();
                for (m, &t) in masks.iter().zip(&sq.targets) {
                    assert_eq!(m, &s.objects[t].mask);
                }
            }
            let img = crate::image::load_image(&e.image_path).unwrap();
            assert_eq!(img, s.image);
        }
        // Regenerating gives the same bytes; the run replaces its own files only.
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
        write_split(&dir, 5, Split::Val, 3, &mut |_| {}).unwrap();
        assert_eq!(std::fs::read(dir.join("val.json")).unwrap(), first);
        assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"mine");
        assert!(dir.join("test_many.json").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
