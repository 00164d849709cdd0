//! Host-side helpers for the final mask logits (the host half of postprocess; the device
//! half is `model::postprocess`) (one target, `H0 × W0`, row-major):
//! the reference's mask score (`docs/model.md` §10.6), area and bounding box, and PNG
//! outputs. A pixel is foreground iff its logit is `> 0` (sigmoid > 0.5), as in `chat.py`.

use ::image::codecs::png::PngEncoder;
use ::image::{ExtendedColorType, ImageEncoder, RgbImage};

/// Mean foreground probability of one mask, as `PixelLM.evaluate` computes it:
/// `Σ sigmoid(m)·[m > 0] / (count(m > 0) + 1e-6)`; 0 for an empty mask.
///
/// The sum is accumulated in f64 (the f32 reference sums pairwise, so any order
/// differs from it only in the last bits); the denominator is formed in f32 as
/// PyTorch does (`count + 1e-6` rounds back to `count` for any non-empty mask).
pub fn mask_score(logits: &[f32]) -> f32 {
    let mut sum = 0f64;
    let mut count = 0u64;
    for &m in logits {
        if m > 0.0 {
            sum += f64::from(sigmoid(m));
            count += 1;
        }
    }
    let den = count as f32 + 1e-6;
    (sum / f64::from(den)) as f32
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Area and bounding box of a binary mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskStats {
    /// Number of foreground pixels.
    pub area: usize,
    /// `[x0, y0, x1, y1]` in pixels, start inclusive and end exclusive (so the box is
    /// `x1 − x0` wide); `None` for an empty mask.
    pub bbox: Option<[usize; 4]>,
}

fn check_len(logits: &[f32], w: usize, h: usize) {
    assert_eq!(
        logits.len(),
        w * h,
        "mask has {} values, expected {w}x{h}",
        logits.len()
    );
}

/// Foreground area and bounding box of a `w × h` mask of logits.
///
/// # Panics
///
/// If `logits.len() != w * h`.
pub fn mask_stats(logits: &[f32], w: usize, h: usize) -> MaskStats {
    check_len(logits, w, h);
    let mut area = 0;
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for (y, row) in logits.chunks_exact(w.max(1)).take(h).enumerate() {
        // The count vectorises; the ends are searched only in rows that have foreground.
        let n = row.iter().filter(|&&m| m > 0.0).count();
        if n == 0 {
            continue;
        }
        area += n;
        let first = row.iter().position(|&m| m > 0.0).unwrap_or(0);
        let last = row.iter().rposition(|&m| m > 0.0).unwrap_or(0);
        x0 = x0.min(first);
        x1 = x1.max(last + 1);
        y0 = y0.min(y);
        y1 = y + 1;
    }
    MaskStats {
        area,
        bbox: (area > 0).then_some([x0, y0, x1, y1]),
    }
}

/// Encodes raw pixels as PNG. Writing into a `Vec` cannot fail for the non-zero,
/// consistent sizes the callers check first.
fn encode_png(data: &[u8], w: usize, h: usize, color: ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(data, w as u32, h as u32, color)
        .expect("PNG encoding into memory");
    out
}

/// 8-bit greyscale PNG of a `w × h` mask: 255 where the logit is `> 0`, else 0.
///
/// # Panics
///
/// If `logits.len() != w * h` or a side is zero.
pub fn mask_png(logits: &[f32], w: usize, h: usize) -> Vec<u8> {
    check_len(logits, w, h);
    assert!(w > 0 && h > 0, "mask_png: zero-size mask");
    let px: Vec<u8> = logits
        .iter()
        .map(|&m| if m > 0.0 { 255 } else { 0 })
        .collect();
    encode_png(&px, w, h, ExtendedColorType::L8)
}

/// Colours of the overlay, target `i` → `PALETTE[i % 20]`
/// (Sasha Trubetskoy's 20 distinct colours, red first as in `chat.py`'s overlay).
const PALETTE: [[u8; 3]; 20] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [255, 225, 25],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
    [0, 128, 128],
    [220, 190, 255],
    [170, 110, 40],
    [255, 250, 200],
    [128, 0, 0],
    [170, 255, 195],
    [128, 128, 0],
    [255, 215, 180],
    [0, 0, 128],
    [128, 128, 128],
];

/// Display colour of target `i` (cycles after 20 targets). Shared with any other
/// front end so that a target has the same colour everywhere.
pub fn palette(i: usize) -> [u8; 3] {
    PALETTE[i % PALETTE.len()]
}

/// RGB PNG of `img` with every mask blended over it at 50 % in its
/// [`palette`] colour, plus a solid 1-px outline along the mask boundary (pixels of
/// the mask with a 4-neighbour outside it or outside the image). Later masks are
/// drawn over earlier ones.
///
/// # Panics
///
/// If a mask does not have `width × height` values of `img`.
pub fn overlay_png(img: &RgbImage, masks: &[&[f32]]) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut px = img.as_raw().clone();
    for (i, mask) in masks.iter().enumerate() {
        check_len(mask, w, h);
        let color = palette(i);
        let fg = |x: usize, y: usize| mask[y * w + x] > 0.0;
        for y in 0..h {
            for x in 0..w {
                if !fg(x, y) {
                    continue;
                }
                let edge = x == 0
                    || y == 0
                    || x + 1 == w
                    || y + 1 == h
                    || !fg(x - 1, y)
                    || !fg(x + 1, y)
                    || !fg(x, y - 1)
                    || !fg(x, y + 1);
                let p = &mut px[(y * w + x) * 3..(y * w + x + 1) * 3];
                for (v, &c) in p.iter_mut().zip(&color) {
                    *v = if edge {
                        c
                    } else {
                        (u16::from(*v) + u16::from(c)).div_ceil(2) as u8
                    };
                }
            }
        }
    }
    encode_png(&px, w, h, ExtendedColorType::Rgb8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::fixtures::{golden_f32, CASES};

    #[test]
    fn mask_scores_match_goldens() {
        for case in CASES {
            let (masks, shape) = golden_f32(case, "tf.pred_masks");
            let (scores, _) = golden_f32(case, "tf.mask_scores");
            let (n, hw) = (shape[0], shape[1] * shape[2]);
            assert_eq!(scores.len(), n);
            for t in 0..n {
                let got = mask_score(&masks[t * hw..(t + 1) * hw]);
                let want = scores[t];
                let rel = ((got - want) / want).abs();
                assert!(
                    rel <= 1e-5,
                    "{case} target {t}: {got} vs {want} (rel {rel})"
                );
            }
        }
    }

    #[test]
    fn score_of_empty_mask_is_zero() {
        assert_eq!(mask_score(&[-1.0, -3.0, 0.0]), 0.0);
        assert_eq!(mask_score(&[]), 0.0);
        let s = mask_score(&[0.0, 2.0, -1.0]);
        assert!((s - sigmoid(2.0)).abs() < 1e-6);
    }

    #[test]
    fn stats_and_bbox() {
        #[rustfmt::skip]
        let m = [
            -1.0, -1.0, -1.0, -1.0,
            -1.0,  2.0,  0.5, -1.0,
            -1.0, -1.0,  3.0, -1.0,
        ];
        let s = mask_stats(&m, 4, 3);
        assert_eq!(s.area, 3);
        assert_eq!(s.bbox, Some([1, 1, 3, 3]));
        assert_eq!(
            mask_stats(&[0.0; 6], 3, 2),
            MaskStats {
                area: 0,
                bbox: None
            }
        );
        // Against the per-pixel definition on a sparse pseudo-random mask with empty rows.
        let (w, h) = (37, 23);
        let m: Vec<f32> = (0..w * h)
            .map(|i| if (i * 7919) % 97 < 5 { 1.0 } else { -1.0 })
            .collect();
        let fg: Vec<(usize, usize)> = (0..w * h)
            .filter(|&i| m[i] > 0.0)
            .map(|i| (i % w, i / w))
            .collect();
        let want = MaskStats {
            area: fg.len(),
            bbox: Some([
                fg.iter().map(|p| p.0).min().unwrap(),
                fg.iter().map(|p| p.1).min().unwrap(),
                fg.iter().map(|p| p.0).max().unwrap() + 1,
                fg.iter().map(|p| p.1).max().unwrap() + 1,
            ]),
        };
        assert_eq!(mask_stats(&m, w, h), want);
    }

    #[test]
    fn mask_png_round_trips() {
        let m = [1.0, -1.0, 0.0, 5.0, -0.1, 0.01];
        let png = mask_png(&m, 3, 2);
        let img = ::image::load_from_memory(&png).unwrap();
        assert_eq!(img.color(), ::image::ColorType::L8);
        assert_eq!(img.as_bytes(), &[255, 0, 0, 255, 0, 255]);
    }

    #[test]
    fn overlay_colours_and_outline() {
        let img = RgbImage::from_pixel(5, 5, ::image::Rgb([100, 100, 100]));
        let mut a = vec![-1.0f32; 25];
        for y in 1..4 {
            for x in 1..4 {
                a[y * 5 + x] = 1.0;
            }
        }
        let mut b = vec![-1.0f32; 25];
        b[0] = 1.0;
        let png = overlay_png(&img, &[&a, &b]);
        let out = ::image::load_from_memory(&png).unwrap().to_rgb8();
        // Centre of mask 0: blended; its border: solid outline; mask 1 is 1 px: outline.
        let c0 = palette(0);
        let blend = |c: u8| (100 + u16::from(c)).div_ceil(2) as u8;
        assert_eq!(out.get_pixel(2, 2).0, c0.map(blend));
        assert_eq!(out.get_pixel(1, 2).0, c0);
        assert_eq!(out.get_pixel(0, 0).0, palette(1));
        assert_eq!(out.get_pixel(4, 4).0, [100, 100, 100]);
        assert_ne!(palette(0), palette(1));
        assert_eq!(palette(20), palette(0));
    }
}
