//! CLIP-branch preprocessing (`docs/model.md` §5.1, §5.2): Pillow-bilinear
//! `ResizeLongestSide`, SAM/ImageNet normalisation, zero padding to a square, and the
//! validity masks of the CLIP patch grid and of the LLM image tokens.

use ::image::RgbImage;

use super::resize::resize_longest_side;
use super::{PIXEL_MEAN, PIXEL_STD};
use crate::error::{Error, Result};

/// The CLIP input for one image and the geometry the rest of the pipeline needs.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipInput {
    /// `[3, size, size]` channel-first: `(pixel − mean) / std` per channel (f32,
    /// SAM/ImageNet constants), zero at the bottom and right outside the resized image.
    pub pixel_values: Vec<f32>,
    /// Size after `ResizeLongestSide`, `(h', w')`.
    pub resized: (usize, usize),
    /// Size of the decoded image, `(H0, W0)`; the masks are produced at this size.
    pub original: (usize, usize),
    /// `[g·g]` row-major over the `g = size / patch` patch grid: a patch is valid
    /// iff its top-left pixel is inside the resized image (`patch·r < h'` and
    /// `patch·c < w'`), so partly covered patches count as valid.
    pub patch_valid: Vec<bool>,
    /// `[(g/2)·(g/2)]` row-major over the LLM image-token grid: nearest
    /// downsampling of `patch_valid`, i.e. token `(j, k)` is valid iff patch
    /// `(2j, 2k)` is.
    pub llm_valid: Vec<bool>,
}

impl ClipInput {
    /// Side of the patch grid (32 for 448 px and 14 px patches).
    pub fn patch_grid(&self) -> usize {
        self.patch_valid.len().isqrt()
    }

    /// Side of the LLM image-token grid (16 for a 32×32 patch grid).
    pub fn llm_grid(&self) -> usize {
        self.llm_valid.len().isqrt()
    }

    /// CLIP key-padding mask `[1 + g·g]`: `true` for the CLS token, then
    /// [`ClipInput::patch_valid`] (golden `clip.attention_mask`).
    pub fn clip_key_mask(&self) -> Vec<bool> {
        std::iter::once(true)
            .chain(self.patch_valid.iter().copied())
            .collect()
    }
}

/// Builds the CLIP input of `img` for a `size`×`size` encoder with `patch`-pixel
/// patches (448 and 14 for PixelLM).
///
/// The arithmetic matches the reference bit for bit: Pillow bilinear resize to
/// `uint8`, then `(x − mean) / std` in f32 with the constants rounded to f32, as
/// PyTorch computes it.
///
/// # Errors
///
/// [`Error::Image`] if the image is empty, or if `size` is not a multiple of
/// `patch` or the patch grid side is odd (the LLM grid halves it).
pub fn preprocess(img: &RgbImage, size: usize, patch: usize) -> Result<ClipInput> {
    let bad = |msg: String| Error::Image {
        file: "<preprocess>".to_string(),
        msg,
    };
    let (h0, w0) = (img.height() as usize, img.width() as usize);
    if h0 == 0 || w0 == 0 {
        return Err(bad(format!("image has zero size ({w0}x{h0})")));
    }
    if patch == 0 || size == 0 || !size.is_multiple_of(patch) || !(size / patch).is_multiple_of(2) {
        return Err(bad(format!(
            "CLIP size {size} must be a positive multiple of patch {patch} with an even \
             patch grid"
        )));
    }
    let grid = size / patch;
    let llm_grid = grid / 2;

    let resized = resize_longest_side(img, size);
    let (h, w) = (resized.height() as usize, resized.width() as usize);

    let mut pixel_values = vec![0f32; 3 * size * size];
    let (mean, std) = (PIXEL_MEAN, PIXEL_STD);
    for (y, row) in resized.as_raw().chunks_exact(w * 3).enumerate() {
        for (x, px) in row.chunks_exact(3).enumerate() {
            for c in 0..3 {
                pixel_values[(c * size + y) * size + x] = (f32::from(px[c]) - mean[c]) / std[c];
            }
        }
    }

    let patch_valid = (0..grid * grid)
        .map(|i| (i / grid) * patch < h && (i % grid) * patch < w)
        .collect();
    let llm_valid = (0..llm_grid * llm_grid)
        .map(|i| (i / llm_grid) * 2 * patch < h && (i % llm_grid) * 2 * patch < w)
        .collect();

    Ok(ClipInput {
        pixel_values,
        resized: (h, w),
        original: (h0, w0),
        patch_valid,
        llm_valid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::decode::load_image;
    use crate::image::fixtures::{case_dir, case_json, golden_f32, CASES};

    #[test]
    fn pixel_values_and_masks_match_goldens() {
        for case in CASES {
            let img = load_image(&case_dir(case).join("image.png")).unwrap();
            let input = preprocess(&img, 448, 14).unwrap();
            let meta = case_json(case);
            let im = &meta["image"];
            let dim = |k: &str| im[k].as_u64().unwrap() as usize;
            assert_eq!(input.original, (dim("height"), dim("width")), "{case}");
            assert_eq!(
                input.resized,
                (dim("clip_resized_height"), dim("clip_resized_width")),
                "{case}"
            );

            let (golden, shape) = golden_f32(case, "clip.pixel_values");
            assert_eq!(shape, vec![1, 3, 448, 448]);
            let max_diff = golden
                .iter()
                .zip(&input.pixel_values)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(max_diff <= 1e-6, "{case}: max |diff| {max_diff}");
            let exact = golden
                .iter()
                .zip(&input.pixel_values)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(exact, "{case}: not bit-identical (max |diff| {max_diff})");

            let (mask, _) = golden_f32(case, "clip.attention_mask");
            let want: Vec<bool> = mask.iter().map(|&v| v != 0.0).collect();
            assert_eq!(input.clip_key_mask(), want, "{case}");
            assert_eq!(input.patch_grid(), 32);

            let grid = &meta["clip_valid_patch_grid"];
            let rows = grid["rows"].as_u64().unwrap() as usize;
            let cols = grid["cols"].as_u64().unwrap() as usize;
            let valid = input.patch_valid.iter().filter(|&&v| v).count();
            assert_eq!(valid, rows * cols, "{case}");

            let pos = meta["image_token_position"].as_u64().unwrap() as usize;
            let (am, _) = golden_f32(case, "llm.prompt.attention_mask");
            let want: Vec<bool> = am[pos..pos + 256].iter().map(|&v| v != 0.0).collect();
            assert_eq!(input.llm_valid, want, "{case}");
            assert_eq!(input.llm_grid(), 16);
        }
    }

    #[test]
    fn small_image_is_upscaled_and_masks_cover_it() {
        let img = RgbImage::from_pixel(30, 10, ::image::Rgb([124, 116, 104]));
        let input = preprocess(&img, 448, 14).unwrap();
        assert_eq!(input.resized, (149, 448));
        // 149 rows: patches 0..=10 start inside (14·10 = 140 < 149), 11 does not.
        for r in 0..32 {
            assert_eq!(input.patch_valid[r * 32], r <= 10, "row {r}");
        }
        for j in 0..16 {
            assert_eq!(input.llm_valid[j * 16 + 15], j <= 5, "row {j}");
        }
        // Zero padding below the image, normalised values inside it.
        assert_eq!(input.pixel_values[149 * 448], 0.0);
        let want = (124f32 - 123.675) / 58.395;
        assert_eq!(input.pixel_values[148 * 448 + 447], want);
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let img = RgbImage::from_pixel(4, 4, ::image::Rgb([0, 0, 0]));
        assert!(preprocess(&img, 448, 13).is_err());
        assert!(preprocess(&img, 448, 0).is_err());
        assert!(preprocess(&img, 14 * 3, 14).is_err());
        let tiny = preprocess(&img, 28, 14).unwrap();
        assert_eq!((tiny.patch_valid.len(), tiny.llm_valid.len()), (4, 1));
    }
}
