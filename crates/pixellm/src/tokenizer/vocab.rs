//! The base vocabulary (pieces, their kinds) and sentencepiece's `Decode` rules,
//! shared by the `tokenizer.model` and `tokenizer.json` loaders.

use std::collections::HashMap;

/// The sentencepiece meta-symbol that stands for a space.
pub(crate) const SPACE: &str = "\u{2581}";
/// sentencepiece's default `unk_surface` (" ⁇ ").
pub(crate) const DEFAULT_UNK_SURFACE: &str = " \u{2047} ";

/// What a base-vocabulary piece is (sentencepiece `ModelProto.SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// An ordinary piece that BPE merges can produce.
    Normal,
    /// `<unk>`.
    Unknown,
    /// `<s>`, `</s>`: never produced from text, decoded as nothing.
    Control,
    /// A user-defined piece: matched whole, never merged further.
    UserDefined,
    /// A piece that takes part in merges but is split back before output.
    Unused,
    /// `<0xXX>` byte-fallback piece holding this byte.
    Byte(u8),
}

/// Pieces of the base vocabulary, indexed by id, plus the flags that decoding needs.
#[derive(Debug, Clone)]
pub(crate) struct Vocab {
    pub pieces: Vec<String>,
    pub kinds: Vec<PieceKind>,
    /// sentencepiece `PieceToId` without the unk fallback: control/unknown/byte pieces
    /// shadow normal pieces with the same text, as in `ModelInterface::PieceToId`.
    pub lookup: HashMap<String, u32>,
    pub unk_id: u32,
    /// `add_dummy_prefix || remove_extra_whitespaces`: decode drops the first "▁".
    pub strip_leading_space: bool,
    /// `remove_extra_whitespaces`: decode does not count the dropped "▁" as seen.
    pub remove_extra_whitespaces: bool,
    pub unk_surface: String,
}

impl Vocab {
    pub(crate) fn len(&self) -> usize {
        self.pieces.len()
    }

    pub(crate) fn kind(&self, id: i64) -> Option<PieceKind> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.kinds.get(i).copied())
    }

    /// `PieceToId` semantics without falling back to unk.
    pub(crate) fn get(&self, piece: &str) -> Option<u32> {
        self.lookup.get(piece).copied()
    }
}

/// Parses `<0xXX>`. Only the upper-case spelling counts, as in sentencepiece's
/// `PieceToByte`.
pub(crate) fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    let upper = |c: char| c.is_ascii_digit() || ('A'..='F').contains(&c);
    if hex.len() != 2 || !hex.chars().all(upper) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The `<0xXX>` spelling sentencepiece and `tokenizers` both use.
pub(crate) fn byte_piece(b: u8) -> String {
    format!("<0x{b:02X}>")
}

/// sentencepiece `SentencePieceProcessor::Decode` as a push-based state machine, so
/// that streaming and whole-sequence decoding share one implementation and agree
/// byte for byte.
#[derive(Debug, Clone)]
pub(crate) struct SpDecodeState {
    pending: Vec<u8>,
    text_nonempty: bool,
    bos_ws_seen: bool,
    is_bos_ws: bool,
}

impl Default for SpDecodeState {
    fn default() -> Self {
        Self {
            pending: Vec::new(),
            text_nonempty: false,
            bos_ws_seen: false,
            is_bos_ws: true,
        }
    }
}

impl SpDecodeState {
    /// Feeds one base-vocabulary id; appends whatever text is now final to `out`.
    pub(crate) fn push(&mut self, vocab: &Vocab, id: u32, out: &mut String) {
        let idx = id as usize;
        let Some(&kind) = vocab.kinds.get(idx) else {
            return;
        };
        if let PieceKind::Byte(b) = kind {
            self.pending.push(b);
            self.drain_bytes(false, out);
            return;
        }
        self.drain_bytes(true, out);
        if self.bos_ws_seen || self.text_nonempty {
            self.is_bos_ws = false;
        }
        let piece = vocab.pieces[idx].as_str();
        let (text, has_bos_ws) = match kind {
            PieceKind::Control => ("".to_string(), false),
            PieceKind::Unknown => (vocab.unk_surface.clone(), false),
            _ => {
                let mut p = piece;
                let mut consumed = false;
                if self.is_bos_ws && vocab.strip_leading_space {
                    if let Some(rest) = p.strip_prefix(SPACE) {
                        p = rest;
                        consumed = true;
                    }
                    if vocab.remove_extra_whitespaces {
                        consumed = false;
                    }
                }
                (p.replace(SPACE, " "), consumed)
            }
        };
        self.bos_ws_seen = has_bos_ws;
        if !text.is_empty() {
            self.text_nonempty = true;
            out.push_str(&text);
        }
    }

    /// Flushes buffered bytes: each byte that cannot complete a character becomes U+FFFD.
    pub(crate) fn finish(&mut self, out: &mut String) {
        self.drain_bytes(true, out);
    }

    /// Emits every complete character at the front of `pending`. Invalid bytes become
    /// U+FFFD one at a time, as sentencepiece's `ProcessBytePieces` does; an incomplete
    /// but still possible sequence waits unless `last` says no more bytes will come.
    fn drain_bytes(&mut self, last: bool, out: &mut String) {
        let mut i = 0;
        let before = out.len();
        while i < self.pending.len() {
            let rest = &self.pending[i..];
            let need = match rest[0] {
                0x00..=0x7f => 1,
                b if b & 0xe0 == 0xc0 => 2,
                b if b & 0xf0 == 0xe0 => 3,
                b if b & 0xf8 == 0xf0 => 4,
                _ => 0,
            };
            if need == 0 {
                out.push('\u{FFFD}');
                i += 1;
            } else if rest.len() >= need {
                match std::str::from_utf8(&rest[..need]) {
                    Ok(s) => {
                        out.push_str(s);
                        i += need;
                    }
                    Err(_) => {
                        out.push('\u{FFFD}');
                        i += 1;
                    }
                }
            } else {
                let still_possible = matches!(
                    std::str::from_utf8(rest),
                    Err(e) if e.valid_up_to() == 0 && e.error_len().is_none()
                );
                if still_possible && !last {
                    break;
                }
                out.push('\u{FFFD}');
                i += 1;
            }
        }
        self.pending.drain(..i);
        if out.len() > before {
            self.text_nonempty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_piece_spelling() {
        assert_eq!(byte_piece(0x0a), "<0x0A>");
        assert_eq!(parse_byte_piece("<0xE2>"), Some(0xe2));
        assert_eq!(parse_byte_piece("<0xe2>"), None);
        assert_eq!(parse_byte_piece("<0xE>"), None);
        assert_eq!(parse_byte_piece("<0xE22>"), None);
        assert_eq!(parse_byte_piece("0xE2"), None);
    }
}
