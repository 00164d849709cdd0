//! Writes a segmentation to an output directory, all or nothing: everything goes to a
//! temporary sibling directory that replaces the target only once complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pixellm::backend::{Backend, Precision};
use pixellm::image::{mask_png, overlay_png, RgbImage};
use pixellm::{Error, Result, Segmentation};
use serde_json::json;

/// Refuses an `--out` that exists and is not a directory (a user's file is never
/// replaced); checked before any work and again before writing.
pub fn check_target(out: &Path) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Ok(m) if !m.is_dir() => Err(Error::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "--out already exists and is not a directory (refusing to replace a file)",
            ),
        )),
        _ => Ok(()),
    }
}

/// Writes `result.json`, `mask_NN.png`, `overlay.png` and optionally `logits.safetensors`.
pub fn write(
    out: &Path,
    image: &RgbImage,
    seg: &Segmentation,
    backend: Backend,
    precision: Precision,
    save_logits: bool,
) -> Result<()> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    check_target(out)?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pixellm-out".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let result =
        fill(&tmp, image, seg, backend, precision, save_logits).and_then(|()| replace(&tmp, out));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn fill(
    dir: &Path,
    image: &RgbImage,
    seg: &Segmentation,
    backend: Backend,
    precision: Precision,
    save_logits: bool,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let put = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(path, e))
    };
    let (h, w) = seg.size;
    let mut targets = Vec::new();
    for t in &seg.targets {
        let file = format!("mask_{:02}.png", t.index);
        put(&file, &mask_png(seg.mask(t.index), w, h))?;
        targets.push(json!({
            "index": t.index,
            "score": t.score,
            "area": t.area,
            "bbox": t.bbox,
            "mask": file,
        }));
    }
    let masks: Vec<&[f32]> = (0..seg.targets.len()).map(|i| seg.mask(i)).collect();
    put("overlay.png", &overlay_png(image, &masks))?;
    let timings: serde_json::Map<String, serde_json::Value> = seg
        .timings_ms
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let result = json!({
        "text": seg.text,
        "token_ids": seg.token_ids,
        "targets": targets,
        "width": w,
        "height": h,
        "timings_ms": timings,
        "backend": backend.name(),
        "dtype": precision.name(),
        "warnings": seg.warnings,
    });
    let text = serde_json::to_string_pretty(&result).expect("JSON values serialise");
    put("result.json", text.as_bytes())?;
    if save_logits {
        put("logits.safetensors", &logits_safetensors(seg)?)?;
    }
    Ok(())
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

/// Moves `tmp` to `out`, replacing a previous output directory only after the new one is
/// complete.
fn replace(tmp: &Path, out: &Path) -> Result<()> {
    let old: Option<PathBuf> = if out.exists() {
        let old = tmp.with_extension("old");
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        Some(old)
    } else {
        None
    };
    std::fs::rename(tmp, out).map_err(|e| Error::io(out, e))?;
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}
