//! `tokenizer.json` (Hugging Face `tokenizers`) reader for the LLaMA layout, and the
//! `tokenizers` BPE algorithm (lowest merge rank first, leftmost on ties).
//!
//! Only the "legacy" LLaMA layout is accepted: normalizer `Prepend("▁")` +
//! `Replace(" ", "▁")`, no pre-tokenizer, a BPE model with byte fallback. That layout
//! reproduces sentencepiece per chunk. Other layouts (a `Metaspace` pre-tokenizer in
//! particular, which skips the dummy "▁" for text that already starts with a space)
//! are reported as [`JsonError::Unsupported`] so that a caller can fall back to
//! `tokenizer.model`.

use std::collections::HashMap;

use serde_json::Value;

use super::bpe::{self, push, Merges, Sym};
use super::vocab::{byte_piece, parse_byte_piece, PieceKind, Vocab, DEFAULT_UNK_SURFACE, SPACE};

/// Why a `tokenizer.json` could not be used.
#[derive(Debug)]
pub(crate) enum JsonError {
    /// Well-formed, but a layout whose ids would differ from the slow tokenizer.
    Unsupported(String),
    /// Not valid JSON or not a valid tokenizer file.
    Invalid(String),
}

/// An entry of the top-level `added_tokens` list.
#[derive(Debug, Clone)]
pub(crate) struct JsonAddedToken {
    pub id: u32,
    pub content: String,
    pub special: bool,
}

#[derive(Debug, Clone)]
enum NormStep {
    Prepend(String),
    Replace(String, String),
}

/// The `tokenizers` BPE model of one `tokenizer.json`.
#[derive(Debug, Clone)]
pub(crate) struct JsonBpe {
    vocab: Vocab,
    /// (left id, right id) → (rank, merged id).
    merges: Merges,
    byte_ids: Option<Box<[Option<u32>; 256]>>,
    unk: Option<u32>,
    fuse_unk: bool,
    ignore_merges: bool,
    normalizer: Vec<NormStep>,
}

fn invalid(msg: impl Into<String>) -> JsonError {
    JsonError::Invalid(msg.into())
}

fn unsupported(msg: impl Into<String>) -> JsonError {
    JsonError::Unsupported(msg.into())
}

fn parse_normalizer(v: &Value, out: &mut Vec<NormStep>) -> Result<(), JsonError> {
    if v.is_null() {
        return Ok(());
    }
    let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
    match ty {
        "Sequence" => {
            let list = v
                .get("normalizers")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid("normalizer Sequence without a normalizers list"))?;
            for n in list {
                parse_normalizer(n, out)?;
            }
        }
        "Prepend" => {
            let p = v
                .get("prepend")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("Prepend normalizer without a prepend string"))?;
            out.push(NormStep::Prepend(p.to_string()));
        }
        "Replace" => {
            let pat = v
                .get("pattern")
                .and_then(|p| p.get("String"))
                .and_then(Value::as_str)
                .ok_or_else(|| unsupported("Replace normalizer with a regex pattern"))?;
            let content = v
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("Replace normalizer without content"))?;
            if pat.is_empty() {
                return Err(unsupported("Replace normalizer with an empty pattern"));
            }
            out.push(NormStep::Replace(pat.to_string(), content.to_string()));
        }
        other => return Err(unsupported(format!("normalizer type {other:?}"))),
    }
    Ok(())
}

impl JsonBpe {
    /// Parses a `tokenizer.json`; also returns its `added_tokens` list.
    pub(crate) fn parse(bytes: &[u8]) -> Result<(Self, Vec<JsonAddedToken>), JsonError> {
        let root: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        let model = root
            .get("model")
            .filter(|m| m.is_object())
            .ok_or_else(|| invalid("no \"model\" object"))?;
        match model.get("type").and_then(Value::as_str) {
            Some("BPE") | None => {}
            Some(other) => {
                return Err(unsupported(format!(
                    "model type {other:?} (only the LLaMA BPE layout is implemented)"
                )))
            }
        }
        if let Some(pre) = root.get("pre_tokenizer").filter(|p| !p.is_null()) {
            let ty = pre.get("type").and_then(Value::as_str).unwrap_or("?");
            return Err(unsupported(format!(
                "pre_tokenizer {ty:?}: only the legacy LLaMA layout (normalizer Prepend + \
                 Replace, no pre-tokenizer) reproduces the slow tokenizer"
            )));
        }
        let mut normalizer = Vec::new();
        parse_normalizer(
            root.get("normalizer").unwrap_or(&Value::Null),
            &mut normalizer,
        )?;
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if model.get(key).is_some_and(|v| !v.is_null()) {
                return Err(unsupported(format!("BPE with {key}")));
            }
        }
        if model
            .get("dropout")
            .and_then(Value::as_f64)
            .is_some_and(|d| d > 0.0)
        {
            return Err(unsupported("BPE dropout"));
        }
        let flag = |key: &str| model.get(key).and_then(Value::as_bool).unwrap_or(false);
        let byte_fallback = flag("byte_fallback");
        let fuse_unk = flag("fuse_unk");
        let ignore_merges = flag("ignore_merges");

        // Vocabulary: ids must be exactly 0..n.
        let vocab_obj = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("model has no vocab object"))?;
        let n = vocab_obj.len();
        let mut pieces: Vec<Option<String>> = vec![None; n];
        let mut lookup = HashMap::with_capacity(n);
        for (piece, id) in vocab_obj {
            let id = id
                .as_u64()
                .filter(|&i| (i as usize) < n)
                .ok_or_else(|| invalid(format!("vocab id of {piece:?} is not in 0..{n}")))?;
            if pieces[id as usize].replace(piece.clone()).is_some() {
                return Err(invalid(format!("vocab id {id} is used twice")));
            }
            lookup.insert(piece.clone(), id as u32);
        }
        let pieces: Vec<String> = pieces.into_iter().map(Option::unwrap_or_default).collect();

        let unk = match model.get("unk_token").and_then(Value::as_str) {
            Some(u) => Some(
                *lookup
                    .get(u)
                    .ok_or_else(|| invalid(format!("unk_token {u:?} is not in the vocab")))?,
            ),
            None => None,
        };

        let mut added = Vec::new();
        if let Some(list) = root.get("added_tokens").and_then(Value::as_array) {
            for t in list {
                let id = t
                    .get("id")
                    .and_then(Value::as_u64)
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| invalid("added token without a valid id"))?;
                let content = t
                    .get("content")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("added token without content"))?;
                let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
                added.push(JsonAddedToken {
                    id,
                    content: content.to_string(),
                    special,
                });
            }
        }

        let mut kinds = vec![PieceKind::Normal; n];
        for (id, piece) in pieces.iter().enumerate() {
            if byte_fallback {
                if let Some(b) = parse_byte_piece(piece) {
                    kinds[id] = PieceKind::Byte(b);
                }
            }
        }
        for t in &added {
            if t.special && (t.id as usize) < n {
                kinds[t.id as usize] = PieceKind::Control;
            }
        }
        if let Some(u) = unk {
            kinds[u as usize] = PieceKind::Unknown;
        }

        let mut merges = HashMap::new();
        let list = model
            .get("merges")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("model has no merges list"))?;
        for (rank, m) in list.iter().enumerate() {
            let (a, b) = match m {
                Value::String(s) => {
                    let parts: Vec<&str> = s.split(' ').collect();
                    if parts.len() != 2 {
                        return Err(invalid(format!("merge {rank} {s:?} is not \"a b\"")));
                    }
                    (parts[0].to_string(), parts[1].to_string())
                }
                Value::Array(p) if p.len() == 2 && p.iter().all(Value::is_string) => (
                    p[0].as_str().unwrap_or_default().to_string(),
                    p[1].as_str().unwrap_or_default().to_string(),
                ),
                _ => {
                    return Err(invalid(format!(
                        "merge {rank} is neither \"a b\" nor [a, b]"
                    )))
                }
            };
            let id_of = |p: &str| {
                lookup
                    .get(p)
                    .copied()
                    .ok_or_else(|| invalid(format!("merge {rank} uses {p:?}, not in the vocab")))
            };
            let merged = id_of(&format!("{a}{b}"))?;
            merges.insert((id_of(&a)?, id_of(&b)?), (rank as u32, merged));
        }

        let byte_ids = byte_fallback.then(|| {
            let mut ids = Box::new([None; 256]);
            for (b, slot) in ids.iter_mut().enumerate() {
                *slot = lookup.get(&byte_piece(b as u8)).copied();
            }
            ids
        });
        let dummy_prefix = matches!(normalizer.first(), Some(NormStep::Prepend(p)) if p == SPACE);
        let vocab = Vocab {
            pieces,
            kinds,
            lookup,
            unk_id: unk.unwrap_or(u32::MAX),
            strip_leading_space: dummy_prefix,
            remove_extra_whitespaces: false,
            unk_surface: DEFAULT_UNK_SURFACE.to_string(),
        };
        Ok((
            Self {
                vocab,
                merges,
                byte_ids,
                unk,
                fuse_unk,
                ignore_merges,
                normalizer,
            },
            added,
        ))
    }

    pub(crate) fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn normalize(&self, text: &str) -> String {
        let mut s = text.to_string();
        for step in &self.normalizer {
            match step {
                // `tokenizers`' Prepend leaves empty strings alone.
                NormStep::Prepend(p) if !s.is_empty() => s.insert_str(0, p),
                NormStep::Prepend(_) => {}
                NormStep::Replace(pat, with) => s = s.replace(pat.as_str(), with),
            }
        }
        s
    }

    /// Normalises one chunk and runs `tokenizers`' `BPE::merge_word` + `Word::merge_all`.
    pub(crate) fn encode(&self, text: &str) -> Vec<u32> {
        let s = self.normalize(text);
        if s.is_empty() {
            return Vec::new();
        }
        if self.ignore_merges {
            if let Some(&id) = self.vocab.lookup.get(s.as_str()) {
                return vec![id];
            }
        }
        let mut word: Vec<Sym> = Vec::with_capacity(s.len());
        // A pending run of unknown characters: one <unk> (fused with `fuse_unk`).
        let mut unk: Option<u32> = None;
        for (i, c) in s.char_indices() {
            let piece = &s[i..i + c.len_utf8()];
            if let Some(&id) = self.vocab.lookup.get(piece) {
                if let Some(u) = unk.take() {
                    push(&mut word, u);
                }
                push(&mut word, id);
                continue;
            }
            if let Some(bytes) = &self.byte_ids {
                let ids: Option<Vec<u32>> = piece.bytes().map(|b| bytes[b as usize]).collect();
                if let Some(ids) = ids {
                    // As in `tokenizers`, a pending <unk> is not flushed here.
                    for id in ids {
                        push(&mut word, id);
                    }
                    continue;
                }
            }
            if let Some(u) = self.unk {
                unk = match unk {
                    Some(u0) if self.fuse_unk => Some(u0),
                    Some(u0) => {
                        push(&mut word, u0);
                        Some(u)
                    }
                    None => Some(u),
                };
            }
        }
        if let Some(u) = unk {
            push(&mut word, u);
        }
        bpe::merge_all(&self.merges, &mut word);
        bpe::ids(&word)
    }
}
