//! Perplexity of a LLaMA-architecture model over a text (`pixellm perplexity`): how well
//! the model predicts each next token, the usual check that a quantised model still is the
//! model it was.
//!
//! The text's tokens are cut into consecutive windows of `ctx` tokens; each window runs
//! from an empty KV cache, fed `batch` tokens per forward pass (all at once by default; one
//! at a time runs the decode kernels, as generation does), and every token after a window's
//! first is
//! scored by the log-probability the model gave it. Perplexity is `exp` of the mean negative
//! log-likelihood over the scored tokens (Hugging Face's fixed-length recipe with
//! `stride = ctx`; llama.cpp's `llama-perplexity` scores only the second half of each window,
//! so its figures are lower for the same model and text).

use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::kernels::to_f32;
use crate::model::llm::{KvCache, Llama};
use crate::pipeline::read_f32;
use crate::{Error, Result};

/// The outcome of [`perplexity`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// `exp(nll / tokens)`.
    pub perplexity: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// Summed negative log-likelihood (nats).
    pub nll: f64,
    /// Windows evaluated.
    pub windows: usize,
}

/// Scores `ids` in windows of `ctx` tokens fed `batch` tokens per forward pass (see the
/// module documentation); `progress(done, total)` follows the windows.
pub fn perplexity(
    llm: &Llama,
    ids: &[i64],
    ctx: usize,
    batch: usize,
    device: &Device,
    dtype: DType,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Perplexity> {
    let context = llm.config().max_position_embeddings;
    if ctx < 2 || ctx > context {
        return Err(Error::Prompt(format!(
            "--ctx {ctx} must be between 2 and the model's context ({context})"
        )));
    }
    if batch == 0 {
        return Err(Error::Prompt("--batch must be at least 1".into()));
    }
    if ids.len() < 2 {
        return Err(Error::Prompt(format!(
            "the text is {} token(s) long; perplexity needs at least 2",
            ids.len()
        )));
    }
    // A trailing window of one token would score nothing.
    let windows: Vec<&[i64]> = ids.chunks(ctx).filter(|w| w.len() >= 2).collect();
    let (mut nll, mut tokens) = (0.0f64, 0usize);
    for (i, window) in windows.iter().enumerate() {
        let n = window.len();
        let mut cache = KvCache::new(llm.config(), n, &[], device, dtype)?;
        // Tokens `start..end` predict tokens `start + 1..end + 1` (the last one nothing).
        for start in (0..n).step_by(batch) {
            let end = (start + batch).min(n);
            let hidden = llm.forward(llm.embed(&window[start..end], device), &mut cache)?;
            let scored = end.min(n - 1) - start;
            if scored == 0 {
                continue;
            }
            let h = hidden.dims()[2];
            let hidden = hidden.reshape([end - start, h]).narrow(0, 0, scored);
            let logits = to_f32(llm.logits(hidden));
            let targets = Tensor::<2, Int>::from_data(
                TensorData::new(window[start + 1..start + 1 + scored].to_vec(), [scored, 1]),
                device,
            );
            let picked = log_softmax(logits, 1).gather(1, targets);
            nll -= read_f32(picked)?.iter().map(|&v| f64::from(v)).sum::<f64>();
            tokens += scored;
        }
        progress(i + 1, windows.len());
    }
    if !nll.is_finite() {
        return Err(Error::Backend(
            "the model's log-probabilities are not finite (NaN or infinite logits)".into(),
        ));
    }
    Ok(Perplexity {
        perplexity: (nll / tokens as f64).exp(),
        tokens,
        nll,
        windows: windows.len(),
    })
}
