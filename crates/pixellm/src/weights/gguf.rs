//! GGUF (llama.cpp's single-file model format): a bounds-checked reader, dequantisation of
//! the common ggml block formats to `f32`, and the mapping of llama-architecture tensors to
//! the Hugging Face LLaMA names and layouts the model code reads.
//!
//! Like the rest of [`super`], nothing in the file is trusted: every count, length and
//! offset is checked against the bytes that remain before anything is allocated or sliced,
//! so a corrupt or hostile file gives an [`Error`], never a panic or a huge allocation.
//! Tensor bytes stay in the (memory-mapped) file until a tensor is read.
//!
//! Layout references: `gguf.cpp`, `ggml-common.h` and `ggml-quants.c` in ggml, and
//! `convert_hf_to_gguf.py` (`LlamaModel.permute`) in llama.cpp.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use super::layout::{contiguous_strides, StoredDType};
use super::{map_file, Bytes, Entry, Source, TensorInfo};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::kernels::quant::{dequantize_block, f16_at, QuantFormat, QuantMatrix};

/// Data-section alignment when `general.alignment` is absent (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// ggml allows at most four dimensions (`GGML_MAX_DIMS`); more can only be corruption.
const MAX_DIMS: u32 = 4;

/// Nested metadata arrays recurse; a cap keeps a hostile file from exhausting the stack.
const MAX_ARRAY_NESTING: usize = 16;

/// Element type of a tensor, as ggml numbers them (`enum ggml_type`).
///
/// Every type with a known block layout is listed so that a file holding exotic tensors can
/// still be opened and listed; [`GgmlType::can_dequantize`] says which ones convert.
#[allow(non_camel_case_types)] // ggml's own spellings, so that messages match llama.cpp's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgmlType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// 32-element blocks: f16 scale, 4-bit values offset by 8.
    Q4_0,
    /// 32-element blocks: f16 scale and minimum, 4-bit values.
    Q4_1,
    /// 32-element blocks: f16 scale, 5-bit values offset by 16.
    Q5_0,
    /// 32-element blocks: f16 scale and minimum, 5-bit values.
    Q5_1,
    /// 32-element blocks: f16 scale, 8-bit values.
    Q8_0,
    /// 32-element blocks: f16 scale and sum, 8-bit values (an intermediate format).
    Q8_1,
    /// 256-element super-blocks, 2-bit values.
    Q2_K,
    /// 256-element super-blocks, 3-bit values.
    Q3_K,
    /// 256-element super-blocks, 4-bit values.
    Q4_K,
    /// 256-element super-blocks, 5-bit values.
    Q5_K,
    /// 256-element super-blocks, 6-bit values.
    Q6_K,
    /// 256-element super-blocks, f32 scale, 8-bit values.
    Q8_K,
    /// Importance-matrix 2-bit type.
    IQ2_XXS,
    /// Importance-matrix 2-bit type.
    IQ2_XS,
    /// Importance-matrix 3-bit type.
    IQ3_XXS,
    /// Importance-matrix 1-bit type.
    IQ1_S,
    /// Non-linear 4-bit type.
    IQ4_NL,
    /// Importance-matrix 3-bit type.
    IQ3_S,
    /// Importance-matrix 2-bit type.
    IQ2_S,
    /// Non-linear 4-bit type with super-blocks.
    IQ4_XS,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// IEEE double precision.
    F64,
    /// Importance-matrix 1-bit type.
    IQ1_M,
    /// bfloat16.
    BF16,
    /// Ternary type.
    TQ1_0,
    /// Ternary type.
    TQ2_0,
    /// Microscaling FP4.
    MXFP4,
    /// NVIDIA FP4.
    NVFP4,
    /// 1-bit type.
    Q1_0,
}

impl GgmlType {
    /// `(ggml id, name, elements per block, bytes per block)` for every known type
    /// (`type_traits` in ggml.c). Ids 4, 5, 31-33 and 36-38 were removed from ggml.
    const TABLE: [(u32, &'static str, usize, usize, GgmlType); 34] = [
        (0, "F32", 1, 4, GgmlType::F32),
        (1, "F16", 1, 2, GgmlType::F16),
        (2, "Q4_0", 32, 18, GgmlType::Q4_0),
        (3, "Q4_1", 32, 20, GgmlType::Q4_1),
        (6, "Q5_0", 32, 22, GgmlType::Q5_0),
        (7, "Q5_1", 32, 24, GgmlType::Q5_1),
        (8, "Q8_0", 32, 34, GgmlType::Q8_0),
        (9, "Q8_1", 32, 36, GgmlType::Q8_1),
        (10, "Q2_K", 256, 84, GgmlType::Q2_K),
        (11, "Q3_K", 256, 110, GgmlType::Q3_K),
        (12, "Q4_K", 256, 144, GgmlType::Q4_K),
        (13, "Q5_K", 256, 176, GgmlType::Q5_K),
        (14, "Q6_K", 256, 210, GgmlType::Q6_K),
        (15, "Q8_K", 256, 292, GgmlType::Q8_K),
        (16, "IQ2_XXS", 256, 66, GgmlType::IQ2_XXS),
        (17, "IQ2_XS", 256, 74, GgmlType::IQ2_XS),
        (18, "IQ3_XXS", 256, 98, GgmlType::IQ3_XXS),
        (19, "IQ1_S", 256, 50, GgmlType::IQ1_S),
        (20, "IQ4_NL", 32, 18, GgmlType::IQ4_NL),
        (21, "IQ3_S", 256, 110, GgmlType::IQ3_S),
        (22, "IQ2_S", 256, 82, GgmlType::IQ2_S),
        (23, "IQ4_XS", 256, 136, GgmlType::IQ4_XS),
        (24, "I8", 1, 1, GgmlType::I8),
        (25, "I16", 1, 2, GgmlType::I16),
        (26, "I32", 1, 4, GgmlType::I32),
        (27, "I64", 1, 8, GgmlType::I64),
        (28, "F64", 1, 8, GgmlType::F64),
        (29, "IQ1_M", 256, 56, GgmlType::IQ1_M),
        (30, "BF16", 1, 2, GgmlType::BF16),
        (34, "TQ1_0", 256, 54, GgmlType::TQ1_0),
        (35, "TQ2_0", 256, 66, GgmlType::TQ2_0),
        (39, "MXFP4", 32, 17, GgmlType::MXFP4),
        (40, "NVFP4", 64, 36, GgmlType::NVFP4),
        (41, "Q1_0", 128, 18, GgmlType::Q1_0),
    ];

    fn row(self) -> &'static (u32, &'static str, usize, usize, GgmlType) {
        // Every variant is in the table (checked by a test), so the fallback is unreachable;
        // it exists only so that this cannot panic.
        Self::TABLE
            .iter()
            .find(|r| r.4 == self)
            .unwrap_or(&Self::TABLE[0])
    }

    /// The type with ggml id `id`, if this reader knows its layout.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::TABLE.iter().find(|r| r.0 == id).map(|r| r.4)
    }

    /// ggml's numeric id.
    pub fn id(self) -> u32 {
        self.row().0
    }

    /// ggml's name (`Q4_1`, `F32`, ...).
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// Elements per block (1 for plain types).
    pub fn block_size(self) -> usize {
        self.row().2
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.row().3
    }

    /// Whether [`GgufFile::dequantize`] converts this type to `f32`.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16
                | BF16
                | F64
                | Q4_0
                | Q4_1
                | Q5_0
                | Q5_1
                | Q8_0
                | Q2_K
                | Q3_K
                | Q4_K
                | Q5_K
                | Q6_K
                | Q8_K
        )
    }

    /// The closest [`StoredDType`] for [`super::WeightFiles::info`]: the plain types map
    /// to themselves, block formats to `Other("Q4_1")` etc.
    pub fn stored_dtype(self) -> StoredDType {
        match self {
            GgmlType::F32 => StoredDType::F32,
            GgmlType::F16 => StoredDType::F16,
            GgmlType::BF16 => StoredDType::BF16,
            GgmlType::F64 => StoredDType::F64,
            GgmlType::I8 => StoredDType::I8,
            GgmlType::I16 => StoredDType::I16,
            GgmlType::I32 => StoredDType::I32,
            GgmlType::I64 => StoredDType::I64,
            other => StoredDType::Other(other.name()),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Type of a metadata value (`enum gguf_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufValueType {
    /// `u8`.
    U8,
    /// `i8`.
    I8,
    /// `u16`.
    U16,
    /// `i16`.
    I16,
    /// `u32`.
    U32,
    /// `i32`.
    I32,
    /// `f32`.
    F32,
    /// One byte, 0 or 1.
    Bool,
    /// `u64` length, then UTF-8 bytes.
    String,
    /// Element type, `u64` count, elements.
    Array,
    /// `u64`.
    U64,
    /// `i64`.
    I64,
    /// `f64`.
    F64,
}

impl GgufValueType {
    fn from_id(id: u32) -> Option<Self> {
        use GgufValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Fewest bytes one value of this type occupies in a file; bounds array counts.
    fn min_size(self) -> usize {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            // Element type (u32) and count (u64) of an empty inner array.
            Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f32`.
    F32(f32),
    /// `f64`.
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// Text (invalid UTF-8 is replaced by U+FFFD, see [`GgufFile`]).
    String(String),
    /// A homogeneous array.
    Array(GgufArray),
}

impl GgufValue {
    /// The value's type.
    pub fn value_type(&self) -> GgufValueType {
        match self {
            GgufValue::U8(_) => GgufValueType::U8,
            GgufValue::I8(_) => GgufValueType::I8,
            GgufValue::U16(_) => GgufValueType::U16,
            GgufValue::I16(_) => GgufValueType::I16,
            GgufValue::U32(_) => GgufValueType::U32,
            GgufValue::I32(_) => GgufValueType::I32,
            GgufValue::U64(_) => GgufValueType::U64,
            GgufValue::I64(_) => GgufValueType::I64,
            GgufValue::F32(_) => GgufValueType::F32,
            GgufValue::F64(_) => GgufValueType::F64,
            GgufValue::Bool(_) => GgufValueType::Bool,
            GgufValue::String(_) => GgufValueType::String,
            GgufValue::Array(_) => GgufValueType::Array,
        }
    }

    /// Any integer type holding a value ≥ 0 (writers differ on u32/u64/i32 for counts).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type whose value fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A float (`f32` widened exactly) or an integer converted to `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// An array.
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A metadata array, stored by element type so that memory stays proportional to the file
/// (a `Vec<GgufValue>` would spend 32 bytes on every 1-byte element).
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    /// `u8` elements.
    U8(Vec<u8>),
    /// `i8` elements.
    I8(Vec<i8>),
    /// `u16` elements.
    U16(Vec<u16>),
    /// `i16` elements.
    I16(Vec<i16>),
    /// `u32` elements.
    U32(Vec<u32>),
    /// `i32` elements.
    I32(Vec<i32>),
    /// `u64` elements.
    U64(Vec<u64>),
    /// `i64` elements.
    I64(Vec<i64>),
    /// `f32` elements.
    F32(Vec<f32>),
    /// `f64` elements.
    F64(Vec<f64>),
    /// Boolean elements.
    Bool(Vec<bool>),
    /// String elements.
    String(Vec<String>),
    /// Nested arrays (each with its own element type).
    Array(Vec<GgufArray>),
}

impl GgufArray {
    /// Element type as written in the file.
    pub fn item_type(&self) -> GgufValueType {
        match self {
            GgufArray::U8(_) => GgufValueType::U8,
            GgufArray::I8(_) => GgufValueType::I8,
            GgufArray::U16(_) => GgufValueType::U16,
            GgufArray::I16(_) => GgufValueType::I16,
            GgufArray::U32(_) => GgufValueType::U32,
            GgufArray::I32(_) => GgufValueType::I32,
            GgufArray::U64(_) => GgufValueType::U64,
            GgufArray::I64(_) => GgufValueType::I64,
            GgufArray::F32(_) => GgufValueType::F32,
            GgufArray::F64(_) => GgufValueType::F64,
            GgufArray::Bool(_) => GgufValueType::Bool,
            GgufArray::String(_) => GgufValueType::String,
            GgufArray::Array(_) => GgufValueType::Array,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::F64(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a [`GgufValue`] (cloned).
    pub fn get(&self, i: usize) -> Option<GgufValue> {
        Some(match self {
            GgufArray::U8(v) => GgufValue::U8(*v.get(i)?),
            GgufArray::I8(v) => GgufValue::I8(*v.get(i)?),
            GgufArray::U16(v) => GgufValue::U16(*v.get(i)?),
            GgufArray::I16(v) => GgufValue::I16(*v.get(i)?),
            GgufArray::U32(v) => GgufValue::U32(*v.get(i)?),
            GgufArray::I32(v) => GgufValue::I32(*v.get(i)?),
            GgufArray::U64(v) => GgufValue::U64(*v.get(i)?),
            GgufArray::I64(v) => GgufValue::I64(*v.get(i)?),
            GgufArray::F32(v) => GgufValue::F32(*v.get(i)?),
            GgufArray::F64(v) => GgufValue::F64(*v.get(i)?),
            GgufArray::Bool(v) => GgufValue::Bool(*v.get(i)?),
            GgufArray::String(v) => GgufValue::String(v.get(i)?.clone()),
            GgufArray::Array(v) => GgufValue::Array(v.get(i)?.clone()),
        })
    }

    /// The elements of a string array.
    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            GgufArray::String(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of an array of arrays.
    pub fn as_arrays(&self) -> Option<&[GgufArray]> {
        match self {
            GgufArray::Array(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of an integer array of any width, if all fit an `i64`.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        fn all<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            GgufArray::U8(v) => all(v, |x| Some(x.into())),
            GgufArray::I8(v) => all(v, |x| Some(x.into())),
            GgufArray::U16(v) => all(v, |x| Some(x.into())),
            GgufArray::I16(v) => all(v, |x| Some(x.into())),
            GgufArray::U32(v) => all(v, |x| Some(x.into())),
            GgufArray::I32(v) => all(v, |x| Some(x.into())),
            GgufArray::U64(v) => all(v, |x| i64::try_from(x).ok()),
            GgufArray::I64(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// The elements of a float array (`f32` widened exactly), or of an integer array.
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        match self {
            GgufArray::F32(v) => Some(v.iter().map(|&x| x.into()).collect()),
            GgufArray::F64(v) => Some(v.clone()),
            _ => self
                .to_i64_vec()
                .map(|v| v.into_iter().map(|x| x as f64).collect()),
        }
    }
}

/// What [`GgufFile::tensor_info`] reports about one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// The GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// The Hugging Face name it is served under (`model.layers.0.self_attn.q_proj.weight`);
    /// the GGUF name when no mapping applies.
    pub hf_name: String,
    /// Shape in PyTorch order: GGUF's dims reversed (GGUF lists the row length first).
    pub dims: Vec<usize>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section, as stored in the file.
    pub offset: u64,
    /// Bytes the tensor occupies in the file.
    pub n_bytes: usize,
}

/// The tokenizer fields of a GGUF file, as stored (another module builds the tokenizer).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GgufTokenizerMetadata {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE), `llama` (SentencePiece), ...
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer regex family (`smollm`, `llama-bpe`, ...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece models); empty when absent.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte); empty when absent.
    pub token_type: Vec<i32>,
    /// `tokenizer.ggml.merges` (`"a b"` pairs, BPE models); empty when absent.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unknown_token_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub padding_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos_token: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos_token: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template` (Jinja).
    pub chat_template: Option<String>,
}

/// One entry of the tensor directory, validated against the file on open.
#[derive(Debug, Clone)]
struct RawTensor {
    name: String,
    hf_name: String,
    /// GGUF order: `ne[0]` is the row length.
    ne: Vec<usize>,
    ty: GgmlType,
    /// As stored: relative to the data section.
    offset: u64,
    /// Absolute byte range in the file.
    start: usize,
    n_bytes: usize,
    numel: usize,
}

impl RawTensor {
    fn dims(&self) -> Vec<usize> {
        self.ne.iter().rev().copied().collect()
    }
}

/// An opened GGUF file: metadata, tensor directory, and the bytes (memory-mapped for files
/// on disk, so the file must not be modified while this is alive).
///
/// Metadata strings that are not valid UTF-8 are decoded lossily (U+FFFD), because real
/// vocabularies occasionally carry such tokens and refusing the whole file would be worse;
/// metadata keys and tensor names must be valid UTF-8.
pub struct GgufFile {
    source: Arc<Source>,
    version: u32,
    alignment: u64,
    data_start: usize,
    /// In file order.
    metadata: Vec<(String, GgufValue)>,
    metadata_index: HashMap<String, usize>,
    /// In file order.
    tensors: Vec<RawTensor>,
    by_name: HashMap<String, usize>,
    by_hf_name: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("file", &self.source.label)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens a GGUF file (memory-mapped, except on wasm where it is read).
    pub fn open(path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let bytes = map_file(path)?;
        Self::from_source(Arc::new(Source { label, bytes }))
    }

    /// Parses GGUF bytes held in memory; `label` names them in error messages.
    pub fn from_bytes(label: &str, bytes: Vec<u8>) -> Result<Self> {
        Self::from_source(Arc::new(Source {
            label: label.to_string(),
            bytes: Bytes::Owned(bytes),
        }))
    }

    pub(crate) fn from_source(source: Arc<Source>) -> Result<Self> {
        parse(source)
    }

    /// The bytes this file was parsed from (shared with [`super::WeightFiles`] entries).
    pub(crate) fn source(&self) -> &Arc<Source> {
        &self.source
    }

    /// Path or label, as used in error messages.
    pub fn label(&self) -> &str {
        &self.source.label
    }

    /// Format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data-section alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section in the file.
    pub fn data_offset(&self) -> usize {
        self.data_start
    }

    /// A metadata value.
    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// All metadata keys, in file order.
    pub fn metadata_keys(&self) -> Vec<&str> {
        self.metadata.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// `general.architecture`, if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.metadata("general.architecture")
            .and_then(GgufValue::as_str)
    }

    /// GGUF tensor names, in file order.
    pub fn tensor_names(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.name.clone()).collect()
    }

    /// Hugging Face names of all tensors, in file order (see [`GgufFile::read_f32_hf`]).
    pub fn hf_names(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.hf_name.clone()).collect()
    }

    /// Directory entry of the tensor with this GGUF name.
    pub fn tensor_info(&self, gguf_name: &str) -> Option<GgufTensorInfo> {
        self.by_name
            .get(gguf_name)
            .map(|&i| tensor_info(&self.tensors[i]))
    }

    /// Directory entry of the tensor served under this Hugging Face name.
    pub fn tensor_info_hf(&self, hf_name: &str) -> Option<GgufTensorInfo> {
        self.by_hf_name
            .get(hf_name)
            .map(|&i| tensor_info(&self.tensors[i]))
    }

    /// The tensor with this GGUF name as `f32`, exactly as stored (rows in GGUF order, no
    /// un-permutation), with its PyTorch-order shape.
    pub fn dequantize(&self, gguf_name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let &i = self
            .by_name
            .get(gguf_name)
            .ok_or_else(|| Error::MissingTensor {
                name: gguf_name.to_string(),
                searched: self.source.label.clone(),
                expected: Vec::new(),
            })?;
        let t = &self.tensors[i];
        let data = self.dequantize_raw(t)?;
        Ok((t.dims(), data))
    }

    /// Reads a tensor by its Hugging Face LLaMA name as `f32`, checking its shape, with the
    /// rows of `q_proj` / `k_proj` un-permuted from llama.cpp's interleaved RoPE layout to
    /// the `rotate_half` layout of Hugging Face checkpoints.
    ///
    /// Errors as [`super::WeightFiles::read_f32`]: [`Error::MissingTensor`], or
    /// [`Error::Tensor`] for a shape mismatch (`shape [a, b] but expected [c, d]`), a type
    /// that does not dequantise, or head counts that do not divide the rows.
    ///
    /// Names are mapped only for `general.architecture = llama`; in other files every tensor
    /// is served under its GGUF name, unchanged.
    pub fn read_f32_hf(&self, hf_name: &str, expected_shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.hf_tensor(hf_name, expected_shape)?;
        let data = dequantize(t.ty, self.raw_bytes(t)?, t.numel)
            .map_err(|msg| self.tensor_error(hf_name, msg))?;
        match self.qk_heads(t)? {
            Some(heads) => {
                let rows = expected_shape.first().copied().unwrap_or(0);
                unpermute_rows(&data, rows, heads).map_err(|msg| self.tensor_error(hf_name, msg))
            }
            None => Ok(data),
        }
    }

    /// The GGUF block format `hf_name` is stored in, when it is one the runtime keeps packed
    /// (`Q8_0`, `Q4_0`, `Q4_1`); `None` for float tensors, other formats and unknown names.
    pub fn packed_format(&self, hf_name: &str) -> Option<QuantFormat> {
        let &i = self.by_hf_name.get(hf_name)?;
        match self.tensors[i].ty {
            GgmlType::Q8_0 => Some(QuantFormat::Q8_0),
            GgmlType::Q4_0 => Some(QuantFormat::Q4_0),
            GgmlType::Q4_1 => Some(QuantFormat::Q4_1),
            _ => None,
        }
    }

    /// A matrix stored in a packed format ([`GgufFile::packed_format`]) as its blocks, rows
    /// in Hugging Face order (q/k rows un-permuted as [`GgufFile::read_f32_hf`] does),
    /// checking the shape and the block count.
    pub fn read_packed_hf(&self, hf_name: &str, expected_shape: [usize; 2]) -> Result<QuantMatrix> {
        let t = self.hf_tensor(hf_name, &expected_shape)?;
        let format = self.packed_format(hf_name).ok_or_else(|| {
            self.tensor_error(hf_name, format!("{} is not a packed block format", t.ty))
        })?;
        let [rows, cols] = expected_shape;
        let m = QuantMatrix::from_blocks(format, rows, cols, self.raw_bytes(t)?.to_vec())
            .map_err(|msg| self.tensor_error(hf_name, msg))?;
        match self.qk_heads(t)? {
            Some(heads) => {
                let order =
                    unpermuted_order(rows, heads).map_err(|msg| self.tensor_error(hf_name, msg))?;
                Ok(m.select_rows(&order))
            }
            None => Ok(m),
        }
    }

    /// The tensor served as `hf_name`, its shape checked against `expected_shape`
    /// ([`Error::MissingTensor`] / [`Error::Tensor`] naming both shapes).
    fn hf_tensor(&self, hf_name: &str, expected_shape: &[usize]) -> Result<&RawTensor> {
        let &i = self
            .by_hf_name
            .get(hf_name)
            .ok_or_else(|| Error::MissingTensor {
                name: hf_name.to_string(),
                searched: self.source.label.clone(),
                expected: expected_shape.to_vec(),
            })?;
        let t = &self.tensors[i];
        let dims = t.dims();
        if dims != expected_shape {
            return Err(self.tensor_error(
                hf_name,
                format!(
                    "shape {dims:?} but expected {expected_shape:?} (GGUF tensor `{}`, {})",
                    t.name, t.ty
                ),
            ));
        }
        Ok(t)
    }

    /// The tensor's bytes as stored.
    fn raw_bytes(&self, t: &RawTensor) -> Result<&[u8]> {
        self.source
            .bytes
            .as_slice()
            .get(t.start..)
            .and_then(|s| s.get(..t.n_bytes))
            .ok_or_else(|| self.tensor_error(&t.hf_name, "data lies outside the file".into()))
    }

    /// The LLaMA hyper-parameters from the `llama.*` metadata. Refuses other architectures
    /// and llama-architecture variants the model code cannot run (mixture of experts, RoPE
    /// scaling, partial rotary embedding).
    pub fn llama_config(&self) -> Result<LlamaConfig> {
        let label = self.source.label.as_str();
        let err = |msg: String| Error::config(label, msg);
        if let Some(problem) = self.architecture_problem() {
            return Err(err(problem));
        }

        let uint = |key: &str| -> Result<Option<usize>> {
            match self.metadata(key) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        err(format!("`{key}` must be a non-negative integer, got {v:?}"))
                    }),
            }
        };
        let required = |key: &str| -> Result<usize> {
            let v = uint(key)?.ok_or_else(|| err(format!("metadata `{key}` is missing")))?;
            if v == 0 {
                return Err(err(format!("`{key}` must be positive")));
            }
            Ok(v)
        };
        let float = |key: &str| -> Result<Option<f64>> {
            match self.metadata(key) {
                None => Ok(None),
                Some(GgufValue::F32(x)) => Ok(Some(f32_as_written(*x))),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| err(format!("`{key}` must be a number, got {v:?}"))),
            }
        };

        if let Some(n) = uint("llama.expert_count")? {
            if n > 0 {
                return Err(err(format!(
                    "mixture-of-experts models (llama.expert_count = {n}) are not supported"
                )));
            }
        }
        if let Some(kind) = self.metadata("llama.rope.scaling.type") {
            if kind.as_str() != Some("none") {
                return Err(err(format!(
                    "RoPE scaling (llama.rope.scaling.type = {kind:?}) is not supported"
                )));
            }
        }
        if self.by_name.contains_key("rope_freqs.weight") {
            return Err(err(
                "RoPE frequency factors (tensor rope_freqs.weight, Llama 3.1 style) are not supported"
                    .into(),
            ));
        }

        let hidden = required("llama.embedding_length")?;
        let layers = required("llama.block_count")?;
        let ffn = required("llama.feed_forward_length")?;
        let heads = required("llama.attention.head_count")?;
        let kv_heads = match uint("llama.attention.head_count_kv")? {
            Some(0) => {
                return Err(err(
                    "`llama.attention.head_count_kv` must be positive".into()
                ))
            }
            Some(n) => n,
            None => heads,
        };
        let context = required("llama.context_length")?;
        let eps = float("llama.attention.layer_norm_rms_epsilon")?.ok_or_else(|| {
            err("metadata `llama.attention.layer_norm_rms_epsilon` is missing".into())
        })?;
        let theta = float("llama.rope.freq_base")?.unwrap_or(10000.0);
        if !(eps.is_finite() && eps > 0.0 && theta.is_finite() && theta > 0.0) {
            return Err(err(format!(
                "RMSNorm epsilon {eps} and RoPE base {theta} must be positive"
            )));
        }
        if hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(err(format!(
                "embedding_length {hidden}, head_count {heads} and head_count_kv {kv_heads} must divide evenly"
            )));
        }
        let head_dim = hidden / heads;
        if head_dim % 2 != 0 {
            return Err(err(format!(
                "the head size {head_dim} must be even for RoPE"
            )));
        }
        for key in [
            "llama.rope.dimension_count",
            "llama.attention.key_length",
            "llama.attention.value_length",
        ] {
            if let Some(n) = uint(key)? {
                if n != head_dim {
                    return Err(err(format!(
                        "`{key}` = {n} differs from the head size {head_dim} (embedding_length / head_count); not supported"
                    )));
                }
            }
        }

        let embd = self
            .tensor_info("token_embd.weight")
            .ok_or_else(|| err("tensor `token_embd.weight` is missing".into()))?;
        let vocab = match embd.dims.as_slice() {
            &[v, h] if h == hidden && v > 0 => v,
            other => {
                return Err(err(format!(
                    "token_embd.weight has shape {other:?}, expected [vocab, {hidden}]"
                )))
            }
        };
        Ok(LlamaConfig {
            hidden_size: hidden,
            intermediate_size: ffn,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            rms_norm_eps: eps,
            rope_theta: theta,
            vocab_size: vocab,
            max_position_embeddings: context,
            tie_word_embeddings: !self.by_name.contains_key("output.weight"),
        })
    }

    /// The tokenizer metadata, as stored. Requires `tokenizer.ggml.model` and
    /// `tokenizer.ggml.tokens`; every other field is optional but must have the right type.
    pub fn tokenizer_metadata(&self) -> Result<GgufTokenizerMetadata> {
        let label = self.source.label.as_str();
        let err = |msg: String| Error::format(label, msg);
        let string = |key: &str| -> Result<Option<String>> {
            match self.metadata(key) {
                None => Ok(None),
                Some(v) => v.as_str().map(|s| Some(s.to_string())).ok_or_else(|| {
                    err(format!(
                        "`{key}` must be a string, got {:?}",
                        v.value_type()
                    ))
                }),
            }
        };
        let array = |key: &str| -> Result<Option<&GgufArray>> {
            match self.metadata(key) {
                None => Ok(None),
                Some(v) => v.as_array().map(Some).ok_or_else(|| {
                    err(format!(
                        "`{key}` must be an array, got {:?}",
                        v.value_type()
                    ))
                }),
            }
        };
        let strings = |key: &str| -> Result<Option<Vec<String>>> {
            match array(key)? {
                None => Ok(None),
                Some(a) => a.as_strings().map(|s| Some(s.to_vec())).ok_or_else(|| {
                    err(format!(
                        "`{key}` must be an array of strings, got an array of {:?}",
                        a.item_type()
                    ))
                }),
            }
        };
        let id = |key: &str| -> Result<Option<u32>> {
            match self.metadata(key) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .map(Some)
                    .ok_or_else(|| err(format!("`{key}` must be a token id (u32), got {v:?}"))),
            }
        };
        let flag = |key: &str| -> Result<Option<bool>> {
            match self.metadata(key) {
                None => Ok(None),
                Some(v) => v
                    .as_bool()
                    .map(Some)
                    .ok_or_else(|| err(format!("`{key}` must be a bool, got {v:?}"))),
            }
        };

        let model = string("tokenizer.ggml.model")?
            .ok_or_else(|| err("metadata `tokenizer.ggml.model` is missing".into()))?;
        let tokens = strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| err("metadata `tokenizer.ggml.tokens` is missing".into()))?;
        let token_type = match array("tokenizer.ggml.token_type")? {
            None => Vec::new(),
            Some(a) => a
                .to_i64_vec()
                .and_then(|v| v.into_iter().map(|x| i32::try_from(x).ok()).collect())
                .ok_or_else(|| err("`tokenizer.ggml.token_type` must be an array of i32".into()))?,
        };
        let scores = match array("tokenizer.ggml.scores")? {
            None => Vec::new(),
            Some(GgufArray::F32(v)) => v.clone(),
            Some(a) => {
                return Err(err(format!(
                    "`tokenizer.ggml.scores` must be an array of f32, got an array of {:?}",
                    a.item_type()
                )))
            }
        };
        for (key, len) in [
            ("tokenizer.ggml.token_type", token_type.len()),
            ("tokenizer.ggml.scores", scores.len()),
        ] {
            if len != 0 && len != tokens.len() {
                return Err(err(format!(
                    "`{key}` has {len} entries but there are {} tokens",
                    tokens.len()
                )));
            }
        }
        Ok(GgufTokenizerMetadata {
            model,
            pre: string("tokenizer.ggml.pre")?,
            tokens,
            scores,
            token_type,
            merges: strings("tokenizer.ggml.merges")?.unwrap_or_default(),
            bos_token_id: id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: id("tokenizer.ggml.eos_token_id")?,
            unknown_token_id: id("tokenizer.ggml.unknown_token_id")?,
            padding_token_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos_token: flag("tokenizer.ggml.add_bos_token")?,
            add_eos_token: flag("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix")?,
            chat_template: string("tokenizer.chat_template")?,
        })
    }

    /// Errors unless `general.architecture` is `llama`, the only one whose names and
    /// layouts this module maps.
    pub(crate) fn require_llama(&self) -> Result<()> {
        match self.architecture_problem() {
            Some(msg) => Err(Error::format(&self.source.label, msg)),
            None => Ok(()),
        }
    }

    fn architecture_problem(&self) -> Option<String> {
        match self.metadata("general.architecture") {
            Some(GgufValue::String(a)) if a == "llama" => None,
            Some(GgufValue::String(a)) => Some(format!(
                "GGUF architecture `{a}` is not supported; only `llama` is"
            )),
            Some(v) => Some(format!(
                "`general.architecture` must be a string, got {v:?}"
            )),
            None => Some("metadata `general.architecture` is missing".into()),
        }
    }

    /// One [`Entry`] per tensor, under its Hugging Face name, for [`super::WeightFiles`].
    /// The region is the tensor's exact bytes, so `region_len` is its size in the file.
    pub(crate) fn entries(&self) -> Vec<(String, Entry)> {
        self.tensors
            .iter()
            .map(|t| {
                let shape = t.dims();
                let entry = Entry {
                    info: TensorInfo {
                        dtype: t.ty.stored_dtype(),
                        shape: shape.clone(),
                    },
                    source: self.source.clone(),
                    region_start: t.start,
                    region_len: t.n_bytes,
                    elem_offset: 0,
                    strides: contiguous_strides(&shape),
                    packed: None,
                };
                (t.hf_name.clone(), entry)
            })
            .collect()
    }

    /// Head count for un-permuting this tensor's rows, or `None` when it is not a llama
    /// `attn_q` / `attn_k` tensor.
    fn qk_heads(&self, t: &RawTensor) -> Result<Option<usize>> {
        if self.architecture() != Some("llama") {
            return Ok(None);
        }
        let Some(rest) = t.name.strip_prefix("blk.") else {
            return Ok(None);
        };
        let part = rest.split('.').nth(1).unwrap_or("");
        let key = match part {
            "attn_q" => "llama.attention.head_count",
            "attn_k" => "llama.attention.head_count_kv",
            _ => return Ok(None),
        };
        // head_count_kv defaults to head_count, as in llama.cpp.
        let value = self
            .metadata(key)
            .or_else(|| self.metadata("llama.attention.head_count"));
        match value.and_then(GgufValue::as_u64).and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(self.tensor_error(
                &t.hf_name,
                format!("metadata `{key}` (a positive integer) is needed to un-permute the rows of `{}`", t.name),
            )),
        }
    }

    fn dequantize_raw(&self, t: &RawTensor) -> Result<Vec<f32>> {
        dequantize(t.ty, self.raw_bytes(t)?, t.numel)
            .map_err(|msg| self.tensor_error(&t.hf_name, msg))
    }

    fn tensor_error(&self, name: &str, msg: String) -> Error {
        Error::Tensor {
            file: self.source.label.clone(),
            name: name.to_string(),
            msg,
        }
    }
}

fn tensor_info(t: &RawTensor) -> GgufTensorInfo {
    GgufTensorInfo {
        name: t.name.clone(),
        hf_name: t.hf_name.clone(),
        dims: t.dims(),
        ggml_type: t.ty,
        offset: t.offset,
        n_bytes: t.n_bytes,
    }
}

/// The `f64` whose shortest decimal form is the `f32`'s: converters store config floats such
/// as `rms_norm_eps = 1e-5` as f32, and the model should see the `1e-5` of `config.json`, not
/// `9.99999974e-6`.
fn f32_as_written(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// The Hugging Face LLaMA name of a llama.cpp tensor name; `None` when there is none.
pub fn hf_name_of(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (index, rest) = rest.split_once('.')?;
    let layer: usize = index.parse().ok()?;
    // "01" or "+1" would parse; only ggml's own spelling maps.
    if layer.to_string() != index {
        return None;
    }
    let (part, suffix) = rest.split_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Undoes `LlamaModel.permute` of llama.cpp's converter: within each head, row `2i + j`
/// (pairs rotated together by ggml's RoPE) goes back to row `j·head_dim/2 + i` (halves
/// rotated together by `rotate_half`). `data` is `[rows, cols]` row-major.
/// Row `i` of the Hugging Face matrix is row `order[i]` of llama.cpp's RoPE-permuted one
/// (float rows move with [`unpermute_rows`], packed block rows with
/// [`QuantMatrix::select_rows`]).
fn unpermuted_order(rows: usize, n_heads: usize) -> Result<Vec<usize>, String> {
    if n_heads
        .checked_mul(2)
        .is_none_or(|h2| h2 == 0 || !rows.is_multiple_of(h2))
    {
        return Err(format!(
            "{rows} rows cannot be split into {n_heads} heads of even size to undo llama.cpp's RoPE permutation"
        ));
    }
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut order = vec![0; rows];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                order[h * head_dim + j * half + i] = h * head_dim + 2 * i + j;
            }
        }
    }
    Ok(order)
}

fn unpermute_rows(data: &[f32], rows: usize, n_heads: usize) -> Result<Vec<f32>, String> {
    let order = unpermuted_order(rows, n_heads)?;
    let cols = data.len().checked_div(rows).unwrap_or(0);
    if cols.checked_mul(rows) != Some(data.len()) {
        return Err(format!("{} values do not form {rows} rows", data.len()));
    }
    Ok(order
        .iter()
        .flat_map(|&r| &data[r * cols..(r + 1) * cols])
        .copied()
        .collect())
}

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

/// A cursor over the file that never reads past the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let out = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or_else(|| {
                format!(
                    "truncated: {what} needs {n} bytes at offset {}, but only {} remain",
                    self.pos,
                    self.remaining()
                )
            })?;
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A length-prefixed byte string, its length checked against what remains.
    fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let at = self.pos;
        let len = self.u64(what)?;
        match usize::try_from(len) {
            Ok(n) if n <= self.remaining() => self.take(n, what),
            _ => Err(format!(
                "{what} at offset {at} claims {len} bytes, but only {} remain",
                self.remaining()
            )),
        }
    }

    /// A string that must be valid UTF-8 (keys and tensor names).
    fn name(&mut self, what: &str) -> Result<String, String> {
        let at = self.pos;
        let b = self.bytes(what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| format!("{what} at offset {at} is not valid UTF-8"))
    }

    /// A metadata string value (lossy, see [`GgufFile`]).
    fn text(&mut self, what: &str) -> Result<String, String> {
        self.bytes(what)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

fn value_type(r: &mut Reader<'_>, what: &str) -> Result<GgufValueType, String> {
    let at = r.pos;
    let id = r.u32(what)?;
    GgufValueType::from_id(id)
        .ok_or_else(|| format!("{what} at offset {at}: unknown value type {id}"))
}

fn read_value(r: &mut Reader<'_>, ty: GgufValueType, key: &str) -> Result<GgufValue, String> {
    Ok(match ty {
        GgufValueType::U8 => GgufValue::U8(u8::from_le_bytes(r.array(key)?)),
        GgufValueType::I8 => GgufValue::I8(i8::from_le_bytes(r.array(key)?)),
        GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(r.array(key)?)),
        GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(r.array(key)?)),
        GgufValueType::U32 => GgufValue::U32(u32::from_le_bytes(r.array(key)?)),
        GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(r.array(key)?)),
        GgufValueType::U64 => GgufValue::U64(u64::from_le_bytes(r.array(key)?)),
        GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(r.array(key)?)),
        GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(r.array(key)?)),
        GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(r.array(key)?)),
        GgufValueType::Bool => GgufValue::Bool(bool_byte(r.array::<1>(key)?[0], key)?),
        GgufValueType::String => GgufValue::String(r.text(key)?),
        GgufValueType::Array => GgufValue::Array(read_array(r, key, 0)?),
    })
}

fn bool_byte(b: u8, key: &str) -> Result<bool, String> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(format!("`{key}`: boolean byte {b} is neither 0 nor 1")),
    }
}

/// Decodes `n` fixed-size little-endian elements (bounds already checked by the caller).
fn fixed<const N: usize, T>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

fn read_array(r: &mut Reader<'_>, key: &str, depth: usize) -> Result<GgufArray, String> {
    if depth >= MAX_ARRAY_NESTING {
        return Err(format!(
            "`{key}`: arrays nested more than {MAX_ARRAY_NESTING} deep"
        ));
    }
    let ty = value_type(r, key)?;
    let at = r.pos;
    let count = r.u64(key)?;
    // Each element takes at least `min_size` bytes, so a count that cannot fit in what
    // remains is refused before anything is allocated.
    let n = match usize::try_from(count) {
        Ok(n) if n <= r.remaining() / ty.min_size() => n,
        _ => {
            return Err(format!(
                "`{key}`: array at offset {at} claims {count} elements of {ty:?}, but only {} bytes remain",
                r.remaining()
            ))
        }
    };
    // Fixed-size elements: one bounds-checked slice (n · size fits, checked above).
    fn raw<'a>(
        r: &mut Reader<'a>,
        n: usize,
        ty: GgufValueType,
        key: &str,
    ) -> Result<&'a [u8], String> {
        r.take(n * ty.min_size(), key)
    }
    Ok(match ty {
        GgufValueType::U8 => GgufArray::U8(raw(r, n, ty, key)?.to_vec()),
        GgufValueType::I8 => GgufArray::I8(fixed(raw(r, n, ty, key)?, i8::from_le_bytes)),
        GgufValueType::U16 => GgufArray::U16(fixed(raw(r, n, ty, key)?, u16::from_le_bytes)),
        GgufValueType::I16 => GgufArray::I16(fixed(raw(r, n, ty, key)?, i16::from_le_bytes)),
        GgufValueType::U32 => GgufArray::U32(fixed(raw(r, n, ty, key)?, u32::from_le_bytes)),
        GgufValueType::I32 => GgufArray::I32(fixed(raw(r, n, ty, key)?, i32::from_le_bytes)),
        GgufValueType::U64 => GgufArray::U64(fixed(raw(r, n, ty, key)?, u64::from_le_bytes)),
        GgufValueType::I64 => GgufArray::I64(fixed(raw(r, n, ty, key)?, i64::from_le_bytes)),
        GgufValueType::F32 => GgufArray::F32(fixed(raw(r, n, ty, key)?, f32::from_le_bytes)),
        GgufValueType::F64 => GgufArray::F64(fixed(raw(r, n, ty, key)?, f64::from_le_bytes)),
        GgufValueType::Bool => GgufArray::Bool(
            raw(r, n, ty, key)?
                .iter()
                .map(|&b| bool_byte(b, key))
                .collect::<Result<_, _>>()?,
        ),
        GgufValueType::String => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(r.text(key)?);
            }
            GgufArray::String(v)
        }
        GgufValueType::Array => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(r, key, depth + 1)?);
            }
            GgufArray::Array(v)
        }
    })
}

fn parse(source: Arc<Source>) -> Result<GgufFile> {
    let label = source.label.clone();
    parse_inner(source).map_err(|msg| Error::format(label, msg))
}

fn parse_inner(source: Arc<Source>) -> Result<GgufFile, String> {
    let buf = source.bytes.as_slice();
    let mut r = Reader { buf, pos: 0 };
    let magic = r.take(4, "the GGUF magic")?;
    if magic != b"GGUF" {
        return Err(format!(
            "not a GGUF file: magic {magic:02x?}, expected \"GGUF\""
        ));
    }
    let version = r.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err("GGUF version 1 (32-bit counts, 2023) is not supported; \
                 re-convert the model with a current llama.cpp"
                .into())
        }
        v if (2..=3).contains(&v.swap_bytes()) => {
            return Err(format!(
                "big-endian GGUF (version {}) is not supported",
                v.swap_bytes()
            ))
        }
        v => return Err(format!("unsupported GGUF version {v}; expected 2 or 3")),
    }
    let n_tensors = r.u64("the tensor count")?;
    let n_kv = r.u64("the metadata count")?;

    // Fewest bytes a key/value pair (empty key, type, 1-byte value) and a tensor info (empty
    // name, 0 dims, type, offset) can take: counts beyond what fits are refused up front.
    const MIN_KV: usize = 8 + 4 + 1;
    const MIN_TENSOR: usize = 8 + 4 + 4 + 8;
    let fits = |count: u64, min: usize, remaining: usize| {
        usize::try_from(count)
            .ok()
            .filter(|&n| n <= remaining / min)
    };
    let n_kv = fits(n_kv, MIN_KV, r.remaining()).ok_or_else(|| {
        format!(
            "metadata count {n_kv} cannot fit in the {} bytes that follow the header",
            r.remaining()
        )
    })?;
    let n_tensors_usize = fits(n_tensors, MIN_TENSOR, r.remaining()).ok_or_else(|| {
        format!(
            "tensor count {n_tensors} cannot fit in the {} bytes that follow the header",
            r.remaining()
        )
    })?;

    let mut metadata = Vec::with_capacity(n_kv);
    let mut metadata_index = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = r.name(&format!("metadata key #{i}"))?;
        let ty = value_type(&mut r, &key)?;
        let value = read_value(&mut r, ty, &key)?;
        if metadata_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(format!("duplicate metadata key `{key}`"));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata_index
        .get("general.alignment")
        .map(|&i| &metadata[i].1)
    {
        None => DEFAULT_ALIGNMENT,
        // The spec says u32; any non-negative integer type is accepted, as only the value
        // matters.
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(format!(
                    "`general.alignment` must be a power of two, got {v:?}"
                ))
            }
        },
    };

    // The tensor-count check above used the bytes left before the metadata; recheck.
    if n_tensors_usize > r.remaining() / MIN_TENSOR {
        return Err(format!(
            "tensor count {n_tensors} cannot fit in the {} bytes that follow the metadata",
            r.remaining()
        ));
    }
    let mut tensors = Vec::with_capacity(n_tensors_usize);
    let mut by_name = HashMap::with_capacity(n_tensors_usize);
    for i in 0..n_tensors_usize {
        let name = r.name(&format!("tensor name #{i}"))?;
        let at = r.pos;
        let n_dims = r.u32(&name)?;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}`: {n_dims} dimensions at offset {at}; ggml allows at most {MAX_DIMS}"
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = r.u64(&name)?;
            ne.push(
                usize::try_from(d)
                    .map_err(|_| format!("tensor `{name}`: dimension {d} is too large"))?,
            );
        }
        let at = r.pos;
        let type_id = r.u32(&name)?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| {
            format!("tensor `{name}`: unknown ggml type {type_id} at offset {at}")
        })?;
        let offset = r.u64(&name)?;
        let numel = ne
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor `{name}`: dims {ne:?} overflow the element count"))?;
        let row = ne.first().copied().unwrap_or(1);
        if row % ty.block_size() != 0 {
            return Err(format!(
                "tensor `{name}`: row length {row} is not a multiple of the {ty} block size {}",
                ty.block_size()
            ));
        }
        let n_bytes = (numel / ty.block_size())
            .checked_mul(ty.type_size())
            .ok_or_else(|| format!("tensor `{name}`: dims {ne:?} overflow the byte size"))?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        if by_name.insert(name.clone(), tensors.len()).is_some() {
            return Err(format!("duplicate tensor name `{name}`"));
        }
        tensors.push(RawTensor {
            hf_name: String::new(),
            name,
            ne,
            ty,
            offset,
            start: 0,
            n_bytes,
            numel,
        });
    }

    // The data section starts at the next multiple of the alignment after the directory.
    let data_start = (r.pos as u64)
        .checked_next_multiple_of(alignment)
        .and_then(|s| usize::try_from(s).ok())
        .ok_or("data section offset overflows")?;
    for t in &mut tensors {
        let start = usize::try_from(t.offset)
            .ok()
            .and_then(|o| data_start.checked_add(o));
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(s), Some(e)) if e <= buf.len() => t.start = s,
            _ => {
                return Err(format!(
                    "tensor `{}` ({} bytes of {}) at data offset {} lies outside the file ({} bytes, data section at {data_start})",
                    t.name,
                    t.n_bytes,
                    t.ty,
                    t.offset,
                    buf.len()
                ))
            }
        }
    }

    let is_llama = matches!(
        metadata_index.get("general.architecture").map(|&i| &metadata[i].1),
        Some(GgufValue::String(a)) if a == "llama"
    );
    let mut by_hf_name = HashMap::with_capacity(tensors.len());
    for (i, t) in tensors.iter_mut().enumerate() {
        t.hf_name = if is_llama {
            hf_name_of(&t.name).unwrap_or_else(|| t.name.clone())
        } else {
            t.name.clone()
        };
        if by_hf_name.insert(t.hf_name.clone(), i).is_some() {
            return Err(format!(
                "two tensors map to the Hugging Face name `{}`",
                t.hf_name
            ));
        }
    }

    Ok(GgufFile {
        source,
        version,
        alignment,
        data_start,
        metadata,
        metadata_index,
        tensors,
        by_name,
        by_hf_name,
    })
}

// ---------------------------------------------------------------------------------------
// Dequantisation (ggml-quants.c `dequantize_row_*`, same float operation order)
// ---------------------------------------------------------------------------------------

/// Converts `numel` elements of type `ty` held in exactly `bytes` to `f32`.
pub(crate) fn dequantize(ty: GgmlType, bytes: &[u8], numel: usize) -> Result<Vec<f32>, String> {
    let (block, size) = (ty.block_size(), ty.type_size());
    if !numel.is_multiple_of(block) || (numel / block).checked_mul(size) != Some(bytes.len()) {
        return Err(format!(
            "{} bytes do not hold {numel} elements of {ty}",
            bytes.len()
        ));
    }
    if !ty.can_dequantize() {
        return Err(
            if matches!(
                ty,
                GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64
            ) {
                format!("dtype {ty} is not a float type")
            } else {
                format!("ggml type {ty} cannot be dequantised by this reader")
            },
        );
    }
    let mut out = Vec::with_capacity(numel);
    let blocks = bytes.chunks_exact(size);
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(blocks.map(|c| f16_at(c, 0))),
        GgmlType::BF16 => out.extend(
            blocks.map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        GgmlType::F64 => out.extend(blocks.map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            f64::from_le_bytes(a) as f32
        })),
        GgmlType::Q8_0 => blocks.for_each(|b| dequantize_block(QuantFormat::Q8_0, b, &mut out)),
        GgmlType::Q4_0 => blocks.for_each(|b| dequantize_block(QuantFormat::Q4_0, b, &mut out)),
        GgmlType::Q4_1 => blocks.for_each(|b| dequantize_block(QuantFormat::Q4_1, b, &mut out)),
        GgmlType::Q5_0 => {
            for b in blocks {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let qs = &b[6..22];
                // Bit j of qh is the fifth bit of element j.
                let q5 = |j: usize, nib: u8| (nib | ((((qh >> j) & 1) as u8) << 4)) as i8 - 16;
                out.extend((0..16).map(|j| f32::from(q5(j, qs[j] & 0xF)) * d));
                out.extend((0..16).map(|j| f32::from(q5(j + 16, qs[j] >> 4)) * d));
            }
        }
        GgmlType::Q5_1 => {
            for b in blocks {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                let qs = &b[8..24];
                let q5 = |j: usize, nib: u8| nib | ((((qh >> j) & 1) as u8) << 4);
                out.extend((0..16).map(|j| f32::from(q5(j, qs[j] & 0xF)) * d + m));
                out.extend((0..16).map(|j| f32::from(q5(j + 16, qs[j] >> 4)) * d + m));
            }
        }
        GgmlType::Q8_K => {
            for b in blocks {
                let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                out.extend(b[4..260].iter().map(|&q| d * f32::from(q as i8)));
            }
        }
        GgmlType::Q2_K => blocks.for_each(|b| dequant_q2_k(b, &mut out)),
        GgmlType::Q3_K => blocks.for_each(|b| dequant_q3_k(b, &mut out)),
        GgmlType::Q4_K => blocks.for_each(|b| dequant_q4_k(b, &mut out)),
        GgmlType::Q5_K => blocks.for_each(|b| dequant_q5_k(b, &mut out)),
        GgmlType::Q6_K => blocks.for_each(|b| dequant_q6_k(b, &mut out)),
        _ => {
            return Err(format!(
                "ggml type {ty} cannot be dequantised by this reader"
            ))
        }
    }
    Ok(out)
}

/// `block_q2_K { u8 scales[16]; u8 qs[64]; f16 d; f16 dmin; }`.
fn dequant_q2_k(b: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, min) = (f16_at(b, 80), f16_at(b, 82));
    let mut is = 0;
    for q in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for half in [&q[..16], &q[16..]] {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * f32::from(sc & 0xF), min * f32::from(sc >> 4));
                out.extend(half.iter().map(|&x| dl * f32::from((x >> shift) & 3) - ml));
            }
        }
    }
}

/// `block_q3_K { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d; }`.
fn dequant_q3_k(b: &[u8], out: &mut Vec<f32>) {
    let (hmask, qs, packed) = (&b[0..32], &b[32..96], &b[96..108]);
    let d_all = f16_at(b, 108);
    // Sixteen 6-bit scales: low 4 bits from bytes 0..8 (low then high nibbles), high 2 bits
    // from bytes 8..12 (2 bits per scale, in groups of four).
    let scale = |i: usize| -> f32 {
        let low = (packed[i % 8] >> (4 * (i / 8))) & 0xF;
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        f32::from((low | (high << 4)) as i8 - 32)
    };
    let mut is = 0;
    let mut m = 1u8;
    for q in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for (h, part) in [(0usize, &q[..16]), (16, &q[16..])] {
                let dl = d_all * scale(is);
                is += 1;
                let hm = &hmask[h..h + 16];
                out.extend(part.iter().zip(hm).map(|(&x, &hb)| {
                    let v = ((x >> shift) & 3) as i8 - if hb & m != 0 { 0 } else { 4 };
                    dl * f32::from(v)
                }));
            }
            m <<= 1;
        }
    }
}

/// Scale and minimum `j` of the 12 packed bytes of Q4_K / Q5_K (`get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }`.
fn dequant_q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (k, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * k, scales);
        let (sc2, m2) = scale_min_k4(2 * k + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        out.extend(q.iter().map(|&x| d1 * f32::from(x & 0xF) - m1));
        out.extend(q.iter().map(|&x| d2 * f32::from(x >> 4) - m2));
    }
}

/// `block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }`.
fn dequant_q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (k, ql) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * k, scales);
        let (sc2, m2) = scale_min_k4(2 * k + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        let (u1, u2) = (1u8 << (2 * k), 2u8 << (2 * k));
        out.extend(
            ql.iter()
                .zip(qh)
                .map(|(&x, &h)| d1 * f32::from((x & 0xF) + if h & u1 != 0 { 16 } else { 0 }) - m1),
        );
        out.extend(
            ql.iter()
                .zip(qh)
                .map(|(&x, &h)| d2 * f32::from((x >> 4) + if h & u2 != 0 { 16 } else { 0 }) - m2),
        );
    }
}

/// `block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }`.
fn dequant_q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 208);
    let start = out.len();
    out.resize(start + 256, 0.0);
    let y = &mut out[start..];
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            let s = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = s(0) * f32::from(q1);
            y[l + 32] = s(2) * f32::from(q2);
            y[l + 64] = s(4) * f32::from(q3);
            y[l + 96] = s(6) * f32::from(q4);
        }
    }
}

#[cfg(test)]
mod tests;
