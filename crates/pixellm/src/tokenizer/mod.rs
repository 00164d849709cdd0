//! The LLaMA tokenizer exactly as PixelLM runs it: transformers 4.31's slow
//! `LlamaTokenizer` in legacy mode, plus LLaVA's `tokenizer_image_token` and the
//! `llava_v1` prompt (`docs/model.md` §3, §4).
//!
//! Encoding one string ([`Tokenizer::encode`]):
//! 1. cut the text at the no-split strings (`<s>`, `</s>`, `<unk>` and every added token),
//!    earliest and then longest match first;
//! 2. strip all whitespace (Python `str.strip` semantics) on both sides of every added
//!    token, but not around `<s>`/`</s>`/`<unk>`;
//! 3. drop empty chunks and encode each remaining chunk on its own with sentencepiece, so
//!    every chunk gets its own dummy-prefix "▁" (legacy mode);
//! 4. add BOS (and EOS if `add_eos_token`) when asked.
//!
//! The base model comes from `tokenizer.json` when one is present (and has the legacy
//! LLaMA layout) or from `tokenizer.model`; both give the same ids. Added-token ids always
//! come from `added_tokens.json`, never from tokenizing their text.

pub(crate) mod bpe;
pub mod prompt;
mod protobuf;
pub mod sentencepiece;
mod tokenizer_json;
mod vocab;

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
pub use prompt::{llava_v1_prompt, IMAGE_PLACEHOLDER};
use sentencepiece::SpBpe;
use tokenizer_json::{JsonBpe, JsonError};
pub use vocab::PieceKind;
use vocab::SpDecodeState;
use vocab::{Vocab, SPACE};

/// The id LLaVA puts where the image features go (`IMAGE_TOKEN_INDEX`).
pub const IMAGE_TOKEN_INDEX: i64 = -200;

/// Which file the base vocabulary was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerSource {
    /// `tokenizer.model` (sentencepiece BPE).
    SentencePiece,
    /// `tokenizer.json` (Hugging Face `tokenizers` BPE).
    TokenizerJson,
}

#[derive(Debug, Clone)]
enum Backend {
    Sp(SpBpe),
    Json(JsonBpe),
}

impl Backend {
    fn vocab(&self) -> &Vocab {
        match self {
            Backend::Sp(m) => m.vocab(),
            Backend::Json(m) => m.vocab(),
        }
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        match self {
            Backend::Sp(m) => m.encode(text),
            Backend::Json(m) => m.encode(text),
        }
    }
}

/// A string that is never split and maps straight to one id.
#[derive(Debug, Clone)]
struct NoSplit {
    text: String,
    id: i64,
    /// Added tokens eat the whitespace around them; bos/eos/unk do not.
    strip: bool,
}

/// The PixelLM tokenizer (see the module documentation for the exact algorithm).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    backend: Backend,
    source: TokenizerSource,
    /// Added tokens in id order (ids `base..base + n`).
    added: Vec<(String, i64)>,
    added_ids: HashMap<String, i64>,
    no_split: Vec<NoSplit>,
    add_bos_token: bool,
    add_eos_token: bool,
    bos: i64,
    eos: i64,
    unk: i64,
}

/// Labels used in error messages for the three inputs of [`Tokenizer::build`].
struct Labels {
    model: String,
    json: String,
    added: String,
}

/// Python `str.isspace`: Rust's `White_Space` plus the four ASCII separators
/// U+001C..U+001F, which Python also strips.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn json_error(file: &str, e: JsonError) -> Error {
    match e {
        JsonError::Unsupported(m) => {
            Error::format(file, format!("unsupported tokenizer.json: {m}"))
        }
        JsonError::Invalid(m) => Error::format(file, format!("invalid tokenizer.json: {m}")),
    }
}

impl Tokenizer {
    /// Loads a checkpoint directory: `tokenizer.json` if present (and in the legacy
    /// LLaMA layout; otherwise `tokenizer.model` is used when it exists), else
    /// `tokenizer.model`; plus the optional `added_tokens.json` and
    /// `tokenizer_config.json` (`add_bos_token`, default true; `add_eos_token`,
    /// default false; `legacy` must not be false).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let model_path = dir.join("tokenizer.model");
        let json_path = dir.join("tokenizer.json");
        let added_path = dir.join("added_tokens.json");
        let config_path = dir.join("tokenizer_config.json");
        let json = read_optional(&json_path)?;
        let model = read_optional(&model_path)?;
        if json.is_none() && model.is_none() {
            return Err(Error::config(
                dir.display().to_string(),
                "no tokenizer.json or tokenizer.model in this directory",
            ));
        }
        let added = read_optional(&added_path)?;
        let labels = Labels {
            model: model_path.display().to_string(),
            json: json_path.display().to_string(),
            added: added_path.display().to_string(),
        };
        let mut tok = Self::build(
            model.as_deref().unwrap_or_default(),
            json.as_deref(),
            added.as_deref(),
            &labels,
        )?;
        if let Some(cfg) = read_optional(&config_path)? {
            tok.apply_tokenizer_config(&cfg, &config_path.display().to_string())?;
        }
        Ok(tok)
    }

    /// Builds a tokenizer from file contents (for the browser: no filesystem).
    /// `tokenizer_json` is used when given and in the legacy LLaMA layout; otherwise
    /// `model_bytes` (the `tokenizer.model` contents) must be non-empty. BOS is added and
    /// EOS is not; call [`Tokenizer::apply_tokenizer_config`] to read
    /// `tokenizer_config.json`.
    pub fn from_bytes(
        model_bytes: &[u8],
        tokenizer_json: Option<&[u8]>,
        added_tokens_json: Option<&[u8]>,
    ) -> Result<Self> {
        let labels = Labels {
            model: "<memory>/tokenizer.model".into(),
            json: "<memory>/tokenizer.json".into(),
            added: "<memory>/added_tokens.json".into(),
        };
        Self::build(model_bytes, tokenizer_json, added_tokens_json, &labels)
    }

    fn build(
        model_bytes: &[u8],
        tokenizer_json: Option<&[u8]>,
        added_tokens_json: Option<&[u8]>,
        labels: &Labels,
    ) -> Result<Self> {
        let mut json_added = None;
        let mut backend = None;
        if let Some(j) = tokenizer_json {
            match JsonBpe::parse(j) {
                Ok((bpe, added)) => {
                    backend = Some((Backend::Json(bpe), TokenizerSource::TokenizerJson));
                    json_added = Some(added);
                }
                // A layout we cannot reproduce exactly: the slow tokenizer only ever
                // reads tokenizer.model, so use that when we have it.
                Err(JsonError::Unsupported(_)) if !model_bytes.is_empty() => {}
                Err(e) => return Err(json_error(&labels.json, e)),
            }
        }
        let (backend, source) = match backend {
            Some(b) => b,
            None => (
                Backend::Sp(SpBpe::from_bytes(model_bytes, &labels.model)?),
                TokenizerSource::SentencePiece,
            ),
        };
        let vocab = backend.vocab();
        let base = vocab.len() as i64;
        let base_label = match source {
            TokenizerSource::SentencePiece => &labels.model,
            TokenizerSource::TokenizerJson => &labels.json,
        };
        let special = |piece: &str| {
            vocab.get(piece).map(i64::from).ok_or_else(|| {
                Error::format(base_label, format!("the vocabulary has no {piece} piece"))
            })
        };
        let (bos, eos, unk) = (special("<s>")?, special("</s>")?, special("<unk>")?);

        // Added tokens: added_tokens.json, else the tokenizer.json entries past the base.
        let from_json: Option<Vec<(String, i64)>> = json_added.map(|list| {
            list.into_iter()
                .filter(|t| i64::from(t.id) >= base)
                .map(|t| (t.content, i64::from(t.id)))
                .collect()
        });
        let mut added: Vec<(String, i64)> = match added_tokens_json {
            Some(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(bytes)
                    .map_err(|e| Error::config(&labels.added, format!("not valid JSON: {e}")))?;
                let obj = v.as_object().ok_or_else(|| {
                    Error::config(&labels.added, "expected an object {\"token\": id, ...}")
                })?;
                obj.iter()
                    .map(|(k, v)| {
                        v.as_i64().map(|id| (k.clone(), id)).ok_or_else(|| {
                            Error::config(&labels.added, format!("id of {k:?} is not an integer"))
                        })
                    })
                    .collect::<Result<_>>()?
            }
            None => from_json.clone().unwrap_or_default(),
        };
        added.sort_by_key(|(_, id)| *id);
        // transformers 4.31 (slow) refuses anything but ids base, base+1, ...
        for (i, (tok, id)) in added.iter().enumerate() {
            if *id != base + i as i64 {
                return Err(Error::config(
                    &labels.added,
                    format!(
                        "added token {tok:?} has id {id}; added ids must run consecutively \
                         from the base vocabulary size {base}"
                    ),
                ));
            }
            if tok.is_empty() {
                return Err(Error::config(&labels.added, "empty added token"));
            }
        }
        // A plain LLaMA tokenizer.json lists no added tokens; one that does must agree.
        if let (Some(mut j), true) = (from_json, added_tokens_json.is_some()) {
            j.sort_by_key(|(_, id)| *id);
            if !j.is_empty() && j != added {
                return Err(Error::config(
                    &labels.added,
                    format!(
                        "added tokens disagree with {}: {added:?} vs {j:?}",
                        labels.json
                    ),
                ));
            }
        }

        let mut no_split: Vec<NoSplit> = added
            .iter()
            .map(|(t, id)| NoSplit {
                text: t.clone(),
                id: *id,
                strip: true,
            })
            .collect();
        for (text, id) in [("<s>", bos), ("</s>", eos), ("<unk>", unk)] {
            if !added.iter().any(|(t, _)| t == text) {
                no_split.push(NoSplit {
                    text: text.to_string(),
                    id,
                    strip: false,
                });
            }
        }
        let added_ids = added.iter().cloned().collect();
        Ok(Self {
            backend,
            source,
            added,
            added_ids,
            no_split,
            add_bos_token: true,
            add_eos_token: false,
            bos,
            eos,
            unk,
        })
    }

    /// Reads `add_bos_token` / `add_eos_token` from a `tokenizer_config.json`. A config
    /// with `"legacy": false` is refused: that mode tokenizes differently and PixelLM's
    /// checkpoints do not use it.
    pub fn apply_tokenizer_config(&mut self, json: &[u8], file: &str) -> Result<()> {
        let v: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| Error::config(file, format!("not valid JSON: {e}")))?;
        let flag = |key: &str| -> Result<Option<bool>> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
                Some(other) => Err(Error::config(
                    file,
                    format!("{key} should be a bool, got {other}"),
                )),
            }
        };
        if flag("legacy")? == Some(false) {
            return Err(Error::config(
                file,
                "legacy=false tokenization is not implemented (PixelLM uses legacy=true)",
            ));
        }
        if let Some(b) = flag("add_bos_token")? {
            self.add_bos_token = b;
        }
        if let Some(b) = flag("add_eos_token")? {
            self.add_eos_token = b;
        }
        Ok(())
    }

    /// Which file the base vocabulary came from.
    pub fn source(&self) -> TokenizerSource {
        self.source
    }

    fn vocab(&self) -> &Vocab {
        self.backend.vocab()
    }

    /// Index of the longest no-split string starting at byte `i`, if any.
    fn no_split_at(&self, text: &str, i: usize) -> Option<usize> {
        let rest = &text[i..];
        (0..self.no_split.len())
            .filter(|&k| rest.starts_with(self.no_split[k].text.as_str()))
            .max_by_key(|&k| self.no_split[k].text.len())
    }

    /// Token ids of `text` as the slow tokenizer's `encode(text, add_special_tokens)`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Vec<i64> {
        enum Seg<'t> {
            Text(&'t str),
            Tok(usize),
        }
        // 1. Cut at no-split strings, earliest then longest first.
        let mut segs: Vec<Seg<'_>> = Vec::new();
        let mut last = 0;
        let mut i = 0;
        while i < text.len() {
            if let Some(k) = self.no_split_at(text, i) {
                if i > last {
                    segs.push(Seg::Text(&text[last..i]));
                }
                segs.push(Seg::Tok(k));
                i += self.no_split[k].text.len();
                last = i;
            } else {
                i += text[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if last < text.len() {
            segs.push(Seg::Text(&text[last..]));
        }
        // 2. Added tokens eat the whitespace on both sides.
        for k in 0..segs.len() {
            let Seg::Tok(t) = segs[k] else { continue };
            if !self.no_split[t].strip {
                continue;
            }
            if let Some(Seg::Text(s)) = segs.get_mut(k + 1) {
                *s = s.trim_start_matches(py_isspace);
            }
            if k > 0 {
                if let Some(Seg::Text(s)) = segs.get_mut(k - 1) {
                    *s = s.trim_end_matches(py_isspace);
                }
            }
        }
        // 3. Encode chunks independently; 4. special tokens.
        let mut ids = Vec::new();
        if add_special_tokens && self.add_bos_token {
            ids.push(self.bos);
        }
        for seg in segs {
            match seg {
                Seg::Tok(t) => ids.push(self.no_split[t].id),
                Seg::Text("") => {}
                Seg::Text(s) => ids.extend(self.backend.encode(s).into_iter().map(i64::from)),
            }
        }
        if add_special_tokens && self.add_eos_token {
            ids.push(self.eos);
        }
        ids
    }

    /// LLaVA `tokenizer_image_token`: split `prompt` on `"<image>"`, encode each piece
    /// with special tokens, join the pieces with [`IMAGE_TOKEN_INDEX`] (-200) and keep
    /// only the first piece's BOS.
    pub fn encode_with_image(&self, prompt: &str) -> Vec<i64> {
        let chunks: Vec<Vec<i64>> = prompt
            .split(IMAGE_PLACEHOLDER)
            .map(|c| self.encode(c, true))
            .collect();
        // Mirrors the Python: when the first chunk starts with BOS, the first element of
        // *every* chunk is dropped and BOS is emitted once up front.
        let offset = usize::from(chunks.first().and_then(|c| c.first()) == Some(&self.bos));
        let mut ids = Vec::new();
        if offset == 1 {
            ids.push(self.bos);
        }
        for (k, chunk) in chunks.iter().enumerate() {
            if k > 0 {
                ids.push(IMAGE_TOKEN_INDEX);
            }
            ids.extend_from_slice(chunk.get(offset..).unwrap_or_default());
        }
        ids
    }

    /// Display text of one id on its own: added tokens as their text, "▁" as a space,
    /// `<s>`/`</s>` as nothing. A byte piece outside ASCII cannot form a character
    /// alone and shows as U+FFFD; use [`StreamDecoder`] to assemble multi-byte
    /// characters. Unknown ids (including -200) give an empty string.
    pub fn decode_token(&self, id: i64) -> String {
        if let Some((t, _)) = self.added_token(id) {
            return t.to_string();
        }
        let v = self.vocab();
        match v.kind(id) {
            None | Some(PieceKind::Control) => String::new(),
            Some(PieceKind::Unknown) => v.unk_surface.clone(),
            Some(PieceKind::Byte(b)) if b < 0x80 => char::from(b).to_string(),
            Some(PieceKind::Byte(_)) => "\u{FFFD}".to_string(),
            Some(_) => v.pieces[id as usize].replace(SPACE, " "),
        }
    }

    /// Display decode of generated ids: transformers 4.31 slow `decode(ids,
    /// skip_special_tokens=True)`. BOS/EOS/UNK and invalid ids (-200) are skipped,
    /// sentencepiece text runs are decoded with byte pieces joined into characters and
    /// the first "▁" of each run dropped, and runs and added tokens are joined with
    /// single spaces (`"is [SEG0] [SEG1] ... [SEG5] ."`). Equal to feeding every id through
    /// a [`StreamDecoder`].
    pub fn decode(&self, ids: &[i64]) -> String {
        let mut d = StreamDecoder::new();
        let mut out = String::new();
        for &id in ids {
            out.push_str(&d.push(self, id));
        }
        out.push_str(&d.finish());
        out
    }

    /// transformers 4.31 slow `decode(ids, skip_special_tokens)` with
    /// `spaces_between_special_tokens=True` and no clean-up, including its quirks around
    /// `<s>`/`</s>` when they are kept (chat.py uses `skip_special_tokens=False`).
    /// Invalid ids are skipped instead of raising.
    pub fn decode_hf(&self, ids: &[i64], skip_special_tokens: bool) -> String {
        let v = self.vocab();
        let is_special = |id: i64| id == self.bos || id == self.eos || id == self.unk;
        let sp_decode = |run: &[u32]| {
            let mut st = SpDecodeState::default();
            let mut s = String::new();
            for &id in run {
                st.push(v, id, &mut s);
            }
            st.finish(&mut s);
            s
        };
        // LlamaTokenizer.convert_tokens_to_string
        let tokens_to_string = |run: &[i64]| {
            let mut out = String::new();
            let mut sub: Vec<u32> = Vec::new();
            let mut prev_special = false;
            for (i, &id) in run.iter().enumerate() {
                if is_special(id) {
                    if !prev_special && i != 0 {
                        out.push(' ');
                    }
                    out.push_str(&sp_decode(&sub));
                    out.push_str(&v.pieces[id as usize]);
                    prev_special = true;
                    sub.clear();
                } else {
                    sub.push(id as u32);
                    prev_special = false;
                }
            }
            out.push_str(&sp_decode(&sub));
            out
        };
        let mut sub_texts: Vec<String> = Vec::new();
        let mut run: Vec<i64> = Vec::new();
        for &id in ids {
            if skip_special_tokens && is_special(id) {
                continue;
            }
            if let Some((t, _)) = self.added_token(id) {
                if !run.is_empty() {
                    sub_texts.push(tokens_to_string(&run));
                    run.clear();
                }
                sub_texts.push(t.to_string());
            } else if v.kind(id).is_some() {
                run.push(id);
            }
        }
        if !run.is_empty() {
            sub_texts.push(tokens_to_string(&run));
        }
        sub_texts.join(" ")
    }

    fn added_token(&self, id: i64) -> Option<&(String, i64)> {
        let first = self.added.first()?.1;
        let idx = usize::try_from(id.checked_sub(first)?).ok()?;
        self.added.get(idx)
    }

    /// The piece text of an id as the tokenizer sees it (`"▁the"`, `"<0x0A>"`, `"[SEG0]"`),
    /// for debugging and test output; `None` for ids outside the vocabulary.
    pub fn id_to_piece(&self, id: i64) -> Option<&str> {
        if let Some((t, _)) = self.added_token(id) {
            return Some(t);
        }
        let v = self.vocab();
        v.kind(id).map(|_| v.pieces[id as usize].as_str())
    }

    /// Id of an added token (`"[SEG0]"`, `"<im_start>"`) or of a base piece (`"<s>"`, `"▁the"`).
    pub fn id_of(&self, token: &str) -> Option<i64> {
        self.added_ids
            .get(token)
            .copied()
            .or_else(|| self.vocab().get(token).map(i64::from))
    }

    /// Ids of `[SEG0]`, `[SEG1]`, ... in order, as listed in `added_tokens.json`
    /// (empty when the tokenizer has none). Never derived by tokenizing.
    pub fn seg_token_ids(&self) -> Vec<i64> {
        (0..)
            .map_while(|k| self.added_ids.get(&format!("[SEG{k}]")).copied())
            .collect()
    }

    /// Base pieces plus added tokens (the embedding rows the model needs: 32009 for
    /// PixelLM-7B, 32008 for 13B).
    pub fn vocab_size(&self) -> usize {
        self.vocab().len() + self.added.len()
    }

    /// Number of pieces in the base sentencepiece vocabulary (32000 for LLaMA).
    pub fn base_vocab_size(&self) -> usize {
        self.vocab().len()
    }

    /// The added tokens as (text, id), in id order.
    pub fn added_tokens(&self) -> &[(String, i64)] {
        &self.added
    }

    /// `<s>` (1).
    pub fn bos_id(&self) -> i64 {
        self.bos
    }

    /// `</s>` (2): generation stops here.
    pub fn eos_id(&self) -> i64 {
        self.eos
    }

    /// `<unk>` (0), which PixelLM also uses as the pad id.
    pub fn unk_id(&self) -> i64 {
        self.unk
    }
}

/// Incremental display decoder for generated ids. The concatenation of everything
/// [`StreamDecoder::push`] and [`StreamDecoder::finish`] return equals
/// [`Tokenizer::decode`] of the same ids; bytes of a character split over several
/// `<0xXX>` tokens are held back until the character is complete.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    /// Number of sub-texts (runs and added tokens) begun; HF joins them with " ".
    items: usize,
    in_run: bool,
    sp: SpDecodeState,
}

impl StreamDecoder {
    /// A decoder at the start of a text.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one id and returns the text that became final.
    pub fn push(&mut self, tok: &Tokenizer, id: i64) -> String {
        let mut out = String::new();
        if id == tok.bos || id == tok.eos || id == tok.unk {
            return out;
        }
        if let Some((t, _)) = tok.added_token(id) {
            if self.in_run {
                self.sp.finish(&mut out);
                self.in_run = false;
            }
            if self.items > 0 {
                out.push(' ');
            }
            out.push_str(t);
            self.items += 1;
            return out;
        }
        let v = tok.vocab();
        if v.kind(id).is_none() {
            return out;
        }
        if !self.in_run {
            if self.items > 0 {
                out.push(' ');
            }
            self.items += 1;
            self.in_run = true;
            self.sp = SpDecodeState::default();
        }
        self.sp.push(v, id as u32, &mut out);
        out
    }

    /// Flushes bytes still waiting for the rest of a character (as U+FFFD each).
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        if self.in_run {
            self.sp.finish(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests;
