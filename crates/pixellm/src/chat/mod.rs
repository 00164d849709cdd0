//! Plain chat with a LLaMA-architecture model from a GGUF file (SmolLM2-135M-Instruct):
//! proves the language-model half of the runtime on real pretrained weights, with the same
//! LLaMA module, KV cache and greedy decoder PixelLM uses. Its tokenizer (byte-level BPE
//! from the GGUF metadata) and prompt template (ChatML) live here too; the GGUF file itself
//! is read by `weights::gguf`, like every other checkpoint format.

pub mod byte_bpe;
pub mod chatml;

use std::path::Path;

use burn::tensor::{DType, Device, Tensor};
use web_time::Instant;

use crate::chat::byte_bpe::{ByteBpe, ByteBpeStream, PreTokenizer};
use crate::chat::chatml::{chatml_prompt, Role};
use crate::error::{Error, Result};
use crate::generate::greedy;
use crate::kernels::quant::Quant;
use crate::model::llm::{KvCache, Llama};
use crate::model::params::Params;
use crate::weights::gguf::GgufFile;
use crate::weights::WeightFiles;

/// A chat model: LLaMA weights plus its byte-level BPE tokenizer.
#[derive(Debug, Clone)]
pub struct ChatModel {
    llm: Llama,
    tokenizer: ByteBpe,
    device: Device,
    dtype: DType,
    weight_bytes: u64,
}

/// One generated reply.
#[derive(Debug, Clone)]
pub struct ChatReply {
    /// Reply text (special tokens hidden).
    pub text: String,
    /// Generated ids (the end-of-turn token included when emitted).
    pub ids: Vec<i64>,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Prefill time.
    pub prefill_ms: f64,
    /// Decode time of all generated tokens.
    pub decode_ms: f64,
}

impl ChatReply {
    /// Decode throughput.
    pub fn tokens_per_s(&self) -> f64 {
        self.ids.len() as f64 / (self.decode_ms / 1e3).max(1e-9)
    }
}

impl ChatModel {
    /// Loads a llama-architecture GGUF file (weights dequantised once into `dtype` on
    /// `device`; config and tokenizer from its metadata).
    /// GGUF tensors in `Q8_0`/`Q4_0`/`Q4_1` stay packed with the default
    /// [`Quant::Stored`]; `quant` converts as [`Quant::target`] says.
    pub fn load_gguf(path: &Path, device: &Device, dtype: DType, quant: Quant) -> Result<Self> {
        crate::kernels::check_quant(quant, device)?;
        let gguf = GgufFile::open(path)?;
        let config = gguf.llama_config()?;
        let meta = gguf.tokenizer_metadata()?;
        let label = path.display().to_string();
        if meta.model != "gpt2" {
            return Err(Error::format(
                &label,
                format!(
                    "tokenizer.ggml.model `{}` is not supported (byte-level BPE `gpt2` is)",
                    meta.model
                ),
            ));
        }
        let pre = meta.pre.as_deref().unwrap_or("gpt-2");
        let pre = PreTokenizer::from_gguf_pre(pre).ok_or_else(|| {
            Error::format(
                &label,
                format!("tokenizer.ggml.pre `{pre}` is not supported (smollm, gpt-2 are)"),
            )
        })?;
        let tokenizer = ByteBpe::from_vocab(
            meta.tokens,
            meta.merges,
            meta.token_type,
            meta.bos_token_id.map(i64::from),
            meta.eos_token_id.map(i64::from),
        )?
        .with_pre_tokenizer(pre);
        drop(gguf);
        let files = WeightFiles::open(path)?;
        if !device.supports_dtype(dtype) {
            return Err(Error::Backend(format!(
                "this device does not support {dtype:?} tensors"
            )));
        }
        let params = Params::new(&files, device, dtype).with_quant(quant);
        let llm = Llama::load(&params, &config)?;
        Ok(Self {
            llm,
            weight_bytes: params.weight_bytes(),
            tokenizer,
            device: device.clone(),
            dtype,
        })
    }

    /// Bytes the weights occupy on the device (packed matrices at their blocks' size).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ByteBpe {
        &self.tokenizer
    }

    /// The language model.
    pub fn llm(&self) -> &Llama {
        &self.llm
    }

    /// Token ids of a conversation rendered with the model's ChatML template, ending with
    /// the assistant's turn opener.
    pub fn prompt_ids(&self, messages: &[(Role, String)]) -> Vec<i64> {
        self.tokenizer.encode(&chatml_prompt(None, messages, true))
    }

    /// Logits `[n, V]` at every position of `ids` (one pass, no generation).
    pub fn logits(&self, ids: &[i64]) -> Result<Tensor<2>> {
        let mut cache = KvCache::new(self.llm.config(), ids.len(), &[], &self.device, self.dtype)?;
        let hidden = self
            .llm
            .forward(self.llm.embed(ids, &self.device), &mut cache)?;
        let [_, n, h] = hidden.dims();
        Ok(self.llm.logits(hidden.reshape([n, h])))
    }

    /// Generates the assistant's reply to `messages` greedily, streaming text to `on_text`.
    pub fn reply(
        &self,
        messages: &[(Role, String)],
        max_new_tokens: usize,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<ChatReply> {
        let ids = self.prompt_ids(messages);
        let context = self.llm.config().max_position_embeddings;
        if ids.len() >= context {
            return Err(Error::Prompt(format!(
                "the conversation takes {} tokens but the model's context is {context}",
                ids.len()
            )));
        }
        let t = Instant::now();
        let capacity = (ids.len() + max_new_tokens).min(context);
        let mut cache = KvCache::new(self.llm.config(), capacity, &[], &self.device, self.dtype)?;
        let hidden = self
            .llm
            .forward(self.llm.embed(&ids, &self.device), &mut cache)?;
        let h = self.llm.config().hidden_size;
        let last = hidden.narrow(1, ids.len() - 1, 1).reshape([1, h]);
        let _ = self.device.sync();
        let prefill_ms = t.elapsed().as_secs_f64() * 1e3;

        let t = Instant::now();
        let mut stream = ByteBpeStream::new();
        let mut text = String::new();
        let stop = self.stop_ids();
        let generated = greedy(
            &self.llm,
            &mut cache,
            last,
            max_new_tokens,
            &stop,
            &mut |id, _| {
                let piece = stream.push(&self.tokenizer, id);
                if !piece.is_empty() {
                    on_text(&piece);
                    text.push_str(&piece);
                }
            },
        )?;
        let tail = stream.finish();
        if !tail.is_empty() {
            on_text(&tail);
            text.push_str(&tail);
        }
        Ok(ChatReply {
            text,
            ids: generated,
            prompt_tokens: ids.len(),
            prefill_ms,
            decode_ms: t.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Ids that end the assistant's turn: EOS and `<|im_end|>` / `<|endoftext|>`.
    fn stop_ids(&self) -> Vec<i64> {
        let mut stop = vec![self.tokenizer.eos_id()];
        for t in ["<|im_end|>", "<|endoftext|>"] {
            if let Some(id) = self.tokenizer.id_of(t) {
                if !stop.contains(&id) {
                    stop.push(id);
                }
            }
        }
        stop
    }
}
