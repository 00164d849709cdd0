//! Pillow-compatible bilinear resampling and SAM's `ResizeLongestSide`.
//!
//! The reference resizes the CLIP input with `PIL.Image.resize((w, h), BILINEAR)`
//! (torchvision on a PIL image). That is not textbook bilinear interpolation: Pillow
//! convolves with a triangle filter whose support is widened by the shrink factor
//! (so downscaling is antialiased), quantises the weights to fixed point and rounds
//! to `u8` between the horizontal and the vertical pass. This file is a port of
//! Pillow's `libImaging/Resample.c` (`precompute_coeffs`, `normalize_coeffs_8bpc`,
//! `ImagingResampleHorizontal_8bpc`, `ImagingResampleVertical_8bpc`,
//! `ImagingResampleInner`) for the bilinear filter, and is bit-exact with it; the
//! conformance goldens check this on a shrink in each orientation.

use ::image::RgbImage;

/// Fractional bits of Pillow's fixed-point weights: 32 bits minus 8 for the pixel
/// value minus 2 of headroom for filters with negative lobes.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bilinear ("triangle") kernel, support 1.
fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Per-output-sample source window and fixed-point weights along one axis.
struct Coeffs {
    /// Weights per output sample (row stride).
    ksize: usize,
    /// `(first source index, number of source samples)` per output sample.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output sample, already in Pillow's fixed point.
    weights: Vec<i32>,
}

/// `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the box
/// `[in0, in1)` of an axis of `in_size` samples resampled to `out_size` samples.
///
/// The arithmetic (f32 box, f64 everything else, C truncating casts) follows the C
/// code operation by operation, because a single differently-rounded weight changes
/// output bytes.
fn precompute_coeffs(in_size: usize, in0: f32, in1: f32, out_size: usize) -> Coeffs {
    let support_base = 1.0; // BILINEAR.support
    let scale = f64::from(in1 - in0) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = support_base * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;

    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C `(int)` truncates toward zero; the clamp to 0 makes that equal to floor.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let (xmin, xmax) = (xmin as usize, xmax.max(0) as usize);

        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bilinear_filter(((x + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for (dst, &kx) in row.iter_mut().zip(&k).take(xmax) {
            let kx = if ww != 0.0 { kx / ww } else { kx };
            let fixed = kx * f64::from(1u32 << PRECISION_BITS);
            *dst = if kx < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

/// Pillow's `clip8`: drop the fraction and saturate to `u8`.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Rounding offset every accumulator starts from (Pillow adds half an LSB up front).
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over the rows `row0 .. row0 + rows` of `src` (`src_w` pixels of
/// `ch` interleaved channels per row).
fn resample_horizontal(
    src: &[u8],
    src_w: usize,
    ch: usize,
    row0: usize,
    rows: usize,
    c: &Coeffs,
) -> Vec<u8> {
    let out_w = c.bounds.len();
    let mut out = vec![0u8; out_w * rows * ch];
    let mut acc = [0i32; 4];
    for yy in 0..rows {
        let line = &src[(yy + row0) * src_w * ch..(yy + row0 + 1) * src_w * ch];
        for (xx, &(xmin, xmax)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + xmax];
            acc[..ch].fill(HALF);
            for (x, &kx) in k.iter().enumerate() {
                let px = &line[(x + xmin) * ch..(x + xmin + 1) * ch];
                for (a, &v) in acc.iter_mut().zip(px) {
                    *a += i32::from(v) * kx;
                }
            }
            let o = (yy * out_w + xx) * ch;
            for (dst, &a) in out[o..o + ch].iter_mut().zip(&acc) {
                *dst = clip8(a);
            }
        }
    }
    out
}

/// Vertical pass: every output row is a weighted sum of whole rows of `src`
/// (`width` pixels of `ch` channels); `c.bounds` index rows of `src`.
fn resample_vertical(src: &[u8], width: usize, ch: usize, c: &Coeffs) -> Vec<u8> {
    let stride = width * ch;
    let out_h = c.bounds.len();
    let mut out = vec![0u8; stride * out_h];
    let mut acc = vec![0i32; stride];
    for (yy, &(ymin, ymax)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + ymax];
        acc.fill(HALF);
        for (y, &ky) in k.iter().enumerate() {
            let line = &src[(y + ymin) * stride..(y + ymin + 1) * stride];
            for (a, &v) in acc.iter_mut().zip(line) {
                *a += i32::from(v) * ky;
            }
        }
        for (dst, &a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *dst = clip8(a);
        }
    }
    out
}

/// Resamples interleaved 8-bit pixels exactly like Pillow's
/// `Image.resize((out_w, out_h), Image.BILINEAR)` on the whole image (default box,
/// no `reducing_gap`).
///
/// `src` holds `src_h` rows of `src_w` pixels with `ch` (1..=4) channels each; the
/// channels are filtered independently (Pillow does not premultiply RGB or L).
///
/// # Panics
///
/// If `ch` is not in `1..=4`, a size is zero, or `src` has the wrong length.
pub fn resize_bilinear_raw(
    src: &[u8],
    src_w: usize,
    src_h: usize,
    ch: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    assert!(
        (1..=4).contains(&ch),
        "resize: {ch} channels (1..=4 supported)"
    );
    assert!(
        src_w > 0 && src_h > 0 && out_w > 0 && out_h > 0,
        "resize: zero size {src_w}x{src_h} -> {out_w}x{out_h}"
    );
    assert_eq!(src.len(), src_w * src_h * ch, "resize: buffer length");

    // The box is (0, 0, src_w, src_h) as f32, like Pillow's `float box[4]`.
    let horiz = precompute_coeffs(src_w, 0.0, src_w as f32, out_w);
    let mut vert = precompute_coeffs(src_h, 0.0, src_h as f32, out_h);
    let need_horizontal = out_w != src_w;
    let need_vertical = out_h != src_h;

    if !need_horizontal && !need_vertical {
        return src.to_vec();
    }
    if !need_horizontal {
        return resample_vertical(src, src_w, ch, &vert);
    }
    // Only the source rows the vertical pass will read get a horizontal pass;
    // the vertical bounds are then made relative to that band.
    let ybox_first = vert.bounds[0].0;
    let (last_min, last_len) = vert.bounds[out_h - 1];
    let ybox_last = last_min + last_len;
    let tmp = resample_horizontal(src, src_w, ch, ybox_first, ybox_last - ybox_first, &horiz);
    if !need_vertical {
        return tmp;
    }
    for b in &mut vert.bounds {
        b.0 -= ybox_first;
    }
    resample_vertical(&tmp, out_w, ch, &vert)
}

/// Pillow-compatible `Image.resize((width, height), BILINEAR)` of an RGB image.
///
/// # Panics
///
/// If a source or target dimension is zero.
pub fn resize_bilinear(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let out = resize_bilinear_raw(img.as_raw(), w, h, 3, width, height);
    RgbImage::from_raw(width as u32, height as u32, out)
        .expect("resize output length is width * height * 3")
}

/// Target size `(h', w')` of SAM's `ResizeLongestSide(target).get_preprocess_shape`:
/// `s = target / max(h0, w0)` in f64, then `floor(h0·s + 0.5)` and `floor(w0·s + 0.5)`.
///
/// The reference would crash on a side that rounds to 0 (an image more than
/// `2·target` times longer than wide); this returns 1 for such a side instead.
pub fn longest_side_size(h0: usize, w0: usize, target: usize) -> (usize, usize) {
    let scale = target as f64 * 1.0 / h0.max(w0) as f64;
    let h = (h0 as f64 * scale + 0.5).floor() as usize;
    let w = (w0 as f64 * scale + 0.5).floor() as usize;
    (h.max(1), w.max(1))
}

/// SAM's `ResizeLongestSide(target).apply_image`: Pillow bilinear resize to
/// [`longest_side_size`]. Shrinks are antialiased, enlargements are plain bilinear,
/// both exactly as Pillow does them.
///
/// # Panics
///
/// If the image or `target` is zero-sized.
pub fn resize_longest_side(img: &RgbImage, target: usize) -> RgbImage {
    let (h, w) = longest_side_size(img.height() as usize, img.width() as usize, target);
    resize_bilinear(img, w, h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::fixtures::{case_dir, golden_f32, CASES};
    use crate::image::{decode::load_image, PIXEL_MEAN, PIXEL_STD};

    #[test]
    fn longest_side_sizes_match_case_json() {
        assert_eq!(longest_side_size(360, 480, 448), (336, 448));
        assert_eq!(longest_side_size(500, 300, 448), (448, 269));
        assert_eq!(longest_side_size(100, 50, 448), (448, 224));
        assert_eq!(longest_side_size(1, 2000, 448), (1, 448));
    }

    /// The uint8 resized image is recoverable from the golden CLIP input as
    /// `round(x·std + mean)`; every byte must match, for both cases.
    #[test]
    fn resize_is_bit_exact_with_pillow_goldens() {
        for case in CASES {
            let dir = case_dir(case);
            let img = load_image(&dir.join("image.png")).unwrap();
            let out = resize_longest_side(&img, 448);
            let (w, h) = (out.width() as usize, out.height() as usize);
            let (px, shape) = golden_f32(case, "clip.pixel_values");
            assert_eq!(shape, vec![1, 3, 448, 448]);
            let mut mismatches = 0;
            for c in 0..3 {
                for y in 0..h {
                    for x in 0..w {
                        let v = px[(c * 448 + y) * 448 + x] as f64;
                        let want = (v * PIXEL_STD[c] as f64 + PIXEL_MEAN[c] as f64).round();
                        let got = out.get_pixel(x as u32, y as u32)[c] as f64;
                        if want != got {
                            mismatches += 1;
                        }
                    }
                }
            }
            assert_eq!(mismatches, 0, "{case}: {mismatches} bytes differ ({w}x{h})");
        }
    }

    #[test]
    fn identity_and_constant_images() {
        let img = RgbImage::from_fn(7, 5, |x, y| ::image::Rgb([x as u8 * 30, y as u8 * 40, 9]));
        assert_eq!(resize_bilinear(&img, 7, 5), img);
        // A constant image stays constant at any scale, both directions.
        let flat = RgbImage::from_pixel(13, 9, ::image::Rgb([200, 17, 255]));
        for (w, h) in [(448, 310), (3, 2), (13, 40), (1, 1)] {
            let out = resize_bilinear(&flat, w, h);
            assert!(out.pixels().all(|p| p.0 == [200, 17, 255]), "{w}x{h}");
        }
    }

    /// Reference values printed by Pillow 13.0.0 (the kit's version):
    /// `Image.frombytes('L', (4, 1), bytes([0, 100, 200, 255])).resize((n, 1), BILINEAR)`.
    #[test]
    fn one_row_matches_pillow() {
        let src = [0u8, 100, 200, 255];
        assert_eq!(
            resize_bilinear_raw(&src, 4, 1, 1, 7, 1),
            [0, 36, 93, 150, 204, 235, 255]
        );
        assert_eq!(resize_bilinear_raw(&src, 4, 1, 1, 2, 1), [71, 209]);
    }

    /// Deterministic test pattern, identical to the Python generator used for
    /// [`PILLOW_HASHES`].
    fn pattern(w: usize, h: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    v.push(((x * 37 + y * 91 + c * 53 + x * y * 7 + (x ^ y) * 13) % 256) as u8);
                }
            }
        }
        v
    }

    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        })
    }

    /// `(w, h, out_w, out_h, FNV-1a of the output bytes)` from Pillow 13.0.0:
    /// `Image.frombytes('RGB', (w, h), pattern).resize((out_w, out_h), BILINEAR)`.
    /// Covers enlargement (which the conformance goldens do not), 1x1 sources,
    /// one-axis-only resizes and strong shrinks.
    const PILLOW_HASHES: [(usize, usize, usize, usize, u64); 11] = [
        (37, 23, 448, 279, 0x9c514268f0e02f0c),
        (5, 3, 448, 269, 0x57a91a030f855de9),
        (1, 1, 448, 448, 0x685a68ba2581d325),
        (480, 360, 448, 336, 0x19cc94539315d6c5),
        (300, 500, 269, 448, 0x1d07769fe21c4af7),
        (1000, 3, 448, 1, 0xa1ebdf20099f2e10),
        (640, 480, 448, 336, 0x7bb6821a8c7467c9),
        (449, 200, 448, 200, 0x0802b87edd771df1),
        (200, 449, 200, 448, 0xbaf887ed7451859b),
        (2, 9, 100, 448, 0x3956f795d97786ee),
        (3000, 2000, 448, 299, 0x161bad71919cd5c4),
    ];

    #[test]
    fn synthetic_images_match_pillow_hashes() {
        for (w, h, ow, oh, want) in PILLOW_HASHES {
            let out = resize_bilinear_raw(&pattern(w, h), w, h, 3, ow, oh);
            assert_eq!(fnv1a(&out), want, "{w}x{h} -> {ow}x{oh}");
        }
    }
}
