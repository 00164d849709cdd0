//! `torch.save` zip archives (torch >= 1.6): `<prefix>/data.pkl` describes the tensors,
//! `<prefix>/data/<key>` hold the raw little-endian storages.
//!
//! The pickle is interpreted as a data format, never executed: the interpreter knows a
//! fixed set of globals (tensor rebuild functions, storage types, `OrderedDict`) as inert
//! tags and refuses every other one, so a checkpoint cannot run code. Its memo, stack,
//! mark stack, containers and tuple nesting are capped, and it never recurses.
//!
//! The same interpreter has a plain-data mode ([`parse_plain_pickle`], [`read_plain_pickle`])
//! for pickles of ordinary Python values, such as the refer API's `refs(unc).p`: no global
//! at all (so no call, no persistent id, no `BUILD`), only None, bools, ints, floats,
//! strings, bytes, lists, tuples and dicts, in protocols 0 to 5 (Python 2's text opcodes
//! included). The result is a [`serde_json::Value`]; converting it recurses, but never
//! deeper than [`MAX_PLAIN_DEPTH`], and the expansion of values shared through the memo is
//! bounded by the pickle's size.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::Value as Json;
use zip::{CompressionMethod, ZipArchive};

use super::layout::StoredDType;
use super::{Bytes, Entry, Source, TensorInfo};
use crate::error::{Error, Result};

/// Largest `data.pkl` accepted. A 13B-parameter state dict pickles to ~100 KiB.
const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// Caps on interpreter state; far above what any state dict needs.
const MAX_STACK: usize = 1 << 20;
const MAX_MEMO: usize = 1 << 20;
const MAX_MARKS: usize = 1 << 12;
const MAX_CONTAINER_ITEMS: usize = 1 << 22;
/// Largest plain-data pickle read. refCOCO's `refs(unc).p` is ~45 MB.
const MAX_PLAIN_PICKLE_BYTES: u64 = 1 << 30;
/// Caps on the plain-data interpreter: a refs pickle memoises every string and container
/// (~1.5M entries for refCOCO) and holds ~2.5M container items.
const MAX_PLAIN_STACK: usize = 1 << 22;
const MAX_PLAIN_MEMO: usize = 1 << 23;
const MAX_PLAIN_CONTAINER_ITEMS: usize = 1 << 24;
/// Deepest nesting of lists, dicts and tuples a plain-data pickle may have (a refs pickle
/// has 4); it bounds the recursion of the JSON conversion and catches self-containing lists.
pub const MAX_PLAIN_DEPTH: usize = 100;
/// Tuple nesting cap; bounds the recursion of dropping nested tuples.
const MAX_TUPLE_DEPTH: usize = 64;
/// Most dimensions a tensor may have.
const MAX_DIMS: usize = 64;
/// Deflate cannot expand data more than ~1032x; anything above is a lie in the header.
const MAX_DEFLATE_RATIO: u64 = 1100;

/// A tensor as described by the pickle, before it is tied to the archive's bytes.
#[derive(Debug, Clone)]
struct TensorSpec {
    key: String,
    dtype: StoredDType,
    storage_numel: usize,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// Where a zip entry's bytes are: inside the file (stored) or decompressed into memory.
enum EntryData {
    InFile { start: usize, len: usize },
    Owned(Vec<u8>),
}

/// Locates every tensor of a `torch.save` zip archive.
pub(crate) fn parse_torch_zip(source: &Arc<Source>) -> Result<Vec<(String, Entry)>> {
    let label = source.label.as_str();
    let bytes = source.bytes.as_slice();
    let mut archive = ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
        Error::format(
            label,
            format!("not a readable zip archive (truncated or corrupt torch checkpoint): {e}"),
        )
    })?;

    let prefix = find_prefix(label, &archive)?;
    if let Some(idx) = archive.index_for_name(&format!("{prefix}byteorder")) {
        let order = read_to_vec(label, &mut archive, idx, bytes, 64)?;
        match order.as_slice() {
            b"little" => {}
            b"big" => {
                return Err(Error::format(
                    label,
                    "big-endian storages are not supported; re-save the checkpoint on a little-endian machine",
                ))
            }
            other => {
                return Err(Error::format(
                    label,
                    format!("unknown byteorder `{}`", String::from_utf8_lossy(other).escape_debug()),
                ))
            }
        }
    }

    let pkl_name = format!("{prefix}data.pkl");
    let pkl_idx = archive
        .index_for_name(&pkl_name)
        .ok_or_else(|| Error::format(label, format!("missing zip entry `{pkl_name}`")))?;
    let pkl = read_to_vec(label, &mut archive, pkl_idx, bytes, MAX_PICKLE_BYTES)?;
    let specs = Machine::new(label, &pkl).run_state_dict()?;

    // Storages are shared between tensors (views, tied weights): locate each once.
    let mut storages: HashMap<String, (Arc<Source>, usize, usize)> = HashMap::new();
    let mut out = Vec::with_capacity(specs.len());
    for (name, spec) in specs {
        let elem = spec.dtype.size().unwrap_or(1);
        if !storages.contains_key(&spec.key) {
            let entry_name = format!("{prefix}data/{}", spec.key);
            let idx = archive.index_for_name(&entry_name).ok_or_else(|| {
                Error::format(
                    label,
                    format!(
                        "storage `{}` of tensor `{name}` has no zip entry `{entry_name}`",
                        spec.key
                    ),
                )
            })?;
            let located = match locate(label, &mut archive, idx, bytes, u64::MAX)? {
                EntryData::InFile { start, len } => (Arc::clone(source), start, len),
                EntryData::Owned(v) => {
                    let len = v.len();
                    let owned = Source {
                        label: source.label.clone(),
                        bytes: Bytes::Owned(v),
                    };
                    (Arc::new(owned), 0, len)
                }
            };
            storages.insert(spec.key.clone(), located);
        }
        let (src, start, entry_len) = &storages[&spec.key];
        let declared = spec.storage_numel.checked_mul(elem);
        let region_len = match declared {
            Some(d) if d <= *entry_len => d,
            _ => {
                return Err(Error::Tensor {
                    file: label.to_string(),
                    name,
                    msg: format!(
                        "storage `{}` declares {} elements of {} but its zip entry holds {entry_len} bytes",
                        spec.key, spec.storage_numel, spec.dtype
                    ),
                })
            }
        };
        let entry = Entry {
            info: TensorInfo {
                dtype: spec.dtype,
                shape: spec.shape,
            },
            source: Arc::clone(src),
            region_start: *start,
            region_len,
            elem_offset: spec.offset,
            strides: spec.strides,
            packed: None,
        };
        out.push((name, entry));
    }
    Ok(out)
}

/// The archive's record prefix (`archive/` for torch.save, the file stem for HF shards),
/// found from its single top-level `data.pkl`.
fn find_prefix(label: &str, archive: &ZipArchive<Cursor<&[u8]>>) -> Result<String> {
    let mut found: Vec<&str> = archive
        .file_names()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .collect();
    found.sort_unstable();
    match found.as_slice() {
        [one] => Ok(one[..one.len() - "data.pkl".len()].to_string()),
        [] => Err(Error::format(
            label,
            "zip archive has no `<prefix>/data.pkl` entry: not a torch.save checkpoint",
        )),
        many => Err(Error::format(
            label,
            format!(
                "zip archive has several data.pkl entries ({}); expected one",
                many.join(", ")
            ),
        )),
    }
}

fn zip_err(label: &str, what: &str, e: zip::result::ZipError) -> Error {
    Error::format(label, format!("zip entry `{what}`: {e}"))
}

/// Finds an entry's bytes, checking its declared sizes against the file before trusting
/// them; decompresses (bounded by `max_len`) when it is not stored.
fn locate(
    label: &str,
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    idx: usize,
    bytes: &[u8],
    max_len: u64,
) -> Result<EntryData> {
    let file_len = bytes.len() as u64;
    let (name, method, packed, size, start, encrypted, crc) = {
        let f = archive
            .by_index_raw(idx)
            .map_err(|e| zip_err(label, &format!("#{idx}"), e))?;
        (
            f.name().to_string(),
            f.compression(),
            f.compressed_size(),
            f.size(),
            f.data_start(),
            f.encrypted(),
            f.crc32(),
        )
    };
    let fits = start.checked_add(packed).is_some_and(|end| end <= file_len);
    if !fits {
        return Err(Error::format(
            label,
            format!(
                "zip entry `{name}` declares {packed} bytes at offset {start}, beyond the end of the file ({file_len} bytes)"
            ),
        ));
    }
    if encrypted {
        return Err(Error::format(
            label,
            format!("zip entry `{name}` is encrypted"),
        ));
    }
    if size > max_len {
        return Err(Error::format(
            label,
            format!("zip entry `{name}` is {size} bytes, more than the {max_len}-byte limit"),
        ));
    }
    match method {
        CompressionMethod::Stored => {
            if size != packed {
                return Err(Error::format(
                    label,
                    format!("stored zip entry `{name}` declares size {size} but occupies {packed} bytes"),
                ));
            }
            // Both fit in the file, hence in usize.
            let (start, len) = (start as usize, size as usize);
            // A flipped bit in a weight would otherwise load silently; the CRC costs one
            // pass over bytes that are read anyway.
            let actual = crc32fast::hash(&bytes[start..start + len]);
            if actual != crc {
                return Err(Error::format(
                    label,
                    format!("zip entry `{name}`: CRC-32 {actual:08x} does not match the recorded {crc:08x} (corrupt file)"),
                ));
            }
            Ok(EntryData::InFile { start, len })
        }
        CompressionMethod::Deflated => {
            if size > packed.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(64) {
                return Err(Error::format(
                    label,
                    format!("zip entry `{name}` claims {size} bytes from {packed} compressed bytes, more than deflate can produce"),
                ));
            }
            let f = archive
                .by_index(idx)
                .map_err(|e| zip_err(label, &name, e))?;
            let mut out = Vec::new();
            // Reading one byte past the declared size detects entries that inflate larger.
            f.take(size.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| Error::format(label, format!("zip entry `{name}`: {e}")))?;
            if out.len() as u64 != size {
                return Err(Error::format(
                    label,
                    format!(
                        "zip entry `{name}` inflates to {} bytes, not the declared {size}",
                        out.len()
                    ),
                ));
            }
            Ok(EntryData::Owned(out))
        }
        other => Err(Error::format(
            label,
            format!("zip entry `{name}` uses unsupported compression {other}"),
        )),
    }
}

fn read_to_vec(
    label: &str,
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    idx: usize,
    bytes: &[u8],
    max_len: u64,
) -> Result<Vec<u8>> {
    match locate(label, archive, idx, bytes, max_len)? {
        EntryData::InFile { start, len } => bytes
            .get(start..)
            .and_then(|s| s.get(..len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::format(label, "zip entry lies outside the file")),
        EntryData::Owned(v) => Ok(v),
    }
}

/// The only callables a pickle may name; each is an inert tag interpreted below.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    OrderedDict,
    Storage(StoredDType),
}

fn resolve_global(label: &str, module: &str, name: &str) -> Result<Global> {
    let g = match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch", storage) => match storage_dtype(storage) {
            Some(dtype) => Global::Storage(dtype),
            None => return Err(forbidden(label, module, name)),
        },
        _ => return Err(forbidden(label, module, name)),
    };
    Ok(g)
}

fn forbidden(label: &str, module: &str, name: &str) -> Error {
    Error::format(
        label,
        format!(
            "pickle references forbidden global `{}.{}`; only torch tensor rebuild functions are allowed",
            module.escape_debug(),
            name.escape_debug()
        ),
    )
}

fn storage_dtype(name: &str) -> Option<StoredDType> {
    Some(match name {
        "FloatStorage" => StoredDType::F32,
        "BFloat16Storage" => StoredDType::BF16,
        "HalfStorage" => StoredDType::F16,
        "DoubleStorage" => StoredDType::F64,
        "LongStorage" => StoredDType::I64,
        "IntStorage" => StoredDType::I32,
        "ShortStorage" => StoredDType::I16,
        "CharStorage" => StoredDType::I8,
        "ByteStorage" => StoredDType::U8,
        "BoolStorage" => StoredDType::Bool,
        _ => return None,
    })
}

/// A storage reference produced by a persistent id.
#[derive(Debug)]
struct StorageRef {
    key: String,
    dtype: StoredDType,
    numel: usize,
}

/// A tensor produced by a rebuild call.
#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// An immutable tuple; `depth` is its nesting level, capped at [`MAX_TUPLE_DEPTH`].
#[derive(Debug)]
struct Tuple {
    items: Vec<Value>,
    depth: usize,
}

/// A pickle value. Lists and dicts are mutable and shared through the memo, so they live in
/// an arena and are referred to by index: no reference cycles, no recursive drops.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Tuple>),
    List(usize),
    Dict(usize),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

enum Container {
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
}

/// Pickle opcodes (see CPython's `pickletools`).
mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const BINFLOAT: u8 = b'G';
    pub const FLOAT: u8 = b'F';
    pub const INT: u8 = b'I';
    pub const LONG: u8 = b'L';
    pub const STRING: u8 = b'S';
    pub const UNICODE: u8 = b'V';
    pub const GET: u8 = b'g';
    pub const PUT: u8 = b'p';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
}

/// What a pickle may contain.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// A torch state dict: the allowed globals of [`resolve_global`], persistent ids.
    Torch,
    /// Plain Python data: no global, no call, no persistent id; Python 2's text opcodes.
    Plain,
}

/// Caps on the interpreter's state.
struct Limits {
    stack: usize,
    memo: usize,
    marks: usize,
    container_items: usize,
}

/// The pickle interpreter: a stack machine over data values only.
struct Machine<'a> {
    label: &'a str,
    mode: Mode,
    limits: Limits,
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed, for error messages.
    op_start: usize,
    stack: Vec<Value>,
    /// Stack heights at each MARK; values below the top mark are out of reach, as in CPython.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    arena: Vec<Container>,
    container_items: usize,
}

impl<'a> Machine<'a> {
    fn new(label: &'a str, data: &'a [u8]) -> Self {
        Self::with_mode(label, data, Mode::Torch)
    }

    fn with_mode(label: &'a str, data: &'a [u8], mode: Mode) -> Self {
        let limits = match mode {
            Mode::Torch => Limits {
                stack: MAX_STACK,
                memo: MAX_MEMO,
                marks: MAX_MARKS,
                container_items: MAX_CONTAINER_ITEMS,
            },
            Mode::Plain => Limits {
                stack: MAX_PLAIN_STACK,
                memo: MAX_PLAIN_MEMO,
                marks: MAX_MARKS,
                container_items: MAX_PLAIN_CONTAINER_ITEMS,
            },
        };
        Machine {
            label,
            mode,
            limits,
            data,
            pos: 0,
            op_start: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            arena: Vec::new(),
            container_items: 0,
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        let opcode = self.data.get(self.op_start).copied().unwrap_or(0);
        let what = match self.mode {
            Mode::Torch => "data.pkl: invalid pickle",
            Mode::Plain => "invalid pickle",
        };
        Error::format(
            self.label,
            format!(
                "{what} at byte {} (opcode {opcode:#04x}): {msg}",
                self.op_start
            ),
        )
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let data = self.data;
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| data.get(self.pos..end))
            .ok_or_else(|| {
                self.err(format!(
                    "needs {n} more bytes but only {} remain (truncated pickle)",
                    data.len().saturating_sub(self.pos)
                ))
            })?;
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn len_u64(&mut self) -> Result<usize> {
        let n = u64::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| self.err(format!("length {n} does not fit in memory")))
    }

    fn len_i32(&mut self) -> Result<usize> {
        let n = i32::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| self.err(format!("negative length {n}")))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        let window = &rest[..rest.len().min(256)];
        let end = window.iter().position(|&b| b == b'\n').ok_or_else(|| {
            self.err("GLOBAL name is not terminated by a newline within 256 bytes")
        })?;
        let line = self.take(end + 1)?;
        std::str::from_utf8(&line[..end]).map_err(|_| self.err("GLOBAL name is not valid UTF-8"))
    }

    fn utf8(&mut self, n: usize) -> Result<Value> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes)
            .map_err(|e| self.err(format!("invalid UTF-8 string: {e}")))?;
        Ok(Value::Str(Rc::from(s)))
    }

    /// A Python 2 `str` (bytes): Latin-1 in a state dict; in plain data UTF-8 when the
    /// bytes are valid UTF-8 (as Python 2 programs mostly stored text), else Latin-1.
    fn latin1(&mut self, n: usize) -> Result<Value> {
        let bytes = self.take(n)?;
        Ok(Value::Str(Rc::from(self.py2_str(bytes))))
    }

    fn py2_str(&self, bytes: &[u8]) -> String {
        match (self.mode, std::str::from_utf8(bytes)) {
            (Mode::Plain, Ok(s)) => s.to_string(),
            _ => latin1_string(bytes),
        }
    }

    fn bytes(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        Ok(Value::Bytes(Rc::from(b)))
    }

    /// The rest of a text opcode's line (protocol 0), without its newline.
    fn text_line(&mut self) -> Result<&'a [u8]> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| {
            self.err("argument is not terminated by a newline (truncated pickle)")
        })?;
        let line = self.take(end + 1)?;
        Ok(&line[..end])
    }

    /// A decimal argument of a text opcode (`LONG`'s with its trailing `L`).
    fn text_int(&mut self, what: &str) -> Result<i64> {
        let line = self.text_line()?;
        self.parse_text_int(line, what)
    }

    fn parse_text_int(&self, line: &[u8], what: &str) -> Result<i64> {
        let s = std::str::from_utf8(line).unwrap_or("");
        let digits = s.trim().strip_suffix('L').unwrap_or(s.trim());
        digits.parse::<i64>().map_err(|_| {
            self.err(format!(
                "{what} `{}` is not a 64-bit integer",
                truncate_for_error(&String::from_utf8_lossy(line))
            ))
        })
    }

    fn text_memo_index(&mut self) -> Result<u32> {
        let i = self.text_int("memo index")?;
        u32::try_from(i).map_err(|_| self.err(format!("memo index {i} is out of range")))
    }

    fn long(&mut self, n: usize) -> Result<Value> {
        let bytes = self.take(n)?;
        if n > 8 {
            return Err(self.err(format!("{n}-byte integer does not fit in 64 bits")));
        }
        let mut buf = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
            [0xffu8; 8]
        } else {
            [0u8; 8]
        };
        buf[..n].copy_from_slice(bytes);
        Ok(Value::Int(i64::from_le_bytes(buf)))
    }

    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn push(&mut self, v: Value) -> Result<()> {
        if self.stack.len() >= self.limits.stack {
            return Err(self.err(format!("stack exceeds {} values", self.limits.stack)));
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        if self.stack.len() <= self.base() {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Result<&Value> {
        if self.stack.len() <= self.base() {
            return Err(self.err("stack underflow"));
        }
        self.stack.last().ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK on the stack"))?;
        // pop() never goes below the top mark, so m <= len.
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    fn tuple(&self, items: Vec<Value>) -> Result<Value> {
        let depth = 1 + items
            .iter()
            .map(|v| match v {
                Value::Tuple(t) => t.depth,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        if depth > MAX_TUPLE_DEPTH {
            return Err(self.err(format!("tuples nested deeper than {MAX_TUPLE_DEPTH}")));
        }
        Ok(Value::Tuple(Rc::new(Tuple { items, depth })))
    }

    fn count_items(&mut self, n: usize) -> Result<()> {
        self.container_items = self.container_items.saturating_add(n);
        if self.container_items > self.limits.container_items {
            return Err(self.err(format!(
                "containers hold more than {} items",
                self.limits.container_items
            )));
        }
        Ok(())
    }

    fn new_container(&mut self, c: Container) -> Result<usize> {
        let n = match &c {
            Container::List(v) => v.len(),
            Container::Dict(v) => v.len(),
        };
        self.count_items(n.saturating_add(1))?;
        self.arena.push(c);
        Ok(self.arena.len() - 1)
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("odd number of items for a dict"));
        }
        let mut out = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        Ok(out)
    }

    fn set_items(&mut self, pairs: Vec<(Value, Value)>) -> Result<()> {
        let id = match self.top()? {
            Value::Dict(id) => *id,
            other => return Err(self.err(format!("SETITEM(S) on a {}", other.kind()))),
        };
        self.count_items(pairs.len())?;
        match self.arena.get_mut(id) {
            Some(Container::Dict(d)) => d.extend(pairs),
            _ => return Err(self.err("dict reference is dangling")),
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        let id = match self.top()? {
            Value::List(id) => *id,
            other => return Err(self.err(format!("APPEND(S) on a {}", other.kind()))),
        };
        self.count_items(items.len())?;
        match self.arena.get_mut(id) {
            Some(Container::List(l)) => l.extend(items),
            _ => return Err(self.err("list reference is dangling")),
        }
        Ok(())
    }

    fn memo_put(&mut self, idx: u32) -> Result<()> {
        let v = self.top()?.clone();
        if self.memo.len() >= self.limits.memo && !self.memo.contains_key(&idx) {
            return Err(self.err(format!("memo exceeds {} entries", self.limits.memo)));
        }
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<()> {
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| self.err(format!("memo entry {idx} was never stored")))?;
        self.push(v)
    }

    fn is_empty_state(&self, v: &Value) -> bool {
        match v {
            Value::None => true,
            Value::Tuple(t) => t.items.is_empty(),
            Value::Dict(id) => {
                matches!(self.arena.get(*id), Some(Container::Dict(d)) if d.is_empty())
            }
            _ => false,
        }
    }

    fn int(&self, v: &Value, what: &str) -> Result<usize> {
        match v {
            Value::Int(i) => {
                usize::try_from(*i).map_err(|_| self.err(format!("{what} is {i}, expected >= 0")))
            }
            other => Err(self.err(format!("{what} is a {}, expected an int", other.kind()))),
        }
    }

    fn int_tuple(&self, v: &Value, what: &str) -> Result<Vec<usize>> {
        let Value::Tuple(t) = v else {
            return Err(self.err(format!("{what} is a {}, expected a tuple", v.kind())));
        };
        if t.items.len() > MAX_DIMS {
            return Err(self.err(format!(
                "{what} has {} dimensions, more than {MAX_DIMS}",
                t.items.len()
            )));
        }
        t.items.iter().map(|x| self.int(x, what)).collect()
    }

    /// `('storage', StorageType, key, location, numel)`, as written by torch.save.
    fn persistent_load(&self, pid: &Value) -> Result<Value> {
        let shape_msg = "unsupported persistent id; expected ('storage', <torch.*Storage>, key, location, numel)";
        let Value::Tuple(t) = pid else {
            return Err(self.err(shape_msg));
        };
        let [tag, ty, key, _location, numel] = t.items.as_slice() else {
            return Err(self.err(shape_msg));
        };
        match tag {
            Value::Str(s) if &**s == "storage" => {}
            _ => return Err(self.err(shape_msg)),
        }
        let Value::Global(Global::Storage(dtype)) = ty else {
            return Err(self.err(format!(
                "persistent id names a {} as storage type",
                ty.kind()
            )));
        };
        let key = match key {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            other => return Err(self.err(format!("storage key is a {}", other.kind()))),
        };
        let numel = self.int(numel, "storage numel")?;
        Ok(Value::Storage(Rc::new(StorageRef {
            key,
            dtype: *dtype,
            numel,
        })))
    }

    fn rebuild_tensor(&self, args: &[Value]) -> Result<Value> {
        let [storage, offset, size, stride, ..] = args else {
            return Err(self.err("tensor rebuild needs (storage, offset, size, stride, ...)"));
        };
        let Value::Storage(storage) = storage else {
            return Err(self.err(format!(
                "tensor rebuild got a {} instead of a storage",
                storage.kind()
            )));
        };
        let shape = self.int_tuple(size, "tensor size")?;
        let strides = self.int_tuple(stride, "tensor stride")?;
        if shape.len() != strides.len() {
            return Err(self.err(format!(
                "tensor size {shape:?} and stride {strides:?} differ in length"
            )));
        }
        Ok(Value::Tensor(Rc::new(TensorRef {
            storage: Rc::clone(storage),
            offset: self.int(offset, "storage offset")?,
            shape,
            strides,
        })))
    }

    /// Applies an allowed global to its arguments (REDUCE / NEWOBJ).
    fn call(&mut self, func: &Value, args: &Value) -> Result<Value> {
        let Value::Global(g) = func else {
            return Err(self.err(format!("cannot call a {}", func.kind())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.err(format!(
                "call arguments are a {}, expected a tuple",
                args.kind()
            )));
        };
        let args = args.items.as_slice();
        match g {
            Global::OrderedDict if args.is_empty() => {
                let id = self.new_container(Container::Dict(Vec::new()))?;
                Ok(Value::Dict(id))
            }
            Global::OrderedDict => {
                Err(self.err("OrderedDict with constructor arguments is not supported"))
            }
            Global::RebuildTensorV2 if matches!(args.len(), 6 | 7) => self.rebuild_tensor(args),
            Global::RebuildTensor if args.len() == 4 => self.rebuild_tensor(args),
            Global::RebuildParameter if args.len() == 3 => match &args[0] {
                t @ Value::Tensor(_) => Ok(t.clone()),
                other => Err(self.err(format!("_rebuild_parameter of a {}", other.kind()))),
            },
            Global::Storage(_) => Err(self.err("storage types may only appear in persistent ids")),
            _ => Err(self.err(format!("{g:?} called with {} arguments", args.len()))),
        }
    }

    /// The one-line refusal of an opcode that would name or call code in plain data.
    fn plain_refusal(&mut self, code: u8) -> Error {
        let refuse = "a plain-data pickle may reference no global (refusing to load it)";
        match code {
            op::GLOBAL => {
                let names = self.line().and_then(|m| Ok((m, self.line()?)));
                match names {
                    Ok((module, name)) => self.err(format!(
                        "pickle references the global `{}.{}`; {refuse}",
                        module.escape_debug(),
                        name.escape_debug()
                    )),
                    Err(_) => self.err(format!("GLOBAL opcode; {refuse}")),
                }
            }
            op::STACK_GLOBAL => {
                let name = self.stack.last().cloned();
                let module = self.stack.iter().rev().nth(1).cloned();
                match (module, name) {
                    (Some(Value::Str(m)), Some(Value::Str(n))) => self.err(format!(
                        "pickle references the global `{}.{}`; {refuse}",
                        m.escape_debug(),
                        n.escape_debug()
                    )),
                    _ => self.err(format!("STACK_GLOBAL opcode; {refuse}")),
                }
            }
            op::BINPERSID => self.err(format!("persistent id; {refuse}")),
            op::BUILD => self.err(format!("BUILD (object state); {refuse}")),
            _ => self.err(format!("a call (REDUCE/NEWOBJ); {refuse}")),
        }
    }

    /// The JSON form of a plain-data value (see [`parse_plain_pickle`]).
    fn to_json(&self, v: &Value) -> Result<Json> {
        // Values shared through the memo are copied once per reference: bound the copies
        // by the pickle's size, so that a few bytes cannot expand into gigabytes.
        let n = self.data.len();
        let mut budget = JsonBudget {
            values: n.saturating_mul(16).saturating_add(4096),
            bytes: n.saturating_mul(4).saturating_add(1 << 20),
            open: vec![false; self.arena.len()],
        };
        self.json_value(v, 0, &mut budget)
    }

    fn json_err(&self, msg: impl std::fmt::Display) -> Error {
        Error::format(self.label, format!("pickle: {msg}"))
    }

    /// A string of the output (a value or a dict key), charged to the budget.
    fn json_text(&self, s: &str, b: &mut JsonBudget) -> Result<String> {
        if s.len() > b.bytes {
            return Err(self.json_err(
                "shared strings (memo references) expand to more bytes than the pickle's size allows",
            ));
        }
        b.bytes -= s.len();
        Ok(s.to_string())
    }

    fn json_value(&self, v: &Value, depth: usize, b: &mut JsonBudget) -> Result<Json> {
        if depth > MAX_PLAIN_DEPTH {
            return Err(self.json_err(format!("values nested deeper than {MAX_PLAIN_DEPTH}")));
        }
        if b.values == 0 {
            return Err(self.json_err(
                "shared values (memo references) expand to more values than the pickle's size allows",
            ));
        }
        b.values -= 1;
        Ok(match v {
            Value::None => Json::Null,
            Value::Bool(x) => Json::Bool(*x),
            Value::Int(i) => Json::from(*i),
            // JSON has no NaN or infinity.
            Value::Float(x) => serde_json::Number::from_f64(*x).map_or(Json::Null, Json::Number),
            Value::Str(s) => Json::String(self.json_text(s, b)?),
            Value::Bytes(bytes) => Json::String(self.json_text(&self.py2_str(bytes), b)?),
            Value::Tuple(t) => Json::Array(
                t.items
                    .iter()
                    .map(|x| self.json_value(x, depth + 1, b))
                    .collect::<Result<_>>()?,
            ),
            Value::List(id) | Value::Dict(id) => {
                let id = *id;
                if b.open.get(id).copied().unwrap_or(false) {
                    return Err(self.json_err(format!("a {} contains itself", v.kind())));
                }
                if let Some(o) = b.open.get_mut(id) {
                    *o = true;
                }
                let out = match self.arena.get(id) {
                    Some(Container::List(items)) => Json::Array(
                        items
                            .iter()
                            .map(|x| self.json_value(x, depth + 1, b))
                            .collect::<Result<_>>()?,
                    ),
                    Some(Container::Dict(pairs)) => {
                        let mut map = serde_json::Map::new();
                        for (k, x) in pairs {
                            let key = match k {
                                Value::Str(s) => self.json_text(s, b)?,
                                Value::Bytes(bytes) => self.json_text(&self.py2_str(bytes), b)?,
                                Value::Int(i) => i.to_string(),
                                other => {
                                    return Err(self.json_err(format!(
                                        "a dict key is a {}; only str and int keys convert to JSON",
                                        other.kind()
                                    )))
                                }
                            };
                            let x = self.json_value(x, depth + 1, b)?;
                            // As in Python, a repeated key keeps its last value.
                            map.insert(key, x);
                        }
                        Json::Object(map)
                    }
                    None => return Err(self.json_err("container reference is dangling")),
                };
                if let Some(o) = b.open.get_mut(id) {
                    *o = false;
                }
                out
            }
            Value::Global(_) | Value::Storage(_) | Value::Tensor(_) => {
                return Err(self.json_err(format!("a {} is not plain data", v.kind())))
            }
        })
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            self.op_start = self.pos;
            let code = self.u8()?;
            match code {
                op::GLOBAL
                | op::STACK_GLOBAL
                | op::REDUCE
                | op::NEWOBJ
                | op::BUILD
                | op::BINPERSID
                    if self.mode == Mode::Plain =>
                {
                    return Err(self.plain_refusal(code));
                }
                // Python 2's text opcodes (protocol 0), in plain data only.
                op::INT if self.mode == Mode::Plain => {
                    let v = match self.text_line()? {
                        b"00" => Value::Bool(false),
                        b"01" => Value::Bool(true),
                        line => Value::Int(self.parse_text_int(line, "INT argument")?),
                    };
                    self.push(v)?;
                }
                op::LONG if self.mode == Mode::Plain => {
                    let v = self.text_int("LONG argument")?;
                    self.push(Value::Int(v))?;
                }
                op::FLOAT if self.mode == Mode::Plain => {
                    let line = self.text_line()?;
                    let v = std::str::from_utf8(line)
                        .ok()
                        .and_then(|s| s.trim().parse::<f64>().ok())
                        .ok_or_else(|| {
                            self.err(format!(
                                "FLOAT argument `{}` is not a number",
                                truncate_for_error(&String::from_utf8_lossy(line))
                            ))
                        })?;
                    self.push(Value::Float(v))?;
                }
                op::STRING if self.mode == Mode::Plain => {
                    let line = self.text_line()?;
                    let bytes = py2_string_literal(line).map_err(|m| self.err(m))?;
                    let v = Value::Str(Rc::from(self.py2_str(&bytes)));
                    self.push(v)?;
                }
                op::UNICODE if self.mode == Mode::Plain => {
                    let line = self.text_line()?;
                    let s = raw_unicode_escape(line).map_err(|m| self.err(m))?;
                    self.push(Value::Str(Rc::from(s)))?;
                }
                op::PUT if self.mode == Mode::Plain => {
                    let i = self.text_memo_index()?;
                    self.memo_put(i)?;
                }
                op::GET if self.mode == Mode::Plain => {
                    let i = self.text_memo_index()?;
                    self.memo_get(i)?;
                }
                op::PROTO => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {v}")));
                    }
                }
                // Frames only help streaming readers; the whole pickle is in memory.
                op::FRAME => {
                    self.take(8)?;
                }
                op::STOP => return self.pop(),
                op::MARK => {
                    if self.marks.len() >= self.limits.marks {
                        return Err(
                            self.err(format!("more than {} nested MARKs", self.limits.marks))
                        );
                    }
                    self.marks.push(self.stack.len());
                }
                op::POP => {
                    if self.stack.len() > self.base() {
                        self.pop()?;
                    } else {
                        self.pop_mark()?;
                    }
                }
                op::POP_MARK => {
                    self.pop_mark()?;
                }
                op::DUP => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                op::NONE => self.push(Value::None)?,
                op::NEWTRUE => self.push(Value::Bool(true))?,
                op::NEWFALSE => self.push(Value::Bool(false))?,
                op::BININT => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()))?;
                }
                op::BININT1 => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?;
                }
                op::BININT2 => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()))?;
                }
                op::LONG1 => {
                    let n = usize::from(self.u8()?);
                    let v = self.long(n)?;
                    self.push(v)?;
                }
                op::LONG4 => {
                    let n = self.len_i32()?;
                    let v = self.long(n)?;
                    self.push(v)?;
                }
                op::BINFLOAT => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(v))?;
                }
                op::SHORT_BINUNICODE => {
                    let n = usize::from(self.u8()?);
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                op::BINUNICODE => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                op::BINUNICODE8 => {
                    let n = self.len_u64()?;
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                op::SHORT_BINSTRING => {
                    let n = usize::from(self.u8()?);
                    let v = self.latin1(n)?;
                    self.push(v)?;
                }
                op::BINSTRING => {
                    let n = self.len_i32()?;
                    let v = self.latin1(n)?;
                    self.push(v)?;
                }
                op::SHORT_BINBYTES => {
                    let n = usize::from(self.u8()?);
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                op::BINBYTES => {
                    let n = self.u32()? as usize;
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                op::BINBYTES8 => {
                    let n = self.len_u64()?;
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                op::EMPTY_TUPLE => {
                    let v = self.tuple(Vec::new())?;
                    self.push(v)?;
                }
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    let v = self.tuple(items)?;
                    self.push(v)?;
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(code - op::TUPLE1 + 1);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.tuple(items)?;
                    self.push(v)?;
                }
                op::EMPTY_LIST => {
                    let id = self.new_container(Container::List(Vec::new()))?;
                    self.push(Value::List(id))?;
                }
                op::LIST => {
                    let items = self.pop_mark()?;
                    let id = self.new_container(Container::List(items))?;
                    self.push(Value::List(id))?;
                }
                op::EMPTY_DICT => {
                    let id = self.new_container(Container::Dict(Vec::new()))?;
                    self.push(Value::Dict(id))?;
                }
                op::DICT => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let id = self.new_container(Container::Dict(pairs))?;
                    self.push(Value::Dict(id))?;
                }
                op::SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![(k, v)])?;
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.set_items(pairs)?;
                }
                op::APPEND => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                op::BINPUT => {
                    let i = self.u8()?;
                    self.memo_put(i.into())?;
                }
                op::LONG_BINPUT => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                op::MEMOIZE => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.err("memo is full"))?;
                    self.memo_put(i)?;
                }
                op::BINGET => {
                    let i = self.u8()?;
                    self.memo_get(i.into())?;
                }
                op::LONG_BINGET => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                op::GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = resolve_global(self.label, module, name)?;
                    self.push(Value::Global(g))?;
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let g = resolve_global(self.label, module, name)?;
                    self.push(Value::Global(g))?;
                }
                op::REDUCE | op::NEWOBJ => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.call(&func, &args)?;
                    self.push(v)?;
                }
                op::BUILD => {
                    let state = self.pop()?;
                    self.top()?;
                    if !self.is_empty_state(&state) {
                        return Err(self.err(format!(
                            "BUILD with a non-empty {} state is not supported",
                            state.kind()
                        )));
                    }
                }
                op::BINPERSID => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.push(v)?;
                }
                other => {
                    return Err(self.err(format!("unsupported pickle opcode {other:#04x}")));
                }
            }
        }
    }

    /// Runs the pickle and returns the `name -> tensor` entries of its top-level dict, or
    /// of the dict under its `state_dict` key. Non-tensor values are skipped.
    fn run_state_dict(mut self) -> Result<Vec<(String, TensorSpec)>> {
        let top = self.run()?;
        let label = self.label;
        let Value::Dict(mut id) = top else {
            return Err(Error::format(
                label,
                format!(
                    "data.pkl holds a {}, expected a dict of tensors",
                    top.kind()
                ),
            ));
        };
        let nested = match self.arena.get(id) {
            Some(Container::Dict(pairs)) => pairs.iter().find_map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Dict(inner)) if &**k == "state_dict" => Some(*inner),
                _ => None,
            }),
            _ => None,
        };
        if let Some(inner) = nested {
            id = inner;
        }
        let Some(Container::Dict(pairs)) = self.arena.get(id) else {
            return Err(Error::format(
                label,
                "data.pkl: top-level dict reference is dangling",
            ));
        };
        let mut out = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            if let (Value::Str(name), Value::Tensor(t)) = (k, v) {
                out.push((
                    name.to_string(),
                    TensorSpec {
                        key: t.storage.key.clone(),
                        dtype: t.storage.dtype,
                        storage_numel: t.storage.numel,
                        offset: t.offset,
                        shape: t.shape.clone(),
                        strides: t.strides.clone(),
                    },
                ));
            }
        }
        if out.is_empty() {
            return Err(Error::format(label, "data.pkl holds no tensors"));
        }
        Ok(out)
    }
}

/// What the JSON conversion may still produce, and the containers being converted.
struct JsonBudget {
    values: usize,
    bytes: usize,
    open: Vec<bool>,
}

/// Parses a plain-data pickle (protocol 0 to 5) into JSON: None → null, bools, ints (up to
/// 64 bits), floats (NaN and infinities → null), `str` and `unicode` → strings (Python 2
/// `str` and `bytes` as UTF-8 when valid, else Latin-1), lists and tuples → arrays, dicts →
/// objects (keys must be strings or ints; ints become their decimal text). Any global,
/// call, persistent id or object state is refused; so is every malformed or oversized
/// input, with one line naming `label`, the byte offset and what was wrong.
pub fn parse_plain_pickle(label: &str, bytes: &[u8]) -> Result<Json> {
    let mut machine = Machine::with_mode(label, bytes, Mode::Plain);
    let top = machine.run()?;
    machine.to_json(&top)
}

/// Reads a plain-data pickle file (at most 1 GiB); see [`parse_plain_pickle`].
pub fn read_plain_pickle(path: &Path) -> Result<Json> {
    let label = path.display().to_string();
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len > MAX_PLAIN_PICKLE_BYTES {
        return Err(Error::format(
            label,
            format!("the pickle is {len} bytes, more than the {MAX_PLAIN_PICKLE_BYTES}-byte limit"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_plain_pickle(&label, &bytes)
}

/// Writes JSON as a protocol-2 pickle in the style of Python 2's `cPickle` (the refer API's
/// `refs(*).p`): object keys as `str` (`SHORT_BINSTRING`/`BINSTRING`), string values as
/// `unicode` (`BINUNICODE`), ints as `BININT1`/`BININT2`/`BININT`/`LONG1`, floats as
/// `BINFLOAT`, lists and objects filled by `APPENDS`/`SETITEMS` in batches of 1000. For
/// fixtures and tests: [`parse_plain_pickle`] reads it back to the same JSON.
pub fn write_plain_pickle(v: &Json) -> Vec<u8> {
    fn py2_str(out: &mut Vec<u8>, s: &str) {
        match u8::try_from(s.len()) {
            Ok(n) => out.extend([op::SHORT_BINSTRING, n]),
            Err(_) => {
                out.push(op::BINSTRING);
                out.extend((s.len() as i32).to_le_bytes());
            }
        }
        out.extend(s.as_bytes());
    }
    fn value(out: &mut Vec<u8>, v: &Json) {
        match v {
            Json::Null => out.push(op::NONE),
            Json::Bool(b) => out.push(if *b { op::NEWTRUE } else { op::NEWFALSE }),
            Json::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) if (0..256).contains(&i) => out.extend([op::BININT1, i as u8]),
                (Some(i), _) if (0..65536).contains(&i) => {
                    out.push(op::BININT2);
                    out.extend((i as u16).to_le_bytes());
                }
                (Some(i), _) if i32::try_from(i).is_ok() => {
                    out.push(op::BININT);
                    out.extend((i as i32).to_le_bytes());
                }
                (Some(i), _) => {
                    out.extend([op::LONG1, 8]);
                    out.extend(i.to_le_bytes());
                }
                (None, f) => {
                    out.push(op::BINFLOAT);
                    out.extend(f.unwrap_or(f64::NAN).to_be_bytes());
                }
            },
            Json::String(s) => {
                out.push(op::BINUNICODE);
                out.extend((s.len() as u32).to_le_bytes());
                out.extend(s.as_bytes());
            }
            Json::Array(items) => {
                out.push(op::EMPTY_LIST);
                for chunk in items.chunks(1000) {
                    out.push(op::MARK);
                    for x in chunk {
                        value(out, x);
                    }
                    out.push(op::APPENDS);
                }
            }
            Json::Object(map) => {
                out.push(op::EMPTY_DICT);
                let pairs: Vec<_> = map.iter().collect();
                for chunk in pairs.chunks(1000) {
                    out.push(op::MARK);
                    for (k, x) in chunk {
                        py2_str(out, k);
                        value(out, x);
                    }
                    out.push(op::SETITEMS);
                }
            }
        }
    }
    let mut out = vec![op::PROTO, 2];
    value(&mut out, v);
    out.push(op::STOP);
    out
}

fn latin1_string(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// At most 40 characters of `s`, for an error message.
fn truncate_for_error(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out.escape_debug().to_string()
}

/// The bytes of a Python 2 `str` literal as protocol 0 writes it (`repr`: quoted with `'`
/// or `"`, backslash escapes).
fn py2_string_literal(line: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let body = match line {
        [q, body @ .., last] if (*q == b'\'' || *q == b'"') && last == q => body,
        _ => return Err("STRING argument is not a quoted string literal".into()),
    };
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = body.get(i) else {
            return Err("STRING argument ends with a lone backslash".into());
        };
        i += 1;
        match e {
            b'\n' => {}
            b'\\' | b'\'' | b'"' => out.push(e),
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'x' => {
                let hex = body
                    .get(i..i + 2)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("STRING argument has an invalid \\x escape")?;
                out.push(hex);
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match body.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            // Python keeps unknown escapes as written.
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Ok(out)
}

/// A `unicode` as protocol 0 writes it (raw-unicode-escape): Latin-1 bytes with `\uXXXX`
/// and `\UXXXXXXXX` escapes (surrogate pairs joined; a lone surrogate becomes U+FFFD).
fn raw_unicode_escape(line: &[u8]) -> std::result::Result<String, String> {
    let mut units: Vec<u32> = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let c = line[i];
        // In a run of backslashes only an odd one out starts an escape (as in CPython).
        if c == b'\\' && matches!(line.get(i + 1), Some(b'u' | b'U')) {
            let digits = if line[i + 1] == b'u' { 4 } else { 8 };
            let v = line
                .get(i + 2..i + 2 + digits)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .ok_or("UNICODE argument has an invalid \\u escape")?;
            units.push(v);
            i += 2 + digits;
        } else if c == b'\\' && line.get(i + 1) == Some(&b'\\') {
            units.extend([0x5c, 0x5c]);
            i += 2;
        } else {
            units.push(u32::from(c));
            i += 1;
        }
    }
    let mut out = String::with_capacity(units.len());
    let mut k = 0;
    while k < units.len() {
        let u = units[k];
        k += 1;
        let ch = match u {
            0xd800..=0xdbff => match units.get(k) {
                Some(&lo @ 0xdc00..=0xdfff) => {
                    k += 1;
                    char::from_u32(0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00))
                }
                _ => None,
            },
            _ => char::from_u32(u),
        };
        out.push(ch.unwrap_or(char::REPLACEMENT_CHARACTER));
    }
    Ok(out)
}

#[cfg(test)]
pub(super) mod test_support {
    //! Exposes the interpreter to the tests in `super::super::tests`.
    use super::*;

    /// Runs a raw pickle and returns the names of the tensors of its state dict.
    pub(crate) fn run_pickle(bytes: &[u8]) -> Result<Vec<String>> {
        Ok(Machine::new("<test>", bytes)
            .run_state_dict()?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }
}

#[cfg(test)]
mod plain_tests {
    use super::*;
    use serde_json::json;

    /// A pickle written opcode by opcode.
    #[derive(Default)]
    struct P(Vec<u8>);

    impl P {
        fn op(mut self, code: u8) -> Self {
            self.0.push(code);
            self
        }
        fn raw(mut self, bytes: &[u8]) -> Self {
            self.0.extend_from_slice(bytes);
            self
        }
        fn proto2() -> Self {
            P::default().raw(&[op::PROTO, 2])
        }
        fn short_uni(self, s: &str) -> Self {
            self.op(op::SHORT_BINUNICODE)
                .raw(&[s.len() as u8])
                .raw(s.as_bytes())
        }
        fn uni(self, s: &str) -> Self {
            self.op(op::BINUNICODE)
                .raw(&(s.len() as u32).to_le_bytes())
                .raw(s.as_bytes())
        }
        fn short_str(self, b: &[u8]) -> Self {
            self.op(op::SHORT_BINSTRING).raw(&[b.len() as u8]).raw(b)
        }
        fn binstr(self, b: &[u8]) -> Self {
            self.op(op::BINSTRING)
                .raw(&(b.len() as i32).to_le_bytes())
                .raw(b)
        }
        fn int1(self, v: u8) -> Self {
            self.op(op::BININT1).raw(&[v])
        }
        fn int2(self, v: u16) -> Self {
            self.op(op::BININT2).raw(&v.to_le_bytes())
        }
        fn int4(self, v: i32) -> Self {
            self.op(op::BININT).raw(&v.to_le_bytes())
        }
        fn float(self, v: f64) -> Self {
            self.op(op::BINFLOAT).raw(&v.to_be_bytes())
        }
        fn put(self, i: u8) -> Self {
            self.op(op::BINPUT).raw(&[i])
        }
        fn get(self, i: u8) -> Self {
            self.op(op::BINGET).raw(&[i])
        }
        fn parse(&self) -> Result<Json> {
            parse_plain_pickle("refs(test).p", &self.0)
        }
    }

    /// A refs pickle in the shape Python 2's cPickle writes (protocol 2): keys as `str`,
    /// one sentence as `unicode`, the second ref's dict reusing memoised keys.
    fn refs_pickle() -> P {
        let sentence = |p: P, text: &str, id: i32| {
            p.op(op::EMPTY_DICT)
                .op(op::MARK)
                .short_str(b"tokens")
                .op(op::EMPTY_LIST)
                .op(op::MARK)
                .short_str(b"the")
                .short_str(b"man")
                .op(op::APPENDS)
                .short_str(b"raw")
                .uni(text)
                .short_str(b"sent")
                .short_uni(text)
                .short_str(b"sent_id")
                .int4(id)
                .op(op::SETITEMS)
        };
        let p = P::proto2()
            .op(op::EMPTY_LIST)
            .put(0)
            .op(op::MARK)
            // ref 0
            .op(op::EMPTY_DICT)
            .put(1)
            .op(op::MARK)
            .short_str(b"sent_ids")
            .put(2)
            .op(op::EMPTY_LIST)
            .op(op::MARK)
            .int1(0)
            .int2(300)
            .op(op::APPENDS)
            .short_str(b"file_name")
            .put(3)
            .binstr(b"COCO_train2014_000000000001_7.jpg")
            .short_str(b"ann_id")
            .put(4)
            .int4(1_000_000)
            .short_str(b"split")
            .put(5)
            .short_str(b"val")
            .put(6)
            .short_str(b"sentences")
            .put(7)
            .op(op::EMPTY_LIST)
            .op(op::MARK);
        let p = sentence(p, "the man", 0);
        let p = sentence(p, "caf\u{e9} \u{1F600}", 300);
        p.op(op::APPENDS)
            .op(op::SETITEMS)
            // ref 1: memoised keys, Latin-1 bytes, the other scalar kinds
            .op(op::EMPTY_DICT)
            .op(op::MARK)
            .get(2)
            .op(op::EMPTY_TUPLE)
            .get(3)
            .short_str(b"caf\xe9.jpg")
            .get(4)
            .int4(-5)
            .get(5)
            .get(6)
            .get(7)
            .op(op::EMPTY_LIST)
            .short_uni("score")
            .float(0.25)
            .short_uni("none")
            .op(op::NONE)
            .short_uni("flags")
            .op(op::NEWTRUE)
            .op(op::NEWFALSE)
            .op(op::TUPLE2)
            .short_uni("t1")
            .int1(1)
            .op(op::TUPLE1)
            .short_uni("t3")
            .int1(1)
            .int1(2)
            .int1(3)
            .op(op::TUPLE3)
            .short_uni("tn")
            .op(op::MARK)
            .int1(4)
            .op(op::NONE)
            .op(op::TUPLE)
            .op(op::SETITEMS)
            .op(op::APPENDS)
            .op(op::STOP)
    }

    fn refs_json() -> Json {
        let sentence = |text: &str, id: i64| json!({"tokens": ["the", "man"], "raw": text, "sent": text, "sent_id": id});
        json!([
            {"sent_ids": [0, 300], "file_name": "COCO_train2014_000000000001_7.jpg",
             "ann_id": 1_000_000, "split": "val",
             "sentences": [sentence("the man", 0), sentence("caf\u{e9} \u{1F600}", 300)]},
            {"sent_ids": [], "file_name": "caf\u{e9}.jpg", "ann_id": -5, "split": "val",
             "sentences": [], "score": 0.25, "none": null, "flags": [true, false],
             "t1": [1], "t3": [1, 2, 3], "tn": [4, null]}
        ])
    }

    #[test]
    fn protocol_2_plain_data_reads_as_json() {
        assert_eq!(refs_pickle().parse().unwrap(), refs_json());
        // LONG1, BINBYTES and an int dict key.
        let p = P::proto2()
            .op(op::EMPTY_DICT)
            .int1(7)
            .op(op::LONG1)
            .raw(&[5, 0, 0, 0, 0, 0x80])
            .op(op::SETITEM)
            .short_uni("b")
            .op(op::SHORT_BINBYTES)
            .raw(&[2, b'h', b'i'])
            .op(op::SETITEM)
            .op(op::STOP);
        assert_eq!(p.parse().unwrap(), json!({"7": -(1i64 << 39), "b": "hi"}));
    }

    #[test]
    fn protocol_0_text_opcodes_read_as_json() {
        // What Python 2's pickle.dumps([{'sent': "it's", u'raw': u'caf\xe9\\', 'n': 12L,
        // 'ok': True, 'f': 0.5, 'neg': -3, 'b': "\x00\xe9"}], 0) writes (keys reordered).
        let text: &[u8] = b"(lp0\n(dp1\nS'sent'\np2\nS\"it's\"\np3\nsVraw\np4\nVcaf\xe9\\u005c\np5\nsS'n'\np6\nL12L\nsS'ok'\np7\nI01\nsS'f'\np8\nF0.5\nsS'neg'\np9\nI-3\nsS'b'\np10\nS'\\x00\\xe9'\np11\nsg2\ng3\nsa.";
        let v = parse_plain_pickle("t.p", text).unwrap();
        assert_eq!(
            v,
            json!([{"sent": "it's", "raw": "caf\u{e9}\\", "n": 12, "ok": true, "f": 0.5,
                    "neg": -3, "b": "\u{0}\u{e9}"}])
        );
        assert_eq!(
            raw_unicode_escape(b"a\\ud83d\\ude00\\\\u0041\\ud800").unwrap(),
            "a\u{1F600}\\\\u0041\u{FFFD}"
        );
        assert_eq!(
            py2_string_literal(b"'a\\'b\\n\\101\\q'").unwrap(),
            b"a'b\nA\\q"
        );
    }

    fn err_text(r: Result<Json>) -> String {
        let e = r.expect_err("must be refused").to_string();
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        e
    }

    #[test]
    fn globals_calls_and_persistent_ids_are_refused() {
        let global = P::proto2()
            .op(op::GLOBAL)
            .raw(b"os\nsystem\n")
            .short_uni("echo hi")
            .op(op::TUPLE1)
            .op(op::REDUCE)
            .op(op::STOP);
        let e = err_text(global.parse());
        assert!(
            e.starts_with("refs(test).p: invalid pickle at byte 2"),
            "{e}"
        );
        assert!(
            e.contains("`os.system`") && e.contains("may reference no global"),
            "{e}"
        );
        // Even the globals the torch mode allows.
        let od = P::proto2()
            .op(op::GLOBAL)
            .raw(b"collections\nOrderedDict\n")
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
            .op(op::STOP);
        assert!(err_text(od.parse()).contains("`collections.OrderedDict`"));
        let stack_global = P::proto2()
            .short_uni("builtins")
            .short_uni("eval")
            .op(op::STACK_GLOBAL)
            .op(op::STOP);
        assert!(err_text(stack_global.parse()).contains("`builtins.eval`"));
        for code in [op::REDUCE, op::NEWOBJ, op::BUILD, op::BINPERSID] {
            let p = P::proto2().op(op::NONE).op(op::NONE).op(code).op(op::STOP);
            assert!(err_text(p.parse()).contains("no global"), "{code:#x}");
        }
    }

    #[test]
    fn malformed_pickles_are_one_line_errors() {
        let good = refs_pickle().0;
        // Every truncation.
        for len in 0..good.len() {
            let e = err_text(parse_plain_pickle("refs(test).p", &good[..len]));
            assert!(e.starts_with("refs(test).p: "), "{e}");
        }
        // Every single-byte corruption: an error or a value, never a panic.
        for i in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut m = good.clone();
                m[i] ^= flip;
                let _ = parse_plain_pickle("m", &m);
            }
        }
        let cases: Vec<(P, &str)> = vec![
            (
                P::proto2()
                    .op(op::EMPTY_LIST)
                    .put(0)
                    .get(0)
                    .op(op::APPEND)
                    .op(op::STOP),
                "a list contains itself",
            ),
            (
                P::proto2().get(3).op(op::STOP),
                "memo entry 3 was never stored",
            ),
            (
                P::proto2()
                    .op(op::EMPTY_DICT)
                    .op(op::MARK)
                    .int1(1)
                    .op(op::SETITEMS)
                    .op(op::STOP),
                "odd number of items",
            ),
            (
                P::proto2()
                    .op(op::EMPTY_DICT)
                    .op(op::EMPTY_TUPLE)
                    .op(op::NONE)
                    .op(op::SETITEM)
                    .op(op::STOP),
                "a dict key is a tuple",
            ),
            (
                P::proto2().op(b'i').op(op::STOP),
                "unsupported pickle opcode 0x69",
            ),
            (
                P::proto2().op(op::INT).raw(b"12x\n").op(op::STOP),
                "INT argument `12x`",
            ),
            (
                P::proto2().op(op::STRING).raw(b"abc\n").op(op::STOP),
                "not a quoted string",
            ),
            (P::proto2().op(op::APPEND).op(op::STOP), "stack underflow"),
            (
                P::proto2().int1(1).op(op::APPEND).op(op::STOP),
                "stack underflow",
            ),
            (
                P::proto2().int1(1).int1(2).op(op::APPEND).op(op::STOP),
                "APPEND(S) on a int",
            ),
        ];
        for (i, (p, want)) in cases.into_iter().enumerate() {
            let e = err_text(p.parse());
            assert!(e.contains(want), "case {i}: {e}");
        }
        // 200 nested lists.
        let mut deep = P::proto2();
        for _ in 0..200 {
            deep = deep.op(op::EMPTY_LIST);
        }
        for _ in 0..199 {
            deep = deep.op(op::APPEND);
        }
        let e = err_text(deep.op(op::STOP).parse());
        assert!(e.contains("nested deeper than 100"), "{e}");
        // 60 levels of [x, x] through the memo: 2^60 copies from a few hundred bytes.
        let mut bomb = P::proto2().op(op::NONE);
        for _ in 0..60 {
            bomb = bomb.put(0).op(op::MARK).get(0).get(0).op(op::LIST);
        }
        let e = err_text(bomb.op(op::STOP).parse());
        assert!(e.contains("expand to more values"), "{e}");
        // A 10 KB string referenced 10,000 times.
        let mut strings = P::proto2()
            .uni(&"x".repeat(10_000))
            .put(0)
            .op(op::EMPTY_LIST)
            .op(op::MARK);
        for _ in 0..10_000 {
            strings = strings.get(0);
        }
        let e = err_text(strings.op(op::APPENDS).op(op::STOP).parse());
        assert!(e.contains("expand to more bytes"), "{e}");
        // The same through a dict key.
        let mut keys = P::proto2()
            .op(op::EMPTY_DICT)
            .uni(&"k".repeat(10_000))
            .op(op::NONE)
            .op(op::SETITEM)
            .put(0)
            .op(op::EMPTY_LIST)
            .op(op::MARK);
        for _ in 0..10_000 {
            keys = keys.get(0);
        }
        let e = err_text(keys.op(op::APPENDS).op(op::STOP).parse());
        assert!(e.contains("expand to more bytes"), "{e}");
    }

    #[test]
    fn read_plain_pickle_names_the_file() {
        let dir = std::env::temp_dir().join(format!("pixellm-plain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("refs(unc).p");
        std::fs::write(&path, &refs_pickle().0).unwrap();
        assert_eq!(read_plain_pickle(&path).unwrap(), refs_json());
        // The writer's pickles read back to the same JSON.
        let v = json!([{"a": [1, 300, 70000, -2, 1i64 << 40, 0.5, null, true, false],
                        "long": "y".repeat(300), "é": {"t": "caf\u{e9}"}}]);
        let written = write_plain_pickle(&v);
        assert_eq!(parse_plain_pickle("w", &written).unwrap(), v);
        std::fs::write(dir.join("written.p"), &written).unwrap();
        let e = read_plain_pickle(&dir.join("missing.p"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.p"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
