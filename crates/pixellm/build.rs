//! Build script: with the `default-model` feature, checks that the shipped model's files
//! are present (`models/pixellm-shapes/` at the workspace root) and tells `rustc` where
//! they are, so `pixellm::default_model` can compile them in.

use std::path::PathBuf;

/// The files `default_model` embeds, relative to the model folder.
const FILES: [&str; 8] = [
    "config.json",
    "tokenizer.model",
    "added_tokens.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors",
    "vision_tower/config.json",
    "vision_tower/model.safetensors",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pixellm_default_model)");
    if std::env::var_os("CARGO_FEATURE_DEFAULT_MODEL").is_none() {
        return;
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dir = manifest.join("../../models/pixellm-shapes");
    let mut missing = Vec::new();
    for f in FILES {
        let p = dir.join(f);
        println!("cargo::rerun-if-changed={}", p.display());
        if !p.is_file() {
            missing.push(f);
        }
    }
    if missing.is_empty() {
        println!("cargo::rustc-cfg=pixellm_default_model");
        println!(
            "cargo::rustc-env=PIXELLM_DEFAULT_MODEL_DIR={}",
            dir.canonicalize().expect("the folder exists").display()
        );
    } else {
        println!(
            "cargo::warning=default-model: {} missing under {}; this build has no built-in model",
            missing.join(", "),
            dir.display()
        );
    }
}
