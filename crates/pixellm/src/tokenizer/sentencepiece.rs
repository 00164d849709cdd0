//! `tokenizer.model` reader and sentencepiece BPE encoder.
//!
//! The file is a protobuf `ModelProto` (sentencepiece_model.proto). It is decoded with
//! the small wire reader in `protobuf.rs`, validated like sentencepiece's
//! `ModelInterface::InitializePieces`, and encoded with the algorithm of
//! sentencepiece's `bpe_model.cc` (highest-score adjacent merge first, leftmost on
//! ties, unused pieces split back, byte fallback for unknown characters), so ids match
//! `SentencePieceProcessor::Encode` as called by the slow `LlamaTokenizer`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::protobuf::{as_i32, expect_bytes, expect_f32, expect_string, expect_varint, Reader};
use super::vocab::{byte_piece, parse_byte_piece, PieceKind, Vocab, DEFAULT_UNK_SURFACE, SPACE};
use crate::error::{Error, Result};

/// One entry of `ModelProto.pieces`.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece text (`"▁the"`, `"<0x0A>"`, `"<s>"`, ...).
    pub piece: String,
    /// BPE merge priority: higher merges first.
    pub score: f32,
    /// The piece type.
    pub kind: PieceKind,
}

/// The `TrainerSpec` fields that matter for encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerSpec {
    /// 1 unigram, 2 BPE, 3 word, 4 char (proto default: unigram).
    pub model_type: i32,
    /// Unknown characters become `<0xXX>` byte pieces.
    pub byte_fallback: bool,
    /// Whitespace is attached to the end of pieces instead of the start.
    pub treat_whitespace_as_suffix: bool,
    /// What decoding prints for `<unk>` (default " ⁇ ").
    pub unk_surface: Option<String>,
    /// Declared special ids (informative; the pieces' types are authoritative).
    pub unk_id: i32,
    /// See `unk_id`.
    pub bos_id: i32,
    /// See `unk_id`.
    pub eos_id: i32,
    /// See `unk_id`; -1 when there is no pad piece.
    pub pad_id: i32,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        Self {
            model_type: 1,
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            unk_surface: None,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
        }
    }
}

/// `NormalizerSpec` (proto defaults: everything on, no character map).
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizerSpec {
    /// Rule name ("identity" for LLaMA).
    pub name: String,
    /// Length of the compiled normalisation rules; only an empty map is supported.
    pub precompiled_charsmap_len: usize,
    /// Prepend "▁" to every encoded string.
    pub add_dummy_prefix: bool,
    /// Drop leading/trailing spaces and collapse runs of spaces.
    pub remove_extra_whitespaces: bool,
    /// Write spaces as "▁".
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            precompiled_charsmap_len: 0,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// A decoded `tokenizer.model`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelProto {
    /// The vocabulary in id order.
    pub pieces: Vec<Piece>,
    /// Training settings that also steer encoding.
    pub trainer_spec: TrainerSpec,
    /// Text normalisation settings.
    pub normalizer_spec: NormalizerSpec,
}

fn not_a_model(file: &str, msg: impl std::fmt::Display) -> Error {
    Error::format(file, format!("not a sentencepiece ModelProto: {msg}"))
}

fn piece_kind(v: u64) -> PieceKind {
    // proto2 keeps unknown enum values out of the field, leaving the default (NORMAL).
    match v {
        2 => PieceKind::Unknown,
        3 => PieceKind::Control,
        4 => PieceKind::UserDefined,
        5 => PieceKind::Unused,
        6 => PieceKind::Byte(0),
        _ => PieceKind::Normal,
    }
}

fn parse_piece(buf: &[u8]) -> std::result::Result<Piece, String> {
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceKind::Normal,
    };
    let mut r = Reader::new(buf);
    while let Some((field, v)) = r.next_field()? {
        match field {
            1 => piece.piece = expect_string(field, v)?,
            2 => piece.score = expect_f32(field, v)?,
            3 => piece.kind = piece_kind(expect_varint(field, v)?),
            _ => {}
        }
    }
    Ok(piece)
}

fn parse_trainer(buf: &[u8], t: &mut TrainerSpec) -> std::result::Result<(), String> {
    let mut r = Reader::new(buf);
    while let Some((field, v)) = r.next_field()? {
        match field {
            3 => t.model_type = as_i32(expect_varint(field, v)?),
            24 => t.treat_whitespace_as_suffix = expect_varint(field, v)? != 0,
            35 => t.byte_fallback = expect_varint(field, v)? != 0,
            40 => t.unk_id = as_i32(expect_varint(field, v)?),
            41 => t.bos_id = as_i32(expect_varint(field, v)?),
            42 => t.eos_id = as_i32(expect_varint(field, v)?),
            43 => t.pad_id = as_i32(expect_varint(field, v)?),
            44 => t.unk_surface = Some(expect_string(field, v)?),
            _ => {}
        }
    }
    Ok(())
}

fn parse_normalizer(buf: &[u8], n: &mut NormalizerSpec) -> std::result::Result<(), String> {
    let mut r = Reader::new(buf);
    while let Some((field, v)) = r.next_field()? {
        match field {
            1 => n.name = expect_string(field, v)?,
            2 => n.precompiled_charsmap_len = expect_bytes(field, v)?.len(),
            3 => n.add_dummy_prefix = expect_varint(field, v)? != 0,
            4 => n.remove_extra_whitespaces = expect_varint(field, v)? != 0,
            5 => n.escape_whitespaces = expect_varint(field, v)? != 0,
            _ => {}
        }
    }
    Ok(())
}

impl ModelProto {
    /// Decodes the protobuf wire format. `file` names the source in errors.
    /// Anything that is not a well-formed `ModelProto` with at least one piece gives
    /// `Error::Format` with a message starting "not a sentencepiece ModelProto".
    pub fn parse(bytes: &[u8], file: &str) -> Result<Self> {
        let mut pieces = Vec::new();
        let mut trainer_spec = TrainerSpec::default();
        let mut normalizer_spec = NormalizerSpec::default();
        let mut r = Reader::new(bytes);
        let res: std::result::Result<(), String> = (|| {
            while let Some((field, v)) = r.next_field()? {
                match field {
                    1 => {
                        let p = parse_piece(expect_bytes(field, v)?)
                            .map_err(|e| format!("piece {}: {e}", pieces.len()))?;
                        pieces.push(p);
                    }
                    // Repeated occurrences of a message field merge, as protobuf specifies.
                    2 => parse_trainer(expect_bytes(field, v)?, &mut trainer_spec)
                        .map_err(|e| format!("trainer_spec: {e}"))?,
                    3 => parse_normalizer(expect_bytes(field, v)?, &mut normalizer_spec)
                        .map_err(|e| format!("normalizer_spec: {e}"))?,
                    4 | 5 => {
                        expect_bytes(field, v)?;
                    }
                    _ => {}
                }
            }
            Ok(())
        })();
        res.map_err(|e| not_a_model(file, e))?;
        if pieces.is_empty() {
            return Err(not_a_model(file, "it contains no pieces"));
        }
        Ok(Self {
            pieces,
            trainer_spec,
            normalizer_spec,
        })
    }
}

/// Max-heap entry: highest score first, then the leftmost pair (`bpe_model.cc`'s
/// `SymbolPairComparator`).
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        // Scores are canonicalised at load (no NaN, no -0.0), so total_cmp matches
        // the C++ `<` used by sentencepiece.
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
    freeze: bool,
}

/// The sentencepiece BPE encoder for one text chunk.
#[derive(Debug, Clone)]
pub struct SpBpe {
    vocab: Vocab,
    /// `ModelInterface::pieces_`: the pieces merges may produce (normal, user-defined, unused).
    mergeable: HashMap<String, u32>,
    scores: Vec<f32>,
    user_defined: Vec<String>,
    byte_ids: Option<Box<[u32; 256]>>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

impl SpBpe {
    /// Validates a parsed model the way sentencepiece does at load time and builds the
    /// encoder. Only `model_type` BPE with identity normalisation is supported.
    pub fn new(model: &ModelProto, file: &str) -> Result<Self> {
        let bad = |msg: String| Error::format(file, format!("sentencepiece model: {msg}"));
        let t = &model.trainer_spec;
        let n = &model.normalizer_spec;
        if t.model_type != 2 {
            let name = match t.model_type {
                1 => "UNIGRAM".to_string(),
                3 => "WORD".to_string(),
                4 => "CHAR".to_string(),
                other => format!("#{other}"),
            };
            return Err(bad(format!(
                "unsupported model_type {name}: only BPE (the LLaMA tokenizer) is implemented"
            )));
        }
        if n.precompiled_charsmap_len > 0 {
            return Err(bad(format!(
                "normalizer '{}' has a compiled character map; only identity normalisation \
                 (the LLaMA tokenizer) is implemented",
                n.name
            )));
        }
        if t.treat_whitespace_as_suffix {
            return Err(bad("treat_whitespace_as_suffix is not supported".into()));
        }

        let len = model.pieces.len();
        if len > u32::MAX as usize / 2 {
            return Err(bad(format!("{len} pieces is too many")));
        }
        let mut pieces = Vec::with_capacity(len);
        let mut kinds = Vec::with_capacity(len);
        let mut scores = Vec::with_capacity(len);
        let mut mergeable = HashMap::with_capacity(len);
        let mut reserved: HashMap<String, u32> = HashMap::new();
        let mut user_defined = Vec::new();
        let mut unk_id = None;
        let mut byte_found = [false; 256];
        for (i, p) in model.pieces.iter().enumerate() {
            let id = i as u32;
            if p.piece.is_empty() {
                return Err(bad(format!("piece {i} is empty")));
            }
            let mut kind = p.kind;
            let normal = matches!(
                kind,
                PieceKind::Normal | PieceKind::UserDefined | PieceKind::Unused
            );
            let map = if normal {
                &mut mergeable
            } else {
                &mut reserved
            };
            if map.insert(p.piece.clone(), id).is_some() {
                return Err(bad(format!("piece {:?} is defined twice", p.piece)));
            }
            match kind {
                PieceKind::UserDefined => user_defined.push(p.piece.clone()),
                PieceKind::Unknown if unk_id.replace(id).is_some() => {
                    return Err(bad("more than one unknown piece".into()));
                }
                PieceKind::Byte(_) => {
                    if !t.byte_fallback {
                        return Err(bad(format!(
                            "byte piece {:?} found although byte_fallback is false",
                            p.piece
                        )));
                    }
                    let b = parse_byte_piece(&p.piece)
                        .ok_or_else(|| bad(format!("byte piece {:?} is invalid", p.piece)))?;
                    byte_found[b as usize] = true;
                    kind = PieceKind::Byte(b);
                }
                _ => {}
            }
            pieces.push(p.piece.clone());
            kinds.push(kind);
            // -0.0 == 0.0 and NaN compares false both ways in C++; canonicalise so the
            // heap's total order agrees with sentencepiece on every real model.
            let s = p.score + 0.0;
            scores.push(if s.is_nan() { f32::NEG_INFINITY } else { s });
        }
        let unk_id = unk_id.ok_or_else(|| bad("no unknown (<unk>) piece".into()))?;
        if t.byte_fallback && byte_found.iter().any(|f| !f) {
            return Err(bad(
                "byte_fallback is true but not all 256 <0xXX> pieces exist".into(),
            ));
        }

        // PieceToId looks at control/unknown/byte pieces before normal ones.
        let mut lookup = mergeable.clone();
        lookup.extend(reserved.iter().map(|(k, v)| (k.clone(), *v)));
        let byte_ids = t.byte_fallback.then(|| {
            let mut ids = Box::new([unk_id; 256]);
            for (b, slot) in ids.iter_mut().enumerate() {
                if let Some(&id) = lookup.get(&byte_piece(b as u8)) {
                    *slot = id;
                }
            }
            ids
        });
        // Longest match wins, so try long user-defined pieces first.
        user_defined.sort_by_key(|s| std::cmp::Reverse(s.len()));

        let vocab = Vocab {
            pieces,
            kinds,
            lookup,
            unk_id,
            strip_leading_space: n.add_dummy_prefix || n.remove_extra_whitespaces,
            remove_extra_whitespaces: n.remove_extra_whitespaces,
            unk_surface: t
                .unk_surface
                .clone()
                .unwrap_or_else(|| DEFAULT_UNK_SURFACE.to_string()),
        };
        Ok(Self {
            vocab,
            mergeable,
            scores,
            user_defined,
            byte_ids,
            add_dummy_prefix: n.add_dummy_prefix,
            remove_extra_whitespaces: n.remove_extra_whitespaces,
            escape_whitespaces: n.escape_whitespaces,
        })
    }

    /// Parses and validates `tokenizer.model` bytes in one step.
    pub fn from_bytes(bytes: &[u8], file: &str) -> Result<Self> {
        Self::new(&ModelProto::parse(bytes, file)?, file)
    }

    pub(crate) fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Number of pieces.
    pub fn len(&self) -> usize {
        self.vocab.len()
    }

    /// Never true for a loaded model (validation requires `<unk>`).
    pub fn is_empty(&self) -> bool {
        self.vocab.len() == 0
    }

    /// sentencepiece `Normalizer::Normalize` for an identity rule set.
    pub fn normalize(&self, text: &str) -> String {
        let mut input = text;
        if self.remove_extra_whitespaces {
            input = input.trim_start_matches(' ');
        }
        if input.is_empty() {
            return String::new();
        }
        let ws = if self.escape_whitespaces { SPACE } else { " " };
        let mut out = String::with_capacity(input.len() + 8);
        if self.add_dummy_prefix {
            out.push_str(ws);
        }
        let mut prev_space = self.remove_extra_whitespaces;
        for c in input.chars() {
            if c == ' ' {
                if !prev_space {
                    out.push_str(ws);
                }
                prev_space = self.remove_extra_whitespaces;
            } else {
                out.push(c);
                prev_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(ws) {
                out.truncate(out.len() - ws.len());
            }
        }
        out
    }

    /// `SentencePieceProcessor::Encode(text)` as ids: normalise, BPE, split unused
    /// pieces, byte-fallback unknown characters, fuse runs of `<unk>`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let normalized = self.normalize(text);
        let mut out = Vec::new();
        self.encode_normalized(&normalized, &mut out);
        out
    }

    fn prefix_len(&self, rest: &str) -> (usize, bool) {
        for u in &self.user_defined {
            if rest.starts_with(u.as_str()) {
                return (u.len(), true);
            }
        }
        (
            rest.chars().next().map_or(rest.len(), char::len_utf8),
            false,
        )
    }

    /// Queues the pair `left`+`right` if their concatenation is a mergeable piece.
    fn maybe_add<'a>(
        &self,
        s: &'a str,
        symbols: &[Symbol],
        agenda: &mut BinaryHeap<Candidate>,
        rev_merge: &mut HashMap<&'a str, (&'a str, &'a str)>,
        left: Option<usize>,
        right: Option<usize>,
    ) {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let (ls, rs) = (&symbols[l], &symbols[r]);
        if ls.freeze || rs.freeze {
            return;
        }
        let size = ls.len + rs.len;
        let merged = &s[ls.start..ls.start + size];
        let Some(&id) = self.mergeable.get(merged) else {
            return;
        };
        agenda.push(Candidate {
            score: self.scores[id as usize],
            left: l,
            right: r,
            size,
        });
        if self.vocab.kinds[id as usize] == PieceKind::Unused {
            let split = ls.start + ls.len;
            rev_merge.insert(merged, (&s[ls.start..split], &s[split..ls.start + size]));
        }
    }

    fn encode_normalized(&self, s: &str, out: &mut Vec<u32>) {
        if s.is_empty() {
            return;
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(s.len());
        let mut pos = 0;
        while pos < s.len() {
            let (len, freeze) = self.prefix_len(&s[pos..]);
            let idx = symbols.len();
            symbols.push(Symbol {
                start: pos,
                len,
                prev: idx.checked_sub(1),
                next: (pos + len < s.len()).then_some(idx + 1),
                freeze,
            });
            pos += len;
        }

        let mut agenda = BinaryHeap::with_capacity(symbols.len());
        // Unused pieces take part in merging but are split back afterwards; remember
        // how each was last formed (bpe_model.cc's `rev_merge`).
        let mut rev_merge: HashMap<&str, (&str, &str)> = HashMap::new();
        for i in 1..symbols.len() {
            self.maybe_add(
                s,
                &symbols,
                &mut agenda,
                &mut rev_merge,
                Some(i - 1),
                Some(i),
            );
        }

        while let Some(top) = agenda.pop() {
            let (l, r) = (symbols[top.left], symbols[top.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != top.size {
                continue; // stale: one side has changed since the pair was queued
            }
            symbols[top.left].len += r.len;
            symbols[top.left].next = r.next;
            if let Some(n) = r.next {
                symbols[n].prev = Some(top.left);
            }
            symbols[top.right].len = 0;
            let (prev, next) = (symbols[top.left].prev, symbols[top.left].next);
            self.maybe_add(
                s,
                &symbols,
                &mut agenda,
                &mut rev_merge,
                prev,
                Some(top.left),
            );
            self.maybe_add(
                s,
                &symbols,
                &mut agenda,
                &mut rev_merge,
                Some(top.left),
                next,
            );
        }

        let text = |sym: &Symbol| &s[sym.start..sym.start + sym.len];
        let mut prev_unk = false;
        let mut stack: Vec<&str> = Vec::new();
        let mut index = Some(0);
        while let Some(i) = index {
            stack.push(text(&symbols[i]));
            while let Some(w) = stack.pop() {
                let id = self.vocab.get(w).unwrap_or(self.vocab.unk_id);
                let kind = self.vocab.kinds[id as usize];
                if kind == PieceKind::Unused {
                    if let Some(&(a, b)) = rev_merge.get(w) {
                        stack.push(b);
                        stack.push(a);
                        continue;
                    }
                }
                let is_unk = kind == PieceKind::Unknown;
                match (&self.byte_ids, is_unk) {
                    (Some(bytes), true) => out.extend(w.bytes().map(|b| bytes[b as usize])),
                    // Consecutive unknown pieces are merged into one <unk>.
                    (None, true) if prev_unk => {}
                    _ => out.push(id),
                }
                prev_unk = is_unk;
            }
            index = symbols[i].next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serialises a minimal ModelProto, for tests that need odd models.
    fn proto(pieces: &[(&str, f32, u64)], trainer: &[u8], normalizer: &[u8]) -> Vec<u8> {
        fn len_field(out: &mut Vec<u8>, field: u8, payload: &[u8]) {
            out.push(field << 3 | 2);
            let mut n = payload.len();
            loop {
                let b = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(b);
                    break;
                }
                out.push(b | 0x80);
            }
            out.extend_from_slice(payload);
        }
        let mut out = Vec::new();
        for (p, score, ty) in pieces {
            let mut m = Vec::new();
            len_field(&mut m, 1, p.as_bytes());
            m.push(2 << 3 | 5);
            m.extend_from_slice(&score.to_le_bytes());
            m.extend_from_slice(&[3 << 3, *ty as u8]);
            len_field(&mut out, 1, &m);
        }
        len_field(&mut out, 2, trainer);
        len_field(&mut out, 3, normalizer);
        out
    }

    const BPE: &[u8] = &[3 << 3, 2];
    const LLAMA_NORM: &[u8] = &[3 << 3, 1, 4 << 3, 0];

    #[test]
    fn merges_by_score_then_leftmost() {
        let pieces = [
            ("<unk>", 0.0, 2),
            ("a", 0.0, 1),
            ("b", 0.0, 1),
            ("\u{2581}", 0.0, 1),
            ("ab", -1.0, 1),
            ("ba", -1.0, 1),
            ("\u{2581}a", -5.0, 1),
        ];
        let m = SpBpe::from_bytes(&proto(&pieces, BPE, LLAMA_NORM), "t").unwrap();
        // "▁aba": "ab" and "ba" tie at -1 → leftmost "ab" wins, then "▁"+"ab" is not a piece.
        assert_eq!(m.encode("aba"), vec![3, 4, 1]);
        // Unknown character without byte fallback: one fused <unk>.
        assert_eq!(m.encode("xy"), vec![3, 0]);
        assert_eq!(m.encode(""), Vec::<u32>::new());
    }

    #[test]
    fn unused_pieces_are_split_back() {
        let pieces = [
            ("<unk>", 0.0, 2),
            ("a", 0.0, 1),
            ("b", 0.0, 1),
            ("c", 0.0, 1),
            ("ab", -1.0, 5), // unused
            ("abc", -2.0, 1),
        ];
        let norm: &[u8] = &[3 << 3, 0, 4 << 3, 0];
        let m = SpBpe::from_bytes(&proto(&pieces, BPE, norm), "t").unwrap();
        assert_eq!(m.encode("ab"), vec![1, 2]);
        assert_eq!(m.encode("abc"), vec![5]);
    }

    #[test]
    fn remove_extra_whitespaces_normalisation() {
        let pieces = [("<unk>", 0.0, 2), ("a", 0.0, 1)];
        let m = SpBpe::from_bytes(&proto(&pieces, BPE, &[]), "t").unwrap();
        assert_eq!(m.normalize("  a   a  "), "\u{2581}a\u{2581}a");
        assert_eq!(m.normalize("   "), "");
    }

    #[test]
    fn refuses_unigram_and_charsmaps() {
        let pieces = [("<unk>", 0.0, 2), ("a", 0.0, 1)];
        let err = SpBpe::from_bytes(&proto(&pieces, &[3 << 3, 1], LLAMA_NORM), "t").unwrap_err();
        assert!(err.to_string().contains("UNIGRAM"), "{err}");
        let err = SpBpe::from_bytes(&proto(&pieces, BPE, &[2 << 3 | 2, 1, 0]), "t").unwrap_err();
        assert!(err.to_string().contains("character map"), "{err}");
        let no_unk = [("a", 0.0, 1)];
        assert!(SpBpe::from_bytes(&proto(&no_unk, BPE, LLAMA_NORM), "t").is_err());
        let byte_without_fallback = [("<unk>", 0.0, 2), ("<0x41>", 0.0, 6)];
        assert!(SpBpe::from_bytes(&proto(&byte_without_fallback, BPE, LLAMA_NORM), "t").is_err());
    }

    #[test]
    fn garbage_is_not_a_model() {
        for bytes in [
            &b""[..],
            b"{\"version\": \"1.0\"}",
            b"\x08\x01",
            &[0xff; 64],
        ] {
            let err = ModelProto::parse(bytes, "x.model").unwrap_err();
            assert!(
                matches!(&err, Error::Format { file, msg } if file == "x.model"
                    && msg.starts_with("not a sentencepiece ModelProto: ")),
                "{err}"
            );
        }
    }
}
