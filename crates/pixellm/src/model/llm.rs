//! The LLaMA language model (transformers 4.31 `LlamaModel` + `lm_head`), with a KV cache
//! kept outside the weights.
//!
//! `docs/model.md` §7. Grouped-query attention, RoPE θ and tied embeddings are
//! configuration, not copies, so the same code runs PixelLM's Vicuna/LLaMA-2 and other
//! LLaMA-architecture models.

use burn::tensor::{Bool, Device, Int, Tensor};

use super::nn::{merge_heads, split_heads, swiglu, Embedding, FusedLinear, Linear, RmsNorm};
use super::params::Params;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::kernels::attention;

/// RoPE cos/sin tables `[max_positions, head_dim]`, NeoX half-rotation layout.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl Rope {
    /// Builds the tables as transformers does: `inv_freq = 1 / θ^(2i/d)` and
    /// `t · inv_freq` in f32, the 64 frequencies repeated to cover the head.
    pub fn new(p: &Params, head_dim: usize, theta: f64, max_positions: usize) -> Self {
        let half = head_dim / 2;
        // f32 throughout, as torch computes `1 / base ** (arange(0, d, 2).float() / d)`.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_positions * head_dim);
        let mut sin = Vec::with_capacity(max_positions * head_dim);
        for pos in 0..max_positions {
            let t = pos as f32;
            for _ in 0..2 {
                for f in &inv_freq {
                    let a = t * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        Self {
            cos: p.upload(cos, [max_positions, head_dim]),
            sin: p.upload(sin, [max_positions, head_dim]),
        }
    }

    /// Rotates `x` (`[B, heads, n, d]`) for positions `start..start + n`.
    pub fn apply(&self, x: Tensor<4>, start: usize) -> Tensor<4> {
        crate::kernels::rope(x, &self.cos, &self.sin, start)
    }
}

/// Keys and values of every layer for positions `0..len`, preallocated to `capacity` so a
/// decode step writes in place instead of re-concatenating the history.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor<4>>,
    values: Vec<Tensor<4>>,
    /// `[capacity]`, `true` for positions hidden from every query (padded image tokens).
    key_padding: Option<Tensor<1, Bool>>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// An empty cache for `capacity` positions. `key_padding[i]` hides position `i` as a key
    /// (PixelLM masks the padded image tokens, `docs/model.md` §6.2); positions past its end
    /// are visible.
    pub fn new(
        config: &LlamaConfig,
        capacity: usize,
        key_padding: &[bool],
        device: &Device,
        dtype: burn::tensor::DType,
    ) -> Result<Self> {
        if capacity > config.max_position_embeddings {
            return Err(Error::Prompt(format!(
                "{capacity} positions exceed the model's context of {} (max_position_embeddings)",
                config.max_position_embeddings
            )));
        }
        let shape = [1, config.num_key_value_heads, capacity, config.head_dim()];
        let zeros = || Tensor::<4>::zeros(shape, (device, dtype));
        let key_padding = key_padding.iter().any(|&b| b).then(|| {
            let mut mask = vec![false; capacity];
            let n = key_padding.len().min(capacity);
            mask[..n].copy_from_slice(&key_padding[..n]);
            crate::kernels::upload_mask(mask, [capacity], device)
        });
        Ok(Self {
            keys: (0..config.num_hidden_layers).map(|_| zeros()).collect(),
            values: (0..config.num_hidden_layers).map(|_| zeros()).collect(),
            key_padding,
            len: 0,
            capacity,
        })
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can still take.
    pub fn remaining(&self) -> usize {
        self.capacity - self.len
    }

    /// Forgets every cached position (the allocation is kept).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Writes RoPE(`k`) and `v` (`[1, kv_heads, n, d]`, `k` not yet rotated) of `layer` at
    /// positions `len..len + n` and returns the keys and values of positions `0..len + n`.
    fn append(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
        rope: &Rope,
    ) -> (Tensor<4>, Tensor<4>) {
        let n = k.dims()[2];
        let (start, end) = (self.len, self.len + n);
        // Taken out (a cheap handle stands in) so the write can happen in place.
        let keys = std::mem::replace(&mut self.keys[layer], k.clone());
        let values = std::mem::replace(&mut self.values[layer], v.clone());
        let (keys, values) =
            crate::kernels::rope_kv_write(keys, values, k, v, &rope.cos, &rope.sin, start);
        self.keys[layer] = keys;
        self.values[layer] = values;
        (
            self.keys[layer].clone().narrow(2, 0, end),
            self.values[layer].clone().narrow(2, 0, end),
        )
    }
}

/// LLaMA attention.
#[derive(Debug, Clone)]
pub struct LlamaAttention {
    /// `q_proj`, `k_proj`, `v_proj`, stacked.
    qkv_proj: FusedLinear<3>,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
}

/// LLaMA SwiGLU MLP.
#[derive(Debug, Clone)]
pub struct LlamaMlp {
    /// `gate_proj`, `up_proj`, stacked.
    gate_up_proj: FusedLinear<2>,
    down_proj: Linear,
}

/// One decoder layer (pre-RMSNorm attention and MLP).
#[derive(Debug, Clone)]
pub struct LlamaDecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: LlamaAttention,
    post_attention_layernorm: RmsNorm,
    mlp: LlamaMlp,
}

impl LlamaDecoderLayer {
    fn load(p: &Params, c: &LlamaConfig) -> Result<Self> {
        let (h, hd) = (c.hidden_size, c.head_dim());
        let kv = c.num_key_value_heads * hd;
        let a = p.pp("self_attn");
        let m = p.pp("mlp");
        Ok(Self {
            input_layernorm: RmsNorm::load(&p.pp("input_layernorm"), h, c.rms_norm_eps)?,
            self_attn: LlamaAttention {
                qkv_proj: FusedLinear::new([
                    Linear::load_quantizable(&a.pp("q_proj"), h, h, false)?,
                    Linear::load_quantizable(&a.pp("k_proj"), h, kv, false)?,
                    Linear::load_quantizable(&a.pp("v_proj"), h, kv, false)?,
                ]),
                o_proj: Linear::load_quantizable(&a.pp("o_proj"), h, h, false)?,
                heads: c.num_attention_heads,
                kv_heads: c.num_key_value_heads,
            },
            post_attention_layernorm: RmsNorm::load(
                &p.pp("post_attention_layernorm"),
                h,
                c.rms_norm_eps,
            )?,
            mlp: LlamaMlp {
                gate_up_proj: FusedLinear::new([
                    Linear::load_quantizable(&m.pp("gate_proj"), h, c.intermediate_size, false)?,
                    Linear::load_quantizable(&m.pp("up_proj"), h, c.intermediate_size, false)?,
                ]),
                down_proj: Linear::load_quantizable(
                    &m.pp("down_proj"),
                    c.intermediate_size,
                    h,
                    false,
                )?,
            },
        })
    }

    /// `mask`: the cache's key padding over the keys this step sees (`[1, len + n]`).
    fn forward(
        &self,
        x: Tensor<3>,
        layer: usize,
        rope: &Rope,
        cache: &mut KvCache,
        mask: Option<&Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let a = &self.self_attn;
        let y = self.input_layernorm.forward(x.clone());
        let start = cache.len;
        let n = y.dims()[1];
        let [q, k, v] = a.qkv_proj.forward(y);
        let q = rope.apply(split_heads(q, a.heads), start);
        let (k, v) = cache.append(
            layer,
            split_heads(k, a.kv_heads),
            split_heads(v, a.kv_heads),
            rope,
        );
        // Causal, bottom-right aligned: a decode step (n = 1) sees every cached key, so it
        // needs no causal mask (which Burn's attention would build and upload every layer).
        let out = attention(q, k, v, mask.cloned(), n > 1);
        let x = a.o_proj.forward_residual(merge_heads(out), x);
        let y = self.post_attention_layernorm.forward(x.clone());
        let m = &self.mlp;
        let [gate, up] = m.gate_up_proj.forward(y);
        let hidden = swiglu(gate, up);
        m.down_proj.forward_residual(hidden, x)
    }
}

/// LLaMA decoder stack, final norm and LM head.
#[derive(Debug, Clone)]
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<LlamaDecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    config: LlamaConfig,
    /// The activations' dtype (a packed embedding's rows are unpacked into it).
    dtype: burn::tensor::DType,
}

impl Llama {
    /// Loads `model.embed_tokens`, `model.layers.*`, `model.norm` and `lm_head` (or the
    /// tied embedding) from `p` (the checkpoint root).
    pub fn load(p: &Params, c: &LlamaConfig) -> Result<Self> {
        let m = p.pp("model");
        // The embedding and LM head stay at 8 bits under `q4` (`Quant::for_output`).
        fn output(p: Params<'_>) -> Params<'_> {
            let quant = p.quant().for_output();
            p.with_quant(quant)
        }
        // The embedding stays dense where packed rows cannot be looked up on the host (GPU
        // backends: a lookup would unpack the whole table on the device each step).
        fn lookup(p: Params<'_>) -> Params<'_> {
            if crate::kernels::host_packed_on(p.device()) {
                output(p)
            } else {
                p.with_quant(crate::Quant::None)
            }
        }
        let embed_tokens =
            Embedding::load(&lookup(m.pp("embed_tokens")), c.vocab_size, c.hidden_size)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| LlamaDecoderLayer::load(&m.pp("layers").pp(i), c))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if c.tie_word_embeddings && !p.contains("lm_head.weight") {
            Linear {
                weight: embed_tokens.weight.clone(),
                bias: None,
            }
        } else {
            Linear::load_quantizable(&output(p.pp("lm_head")), c.hidden_size, c.vocab_size, false)?
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm: RmsNorm::load(&m.pp("norm"), c.hidden_size, c.rms_norm_eps)?,
            lm_head,
            rope: Rope::new(p, c.head_dim(), c.rope_theta, c.max_position_embeddings),
            config: c.clone(),
            dtype: p.dtype(),
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Token embeddings.
    ///
    /// # Shapes
    /// ids `[n]` -> `[1, n, H]`
    pub fn embed(&self, ids: &[i64], device: &Device) -> Tensor<3> {
        self.embed_tokens
            .forward(ids, device, self.dtype)
            .unsqueeze()
    }

    /// The embedding of one token whose id is already on the device (`id_on_device`, `[1]`,
    /// holding `id`): the decode step's input, with no upload.
    ///
    /// # Shapes
    /// -> `[1, 1, H]`
    pub fn embed_on_device(&self, id_on_device: Tensor<1, Int>, id: i64) -> Tensor<3> {
        self.embed_tokens
            .forward_on_device(id_on_device, &[id], self.dtype)
            .unsqueeze()
    }

    /// Runs `embeds` (`[1, n, H]`) at positions `cache.len()..cache.len() + n` and returns the
    /// final-norm hidden states `[1, n, H]` (what PixelLM's segmentation head reads).
    pub fn forward(&self, embeds: Tensor<3>, cache: &mut KvCache) -> Result<Tensor<3>> {
        let n = embeds.dims()[1];
        if n > cache.remaining() {
            return Err(Error::Prompt(format!(
                "{} positions exceed the cache capacity of {}",
                cache.len() + n,
                cache.capacity
            )));
        }
        // The key padding over the keys this step sees, sliced once for every layer.
        let total = cache.len + n;
        let mask = cache
            .key_padding
            .as_ref()
            .map(|m| m.clone().narrow(0, 0, total).reshape([1, total]));
        let mut h = embeds;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h, i, &self.rope, cache, mask.as_ref());
        }
        cache.len += n;
        Ok(self.norm.forward(h))
    }

    /// Vocabulary logits of final-norm hidden states.
    ///
    /// # Shapes
    /// `[.., H]` -> `[.., V]`
    pub fn logits<const D: usize>(&self, h: Tensor<D>) -> Tensor<D> {
        self.lm_head.forward(h)
    }
}

#[cfg(all(test, feature = "cpu", not(target_family = "wasm")))]
mod tests {
    use burn::tensor::{DType, Device, Tensor, TensorData};

    use super::*;

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    fn config() -> LlamaConfig {
        LlamaConfig {
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            vocab_size: 40,
            max_position_embeddings: 64,
            tie_word_embeddings: false,
        }
    }

    #[test]
    fn rope_rotates_each_half_pair_by_position_times_frequency() {
        let device = Device::flex();
        let p = Params::random(&device, DType::F32);
        let (d, theta) = (8usize, 10000.0f64);
        let rope = Rope::new(&p, d, theta, 16);
        let x: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let t = Tensor::<4>::from_data(TensorData::new(x.clone(), [1, 1, 2, d]), &device);
        let got = host(rope.apply(t, 5));
        // NeoX layout: (x_i, x_{i + d/2}) rotate by angle pos / θ^(2i/d), in f64.
        for row in 0..2 {
            let pos = (5 + row) as f64;
            for i in 0..d / 2 {
                let a = pos / theta.powf(2.0 * i as f64 / d as f64);
                let (x1, x2) = (x[row * d + i] as f64, x[row * d + i + d / 2] as f64);
                let want = [x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin()];
                let have = [got[row * d + i] as f64, got[row * d + i + d / 2] as f64];
                for (w, h) in want.iter().zip(have) {
                    assert!((w - h).abs() < 1e-5, "row {row} pair {i}: {h} vs {w}");
                }
            }
        }
    }

    #[test]
    fn rope_scores_depend_only_on_relative_position() {
        let device = Device::flex();
        let p = Params::random(&device, DType::F32);
        let d = 8;
        let rope = Rope::new(&p, d, 10000.0, 32);
        let vec = |seed: f32| {
            let v: Vec<f32> = (0..d).map(|i| (i as f32 * seed).cos()).collect();
            Tensor::<4>::from_data(TensorData::new(v, [1, 1, 1, d]), &device)
        };
        let score = |m: usize, n: usize| {
            let q = host(rope.apply(vec(0.7), m));
            let k = host(rope.apply(vec(1.3), n));
            q.iter().zip(&k).map(|(a, b)| a * b).sum::<f32>()
        };
        assert!((score(3, 1) - score(12, 10)).abs() < 1e-4);
        assert!((score(0, 0) - score(20, 20)).abs() < 1e-4);
        assert!(
            (score(3, 1) - score(3, 2)).abs() > 1e-3,
            "positions must matter"
        );
    }

    #[test]
    fn kv_cache_prefill_then_decode_equals_one_pass_and_reset_reuses_it() {
        let device = Device::flex();
        let c = config();
        let p = Params::random(&device, DType::F32);
        let llm = Llama::load(&p, &c).unwrap();
        let ids = [3i64, 17, 5, 29, 11, 2];
        let whole = {
            let mut cache = KvCache::new(&c, 8, &[], &device, DType::F32).unwrap();
            host(llm.forward(llm.embed(&ids, &device), &mut cache).unwrap())
        };
        let mut cache = KvCache::new(&c, 8, &[], &device, DType::F32).unwrap();
        let mut pieces = Vec::new();
        for _ in 0..2 {
            pieces.clear();
            pieces.extend(host(
                llm.forward(llm.embed(&ids[..4], &device), &mut cache)
                    .unwrap(),
            ));
            for id in &ids[4..] {
                pieces.extend(host(
                    llm.forward(llm.embed(&[*id], &device), &mut cache).unwrap(),
                ));
            }
            assert_eq!(cache.len(), 6);
            assert_eq!(cache.remaining(), 2);
            for (i, (a, b)) in whole.iter().zip(&pieces).enumerate() {
                assert!((a - b).abs() < 1e-4, "element {i}: {a} vs {b}");
            }
            // A reused cache holds stale keys past `len`; they must never be read.
            cache.reset();
            assert!(cache.is_empty());
        }
        // Past the capacity: an error, not a panic.
        let err = llm
            .forward(llm.embed(&[1; 9], &device), &mut cache)
            .unwrap_err();
        assert!(err.to_string().contains("capacity"), "{err}");
    }

    #[test]
    fn kv_cache_key_padding_hides_positions() {
        let device = Device::flex();
        let c = config();
        let p = Params::random(&device, DType::F32);
        let llm = Llama::load(&p, &c).unwrap();
        let last = |ids: &[i64], padding: &[bool]| {
            let mut cache = KvCache::new(&c, 8, padding, &device, DType::F32).unwrap();
            let h = host(llm.forward(llm.embed(ids, &device), &mut cache).unwrap());
            h[h.len() - c.hidden_size..].to_vec()
        };
        // Position 1 hidden: what token sits there cannot change the last state.
        let pad = [false, true];
        let a = last(&[4, 9, 7], &pad);
        let b = last(&[4, 30, 7], &pad);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5);
        }
        let open = last(&[4, 30, 7], &[]);
        assert!(a.iter().zip(&open).any(|(x, y)| (x - y).abs() > 1e-4));
    }
}
