//! `torch.save` zip archives (torch >= 1.6): `<prefix>/data.pkl` describes the tensors,
//! `<prefix>/data/<key>` hold the raw little-endian storages.
//!
//! The pickle is interpreted as a data format, never executed: the interpreter knows a
//! fixed set of globals (tensor rebuild functions, storage types, `OrderedDict`) as inert
//! tags and refuses every other one, so a checkpoint cannot run code. Its memo, stack,
//! mark stack, containers and tuple nesting are capped, and it never recurses.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::rc::Rc;
use std::sync::Arc;

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
/// Bools, floats and bytes are never inspected by a state dict, so only their kind is kept.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Bytes,
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
            Value::Bool => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
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

/// The pickle interpreter: a stack machine over data values only.
struct Machine<'a> {
    label: &'a str,
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
        Machine {
            label,
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
        Error::format(
            self.label,
            format!(
                "data.pkl: invalid pickle at byte {} (opcode {opcode:#04x}): {msg}",
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

    fn latin1(&mut self, n: usize) -> Result<Value> {
        let s: String = self.take(n)?.iter().map(|&b| char::from(b)).collect();
        Ok(Value::Str(Rc::from(s)))
    }

    fn bytes(&mut self, n: usize) -> Result<Value> {
        self.take(n)?;
        Ok(Value::Bytes)
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
        if self.stack.len() >= MAX_STACK {
            return Err(self.err(format!("stack exceeds {MAX_STACK} values")));
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
        if self.container_items > MAX_CONTAINER_ITEMS {
            return Err(self.err(format!(
                "containers hold more than {MAX_CONTAINER_ITEMS} items"
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
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&idx) {
            return Err(self.err(format!("memo exceeds {MAX_MEMO} entries")));
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

    fn run(&mut self) -> Result<Value> {
        loop {
            self.op_start = self.pos;
            let code = self.u8()?;
            match code {
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
                    if self.marks.len() >= MAX_MARKS {
                        return Err(self.err(format!("more than {MAX_MARKS} nested MARKs")));
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
                op::NEWTRUE => self.push(Value::Bool)?,
                op::NEWFALSE => self.push(Value::Bool)?,
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
                    self.take(8)?;
                    self.push(Value::Float)?;
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
