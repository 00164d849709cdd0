//! PixelLM inference on Burn: a CLIP ViT-L/14 vision tower at 448 px, a LLaMA language
//! model, a 6-token segmentation codebook and a SAM-style two-level pixel decoder, loaded
//! from the released checkpoints and run on whichever Burn device the caller picks.
//!
//! Data flows one way: bytes ([`weights`], [`tokenizer`], [`image`]) -> tensors
//! ([`model`]) -> masks ([`pipeline`]). The model is backend-free: how each op runs on
//! the chosen backend (CPU kernels, CUDA f32 products, Burn's ops) is [`kernels`]' choice.
#![warn(missing_docs)]

pub mod backend;
pub mod chat;
pub mod config;
pub mod data;
pub mod default_model;
pub mod error;
pub mod eval;
pub mod generate;
pub mod image;
pub mod kernels;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod tokenizer;
#[cfg(feature = "train")]
pub mod train;
pub mod weights;

pub use error::{Error, Result};
pub use kernels::quant::Quant;
pub use pipeline::{EncodedImage, PixelLm, Progress, SegmentRequest, Segmentation, Target};
