//! GPT-2 style byte-level BPE, as Hugging Face `tokenizers` runs it for SmolLM2
//! (`tokenizer.json`: no normalizer, pre-tokenizer `Sequence[Digits(individual_digits),
//! ByteLevel(add_prefix_space: false, use_regex: true)]`, BPE without byte fallback,
//! decoder `ByteLevel`), and as llama.cpp runs a GGUF vocabulary with
//! `tokenizer.ggml.model = "gpt2"`, `tokenizer.ggml.pre = "smollm"`.
//!
//! Encoding one string ([`ByteBpe::encode`]):
//! 1. cut the text at special tokens (every added token of `tokenizer.json`, every
//!    CONTROL / USER_DEFINED token of a GGUF vocabulary), earliest and then longest match
//!    first; each match is its id, nothing around it is stripped;
//! 2. between them, `Digits(individual_digits)` makes every Unicode number character
//!    (`char::is_numeric`, i.e. `\p{N}`) a word of its own;
//! 3. each remaining run is cut with the GPT-2 regex
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;
//! 4. each word becomes its UTF-8 bytes, each byte the vocabulary symbol of its GPT-2
//!    "byte to unicode" character, and BPE merges them, lowest merge rank first and
//!    leftmost on ties (`tokenizers`' `Word::merge_all`).
//!
//! A byte whose symbol is missing from the vocabulary is dropped, as `tokenizers` does
//! without an `unk_token` (SmolLM2 lacks 21 of the 256: the control bytes 0x04, 0x06,
//! 0x13, 0x14, 0x16, 0x1D and the bytes 0xC0, 0xC1, 0xF1, 0xF2, 0xF5..=0xFF, of which only
//! the controls and the 4-byte UTF-8 lead bytes 0xF1/0xF2 can occur in a `&str`).
//!
//! No BOS is added: SmolLM2 (`tokenizer.ggml.add_bos_token = false`, no post-processor)
//! starts the prompt with `<|im_start|>` itself.
//!
//! The regex: the `regex` crate (pure Rust, linear time, builds for wasm32) cannot do the
//! lookahead of `\s+(?!\S)`, so [`ByteBpe`] matches `...|\s+` and shortens a whitespace
//! match by its last character when it is longer than one character and followed by more
//! text. That is exactly what the backtracking regex does: at a position where the first
//! four alternatives fail, `\s+` takes the whole whitespace run; if text follows, that
//! text is `\S`, so the lookahead only succeeds one character earlier, and a
//! one-character run falls through to the final `\s+`. `fancy-regex` would run the whole
//! pattern in its backtracking VM, which is slower and can fail at run time (backtrack
//! limit), an error path `encode` would have to hide.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;

use regex::Regex;
use serde_json::Value;

use crate::error::{Error, Result};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
pub mod token_type {
    /// An ordinary token.
    pub const NORMAL: i32 = 1;
    /// The unknown token.
    pub const UNKNOWN: i32 = 2;
    /// A control token (`<|im_start|>`): matched in text, hidden by display decoding.
    pub const CONTROL: i32 = 3;
    /// A user-defined token: matched in text, shown by display decoding.
    pub const USER_DEFINED: i32 = 4;
    /// An unused slot.
    pub const UNUSED: i32 = 5;
    /// A byte token (`<0x0A>`; not used by byte-level BPE).
    pub const BYTE: i32 = 6;
}

/// The GPT-2 pre-tokenizer regex with the `\s+(?!\S)` alternative left out (see the
/// module documentation for how the lookahead is reproduced).
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// Words longer than this (in bytes) skip the BPE cache: they are rare and would only
/// evict the common short ones.
const CACHE_MAX_WORD: usize = 64;
/// The cache is cleared when it holds this many words, which bounds its memory.
const CACHE_CAPACITY: usize = 16_384;

/// How text between special tokens is cut into words before BPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreTokenizer {
    /// `Digits(individual_digits: true)` first: every number character is its own word.
    pub individual_digits: bool,
    /// Cut with the GPT-2 regex (`ByteLevel(use_regex: true)`); otherwise every run
    /// between special tokens (and digits) is one word.
    pub gpt2_regex: bool,
}

impl PreTokenizer {
    /// SmolLM2: single digits, then the GPT-2 regex (GGUF `tokenizer.ggml.pre = "smollm"`).
    pub const SMOLLM: Self = Self {
        individual_digits: true,
        gpt2_regex: true,
    };
    /// GPT-2: the regex alone (GGUF `tokenizer.ggml.pre = "gpt-2"`).
    pub const GPT2: Self = Self {
        individual_digits: false,
        gpt2_regex: true,
    };

    /// The pre-tokenizer for a GGUF `tokenizer.ggml.pre` value, if it is one of the two
    /// this module reproduces exactly (`"smollm"`, `"gpt-2"`).
    pub fn from_gguf_pre(pre: &str) -> Option<Self> {
        match pre {
            "smollm" => Some(Self::SMOLLM),
            "gpt-2" => Some(Self::GPT2),
            _ => None,
        }
    }
}

/// What a vocabulary entry is, for matching in text and for decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    /// Matched in text before pre-tokenization; hidden by [`ByteBpe::decode`].
    Control,
    /// Matched in text before pre-tokenization; shown by [`ByteBpe::decode`].
    UserDefined,
    /// No token has this id (a hole in a `tokenizer.json` vocabulary).
    Missing,
}

/// The GPT-2 `bytes_to_unicode` table: printable Latin-1 bytes stand for themselves, the
/// other 68 bytes for U+0100.. in byte order, so every byte is a visible character.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u8;
        *slot = if is_printable(b) {
            char::from(b)
        } else {
            n += 1;
            // 256 + n - 1 < 324 is always a valid scalar value.
            char::from_u32(255 + n).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
    }
    table
}

fn is_printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// Inverse of [`byte_chars`].
fn char_byte(c: char) -> Option<u8> {
    let u = c as u32;
    if u < 256 {
        let b = u as u8;
        return is_printable(b).then_some(b);
    }
    let k = u.checked_sub(256)? as usize;
    (0..=255u8).filter(|&b| !is_printable(b)).nth(k)
}

/// The bytes a token stands for, as the `tokenizers` ByteLevel decoder computes them: the
/// inverse byte map when every character of the token is in it, else the token's own
/// UTF-8 (special tokens such as `<|im_end|>` are printable ASCII and map to themselves).
fn token_bytes(token: &str, out: &mut Vec<u8>) {
    let start = out.len();
    for c in token.chars() {
        match char_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.truncate(start);
                out.extend_from_slice(token.as_bytes());
                return;
            }
        }
    }
}

/// A GPT-2 style byte-level BPE tokenizer (SmolLM2); see the module documentation.
#[derive(Debug)]
pub struct ByteBpe {
    /// Token text by id ("" for a missing id).
    tokens: Vec<String>,
    kinds: Vec<Kind>,
    vocab: HashMap<String, u32>,
    /// (left id, right id) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Id of each byte's GPT-2 character, if the vocabulary has it.
    byte_ids: [Option<u32>; 256],
    byte_chars: [char; 256],
    unk: Option<u32>,
    fuse_unk: bool,
    ignore_merges: bool,
    pre: PreTokenizer,
    word_re: Regex,
    /// Alternation of all special tokens, longest first (so leftmost-first matching is
    /// leftmost-longest); `None` when there are none.
    special_re: Option<Regex>,
    special_ids: HashMap<String, u32>,
    bos: Option<i64>,
    eos: i64,
    cache: BpeCache,
}

impl Clone for ByteBpe {
    fn clone(&self) -> Self {
        Self {
            tokens: self.tokens.clone(),
            kinds: self.kinds.clone(),
            vocab: self.vocab.clone(),
            merges: self.merges.clone(),
            byte_ids: self.byte_ids,
            byte_chars: self.byte_chars,
            unk: self.unk,
            fuse_unk: self.fuse_unk,
            ignore_merges: self.ignore_merges,
            pre: self.pre,
            word_re: self.word_re.clone(),
            special_re: self.special_re.clone(),
            special_ids: self.special_ids.clone(),
            bos: self.bos,
            eos: self.eos,
            cache: BpeCache::default(),
        }
    }
}

/// Word → ids memo. Behind a mutex so that `encode(&self)` can fill it and the tokenizer
/// stays `Sync`; a poisoned lock just disables it.
#[derive(Default)]
struct BpeCache(Mutex<HashMap<Box<[u8]>, Vec<u32>>>);

impl std::fmt::Debug for BpeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BpeCache")
    }
}

/// Everything the two loaders have to supply.
struct Parts {
    tokens: Vec<String>,
    kinds: Vec<Kind>,
    merges: Vec<(String, String)>,
    unk: Option<u32>,
    fuse_unk: bool,
    ignore_merges: bool,
    pre: PreTokenizer,
    bos: Option<i64>,
    eos: Option<i64>,
}

impl ByteBpe {
    /// Builds the tokenizer from GGUF metadata: `tokenizer.ggml.tokens`,
    /// `tokenizer.ggml.merges` ("left right" strings, rank = position),
    /// `tokenizer.ggml.token_type` (see [`token_type`]; empty means all normal) and the
    /// `bos`/`eos` token ids. CONTROL and USER_DEFINED tokens are matched in text. Without
    /// an `eos`, `<|im_end|>` (else `<|endoftext|>`) is used. The pre-tokenizer is
    /// [`PreTokenizer::SMOLLM`]; call [`ByteBpe::with_pre_tokenizer`] for another
    /// `tokenizer.ggml.pre`.
    pub fn from_vocab(
        tokens: Vec<String>,
        merges: Vec<String>,
        token_types: Vec<i32>,
        bos: Option<i64>,
        eos: Option<i64>,
    ) -> Result<Self> {
        const FILE: &str = "GGUF tokenizer.ggml";
        if !token_types.is_empty() && token_types.len() != tokens.len() {
            return Err(Error::format(
                FILE,
                format!(
                    "token_type has {} entries for {} tokens",
                    token_types.len(),
                    tokens.len()
                ),
            ));
        }
        let kinds = (0..tokens.len())
            .map(|i| match token_types.get(i) {
                Some(&token_type::CONTROL) => Kind::Control,
                Some(&token_type::USER_DEFINED) => Kind::UserDefined,
                _ => Kind::Normal,
            })
            .collect();
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                split_merge(m).ok_or_else(|| {
                    Error::format(
                        FILE,
                        format!("merges[{i}] = {m:?} is not two tokens separated by a space"),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::assemble(
            FILE,
            Parts {
                tokens,
                kinds,
                merges,
                unk: None,
                fuse_unk: false,
                ignore_merges: false,
                pre: PreTokenizer::SMOLLM,
                bos,
                eos,
            },
        )
    }

    /// Builds the tokenizer from a Hugging Face `tokenizer.json` with a byte-level BPE
    /// layout (see the module documentation); `label` names the file in errors. Every
    /// added token is matched in text; those with `"special": true` are hidden by
    /// [`ByteBpe::decode`]. `tokenizer.json` names no BOS/EOS: BOS is none and EOS is
    /// `<|im_end|>` (else `<|endoftext|>`); see [`ByteBpe::with_eos`].
    pub fn from_tokenizer_json(bytes: &[u8], label: &str) -> Result<Self> {
        let bad = |msg: String| Error::format(label, msg);
        let root: Value = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let model = root
            .get("model")
            .filter(|m| m.is_object())
            .ok_or_else(|| bad("no \"model\" object".into()))?;
        match model.get("type").and_then(Value::as_str) {
            Some("BPE") | None => {}
            Some(t) => return Err(bad(format!("model type {t:?} is not BPE"))),
        }
        if model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
            return Err(bad("BPE byte_fallback is not a byte-level layout".into()));
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let Some(s) = model.get(key).and_then(Value::as_str) {
                if !s.is_empty() {
                    return Err(bad(format!("unsupported BPE {key} {s:?}")));
                }
            }
        }
        if let Some(p) = model.get("dropout").and_then(Value::as_f64) {
            // Dropout makes encoding random; an inference tokenizer has none.
            if p > 0.0 {
                return Err(bad(format!("unsupported BPE dropout {p}")));
            }
        }
        match root.get("normalizer") {
            None | Some(Value::Null) => {}
            Some(n) => return Err(bad(format!("unsupported normalizer {}", type_of(n)))),
        }
        let pre = parse_pre_tokenizer(root.get("pre_tokenizer").unwrap_or(&Value::Null))
            .map_err(&bad)?;
        match root.get("decoder") {
            None | Some(Value::Null) => {}
            Some(d) if type_of(d) == "ByteLevel" => {}
            Some(d) => return Err(bad(format!("unsupported decoder {}", type_of(d)))),
        }
        // A post-processor that adds ids (TemplateProcessing, ...) would make our ids
        // differ from `tokenizers`'; ByteLevel only trims offsets.
        match root.get("post_processor") {
            None | Some(Value::Null) => {}
            Some(p) if type_of(p) == "ByteLevel" => {}
            Some(p) => return Err(bad(format!("unsupported post_processor {}", type_of(p)))),
        }

        let vocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("model.vocab is not an object".into()))?;
        let mut entries: Vec<(u32, String, Kind)> = Vec::with_capacity(vocab.len());
        for (tok, id) in vocab {
            let id = id
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| bad(format!("model.vocab[{tok:?}] is not a token id")))?;
            entries.push((id, tok.clone(), Kind::Normal));
        }
        let added = match root.get("added_tokens") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(a)) => a.as_slice(),
            Some(_) => return Err(bad("added_tokens is not a list".into())),
        };
        for (i, t) in added.iter().enumerate() {
            let id = t
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| bad(format!("added_tokens[{i}] has no valid id")))?;
            let content = t
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("added_tokens[{i}] has no content")))?;
            // These change how the text around a match is cut; SmolLM2 sets none of them.
            for flag in ["lstrip", "rstrip", "single_word"] {
                if t.get(flag).and_then(Value::as_bool) == Some(true) {
                    return Err(bad(format!(
                        "added token {content:?}: {flag} is not supported"
                    )));
                }
            }
            let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
            let kind = if special {
                Kind::Control
            } else {
                Kind::UserDefined
            };
            entries.push((id, content.to_string(), kind));
        }
        // Ids must be dense enough to index a table: a huge id in a small file would
        // otherwise ask for gigabytes.
        let size = entries.iter().map(|e| e.0 as usize + 1).max().unwrap_or(0);
        if size > entries.len() {
            return Err(bad(format!(
                "token ids run up to {} but there are only {} tokens",
                size - 1,
                entries.len()
            )));
        }
        let mut tokens = vec![String::new(); size];
        let mut kinds = vec![Kind::Missing; size];
        // Added tokens come last, so they override a vocab entry with the same id, as in
        // `tokenizers` (the added vocabulary is consulted first for an id).
        for (id, tok, kind) in entries {
            tokens[id as usize] = tok;
            kinds[id as usize] = kind;
        }

        let merges = match model.get("merges") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let pair = match m {
                        Value::String(s) => split_merge(s),
                        Value::Array(p) => match p.as_slice() {
                            [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
                            _ => None,
                        },
                        _ => None,
                    };
                    pair.ok_or_else(|| bad(format!("model.merges[{i}] is not a token pair")))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => return Err(bad("model.merges is not a list".into())),
        };
        let unk = match model.get("unk_token").and_then(Value::as_str) {
            // `tokenizers` ignores an unk_token that is not in the vocabulary.
            Some(u) => vocab.get(u).and_then(Value::as_u64).map(|i| i as u32),
            None => None,
        };
        Self::assemble(
            label,
            Parts {
                tokens,
                kinds,
                merges,
                unk,
                fuse_unk: model.get("fuse_unk").and_then(Value::as_bool) == Some(true),
                ignore_merges: model.get("ignore_merges").and_then(Value::as_bool) == Some(true),
                pre,
                bos: None,
                eos: None,
            },
        )
    }

    fn assemble(file: &str, p: Parts) -> Result<Self> {
        let bad = |msg: String| Error::format(file, msg);
        if p.tokens.is_empty() {
            return Err(bad("empty vocabulary".into()));
        }
        if u32::try_from(p.tokens.len()).is_err() {
            return Err(bad(format!("{} tokens do not fit u32 ids", p.tokens.len())));
        }
        let mut vocab = HashMap::with_capacity(p.tokens.len());
        for (id, (tok, kind)) in p.tokens.iter().zip(&p.kinds).enumerate() {
            if *kind != Kind::Missing {
                // A duplicated token text keeps its lowest id.
                vocab.entry(tok.clone()).or_insert(id as u32);
            }
        }
        let mut merges = HashMap::with_capacity(p.merges.len());
        for (rank, (a, b)) in p.merges.iter().enumerate() {
            let get = |t: &str| {
                vocab.get(t).copied().ok_or_else(|| {
                    bad(format!(
                        "merge {rank} ({a:?} {b:?}) names {t:?}, which is not in the vocabulary"
                    ))
                })
            };
            let (ia, ib, im) = (get(a)?, get(b)?, get(&format!("{a}{b}"))?);
            // A repeated pair takes its last rank, as `tokenizers` (and GPT-2's
            // `dict(zip(merges, range(...)))`) do.
            merges.insert((ia, ib), (rank as u32, im));
        }
        let byte_chars = byte_chars();
        let mut byte_ids = [None; 256];
        for (slot, c) in byte_ids.iter_mut().zip(byte_chars) {
            let mut buf = [0; 4];
            *slot = vocab.get(&*c.encode_utf8(&mut buf)).copied();
        }

        let mut special_ids: HashMap<String, u32> = HashMap::new();
        for (id, (tok, kind)) in p.tokens.iter().zip(&p.kinds).enumerate() {
            if matches!(kind, Kind::Control | Kind::UserDefined) && !tok.is_empty() {
                special_ids.entry(tok.clone()).or_insert(id as u32);
            }
        }
        let special_re = if special_ids.is_empty() {
            None
        } else {
            let mut texts: Vec<&str> = special_ids.keys().map(String::as_str).collect();
            texts.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
            let pattern = texts
                .iter()
                .map(|t| regex::escape(t))
                .collect::<Vec<_>>()
                .join("|");
            Some(
                regex::RegexBuilder::new(&pattern)
                    .size_limit(1 << 28)
                    .build()
                    .map_err(|e| bad(format!("cannot match the special tokens: {e}")))?,
            )
        };
        let word_re = Regex::new(GPT2_PATTERN)
            .map_err(|e| bad(format!("cannot build the pre-tokenizer regex: {e}")))?;

        let n = p.tokens.len() as i64;
        let check = |what: &str, id: i64| {
            if (0..n).contains(&id) && p.kinds[id as usize] != Kind::Missing {
                Ok(id)
            } else {
                Err(bad(format!("{what} id {id} is not a token id")))
            }
        };
        let bos = p.bos.map(|b| check("bos", b)).transpose()?;
        let eos = match p.eos {
            Some(e) => check("eos", e)?,
            None => ["<|im_end|>", "<|endoftext|>"]
                .iter()
                .find_map(|t| vocab.get(*t))
                .map(|&id| i64::from(id))
                .ok_or_else(|| bad("no eos id given and no <|im_end|> or <|endoftext|>".into()))?,
        };
        Ok(Self {
            tokens: p.tokens,
            kinds: p.kinds,
            vocab,
            merges,
            byte_ids,
            byte_chars,
            unk: p.unk,
            fuse_unk: p.fuse_unk,
            ignore_merges: p.ignore_merges,
            pre: p.pre,
            word_re,
            special_re,
            special_ids,
            bos,
            eos,
            cache: BpeCache::default(),
        })
    }

    /// The same tokenizer with another pre-tokenizer (for a GGUF `tokenizer.ggml.pre`
    /// other than `"smollm"`, see [`PreTokenizer::from_gguf_pre`]).
    pub fn with_pre_tokenizer(mut self, pre: PreTokenizer) -> Self {
        self.pre = pre;
        self.cache = BpeCache::default();
        self
    }

    /// The same tokenizer with another end-of-sequence id (e.g. from
    /// `generation_config.json`); an error if `id` is not a token.
    pub fn with_eos(mut self, id: i64) -> Result<Self> {
        if self.token(id).is_none() {
            return Err(Error::format(
                "<tokenizer>",
                format!("eos id {id} is not a token id"),
            ));
        }
        self.eos = id;
        Ok(self)
    }

    /// The pre-tokenizer in use.
    pub fn pre_tokenizer(&self) -> PreTokenizer {
        self.pre
    }

    /// Token ids of `text` (special tokens included, no BOS); see the module
    /// documentation. Never fails: bytes the vocabulary cannot spell are dropped.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut out = Vec::new();
        let mut last = 0;
        if let Some(re) = &self.special_re {
            for m in re.find_iter(text) {
                self.encode_run(&text[last..m.start()], &mut out);
                if let Some(&id) = self.special_ids.get(m.as_str()) {
                    out.push(id);
                }
                last = m.end();
            }
        }
        self.encode_run(&text[last..], &mut out);
        out.into_iter().map(i64::from).collect()
    }

    /// Like [`ByteBpe::encode`] but special-token text is encoded as ordinary text, so
    /// user input cannot inject `<|im_end|>` into a prompt.
    pub fn encode_ordinary(&self, text: &str) -> Vec<i64> {
        let mut out = Vec::new();
        self.encode_run(text, &mut out);
        out.into_iter().map(i64::from).collect()
    }

    /// Pre-tokenizes and encodes text that contains no special token.
    fn encode_run(&self, text: &str, out: &mut Vec<u32>) {
        if !self.pre.individual_digits {
            self.encode_piece(text, out);
            return;
        }
        // `Digits(individual_digits)`: `tokenizers` splits on `char::is_numeric`
        // (Nd, Nl, No), isolating each one.
        let mut start = 0;
        for (i, c) in text.char_indices() {
            if c.is_numeric() {
                self.encode_piece(&text[start..i], out);
                let end = i + c.len_utf8();
                self.encode_piece(&text[i..end], out);
                start = end;
            }
        }
        self.encode_piece(&text[start..], out);
    }

    /// The ByteLevel pre-tokenizer's regex split of one piece, then BPE on each word.
    fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        if piece.is_empty() {
            return;
        }
        if !self.pre.gpt2_regex {
            self.encode_word(piece.as_bytes(), out);
            return;
        }
        let mut pos = 0;
        while pos < piece.len() {
            let Some(m) = self.word_re.find_at(piece, pos) else {
                break;
            };
            // Every character matches some alternative, so there is no gap; if there
            // were, `tokenizers` (Isolated split) would keep it as a word of its own.
            if m.start() > pos {
                self.encode_word(&piece.as_bytes()[pos..m.start()], out);
            }
            let mut end = m.end();
            let word = m.as_str();
            // `\s+(?!\S)`: see the module documentation.
            if end < piece.len() && word.chars().all(char::is_whitespace) {
                if let Some((last, _)) = word.char_indices().next_back() {
                    if last > 0 {
                        end = m.start() + last;
                    }
                }
            }
            if end == m.start() {
                // An empty match cannot happen with this pattern; never loop on one.
                end = piece[end..]
                    .chars()
                    .next()
                    .map_or(piece.len(), |c| end + c.len_utf8());
            }
            self.encode_word(&piece.as_bytes()[m.start()..end], out);
            pos = end;
        }
        if pos < piece.len() {
            self.encode_word(&piece.as_bytes()[pos..], out);
        }
    }

    /// BPE on the bytes of one word (`tokenizers`' `BPE::tokenize` with its cache).
    fn encode_word(&self, word: &[u8], out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        let cacheable = word.len() <= CACHE_MAX_WORD;
        if cacheable {
            if let Ok(cache) = self.cache.0.lock() {
                if let Some(ids) = cache.get(word) {
                    out.extend_from_slice(ids);
                    return;
                }
            }
        }
        let ids = self.bpe(word);
        out.extend_from_slice(&ids);
        if cacheable {
            if let Ok(mut cache) = self.cache.0.lock() {
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
                cache.insert(word.into(), ids);
            }
        }
    }

    fn bpe(&self, word: &[u8]) -> Vec<u32> {
        if self.ignore_merges {
            let mapped: String = word.iter().map(|&b| self.byte_chars[b as usize]).collect();
            if let Some(&id) = self.vocab.get(&mapped) {
                return vec![id];
            }
        }
        let mut syms: Vec<Sym> = Vec::with_capacity(word.len());
        let push = |syms: &mut Vec<Sym>, id: u32| {
            let i = syms.len();
            if let Some(last) = syms.last_mut() {
                last.next = Some(i);
            }
            syms.push(Sym {
                id,
                live: true,
                prev: i.checked_sub(1),
                next: None,
            });
        };
        let mut pending_unk = false;
        for &b in word {
            match self.byte_ids[b as usize] {
                Some(id) => {
                    if std::mem::take(&mut pending_unk) {
                        if let Some(u) = self.unk {
                            push(&mut syms, u);
                        }
                    }
                    push(&mut syms, id);
                }
                // `tokenizers`: an unknown symbol becomes unk_token (runs fused with
                // fuse_unk) or, without one, is dropped.
                None => {
                    if self.unk.is_some() {
                        if pending_unk && !self.fuse_unk {
                            if let Some(u) = self.unk {
                                push(&mut syms, u);
                            }
                        }
                        pending_unk = true;
                    }
                }
            }
        }
        if pending_unk {
            if let Some(u) = self.unk {
                push(&mut syms, u);
            }
        }
        self.merge_all(&mut syms);
        syms.iter().filter(|s| s.live).map(|s| s.id).collect()
    }

    /// `tokenizers`' `Word::merge_all`: a min-heap on (rank, position); stale entries
    /// (a side already merged away) are skipped when popped.
    fn merge_all(&self, syms: &mut [Sym]) {
        let mut queue: BinaryHeap<Merge> = syms
            .windows(2)
            .enumerate()
            .filter_map(|(pos, w)| {
                self.merges
                    .get(&(w[0].id, w[1].id))
                    .map(|&(rank, new_id)| Merge { pos, rank, new_id })
            })
            .collect();
        while let Some(top) = queue.pop() {
            let Some(cur) = syms.get(top.pos).copied() else {
                continue;
            };
            if !cur.live {
                continue;
            }
            let Some(next_pos) = cur.next else {
                continue;
            };
            let right = syms[next_pos];
            match self.merges.get(&(cur.id, right.id)) {
                Some(&(_, new_id)) if new_id == top.new_id => {}
                _ => continue,
            }
            syms[top.pos].id = top.new_id;
            syms[top.pos].next = right.next;
            syms[next_pos].live = false;
            if let Some(n) = right.next {
                syms[n].prev = Some(top.pos);
            }
            let cur = syms[top.pos];
            if let Some(p) = cur.prev {
                if let Some(&(rank, new_id)) = self.merges.get(&(syms[p].id, cur.id)) {
                    queue.push(Merge {
                        pos: p,
                        rank,
                        new_id,
                    });
                }
            }
            if let Some(n) = cur.next {
                if let Some(&(rank, new_id)) = self.merges.get(&(cur.id, syms[n].id)) {
                    queue.push(Merge {
                        pos: top.pos,
                        rank,
                        new_id,
                    });
                }
            }
        }
    }

    /// Display text of generated ids: `tokenizers`' `decode(ids, skip_special_tokens:
    /// true)`. Special tokens (`<|im_end|>`, GGUF CONTROL tokens) and ids outside the
    /// vocabulary are skipped; the bytes of the rest are joined and read as UTF-8, each
    /// invalid sequence becoming one U+FFFD. Equal to feeding every id through a
    /// [`ByteBpeStream`].
    pub fn decode(&self, ids: &[i64]) -> String {
        self.decode_bytes(ids, false)
    }

    /// `tokenizers`' `decode(ids, skip_special_tokens: false)`: special tokens appear as
    /// their text ("The capital of France is Paris.<|im_end|>"). Ids outside the
    /// vocabulary are skipped.
    pub fn decode_with_special(&self, ids: &[i64]) -> String {
        self.decode_bytes(ids, true)
    }

    fn decode_bytes(&self, ids: &[i64], show_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            self.push_bytes(id, show_special, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Appends the bytes of one id, unless it is hidden or not a token.
    fn push_bytes(&self, id: i64, show_special: bool, out: &mut Vec<u8>) {
        let Some(i) = usize::try_from(id).ok().filter(|&i| i < self.tokens.len()) else {
            return;
        };
        match self.kinds[i] {
            Kind::Missing => {}
            Kind::Control if !show_special => {}
            _ => token_bytes(&self.tokens[i], out),
        }
    }

    /// Token text of an id as stored in the vocabulary ("Ġworld", "<|im_end|>"), for
    /// debugging; `None` for ids outside the vocabulary.
    pub fn token(&self, id: i64) -> Option<&str> {
        let i = usize::try_from(id).ok()?;
        match self.kinds.get(i)? {
            Kind::Missing => None,
            _ => Some(&self.tokens[i]),
        }
    }

    /// Id of a token text as stored in the vocabulary ("<|im_end|>", "Ġworld").
    pub fn id_of(&self, token: &str) -> Option<i64> {
        self.vocab.get(token).map(|&id| i64::from(id))
    }

    /// Whether `id` is a special token that [`ByteBpe::decode`] hides.
    pub fn is_special(&self, id: i64) -> bool {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.kinds.get(i))
            .is_some_and(|k| *k == Kind::Control)
    }

    /// End of sequence: generation stops here (`<|im_end|>`, 2, for SmolLM2-Instruct).
    pub fn eos_id(&self) -> i64 {
        self.eos
    }

    /// Beginning of sequence as the vocabulary declares it (GGUF: `<|im_start|>`, 1 for
    /// SmolLM2); `encode` never adds it.
    pub fn bos_id(&self) -> Option<i64> {
        self.bos
    }

    /// Number of token ids (49152 for SmolLM2): the embedding rows the model needs.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
}

/// Splits a "left right" merge at its first space after the first character, as
/// llama.cpp does (`find(' ', 1)`); both sides must be non-empty.
fn split_merge(m: &str) -> Option<(String, String)> {
    let (i, _) = m.char_indices().skip(1).find(|&(_, c)| c == ' ')?;
    let (a, b) = (&m[..i], &m[i + 1..]);
    (!a.is_empty() && !b.is_empty()).then(|| (a.to_string(), b.to_string()))
}

fn type_of(v: &Value) -> String {
    v.get("type")
        .and_then(Value::as_str)
        .map_or_else(|| "(without a type)".to_string(), str::to_string)
}

/// The `pre_tokenizer` layouts reproduced exactly: `ByteLevel` (add_prefix_space false)
/// alone or after `Digits`, possibly inside a `Sequence`.
fn parse_pre_tokenizer(v: &Value) -> std::result::Result<PreTokenizer, String> {
    let steps: Vec<&Value> = match type_of(v).as_str() {
        "Sequence" => v
            .get("pretokenizers")
            .and_then(Value::as_array)
            .ok_or("pre_tokenizer Sequence without a pretokenizers list")?
            .iter()
            .collect(),
        _ if v.is_null() => Vec::new(),
        _ => vec![v],
    };
    let mut digits: Option<bool> = None;
    let mut byte_level: Option<bool> = None;
    for step in steps {
        match type_of(step).as_str() {
            "Digits" if byte_level.is_none() && digits.is_none() => {
                digits = Some(step.get("individual_digits").and_then(Value::as_bool) == Some(true));
            }
            "ByteLevel" if byte_level.is_none() => {
                if step.get("add_prefix_space").and_then(Value::as_bool) == Some(true) {
                    return Err("ByteLevel add_prefix_space is not supported".into());
                }
                byte_level = Some(step.get("use_regex").and_then(Value::as_bool) != Some(false));
            }
            t => return Err(format!("unsupported pre_tokenizer step {t}")),
        }
    }
    let gpt2_regex = byte_level.ok_or("no ByteLevel pre_tokenizer: not a byte-level BPE")?;
    match digits {
        // Grouped digits are what the regex's ` ?\p{N}+` does anyway, except that Digits
        // also cuts the optional space off; not reproduced.
        Some(false) => Err("Digits without individual_digits is not supported".into()),
        individual => Ok(PreTokenizer {
            individual_digits: individual.unwrap_or(false),
            gpt2_regex,
        }),
    }
}

#[derive(Debug, Clone, Copy)]
struct Sym {
    id: u32,
    /// False once merged into its left neighbour.
    live: bool,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Min-heap entry on (rank, position), as `tokenizers`' `Merge` ordering.
#[derive(PartialEq, Eq)]
struct Merge {
    pos: usize,
    rank: u32,
    new_id: u32,
}

impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Merge {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.pos.cmp(&self.pos))
    }
}

/// Incremental display decoder for generated ids. The concatenation of everything
/// [`ByteBpeStream::push`] and [`ByteBpeStream::finish`] return equals
/// [`ByteBpe::decode`] (or [`ByteBpe::decode_with_special`]) of the same ids: bytes of a
/// character split over several tokens are held back until the character is complete,
/// like [`crate::tokenizer::StreamDecoder`].
#[derive(Debug, Clone, Default)]
pub struct ByteBpeStream {
    pending: Vec<u8>,
    show_special: bool,
}

impl ByteBpeStream {
    /// A decoder that hides special tokens (as [`ByteBpe::decode`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that shows special tokens (as [`ByteBpe::decode_with_special`]).
    pub fn with_special_tokens() -> Self {
        Self {
            pending: Vec::new(),
            show_special: true,
        }
    }

    /// Feeds one id and returns the text that became final.
    pub fn push(&mut self, tok: &ByteBpe, id: i64) -> String {
        tok.push_bytes(id, self.show_special, &mut self.pending);
        self.drain(false)
    }

    /// Flushes bytes still waiting for the rest of a character (one U+FFFD for them,
    /// as `String::from_utf8_lossy` does for a truncated sequence).
    pub fn finish(&mut self) -> String {
        self.drain(true)
    }

    /// Emits the longest decidable prefix of `pending`. Invalid sequences are decided by
    /// the bytes already seen, so emitting them now gives the same U+FFFD as decoding
    /// the whole text at once; only an incomplete tail waits.
    fn drain(&mut self, last: bool) -> String {
        let mut out = String::new();
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&rest[..valid]));
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += valid + n;
                        }
                        None if last => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = self.pending.len();
                            break;
                        }
                        None => {
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}

