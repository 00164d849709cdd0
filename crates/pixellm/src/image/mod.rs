//! Host-side image handling: decoding, the CLIP-branch preprocessing of the
//! reference (`chat.py` with `--pad_train_clip_images`), and mask outputs.
//!
//! Everything here is plain Rust on `u8`/`f32` buffers; the model code turns
//! [`ClipInput::pixel_values`] into a tensor.
//!
//! ```no_run
//! # fn main() -> pixellm::error::Result<()> {
//! use pixellm::image::{load_image, preprocess, CLIP_PATCH, CLIP_SIZE};
//! let img = load_image(std::path::Path::new("photo.jpg"))?;
//! let input = preprocess(&img, CLIP_SIZE, CLIP_PATCH)?;
//! assert_eq!(input.pixel_values.len(), 3 * 448 * 448);
//! # Ok(()) }
//! ```

pub mod decode;
pub mod masks;
pub mod preprocess;
pub mod resize;

pub use self::decode::{
    decode_image, decode_image_with_limits, load_image, load_image_with_limits, DecodeLimits,
};
pub use self::masks::{mask_png, mask_score, mask_stats, overlay_png, palette, MaskStats};
pub use self::preprocess::{preprocess, ClipInput};
pub use self::resize::{longest_side_size, resize_bilinear, resize_longest_side};
pub use ::image::RgbImage;

/// Side of the square CLIP input (`resize_vision_tower_size`).
pub const CLIP_SIZE: usize = 448;

/// CLIP ViT-L/14 patch size.
pub const CLIP_PATCH: usize = 14;

/// Per-channel (R, G, B) mean on the 0–255 scale. These are SAM's/ImageNet's
/// constants, not CLIP's: the reference normalises the CLIP input with them.
pub const PIXEL_MEAN: [f32; 3] = [123.675, 116.28, 103.53];

/// Per-channel (R, G, B) standard deviation on the 0–255 scale (SAM/ImageNet).
pub const PIXEL_STD: [f32; 3] = [58.395, 57.12, 57.375];

/// Conformance-kit access shared by the tests of this module.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::{Path, PathBuf};

    use safetensors::{Dtype, SafeTensors};

    /// The kit's cases (`tests/fixtures/conformance/cases/<name>`).
    pub const CASES: [&str; 2] = ["p1_landscape_480x360", "p2_portrait_300x500"];

    pub fn case_dir(case: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/conformance/cases")
            .join(case)
    }

    pub fn case_json(case: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(case_dir(case).join("case.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// A golden tensor as f32 (int64 masks converted) with its shape.
    pub fn golden_f32(case: &str, name: &str) -> (Vec<f32>, Vec<usize>) {
        let bytes = std::fs::read(case_dir(case).join("golden.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(name).unwrap();
        let data = match t.dtype() {
            Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::I64 => t
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            d => panic!("{name}: unexpected dtype {d:?}"),
        };
        (data, t.shape().to_vec())
    }
}
