//! Writes a segmentation to an output directory through [`pixellm::output::OutputDir`]:
//! never touching files this program did not write, all or nothing.

use std::collections::HashMap;
use std::path::Path;

use pixellm::backend::{Backend, Precision};
use pixellm::image::{mask_png, overlay_png, RgbImage};
use pixellm::output::{result_json, OutputDir};
use pixellm::{Error, Result, Segmentation};

/// The manifest of a `segment` result directory.
pub const MANIFEST: &str = "result.json";

/// Refuses, before any work, an `--out` that may not be written (see `pixellm::output`).
pub fn check_target(out: &Path) -> Result<()> {
    pixellm::output::check_dir(out, MANIFEST)
}

/// Writes `mask_NN.png`, `overlay.png`, optionally `logits.safetensors`, and `result.json`
/// last. Returns the names of the files written.
pub fn write(
    out: &Path,
    image: &RgbImage,
    seg: &Segmentation,
    backend: Backend,
    precision: Precision,
    save_logits: bool,
) -> Result<Vec<String>> {
    let mut dir = OutputDir::open(out, MANIFEST)?;
    let (h, w) = seg.size;
    let mask_file = |i: usize| format!("mask_{i:02}.png");
    let mut written = Vec::new();
    for t in &seg.targets {
        let file = mask_file(t.index);
        dir.put(&file, &mask_png(seg.mask(t.index), w, h))?;
        written.push(file);
    }
    let masks: Vec<&[f32]> = (0..seg.targets.len()).map(|i| seg.mask(i)).collect();
    dir.put("overlay.png", &overlay_png(image, &masks))?;
    written.push("overlay.png".into());
    if save_logits {
        dir.put("logits.safetensors", &logits_safetensors(seg)?)?;
        written.push("logits.safetensors".into());
    }
    let result = result_json(seg, backend.name(), precision.name(), Some(&mask_file));
    dir.commit("segment", result)?;
    written.push(MANIFEST.into());
    Ok(written)
}

fn logits_safetensors(seg: &Segmentation) -> Result<Vec<u8>> {
    use safetensors::tensor::{Dtype, TensorView};
    let n = seg.targets.len();
    let (h, w) = seg.size;
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let masks = bytes(&seg.masks);
    let low = bytes(&seg.low_res_masks);
    let side = seg
        .low_res_masks
        .len()
        .checked_div(n)
        .map_or(0, |per_mask| (per_mask as f64).sqrt() as usize);
    let views: HashMap<String, TensorView> = [
        (
            "masks".to_string(),
            TensorView::new(Dtype::F32, vec![n, h, w], &masks),
        ),
        (
            "low_res_masks".to_string(),
            TensorView::new(Dtype::F32, vec![n, side, side], &low),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.expect("shapes match the buffers")))
    .collect();
    safetensors::serialize(&views, None)
        .map_err(|e| Error::format("logits.safetensors", e.to_string()))
}
