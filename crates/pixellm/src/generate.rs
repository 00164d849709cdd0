//! Greedy decoding with a KV cache, shared by PixelLM segmentation and plain chat.
//!
//! Each step runs one position through the cached LLM and reads back exactly one value,
//! the chosen token id, which also stays on the device as the next step's input: no
//! full-sequence recompute, no upload, no other host↔device traffic.

use burn::tensor::{Int, Tensor};

use crate::error::{Error, Result};
use crate::model::llm::{KvCache, Llama};

/// Generates up to `max_new_tokens` ids greedily (argmax, first index on ties, as
/// `torch.argmax`) after a prefill whose last final-norm hidden state is `last` (`[1, H]`).
///
/// `on_token(id, hidden)` sees every emitted id with the hidden state that predicted it
/// (PixelLM keeps those of the codebook tokens). Stops after emitting an id in `stop`
/// (it is kept, as transformers keeps EOS), after `max_new_tokens`, or when the cache is
/// full (the model's context).
pub fn greedy(
    llm: &Llama,
    cache: &mut KvCache,
    last: Tensor<2>,
    max_new_tokens: usize,
    stop: &[i64],
    on_token: &mut dyn FnMut(i64, &Tensor<2>),
) -> Result<Vec<i64>> {
    futures_lite::future::block_on(greedy_async(
        llm,
        cache,
        last,
        max_new_tokens,
        stop,
        on_token,
    ))
}

/// [`greedy`] for callers that must not block (a browser: WebGPU has no synchronous
/// readback). The only difference is how the token id is read back.
pub async fn greedy_async(
    llm: &Llama,
    cache: &mut KvCache,
    mut last: Tensor<2>,
    max_new_tokens: usize,
    stop: &[i64],
    on_token: &mut dyn FnMut(i64, &Tensor<2>),
) -> Result<Vec<i64>> {
    let h = llm.config().hidden_size;
    let mut ids = Vec::new();
    while ids.len() < max_new_tokens {
        // Index of the largest logit (first on ties, as `torch.argmax`); it stays on the
        // device for the next step's embedding, the host reads a copy.
        let next = llm.logits(last.clone()).argmax(1).reshape([1]);
        let id = read_id(next.clone()).await?;
        ids.push(id);
        on_token(id, &last);
        if stop.contains(&id) || cache.remaining() == 0 {
            break;
        }
        last = llm
            .forward(llm.embed_on_device(next, id), cache)?
            .reshape([1, h]);
    }
    Ok(ids)
}

/// The one host read per generated token: the id in `id` (`[1]`).
async fn read_id(id: Tensor<1, Int>) -> Result<i64> {
    crate::kernels::counts::note_read();
    let data = id
        .into_data_async()
        .await
        .map_err(|e| Error::Backend(format!("reading the next token id: {e:?}")))?;
    let ids = data
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|e| Error::Backend(format!("reading the next token id: {e:?}")))?;
    ids.first()
        .copied()
        .ok_or_else(|| Error::Backend("empty argmax".into()))
}
