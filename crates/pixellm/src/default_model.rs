//! The model built into the program (feature `default-model`): `models/pixellm-shapes`, a
//! small PixelLM trained by this project on generated shape scenes (its model card:
//! `models/pixellm-shapes/README.md`). It lets `pixellm segment --image X --prompt Q` work
//! with no download and no `--model`.

use std::collections::BTreeMap;

use burn::tensor::{DType, Device};

use crate::pipeline::PixelLm;
use crate::{Error, Quant, Result};

/// The built-in model's name.
pub const NAME: &str = "pixellm-shapes";

#[cfg(pixellm_default_model)]
macro_rules! file {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!(env!("PIXELLM_DEFAULT_MODEL_DIR"), "/", $name)).as_slice(),
        )
    };
}

/// `(folder, name, bytes)` of every embedded file; empty when the build had no model.
fn files() -> Vec<(&'static str, &'static str, &'static [u8])> {
    #[cfg(pixellm_default_model)]
    {
        let model = [
            file!("config.json"),
            file!("tokenizer.model"),
            file!("added_tokens.json"),
            file!("tokenizer_config.json"),
            file!("special_tokens_map.json"),
            file!("model.safetensors"),
        ];
        let clip = [
            file!("vision_tower/config.json"),
            file!("vision_tower/model.safetensors"),
        ];
        model
            .into_iter()
            .map(|(n, b)| ("model", n, b))
            .chain(
                clip.into_iter()
                    .map(|(n, b)| ("clip", n.trim_start_matches("vision_tower/"), b)),
            )
            .collect()
    }
    #[cfg(not(pixellm_default_model))]
    Vec::new()
}

/// Whether this build carries the model.
pub fn available() -> bool {
    !files().is_empty()
}

/// Loads the built-in model onto `device` in `dtype`, its LLM's matrices held as `quant`
/// says.
pub fn load(device: &Device, dtype: DType, quant: Quant) -> Result<PixelLm> {
    let files = files();
    if files.is_empty() {
        return Err(Error::config(
            "--model",
            "this build has no built-in model (models/pixellm-shapes was missing when it was compiled); pass --model DIR",
        ));
    }
    let (mut model, mut clip) = (BTreeMap::new(), BTreeMap::new());
    for (folder, name, bytes) in files {
        let map = if folder == "model" {
            &mut model
        } else {
            &mut clip
        };
        map.insert(name.to_string(), bytes.to_vec());
    }
    PixelLm::from_memory(model, clip, device, dtype, quant, &mut |_, _| {})
}
