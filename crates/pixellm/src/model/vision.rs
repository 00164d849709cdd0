//! The CLIP ViT vision tower (HF `CLIPVisionTransformer` as patched by PixelLM), run at
//! 448 px with a key-padding mask.
//!
//! Reference: PixelLM `model/llava/model/multimodal_encoder/clip_encoder.py` (commit
//! `ebf0792`) and transformers 4.31 `modeling_clip.py`. `docs/model.md` §2.6, §5.3.

use burn::tensor::{Bool, Tensor};

use super::interpolate::bilinear_host;
use super::nn::{multi_head_attention, quick_gelu, LayerNorm, Linear};
use super::params::Params;
use crate::config::ClipVisionConfig;
use crate::error::{Error, Result};
use crate::kernels::conv2d;

/// Hidden states the rest of PixelLM reads from the tower, each `[1, 1 + patches, D]`
/// (CLS first).
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// `hidden_states[0]`: embeddings after `pre_layrnorm`.
    pub embeddings: Tensor<3>,
    /// `hidden_states[-11]` (after `L − 10` blocks): the second, shallow scale.
    pub shallow: Tensor<3>,
    /// `hidden_states[-2]` (after `L − 1` blocks, `mm_vision_select_layer`): the deep scale.
    pub deep: Tensor<3>,
}

/// One pre-LN transformer block.
#[derive(Debug, Clone)]
pub struct ClipEncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl ClipEncoderLayer {
    /// The projections are dense or packed as `p`'s quantisation says
    /// (`PixelLmModel::load` gives the tower `Quant::for_vision`).
    fn load(p: &Params, c: &ClipVisionConfig) -> Result<Self> {
        let d = c.hidden_size;
        let attn = p.pp("self_attn");
        let mlp = p.pp("mlp");
        Ok(Self {
            layer_norm1: LayerNorm::load(&p.pp("layer_norm1"), d, c.layer_norm_eps)?,
            q_proj: Linear::load_quantizable(&attn.pp("q_proj"), d, d, true)?,
            k_proj: Linear::load_quantizable(&attn.pp("k_proj"), d, d, true)?,
            v_proj: Linear::load_quantizable(&attn.pp("v_proj"), d, d, true)?,
            out_proj: Linear::load_quantizable(&attn.pp("out_proj"), d, d, true)?,
            layer_norm2: LayerNorm::load(&p.pp("layer_norm2"), d, c.layer_norm_eps)?,
            fc1: Linear::load_quantizable(&mlp.pp("fc1"), d, c.intermediate_size, true)?,
            fc2: Linear::load_quantizable(&mlp.pp("fc2"), c.intermediate_size, d, true)?,
            heads: c.num_attention_heads,
        })
    }

    fn forward(&self, h: Tensor<3>, mask: Option<Tensor<2, Bool>>) -> Tensor<3> {
        let y = self.layer_norm1.forward(h.clone());
        let attn = multi_head_attention(
            self.q_proj.forward(y.clone()),
            self.k_proj.forward(y.clone()),
            self.v_proj.forward(y),
            self.heads,
            mask,
        );
        let h = h + self.out_proj.forward(attn);
        let y = self.layer_norm2.forward(h.clone());
        h + self.fc2.forward(quick_gelu(self.fc1.forward(y)))
    }
}

/// CLIP ViT vision tower with the position table resized at load to the run resolution.
#[derive(Debug, Clone)]
pub struct VisionTower {
    /// `[D, 3, patch, patch]`, no bias.
    patch_embedding: Tensor<4>,
    /// `[D]`.
    class_embedding: Tensor<1>,
    /// `[1 + grid², D]`, already resized (with the official off-by-one, see
    /// [`resize_position_embedding`]).
    position_embedding: Tensor<2>,
    pre_layrnorm: LayerNorm,
    /// Only the blocks up to `hidden_states[-2]`; the last block is never needed.
    layers: Vec<ClipEncoderLayer>,
    patch: usize,
    deep_index: usize,
    shallow_index: usize,
}

impl VisionTower {
    /// Encoder blocks run (and read from the checkpoint): those up to `hidden_states[-2]`.
    pub fn layers_used(&self) -> usize {
        self.layers.len()
    }

    /// Loads the tower from `p`, its own key (`vision_model` of a CLIP checkpoint), and resizes its position embedding so
    /// that `image_size` pixels give `(image_size / patch)²` patches.
    pub fn load(p: &Params, c: &ClipVisionConfig, image_size: usize) -> Result<Self> {
        let emb = p.pp("embeddings");
        let d = c.hidden_size;
        let patch = c.patch_size;
        let layers_total = c.num_hidden_layers;
        if layers_total < 11 {
            return Err(Error::config(
                "vision tower config.json",
                format!("num_hidden_layers = {layers_total}, but PixelLM reads hidden_states[-11], so at least 11 are needed"),
            ));
        }
        if patch == 0 || !image_size.is_multiple_of(patch) || !c.image_size.is_multiple_of(patch) {
            return Err(Error::config(
                "vision tower config.json",
                format!(
                    "patch_size {patch} must divide the image sizes {} and {image_size}",
                    c.image_size
                ),
            ));
        }
        let old_grid = c.image_size / patch;
        let new_grid = image_size / patch;
        let table = [new_grid * new_grid + 1, d];
        // At the tower's own size the official resize is the identity (its off-by-one
        // moves no row): the table is used as stored, on the device, so that training
        // reaches it.
        let position_embedding = if old_grid == new_grid {
            emb.tensor("position_embedding.weight", table)?
        } else {
            let old_pos = emb.host("position_embedding.weight", &[old_grid * old_grid + 1, d])?;
            p.upload(
                resize_position_embedding(&old_pos, d, old_grid, new_grid),
                table,
            )
        };

        // hidden_states has L + 1 entries (index 0 = embeddings).
        let deep_index = layers_total - 1;
        let shallow_index = layers_total - 10;
        let enc = p.pp("encoder").pp("layers");
        let layers = (0..deep_index)
            .map(|i| ClipEncoderLayer::load(&enc.pp(i), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embedding: emb
                .tensor("patch_embedding.weight", [d, c.num_channels, patch, patch])?,
            class_embedding: emb.tensor("class_embedding", [d])?,
            position_embedding,
            pre_layrnorm: LayerNorm::load(&p.pp("pre_layrnorm"), d, c.layer_norm_eps)?,
            layers,
            patch,
            deep_index,
            shallow_index,
        })
    }

    /// The resized position table `[1 + grid², D]` (for tests).
    pub fn position_embedding(&self) -> Tensor<2> {
        self.position_embedding.clone()
    }

    /// # Shapes
    /// - `pixels`: `[1, 3, S, S]`
    /// - `key_padding`: `[1 + (S/patch)²]`, `true` for padded patches (never for CLS)
    pub fn forward(&self, pixels: Tensor<4>, key_padding: Option<Tensor<1, Bool>>) -> VisionOutput {
        let x = conv2d(pixels, &self.patch_embedding, self.patch, 0);
        let [b, d, gh, gw] = x.dims();
        let patches = x.reshape([b, d, gh * gw]).swap_dims(1, 2);
        let cls = self
            .class_embedding
            .clone()
            .reshape([1, 1, d])
            .repeat_dim(0, b);
        let x = Tensor::cat(vec![cls, patches], 1) + self.position_embedding.clone().unsqueeze();
        let embeddings = self.pre_layrnorm.forward(x);

        let n = embeddings.dims()[1];
        let mask = key_padding.map(|m| m.reshape([1, n]).expand([b, n]));
        let mut h = embeddings.clone();
        let mut shallow = None;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h, mask.clone());
            if i + 1 == self.shallow_index {
                shallow = Some(h.clone());
            }
        }
        debug_assert_eq!(self.layers.len(), self.deep_index);
        VisionOutput {
            embeddings,
            shallow: shallow.expect("shallow_index is at least 1 and below deep_index"),
            deep: h,
        }
    }
}

/// The official 336 → 448 position-embedding resize, off-by-one included (`docs/model.md`
/// §2.6, §15.1): rows `0..g²` — which start with the CLS row and miss the last patch —
/// are treated as the grid, the *last* row as CLS. The grid is resized bilinearly
/// (align_corners = False, f32) and the old last row is appended.
///
/// `old`: `[g_old² + 1, d]` row-major. Returns `[g_new² + 1, d]`.
pub fn resize_position_embedding(old: &[f32], d: usize, g_old: usize, g_new: usize) -> Vec<f32> {
    let cells = g_old * g_old;
    // [cells, d] -> channel-major [d, g_old, g_old]
    let mut grid = vec![0f32; d * cells];
    for k in 0..cells {
        for c in 0..d {
            grid[c * cells + k] = old[k * d + c];
        }
    }
    let resized = bilinear_host(&grid, d, g_old, g_old, g_new, g_new);
    let new_cells = g_new * g_new;
    let mut out = vec![0f32; (new_cells + 1) * d];
    for k in 0..new_cells {
        for c in 0..d {
            out[k * d + c] = resized[c * new_cells + k];
        }
    }
    out[new_cells * d..].copy_from_slice(&old[cells * d..(cells + 1) * d]);
    out
}
