//! Image decoding to RGB8, matching what the reference's `cv2.imread(path)` +
//! `cv2.cvtColor(BGR2RGB)` hands to the model.
//!
//! Conversions follow OpenCV's `IMREAD_COLOR` (the default flag):
//! * EXIF orientation is applied (JPEG APP1, PNG `eXIf`, WebP `EXIF`); an unreadable
//!   EXIF block is ignored, as OpenCV does.
//! * Alpha is dropped without compositing (libpng `png_set_strip_alpha`), so a
//!   transparent pixel keeps its stored colour.
//! * Grey is replicated to three channels.
//! * 16-bit samples keep their high byte (`v >> 8`): OpenCV asks libpng for
//!   `png_set_strip_16`, which since libpng 1.5.4 chops the low byte rather than
//!   rounding. (The `image` crate's own `to_rgb8` would round, `(v + 128) / 257`,
//!   which differs for about half of all values.)
//!
//! Untrusted input is bounded: the header is parsed first and an image whose
//! dimensions exceed [`DecodeLimits`] is refused before its pixel buffer exists.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Seek, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageDecoder, ImageError, ImageReader, Limits, RgbImage};

use crate::error::{Error, Result};

/// Size limits checked against the image header before anything is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted width and height, in pixels.
    pub max_side: u32,
    /// Largest accepted `width × height`.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    /// 32768 px per side and 2^28 pixels (a 16384×16384 square, or a 200 MP photo);
    /// decoding such an image needs about 2 GiB at peak.
    fn default() -> Self {
        DecodeLimits {
            max_side: 32768,
            max_pixels: 1 << 28,
        }
    }
}

impl DecodeLimits {
    /// The `image` crate's limits for these bounds. `max_alloc` leaves room for the
    /// largest decode buffer (RGBA, 16 bit) plus decoder working memory.
    fn to_image_limits(self) -> Limits {
        let mut l = Limits::default();
        l.max_image_width = Some(self.max_side);
        l.max_image_height = Some(self.max_side);
        l.max_alloc = Some(self.max_pixels.saturating_mul(8).saturating_add(64 << 20));
        l
    }
}

fn image_error(label: &str, msg: impl Into<String>) -> Error {
    Error::Image {
        file: label.to_string(),
        msg: msg.into(),
    }
}

/// One-line description of a decoder failure, saying which kind it was.
fn describe(e: &ImageError, limits: &DecodeLimits) -> String {
    match e {
        ImageError::Limits(_) => format!(
            "image is too large to decode (limit {} px per side, {} pixels): {e}",
            limits.max_side, limits.max_pixels
        ),
        ImageError::Unsupported(_) => format!("unsupported image: {e}"),
        ImageError::Decoding(_) => format!("corrupt or truncated image: {e}"),
        ImageError::IoError(_) => format!("cannot read image data (truncated?): {e}"),
        _ => e.to_string(),
    }
}

/// Decodes a PNG, JPEG, WebP or BMP held in memory to RGB8, with EXIF orientation
/// applied and the default [`DecodeLimits`]. `label` names the source in errors.
///
/// # Errors
///
/// [`Error::Image`] for empty input, an unrecognised or unsupported format,
/// zero or over-limit dimensions, and corrupt or truncated data.
pub fn decode_image(bytes: &[u8], label: &str) -> Result<RgbImage> {
    decode_image_with_limits(bytes, label, &DecodeLimits::default())
}

/// [`decode_image`] with explicit size limits.
///
/// # Errors
///
/// As [`decode_image`].
pub fn decode_image_with_limits(
    bytes: &[u8],
    label: &str,
    limits: &DecodeLimits,
) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(image_error(label, "file is empty"));
    }
    decode_reader(Cursor::new(bytes), label, limits)
}

/// Reads and decodes an image file (see [`decode_image`]), streaming from disk so
/// that a huge file is rejected from its header alone.
///
/// # Errors
///
/// [`Error::Io`] if the file cannot be opened, otherwise as [`decode_image`].
pub fn load_image(path: &Path) -> Result<RgbImage> {
    load_image_with_limits(path, &DecodeLimits::default())
}

/// [`load_image`] with explicit size limits.
///
/// # Errors
///
/// As [`load_image`].
pub fn load_image_with_limits(path: &Path, limits: &DecodeLimits) -> Result<RgbImage> {
    let label = path.display().to_string();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Err(image_error(&label, "file is empty"));
    }
    decode_reader(BufReader::new(file), &label, limits)
}

fn decode_reader<R: BufRead + Seek>(
    reader: R,
    label: &str,
    limits: &DecodeLimits,
) -> Result<RgbImage> {
    // The decoders are fuzzed, but this is the boundary with untrusted bytes: a bug
    // in one must surface as an error naming the file, not abort the caller.
    catch_unwind(AssertUnwindSafe(|| decode_inner(reader, label, limits))).unwrap_or_else(|_| {
        Err(image_error(
            label,
            "the image decoder panicked on this input (corrupt file?)",
        ))
    })
}

fn decode_inner<R: BufRead + Seek>(
    mut reader: R,
    label: &str,
    limits: &DecodeLimits,
) -> Result<RgbImage> {
    // Checked now, reported after the size checks (a decompression bomb is "too large").
    let truncated_jpeg = jpeg_truncation(&mut reader, label)?;
    let mut reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(|e| image_error(label, format!("cannot read: {e}")))?;
    if reader.format().is_none() {
        return Err(image_error(
            label,
            "not a PNG, JPEG, WebP or BMP image (unrecognised signature)",
        ));
    }
    reader.limits(limits.to_image_limits());
    // Only the header has been parsed at this point.
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| image_error(label, describe(&e, limits)))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(image_error(label, format!("image has zero size ({w}x{h})")));
    }
    let pixels = u64::from(w) * u64::from(h);
    if w > limits.max_side || h > limits.max_side || pixels > limits.max_pixels {
        return Err(image_error(
            label,
            format!(
                "image is too large to decode: {w}x{h} ({pixels} pixels; limit {} px per \
                 side, {} pixels)",
                limits.max_side, limits.max_pixels
            ),
        ));
    }
    if let Some(len) = truncated_jpeg {
        return Err(image_error(
            label,
            format!(
                "truncated JPEG: the data ends after {len} bytes without an end-of-image marker"
            ),
        ));
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder)
        .map_err(|e| image_error(label, describe(&e, limits)))?;
    img.apply_orientation(orientation);
    Ok(to_rgb8(img))
}

/// The length of a JPEG whose data stops before its end-of-image marker (`None` for a
/// complete JPEG or another format). The decoder would fill the missing rows with grey
/// and succeed (as libjpeg does, with only a warning): an answer about half an image is
/// worse than an error.
fn jpeg_truncation<R: BufRead + Seek>(reader: &mut R, label: &str) -> Result<Option<usize>> {
    let io = |e: std::io::Error| image_error(label, format!("cannot read: {e}"));
    if reader.fill_buf().map_err(io)?.get(..3) != Some(&[0xFF, 0xD8, 0xFF][..]) {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(io)?;
    reader.seek(SeekFrom::Start(0)).map_err(io)?;
    Ok((!jpeg_is_complete(&bytes)).then_some(bytes.len()))
}

/// Walks the JPEG marker segments and entropy-coded scans from SOI; false only when the
/// bytes run out before EOI (anything else malformed is left to the decoder).
fn jpeg_is_complete(b: &[u8]) -> bool {
    let mut pos = 2;
    loop {
        // Fill bytes (0xFF) may precede a marker.
        while b.get(pos) == Some(&0xFF) && b.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let (Some(&ff), Some(&marker)) = (b.get(pos), b.get(pos + 1)) else {
            return false;
        };
        if ff != 0xFF {
            return true;
        }
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => pos += 2,
            _ => {
                let (Some(&hi), Some(&lo)) = (b.get(pos + 2), b.get(pos + 3)) else {
                    return false;
                };
                pos += 2 + (usize::from(hi) << 8 | usize::from(lo));
                if marker == 0xDA {
                    // Entropy-coded data: 0xFF is stuffed as FF 00; restart markers
                    // (FF D0..D7) stay inside the scan; any other FF xx ends it.
                    loop {
                        match (b.get(pos), b.get(pos + 1)) {
                            (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => pos += 2,
                            (Some(0xFF), Some(_)) => break,
                            (Some(_), Some(_)) => pos += 1,
                            _ => return false,
                        }
                    }
                }
            }
        }
    }
}

/// Keeps the first three channels (or replicates grey) of interleaved samples.
fn expand<T: Copy>(w: u32, h: u32, data: &[T], ch: usize, to_u8: impl Fn(T) -> u8) -> RgbImage {
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    for px in data.chunks_exact(ch) {
        if ch < 3 {
            let g = to_u8(px[0]);
            out.extend_from_slice(&[g, g, g]);
        } else {
            out.extend_from_slice(&[to_u8(px[0]), to_u8(px[1]), to_u8(px[2])]);
        }
    }
    RgbImage::from_raw(w, h, out).expect("w * h * 3 bytes")
}

/// Converts any decoded colour type to RGB8 the way `cv2.imread(IMREAD_COLOR)` does
/// (see the module docs).
fn to_rgb8(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let id = |v: u8| v;
    let hi = |v: u16| (v >> 8) as u8;
    match img {
        DynamicImage::ImageRgb8(b) => b,
        DynamicImage::ImageRgba8(b) => expand(w, h, b.as_raw(), 4, id),
        DynamicImage::ImageLuma8(b) => expand(w, h, b.as_raw(), 1, id),
        DynamicImage::ImageLumaA8(b) => expand(w, h, b.as_raw(), 2, id),
        DynamicImage::ImageRgb16(b) => expand(w, h, b.as_raw(), 3, hi),
        DynamicImage::ImageRgba16(b) => expand(w, h, b.as_raw(), 4, hi),
        DynamicImage::ImageLuma16(b) => expand(w, h, b.as_raw(), 1, hi),
        DynamicImage::ImageLumaA16(b) => expand(w, h, b.as_raw(), 2, hi),
        // Float images come from none of the enabled formats (PNG, JPEG, WebP, BMP).
        other => other.to_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_truncation_is_detected() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| {
            ::image::Rgb([(x * 4) as u8, (y * 5) as u8, 128])
        }));
        let jpg = encode(img, ImageFormat::Jpeg);
        assert!(jpeg_is_complete(&jpg));
        assert!(decode_image(&jpg, "full.jpg").is_ok());
        for cut in [4, 100, jpg.len() / 3, jpg.len() - 2] {
            assert!(!jpeg_is_complete(&jpg[..cut]), "cut at {cut}");
            let msg = decode_image(&jpg[..cut], "cut.jpg")
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("cut.jpg") && msg.contains("truncated"),
                "{msg}"
            );
        }
    }
    use crate::image::fixtures::{case_dir, CASES};
    use ::image::{ImageBuffer, ImageFormat, Luma, LumaA, Rgb, Rgba};

    fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    fn err_msg(r: Result<RgbImage>) -> String {
        match r {
            Err(e @ Error::Image { .. }) => e.to_string(),
            Err(e) => panic!("expected Error::Image, got {e}"),
            Ok(img) => panic!(
                "expected an error, decoded {}x{}",
                img.width(),
                img.height()
            ),
        }
    }

    fn kit_png() -> Vec<u8> {
        std::fs::read(case_dir(CASES[0]).join("image.png")).unwrap()
    }

    #[test]
    fn kit_images_decode_to_case_sizes() {
        for (case, (w, h)) in CASES.iter().zip([(480, 360), (300, 500)]) {
            let img = load_image(&case_dir(case).join("image.png")).unwrap();
            assert_eq!(img.dimensions(), (w, h), "{case}");
        }
    }

    #[test]
    fn grayscale_png_replicates() {
        let g = ImageBuffer::from_fn(3, 2, |x, y| Luma([(x * 50 + y * 7) as u8]));
        let img = decode_image(&encode(g.into(), ImageFormat::Png), "g.png").unwrap();
        assert_eq!(img.dimensions(), (3, 2));
        assert_eq!(img.get_pixel(2, 1).0, [107, 107, 107]);
        let ga = ImageBuffer::from_pixel(2, 2, LumaA([90u8, 0]));
        let img = decode_image(&encode(ga.into(), ImageFormat::Png), "ga.png").unwrap();
        assert_eq!(img.get_pixel(1, 1).0, [90, 90, 90]);
    }

    #[test]
    fn rgba_png_drops_alpha_without_compositing() {
        let rgba = ImageBuffer::from_fn(2, 2, |x, _| Rgba([10, 200, 30, (x * 255) as u8]));
        let img = decode_image(&encode(rgba.into(), ImageFormat::Png), "a.png").unwrap();
        assert!(img.pixels().all(|p| p.0 == [10, 200, 30]));
    }

    #[test]
    fn sixteen_bit_png_keeps_high_byte() {
        // 0x12FF: high byte 0x12 (OpenCV/libpng chop); rounding would give 0x13.
        let rgb16 = ImageBuffer::from_pixel(2, 1, Rgb([0x12FFu16, 0xFFFF, 0x0080]));
        let img = decode_image(&encode(rgb16.into(), ImageFormat::Png), "16.png").unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0x12, 0xFF, 0x00]);
        let g16 = ImageBuffer::from_pixel(1, 1, Luma([0xABCDu16]));
        let img = decode_image(&encode(g16.into(), ImageFormat::Png), "g16.png").unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0xAB; 3]);
    }

    #[test]
    fn one_pixel_and_other_formats() {
        let one = ImageBuffer::from_pixel(1, 1, Rgb([1u8, 2, 3]));
        for fmt in [ImageFormat::Png, ImageFormat::Bmp] {
            let img = decode_image(&encode(one.clone().into(), fmt), "1x1").unwrap();
            assert_eq!(img.dimensions(), (1, 1));
            assert_eq!(img.get_pixel(0, 0).0, [1, 2, 3], "{fmt:?}");
        }
        // Lossless WebP round-trips exactly; JPEG only approximately.
        let img = decode_image(&encode(one.clone().into(), ImageFormat::WebP), "1x1.webp").unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [1, 2, 3]);
        let big = ImageBuffer::from_pixel(16, 8, Rgb([200u8, 40, 40]));
        let img = decode_image(&encode(big.into(), ImageFormat::Jpeg), "x.jpg").unwrap();
        assert_eq!(img.dimensions(), (16, 8));
        let p = img.get_pixel(5, 5).0;
        assert!(p[0] > 180 && p[1] < 70 && p[2] < 70, "{p:?}");
    }

    #[test]
    fn empty_and_garbage_are_errors() {
        let m = err_msg(decode_image(&[], "empty.png"));
        assert!(m.contains("empty.png") && m.contains("empty"), "{m}");
        // Deterministic "random" bytes (xorshift) that match no signature.
        let mut s = 0x9E3779B97F4A7C15u64;
        let junk: Vec<u8> = (0..4096)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect();
        let m = err_msg(decode_image(&junk, "junk.bin"));
        assert!(m.contains("junk.bin") && m.contains("unrecognised"), "{m}");
        let dir = std::env::temp_dir().join(format!("pixellm-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("zero.png");
        std::fs::write(&f, b"").unwrap();
        let m = err_msg(load_image(&f));
        assert!(m.contains("zero.png") && m.contains("empty"), "{m}");
        std::fs::remove_dir_all(&dir).ok();
        assert!(matches!(
            load_image(Path::new("/nonexistent/x.png")),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn truncated_png_is_an_error() {
        let png = kit_png();
        for cut in [png.len() / 2, 40, 8, 3] {
            let m = err_msg(decode_image(&png[..cut], "half.png"));
            assert!(m.contains("half.png"), "{m}");
        }
    }

    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        let mut h = crc32fast::Hasher::new();
        h.update(kind);
        h.update(data);
        c.extend_from_slice(&h.finalize().to_be_bytes());
        c
    }

    fn png_header(w: u32, h: u32) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
        png.extend(chunk(b"IHDR", &ihdr));
        png
    }

    #[test]
    fn decompression_bomb_is_refused_from_the_header() {
        let mut png = png_header(60000, 60000);
        png.extend(chunk(b"IDAT", &[0x78, 0x9c, 1, 2, 3, 4, 5, 6, 7, 8]));
        png.extend_from_slice(&[0xAB; 64]);
        let m = err_msg(decode_image(&png, "bomb.png"));
        assert!(m.contains("bomb.png") && m.contains("too large"), "{m}");

        // Within the side limit but over the pixel budget: our own check trips.
        let limits = DecodeLimits {
            max_side: 100_000,
            max_pixels: 1 << 20,
        };
        let mut png = png_header(4000, 4000);
        png.extend(chunk(b"IDAT", &[0x78, 0x9c, 1, 2, 3]));
        let m = err_msg(decode_image_with_limits(&png, "bomb2.png", &limits));
        assert!(m.contains("4000x4000") && m.contains("too large"), "{m}");
    }

    #[test]
    fn zero_size_png_is_an_error() {
        let mut png = png_header(0, 5);
        png.extend(chunk(b"IDAT", &[0x78, 0x9c, 3, 0, 0, 0, 0, 1]));
        let m = err_msg(decode_image(&png, "zero.png"));
        assert!(m.contains("zero.png"), "{m}");
    }

    /// Builds a JPEG with an EXIF APP1 segment carrying `orientation`.
    fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
        let jpeg = encode(DynamicImage::ImageRgb8(img.clone()), ImageFormat::Jpeg);
        // TIFF (big endian): header, IFD0 with one SHORT entry 0x0112, no next IFD.
        let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
        tiff.extend_from_slice(&1u16.to_be_bytes());
        tiff.extend_from_slice(&0x0112u16.to_be_bytes());
        tiff.extend_from_slice(&3u16.to_be_bytes());
        tiff.extend_from_slice(&1u32.to_be_bytes());
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_be_bytes());
        let mut app1 = b"Exif\x00\x00".to_vec();
        app1.extend(tiff);
        let mut out = jpeg[..2].to_vec(); // SOI
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend(app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied() {
        // 32x16: top half red, bottom half blue.
        let src = RgbImage::from_fn(32, 16, |_, y| {
            if y < 8 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let is_red = |p: [u8; 3]| p[0] > 200 && p[2] < 60;
        let is_blue = |p: [u8; 3]| p[2] > 200 && p[0] < 60;

        let plain = decode_image(&jpeg_with_orientation(&src, 1), "o1.jpg").unwrap();
        assert_eq!(plain.dimensions(), (32, 16));
        assert!(is_red(plain.get_pixel(16, 2).0));

        // 6 = rotate 90° clockwise for display: the top edge ends up on the right.
        let rot = decode_image(&jpeg_with_orientation(&src, 6), "o6.jpg").unwrap();
        assert_eq!(rot.dimensions(), (16, 32));
        assert!(
            is_red(rot.get_pixel(13, 16).0),
            "{:?}",
            rot.get_pixel(13, 16)
        );
        assert!(
            is_blue(rot.get_pixel(2, 16).0),
            "{:?}",
            rot.get_pixel(2, 16)
        );

        // 3 = rotate 180°: the top edge ends up at the bottom.
        let flip = decode_image(&jpeg_with_orientation(&src, 3), "o3.jpg").unwrap();
        assert_eq!(flip.dimensions(), (32, 16));
        assert!(is_blue(flip.get_pixel(16, 2).0) && is_red(flip.get_pixel(16, 13).0));
    }
}
