//! `postprocess_masks`: the decoder's low-resolution logits to logits at the original image
//! size (`docs/model.md` §10.5, quirk §15.24). The host half (foreground at logit > 0, the
//! mask score, area, box and PNGs) is `image::masks`.

use burn::tensor::{DType, Device, Tensor};

use super::interpolate;
use super::nn;

/// Bilinear to the run resolution `image_size`, crop the un-padded `resized` area, bilinear
/// to `original`, all in f32, as the official order does (128 → S before the crop). The
/// three steps fold into one row and one column matrix.
///
/// # Shapes
/// `[N, 1, 128, 128]` -> `[N, 1, H0, W0]`
pub fn masks(
    low_res: Tensor<4>,
    image_size: usize,
    resized: (usize, usize),
    original: (usize, usize),
    device: &Device,
) -> Tensor<4> {
    let [_, _, lh, lw] = low_res.dims();
    let fold = |low: usize, crop: usize, orig: usize| {
        let up = interpolate::bilinear_weights(low, image_size);
        let down = interpolate::bilinear_weights(crop, orig);
        interpolate::compose(&down, &up[..crop * low], orig, crop, low)
    };
    interpolate::resize_with(
        nn::to_f32(low_res),
        fold(lh, resized.0, original.0),
        fold(lw, resized.1, original.1),
        original,
        device,
        DType::F32,
    )
}
