//! SAM's `TwoWayTransformer` (depth 2, 8 heads, ReLU MLP 2048, attention downsample 2 —
//! heads and MLP width configurable for smaller models):
//! tokens attend to the image and the image to the tokens (`docs/model.md` §10.2).

use burn::tensor::{activation, Tensor};

use super::nn::{contiguous, multi_head_attention, LayerNorm, Linear};
use super::params::Params;
use crate::error::Result;

/// Widths of a two-way transformer: SAM's are `dim` 256, 8 heads, MLP 2048.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Token and image feature width (`out_dim`).
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP width.
    pub mlp_dim: usize,
}

/// SAM `Attention` with projections to `dim / downsample` channels.
#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl Attention {
    fn load(p: &Params, dim: usize, downsample: usize, heads: usize) -> Result<Self> {
        let inner = dim / downsample;
        Ok(Self {
            q_proj: Linear::load(&p.pp("q_proj"), dim, inner, true)?,
            k_proj: Linear::load(&p.pp("k_proj"), dim, inner, true)?,
            v_proj: Linear::load(&p.pp("v_proj"), dim, inner, true)?,
            out_proj: Linear::load(&p.pp("out_proj"), inner, dim, true)?,
            heads,
        })
    }

    fn forward(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<3> {
        let out = multi_head_attention(
            self.q_proj.forward(q),
            self.k_proj.forward(k),
            self.v_proj.forward(v),
            self.heads,
            None,
        );
        self.out_proj.forward(out)
    }
}

/// `TwoWayAttentionBlock`.
#[derive(Debug, Clone)]
struct Block {
    self_attn: Attention,
    norm1: LayerNorm,
    cross_attn_token_to_image: Attention,
    norm2: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    norm3: LayerNorm,
    norm4: LayerNorm,
    cross_attn_image_to_token: Attention,
    skip_first_layer_pe: bool,
}

impl Block {
    fn load(p: &Params, shape: Shape, skip_first_layer_pe: bool) -> Result<Self> {
        let Shape {
            dim,
            heads,
            mlp_dim,
        } = shape;
        let ln = |name: &str| LayerNorm::load(&p.pp(name), dim, 1e-5);
        let mlp = p.pp("mlp");
        Ok(Self {
            self_attn: Attention::load(&p.pp("self_attn"), dim, 1, heads)?,
            norm1: ln("norm1")?,
            cross_attn_token_to_image: Attention::load(
                &p.pp("cross_attn_token_to_image"),
                dim,
                2,
                heads,
            )?,
            norm2: ln("norm2")?,
            lin1: Linear::load(&mlp.pp("lin1"), dim, mlp_dim, true)?,
            lin2: Linear::load(&mlp.pp("lin2"), mlp_dim, dim, true)?,
            norm3: ln("norm3")?,
            norm4: ln("norm4")?,
            cross_attn_image_to_token: Attention::load(
                &p.pp("cross_attn_image_to_token"),
                dim,
                2,
                heads,
            )?,
            skip_first_layer_pe,
        })
    }

    fn forward(
        &self,
        queries: Tensor<3>,
        keys: Tensor<3>,
        query_pe: &Tensor<3>,
        key_pe: &Tensor<3>,
    ) -> (Tensor<3>, Tensor<3>) {
        // Self attention of the tokens; the first block has no PE and no residual.
        let queries = if self.skip_first_layer_pe {
            self.self_attn
                .forward(queries.clone(), queries.clone(), queries)
        } else {
            let q = queries.clone() + query_pe.clone();
            queries.clone() + self.self_attn.forward(q.clone(), q, queries)
        };
        let queries = self.norm1.forward(queries);

        // Tokens attend to the image.
        let q = queries.clone() + query_pe.clone();
        let k = keys.clone() + key_pe.clone();
        let attn = self
            .cross_attn_token_to_image
            .forward(q, k.clone(), keys.clone());
        let queries = self.norm2.forward(queries + attn);

        let mlp = self
            .lin2
            .forward(activation::relu(self.lin1.forward(queries.clone())));
        let queries = self.norm3.forward(queries + mlp);

        // The image attends to the tokens.
        let q = queries.clone() + query_pe.clone();
        let attn = self
            .cross_attn_image_to_token
            .forward(k, q, queries.clone());
        let keys = self.norm4.forward(keys + attn);
        (queries, keys)
    }
}

/// SAM's two-way transformer.
#[derive(Debug, Clone)]
pub struct TwoWayTransformer {
    layers: Vec<Block>,
    final_attn_token_to_image: Attention,
    norm_final_attn: LayerNorm,
}

impl TwoWayTransformer {
    /// Loads `layers.{0,1}.*`, `final_attn_token_to_image.*`, `norm_final_attn.*` under `p`.
    pub fn load(p: &Params, shape: Shape, depth: usize) -> Result<Self> {
        let layers = (0..depth)
            .map(|i| Block::load(&p.pp("layers").pp(i), shape, i == 0))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            final_attn_token_to_image: Attention::load(
                &p.pp("final_attn_token_to_image"),
                shape.dim,
                2,
                shape.heads,
            )?,
            norm_final_attn: LayerNorm::load(&p.pp("norm_final_attn"), shape.dim, 1e-5)?,
        })
    }

    /// Returns `(tokens [N, T, C], image keys [N, hw, C])`.
    ///
    /// # Shapes
    /// - `image`: `[N, C, h, w]`; `image_pe`: `[N, C, h, w]` or `[1, C, h, w]` (shared)
    /// - `tokens`: `[N, T, C]` (also the query positional encoding)
    pub fn forward(
        &self,
        image: Tensor<4>,
        image_pe: Tensor<4>,
        tokens: Tensor<3>,
    ) -> (Tensor<3>, Tensor<3>) {
        let [n, c, h, w] = image.dims();
        // Row-major once here: every layer adds to and multiplies by these, and a strided
        // operand sends the CPU backend's element-wise ops down a slow generic path.
        let keys = contiguous(image.reshape([n, c, h * w]).swap_dims(1, 2));
        // The positional encoding is the same for every target: transposed once, then
        // stacked (a copy from a broadcast view takes the CPU backend's slow strided path,
        // 4× the time, measured).
        let pe_batch = image_pe.dims()[0];
        let key_pe = contiguous(image_pe.reshape([pe_batch, c, h * w]).swap_dims(1, 2));
        let key_pe = if pe_batch == n {
            key_pe
        } else {
            Tensor::cat(vec![key_pe; n], 0)
        };
        let mut queries = tokens.clone();
        let mut keys = keys;
        for layer in &self.layers {
            (queries, keys) = layer.forward(queries, keys, &tokens, &key_pe);
        }
        let q = queries.clone() + tokens;
        let k = keys.clone() + key_pe;
        let attn = self.final_attn_token_to_image.forward(q, k, keys.clone());
        (self.norm_final_attn.forward(queries + attn), keys)
    }
}
