//! Bounds-checked readers for checkpoint files: safetensors, `torch.save` zip archives and
//! GGUF (llama architecture, served under Hugging Face LLaMA names, see [`gguf`]).
//!
//! Nothing here trusts a length, offset, shape or stride found in a file: every one is
//! checked against the real byte size before anything is sliced or allocated, so a corrupt
//! or hostile checkpoint gives an [`Error`], never a panic or a huge allocation. Pickles are
//! parsed as data: no Python object is ever constructed or called ([`read_plain_pickle`]
//! reads pickles of plain Python values, such as refCOCO's `refs(unc).p`, with no global
//! at all).
//!
//! Tensors are located when a file is opened and their bytes are read (and converted to
//! `f32`) only when asked for, straight from a memory map for files on disk.

pub mod gguf;
mod layout;
mod pickle;
pub mod quantize;
mod safetensors;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};

pub use layout::StoredDType;

use crate::kernels::quant::{QuantFormat, QuantMatrix};
pub use pickle::{parse_plain_pickle, read_plain_pickle, write_plain_pickle, MAX_PLAIN_DEPTH};

/// Shape and element type of a stored tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type as stored in the file.
    pub dtype: StoredDType,
    /// Logical shape (row-major), empty for a scalar.
    pub shape: Vec<usize>,
}

/// The bytes of one opened file (or of one decompressed zip entry).
pub(crate) struct Source {
    /// Path or caller-given label, used in every error message.
    pub(crate) label: String,
    pub(crate) bytes: Bytes,
}

/// Owned or memory-mapped bytes.
pub(crate) enum Bytes {
    Owned(Vec<u8>),
    #[cfg(not(target_family = "wasm"))]
    Mapped(memmap2::Mmap),
}

impl Bytes {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            #[cfg(not(target_family = "wasm"))]
            Bytes::Mapped(m) => m,
        }
    }
}

/// Where a tensor's elements live: a byte region of a source and a strided view into it.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) info: TensorInfo,
    pub(crate) source: Arc<Source>,
    /// Byte range of the whole storage inside `source`, validated on open.
    pub(crate) region_start: usize,
    pub(crate) region_len: usize,
    /// View into the storage, in elements.
    pub(crate) elem_offset: usize,
    pub(crate) strides: Vec<usize>,
    /// A matrix `pixellm quantize` stored in blocks (`shape` is then the logical
    /// `[rows, cols]` and the region its packed bytes).
    pub(crate) packed: Option<QuantFormat>,
}

impl Entry {
    /// The storage's bytes (`None` if the region lies outside the file).
    pub(crate) fn region(&self) -> Option<&[u8]> {
        self.source
            .bytes
            .as_slice()
            .get(self.region_start..)
            .and_then(|s| s.get(..self.region_len))
    }
}

/// A set of opened checkpoint files: tensor name -> (file, location).
///
/// Cheap to clone and `Send + Sync`: file bytes are shared through `Arc`s. Files on disk
/// are memory-mapped, so they must not be modified or truncated while this is alive.
#[derive(Clone, Default)]
pub struct WeightFiles {
    tensors: HashMap<String, Entry>,
    /// Labels of the files opened so far, in order, for "not found in ..." messages.
    files: Vec<String>,
    /// Opened GGUF files. Their tensors are also in `tensors` (for names, shapes and byte
    /// regions) but are read through these, which dequantise and un-permute; an entry
    /// belongs to the GGUF file whose source it shares.
    gguf: Vec<Arc<gguf::GgufFile>>,
}

impl fmt::Debug for WeightFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightFiles")
            .field("files", &self.files)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Which parser a buffer needs, decided from its first bytes.
enum Kind {
    SafeTensors,
    TorchZip,
    Gguf,
}

fn sniff(label: &str, bytes: &[u8]) -> Result<Kind> {
    if bytes.is_empty() {
        return Err(Error::format(label, "file is empty"));
    }
    // Before the safetensors test: a GGUF tensor count of 123 puts '{' at byte 8.
    if bytes.starts_with(b"GGUF") {
        return Ok(Kind::Gguf);
    }
    // Zip local-file header, or the end-of-central-directory record of an empty zip.
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Ok(Kind::TorchZip);
    }
    // safetensors: u64 little-endian header length, then a JSON object. Checked before the
    // pickle test below because the length's first byte may well be 0x80.
    if bytes.len() >= 9 && bytes[8] == b'{' {
        return Ok(Kind::SafeTensors);
    }
    // Pre-1.6 torch.save wrote a bare pickle stream (PROTO opcode first) or a tar archive.
    if bytes[0] == 0x80 || bytes.get(257..262) == Some(b"ustar") {
        return Err(Error::format(
            label,
            "legacy torch serialization is not supported; re-save with torch>=1.6",
        ));
    }
    Err(Error::format(
        label,
        "unrecognised checkpoint format: expected safetensors, a torch.save zip archive or GGUF",
    ))
}

impl WeightFiles {
    /// An empty set; fill it with [`WeightFiles::extend`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens one checkpoint file: safetensors, a `torch.save` zip (`.bin`/`.pt`/`.pth`) or
    /// a llama-architecture GGUF, recognised by its magic bytes, not its extension.
    ///
    /// GGUF tensors are registered under their Hugging Face LLaMA names
    /// (`model.layers.0.self_attn.q_proj.weight`, ...); [`WeightFiles::info`] reports the
    /// PyTorch-order shape and, for block formats, `StoredDType::Other("Q4_1")` etc.;
    /// [`WeightFiles::read_f32`] dequantises and un-permutes q/k rows (see
    /// [`gguf::GgufFile::read_f32_hf`]).
    pub fn open(path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let bytes = map_file(path)?;
        Self::from_source(Arc::new(Source { label, bytes }))
    }

    /// Opens the same formats from memory (e.g. in a browser). `label` names the buffer in
    /// error messages and in [`WeightFiles::file_of`].
    pub fn from_bytes(label: &str, bytes: Vec<u8>) -> Result<Self> {
        Self::from_source(Arc::new(Source {
            label: label.to_string(),
            bytes: Bytes::Owned(bytes),
        }))
    }

    fn from_source(source: Arc<Source>) -> Result<Self> {
        let mut gguf_files = Vec::new();
        let entries = match sniff(&source.label, source.bytes.as_slice())? {
            Kind::SafeTensors => safetensors::parse(&source)?,
            Kind::TorchZip => pickle::parse_torch_zip(&source)?,
            Kind::Gguf => {
                let file = gguf::GgufFile::from_source(source.clone())?;
                // Only llama names and layouts are mapped; anything else would surface as
                // a confusing missing-tensor error later.
                file.require_llama()?;
                let entries = file.entries();
                gguf_files.push(Arc::new(file));
                entries
            }
        };
        let mut out = WeightFiles {
            tensors: HashMap::with_capacity(entries.len()),
            files: vec![source.label.clone()],
            gguf: gguf_files,
        };
        for (name, entry) in entries {
            layout::validate(&entry).map_err(|msg| Error::Tensor {
                file: entry.source.label.clone(),
                name: name.clone(),
                msg,
            })?;
            out.tensors.insert(name, entry);
        }
        Ok(out)
    }

    /// Opens a sharded checkpoint from its index (`model.safetensors.index.json` or
    /// `pytorch_model.bin.index.json`): every shard named in `weight_map`, resolved relative
    /// to the index's folder. Each name takes its tensor from the shard the index assigns it.
    pub fn open_index(index_json: &Path) -> Result<Self> {
        let label = index_json.display().to_string();
        let text = std::fs::read(index_json).map_err(|e| Error::io(index_json, e))?;
        let map = parse_index(&label, &text)?;
        let dir = index_json.parent().unwrap_or(Path::new(""));

        let mut shards: Vec<&str> = map.values().map(String::as_str).collect();
        shards.sort_unstable();
        shards.dedup();
        let mut opened: HashMap<&str, WeightFiles> = HashMap::with_capacity(shards.len());
        for shard in shards {
            let rel = Path::new(shard);
            if rel.is_absolute() || rel.components().any(|c| c.as_os_str() == "..") {
                return Err(Error::format(
                    &label,
                    format!(
                        "shard `{shard}` in weight_map must be a path inside the index's folder"
                    ),
                ));
            }
            let path = dir.join(rel);
            if !path.is_file() {
                return Err(Error::format(
                    &label,
                    format!(
                        "shard `{shard}` named in weight_map is missing (looked for {})",
                        path.display()
                    ),
                ));
            }
            opened.insert(shard, WeightFiles::open(&path)?);
        }

        let mut out = WeightFiles::new();
        let mut shard_names: Vec<&str> = opened.keys().copied().collect();
        shard_names.sort_unstable();
        for shard in &shard_names {
            out.extend(opened[shard].clone());
        }
        // The index is authoritative where shards disagree (a name present in several).
        for (name, shard) in &map {
            let files = &opened[shard.as_str()];
            let entry = files.tensors.get(name).ok_or_else(|| {
                Error::format(
                    &label,
                    format!("weight_map puts tensor `{name}` in shard `{shard}`, which does not contain it"),
                )
            })?;
            out.tensors.insert(name.clone(), entry.clone());
        }
        Ok(out)
    }

    /// Opens a Hugging Face model folder: the first of `model.safetensors`,
    /// `model.safetensors.index.json`, `pytorch_model.bin.index.json`, `pytorch_model.bin`
    /// that exists.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        const CANDIDATES: [&str; 4] = [
            "model.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin.index.json",
            "pytorch_model.bin",
        ];
        for name in CANDIDATES {
            let path = dir.join(name);
            if path.is_file() {
                return if name.ends_with(".json") {
                    Self::open_index(&path)
                } else {
                    Self::open(&path)
                };
            }
        }
        Err(Error::format(
            dir.display().to_string(),
            format!("no checkpoint found; looked for {}", CANDIDATES.join(", ")),
        ))
    }

    /// Adds every tensor of `other`; on a duplicate name the tensor from `other` wins.
    pub fn extend(&mut self, other: WeightFiles) {
        for f in other.files {
            if !self.files.contains(&f) {
                self.files.push(f);
            }
        }
        for g in other.gguf {
            if !self.gguf.iter().any(|x| Arc::ptr_eq(x, &g)) {
                self.gguf.push(g);
            }
        }
        self.tensors.extend(other.tensors);
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether no tensor is present.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Labels (paths) of the files opened, in opening order.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Whether a tensor of that name is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Dtype and shape of a tensor, without reading it.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name).map(|e| &e.info)
    }

    /// Bytes `name` occupies in its file (0 if unknown).
    pub fn stored_bytes(&self, name: &str) -> u64 {
        let Some(entry) = self.tensors.get(name) else {
            return 0;
        };
        if self.gguf_of(entry).is_some() || entry.packed.is_some() {
            // A GGUF or packed entry's region is exactly its (possibly quantised) bytes.
            return entry.region_len as u64;
        }
        let i = &entry.info;
        let n: usize = i.shape.iter().product();
        (n * i.dtype.size().unwrap_or(0)) as u64
    }

    /// Bytes of every tensor in the opened files.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.keys().map(|n| self.stored_bytes(n)).sum()
    }

    /// Label (path) of the file holding the tensor.
    pub fn file_of(&self, name: &str) -> Option<&str> {
        self.tensors.get(name).map(|e| e.source.label.as_str())
    }

    /// Reads a float tensor as `f32`, checking its shape against `expected_shape`.
    ///
    /// F32, F16 and BF16 convert exactly; F64 rounds to nearest. Errors:
    /// [`Error::MissingTensor`] (names the tensor, the files searched and the expected shape),
    /// [`Error::Tensor`] for a shape mismatch (`shape [a, b] but expected [c, d]`) or a
    /// non-float dtype (`dtype I64 is not a float type`).
    pub fn read_f32(&self, name: &str, expected_shape: &[usize]) -> Result<Vec<f32>> {
        let entry = self.entry(name, expected_shape)?;
        if entry.info.shape != expected_shape {
            return Err(Error::Tensor {
                file: entry.source.label.clone(),
                name: name.to_string(),
                msg: format!(
                    "shape {:?} but expected {:?}",
                    entry.info.shape, expected_shape
                ),
            });
        }
        if let Some(g) = self.gguf_of(entry) {
            return g.read_f32_hf(name, expected_shape);
        }
        if entry.packed.is_some() {
            return Ok(packed_matrix(entry)
                .map_err(|msg| Error::Tensor {
                    file: entry.source.label.clone(),
                    name: name.to_string(),
                    msg,
                })?
                .dequantize());
        }
        layout::read_f32(entry).map_err(|msg| Error::Tensor {
            file: entry.source.label.clone(),
            name: name.to_string(),
            msg,
        })
    }

    /// The packed block format `name` is stored in (GGUF `Q8_0`, `Q4_0`, `Q4_1`), if any.
    pub fn packed_format(&self, name: &str) -> Option<QuantFormat> {
        let entry = self.tensors.get(name)?;
        entry
            .packed
            .or_else(|| self.gguf_of(entry)?.packed_format(name))
    }

    /// A matrix stored in a packed block format ([`WeightFiles::packed_format`]) as its
    /// blocks, shape and block count checked.
    pub fn read_packed(&self, name: &str, expected_shape: [usize; 2]) -> Result<QuantMatrix> {
        let entry = self.entry(name, &expected_shape)?;
        let error = |msg: String| Error::Tensor {
            file: entry.source.label.clone(),
            name: name.to_string(),
            msg,
        };
        if entry.packed.is_some() {
            if entry.info.shape != expected_shape {
                return Err(error(format!(
                    "shape {:?} but expected {:?}",
                    entry.info.shape, expected_shape
                )));
            }
            return packed_matrix(entry).map_err(error);
        }
        match self.gguf_of(entry) {
            Some(g) => g.read_packed_hf(name, expected_shape),
            None => Err(Error::Tensor {
                file: entry.source.label.clone(),
                name: name.to_string(),
                msg: format!("{:?} is not a packed block format", entry.info.dtype),
            }),
        }
    }

    /// Reads a float tensor as `f32` without a shape check; returns its shape too.
    pub fn read_f32_any(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let entry = self.entry(name, &[])?;
        if let Some(g) = self.gguf_of(entry) {
            let data = g.read_f32_hf(name, &entry.info.shape)?;
            return Ok((entry.info.shape.clone(), data));
        }
        if entry.packed.is_some() {
            let m = packed_matrix(entry).map_err(|msg| Error::Tensor {
                file: entry.source.label.clone(),
                name: name.to_string(),
                msg,
            })?;
            return Ok((entry.info.shape.clone(), m.dequantize()));
        }
        let data = layout::read_f32(entry).map_err(|msg| Error::Tensor {
            file: entry.source.label.clone(),
            name: name.to_string(),
            msg,
        })?;
        Ok((entry.info.shape.clone(), data))
    }

    /// The GGUF file an entry came from, if any (matched by its shared source).
    fn gguf_of(&self, entry: &Entry) -> Option<&gguf::GgufFile> {
        self.gguf
            .iter()
            .find(|g| Arc::ptr_eq(g.source(), &entry.source))
            .map(|g| &**g)
    }

    fn entry(&self, name: &str, expected: &[usize]) -> Result<&Entry> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            searched: if self.files.is_empty() {
                "no files (nothing was opened)".to_string()
            } else {
                self.files.join(", ")
            },
            expected: expected.to_vec(),
        })
    }
}

#[cfg(not(target_family = "wasm"))]
fn map_file(path: &Path) -> Result<Bytes> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        // Mapping an empty file fails on some platforms; report it as what it is.
        return Err(Error::format(path.display().to_string(), "file is empty"));
    }
    // SAFETY: the map is read-only; like every mmap-based loader we rely on the checkpoint
    // not being modified or truncated by another process while it is open.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Bytes::Mapped(map))
}

#[cfg(target_family = "wasm")]
fn map_file(path: &Path) -> Result<Bytes> {
    std::fs::read(path)
        .map(Bytes::Owned)
        .map_err(|e| Error::io(path, e))
}

/// Reads `weight_map` (name -> shard file) from an index JSON.
fn parse_index(label: &str, text: &[u8]) -> Result<HashMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let index: Index = serde_json::from_slice(text)
        .map_err(|e| Error::format(label, format!("invalid index JSON: {e}")))?;
    if index.weight_map.is_empty() {
        return Err(Error::format(label, "weight_map is empty"));
    }
    Ok(index.weight_map)
}

#[cfg(test)]
mod tests;

/// The blocks of an entry `pixellm quantize` stored packed (format and shape checked at
/// open; the region re-checked here).
fn packed_matrix(entry: &Entry) -> std::result::Result<QuantMatrix, String> {
    let format = entry.packed.ok_or("not a packed tensor")?;
    let bytes = entry.region().ok_or("data region lies outside the file")?;
    let [rows, cols] = entry.info.shape[..] else {
        return Err(format!("packed tensor of shape {:?}", entry.info.shape));
    };
    QuantMatrix::from_blocks(format, rows, cols, bytes.to_vec())
}
