//! The malformed-input corpus: every case is generated at test time from the good files of
//! the conformance kit (`tests/fixtures/conformance`) by truncating, flipping bytes,
//! re-serialising safetensors headers, rewriting JSON, hand-assembling `torch.save`
//! archives (protocol-2 pickles in a zip) and encoding or hand-crafting images. No broken
//! binary is checked in.
//!
//! A case is one table row: a name, a builder that writes the broken input into the case's
//! empty temporary directory and adjusts the `pixellm segment` invocation, and what the CLI
//! must do: succeed, or fail with one `error: ` line containing given substrings
//! (`"a|b"` accepts either `a` or `b`).

#![allow(dead_code)]

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use serde_json::{json, Map, Value};

/// The kit case whose image, question and answer the runs use.
pub const CASE: &str = "p2_portrait_300x500";
/// Name of the kit's CLIP directory.
pub const CLIP: &str = "clip-vit-tiny-patch14-336";

/// What the CLI must do with a case.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// Exit code 0 and a complete output directory (size and target count from [`Run`]).
    Ok,
    /// Exit code 1 and one `error: ` line containing every entry (`a|b`: either).
    Err(&'static [&'static str]),
}

/// One row of the table.
pub struct Case {
    pub name: &'static str,
    /// Writes the broken input under `ctx.dir` and points `ctx.run` at it.
    pub build: fn(&mut Ctx),
    pub expect: Expect,
}

/// A `pixellm segment` invocation.
#[derive(Debug, Clone)]
pub struct Run {
    pub model: PathBuf,
    pub vision_tower: Option<PathBuf>,
    pub image: PathBuf,
    pub prompt: String,
    pub answer: Option<String>,
    /// Extra command-line arguments (`--backend`, `--max-new-tokens`, ...).
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    pub out: PathBuf,
    /// Files that must not exist after the run (e.g. what a pickle payload would create).
    pub must_not_exist: Vec<PathBuf>,
    /// Files that must still hold exactly these bytes after the run (the user's own files).
    pub must_keep: Vec<(PathBuf, Vec<u8>)>,
    /// A file already at `out` that a failed run must leave as it was.
    pub out_file: Option<Vec<u8>>,
    /// For [`Expect::Ok`]: image size (width, height) and number of targets.
    pub size: (u32, u32),
    pub targets: usize,
}

/// Where a case builds its input.
pub struct Ctx {
    /// The conformance kit (read only).
    pub kit: PathBuf,
    /// The case's own empty directory.
    pub dir: PathBuf,
    pub run: Run,
}

impl Ctx {
    /// A context whose run is the kit's valid teacher-forced segmentation.
    pub fn new(kit: &Path, dir: &Path) -> Self {
        let case = kit.join("cases").join(CASE);
        let json: Value = serde_json::from_slice(&read(&case.join("case.json"))).unwrap();
        let run = Run {
            model: kit.join("checkpoint"),
            vision_tower: Some(kit.join(CLIP)),
            image: case.join("image.png"),
            prompt: json["question"].as_str().unwrap().to_string(),
            answer: Some(
                json["teacher_forced"]["answer"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ),
            args: Vec::new(),
            env: Vec::new(),
            out: dir.join("out"),
            must_not_exist: Vec::new(),
            must_keep: Vec::new(),
            out_file: None,
            size: (300, 500),
            targets: 2,
        };
        Ctx {
            kit: kit.to_path_buf(),
            dir: dir.to_path_buf(),
            run,
        }
    }

    /// Copies a kit directory (`checkpoint`, `checkpoint-bin`) into the case as `model/`
    /// and uses it as `--model`.
    pub fn model(&mut self, kit_dir: &str) -> PathBuf {
        let dst = self.dir.join("model");
        copy_dir(&self.kit.join(kit_dir), &dst);
        self.run.model = dst.clone();
        dst
    }

    /// Copies the kit's CLIP directory into the case and uses it as `--vision-tower`.
    pub fn clip(&mut self) -> PathBuf {
        let dst = self.dir.join(CLIP);
        copy_dir(&self.kit.join(CLIP), &dst);
        self.run.vision_tower = Some(dst.clone());
        dst
    }

    /// Writes an image file into the case and uses it as `--image`.
    pub fn image(&mut self, name: &str, bytes: &[u8]) {
        let path = self.dir.join(name);
        put(&path, bytes);
        self.run.image = path;
    }

    /// The kit image decoded to RGB8.
    pub fn kit_image(&self) -> RgbImage {
        image::open(self.kit.join("cases").join(CASE).join("image.png"))
            .unwrap()
            .to_rgb8()
    }

    /// The kit image as stored (PNG bytes).
    pub fn kit_png(&self) -> Vec<u8> {
        read(&self.kit.join("cases").join(CASE).join("image.png"))
    }

    pub fn arg(&mut self, a: &str) {
        self.run.args.push(a.to_string());
    }
}

// ---------------------------------------------------------------------------------------
// Files.

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path`, replacing (never writing through) whatever is there.
pub fn put(path: &Path, bytes: &[u8]) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Applies `f` to a file's bytes.
pub fn edit(path: &Path, f: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let bytes = f(read(path));
    put(path, &bytes);
}

pub fn truncate(path: &Path, len: usize) {
    edit(path, |mut b| {
        assert!(len < b.len(), "{}: truncating to {len}", path.display());
        b.truncate(len);
        b
    });
}

/// XORs the byte at `pos` with `mask`.
pub fn flip(path: &Path, pos: usize, mask: u8) {
    edit(path, |mut b| {
        b[pos] ^= mask;
        b
    });
}

pub fn remove(path: &Path) {
    std::fs::remove_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
}

/// Reads a JSON file, lets `f` edit it, writes it back.
pub fn edit_json(path: &Path, f: impl FnOnce(&mut Map<String, Value>)) {
    let mut v: Value = serde_json::from_slice(&read(path)).unwrap();
    f(v.as_object_mut().unwrap());
    put(path, serde_json::to_string_pretty(&v).unwrap().as_bytes());
}

// ---------------------------------------------------------------------------------------
// safetensors: 8-byte little-endian header length, JSON header, data.

/// One tensor of a safetensors file, with its bytes.
#[derive(Debug, Clone)]
pub struct StTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

/// A parsed safetensors file: the header as JSON and the data section.
#[derive(Debug, Clone)]
pub struct St {
    pub header: Map<String, Value>,
    pub data: Vec<u8>,
}

impl St {
    pub fn parse(bytes: &[u8]) -> St {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        St {
            header: header.as_object().unwrap().clone(),
            data: bytes[8 + n..].to_vec(),
        }
    }

    pub fn load(path: &Path) -> St {
        St::parse(&read(path))
    }

    /// Header length field, JSON header, data: offsets are written as they stand.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&Value::Object(self.header.clone())).unwrap();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.data);
        out
    }

    pub fn save(&self, path: &Path) {
        put(path, &self.to_bytes());
    }

    /// The header entry of a tensor.
    pub fn entry(&mut self, name: &str) -> &mut Map<String, Value> {
        self.header
            .get_mut(name)
            .unwrap_or_else(|| panic!("no tensor {name} in the kit file"))
            .as_object_mut()
            .unwrap()
    }

    /// Tensors in data order, with their bytes.
    pub fn tensors(&self) -> Vec<StTensor> {
        let mut out: Vec<(u64, StTensor)> = self
            .header
            .iter()
            .filter(|(k, _)| k.as_str() != "__metadata__")
            .map(|(k, v)| {
                let offs: Vec<u64> = v["data_offsets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect();
                let shape = v["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect();
                let t = StTensor {
                    name: k.clone(),
                    dtype: v["dtype"].as_str().unwrap().to_string(),
                    shape,
                    data: self.data[offs[0] as usize..offs[1] as usize].to_vec(),
                };
                (offs[0], t)
            })
            .collect();
        out.sort_by_key(|(o, _)| *o);
        out.into_iter().map(|(_, t)| t).collect()
    }

    /// A consistent file from a list of tensors (offsets recomputed, metadata kept).
    pub fn from_tensors(metadata: Option<&Value>, tensors: &[StTensor]) -> St {
        let mut header = Map::new();
        if let Some(m) = metadata {
            header.insert("__metadata__".into(), m.clone());
        }
        let mut data = Vec::new();
        for t in tensors {
            let start = data.len();
            data.extend_from_slice(&t.data);
            header.insert(
                t.name.clone(),
                json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [start, data.len()]}),
            );
        }
        St { header, data }
    }

    /// Re-serialises after `f` edited, added or removed tensors.
    pub fn rebuild(&self, f: impl FnOnce(&mut Vec<StTensor>)) -> St {
        let mut tensors = self.tensors();
        f(&mut tensors);
        St::from_tensors(self.header.get("__metadata__"), &tensors)
    }

    /// Byte range of a tensor inside the data section.
    pub fn range(&self, name: &str) -> (usize, usize) {
        let o = &self.header[name]["data_offsets"];
        (
            o[0].as_u64().unwrap() as usize,
            o[1].as_u64().unwrap() as usize,
        )
    }

    /// Length of the header-length field plus the header.
    pub fn data_start(bytes: &[u8]) -> usize {
        8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
    }
}

// ---------------------------------------------------------------------------------------
// torch.save archives: a protocol-2 pickle plus raw storages in a stored zip.

/// Pickle bytes, written opcode by opcode.
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    /// `PROTO proto`.
    pub fn new(proto: u8) -> Self {
        Pickle(vec![0x80, proto])
    }
    pub fn op(&mut self, code: u8) -> &mut Self {
        self.0.push(code);
        self
    }
    pub fn mark(&mut self) -> &mut Self {
        self.op(b'(')
    }
    /// `GLOBAL module\nname\n`.
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }
    /// `BINUNICODE`.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.op(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// `BININT1` / `BININT2` / `BININT` / `LONG1`.
    pub fn int(&mut self, v: u64) -> &mut Self {
        if v < 0x100 {
            self.op(b'K').0.push(v as u8);
        } else if v < 0x1_0000 {
            self.op(b'M').0.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v < 0x8000_0000 {
            self.op(b'J').0.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            // LONG1: minimal little-endian two's complement, as Python's encode_long.
            let mut b = v.to_le_bytes().to_vec();
            while b.len() > 1 && b[b.len() - 1] == 0 && b[b.len() - 2] & 0x80 == 0 {
                b.pop();
            }
            if b[b.len() - 1] & 0x80 != 0 {
                b.push(0);
            }
            self.op(0x8a).0.push(b.len() as u8);
            self.0.extend_from_slice(&b);
        }
        self
    }
    /// `MARK ints... TUPLE`.
    pub fn int_tuple(&mut self, v: &[u64]) -> &mut Self {
        self.mark();
        for &x in v {
            self.int(x);
        }
        self.op(b't')
    }
    /// `EMPTY_TUPLE`.
    pub fn empty_tuple(&mut self) -> &mut Self {
        self.op(b')')
    }
    /// `REDUCE`.
    pub fn reduce(&mut self) -> &mut Self {
        self.op(b'R')
    }
    /// `STOP`.
    pub fn stop(&mut self) -> &mut Self {
        self.op(b'.')
    }
}

/// One tensor entry of a hand-built state dict.
#[derive(Debug, Clone)]
pub struct TorchTensor {
    pub name: String,
    /// Module and name of the storage type: `torch`, `BFloat16Storage`.
    pub storage_module: String,
    pub storage: String,
    pub key: String,
    /// Elements the persistent id declares for the storage.
    pub numel: u64,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// Row-major strides.
pub fn contiguous(shape: &[u64]) -> Vec<u64> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The pickle `torch.save(state_dict)` writes: `{name: _rebuild_tensor_v2(persistent
/// storage, offset, size, stride, False, OrderedDict())}`. `before` adds items (key, value)
/// ahead of the tensors inside the same SETITEMS.
pub fn state_dict_pickle(tensors: &[TorchTensor], before: impl FnOnce(&mut Pickle)) -> Vec<u8> {
    let mut p = Pickle::new(2);
    p.op(b'}').mark();
    before(&mut p);
    for t in tensors {
        p.str(&t.name);
        p.global("torch._utils", "_rebuild_tensor_v2").mark();
        // Persistent id ('storage', torch.<Storage>, key, 'cpu', numel).
        p.mark()
            .str("storage")
            .global(&t.storage_module, &t.storage)
            .str(&t.key)
            .str("cpu")
            .int(t.numel)
            .op(b't')
            .op(b'Q');
        p.int(t.offset).int_tuple(&t.shape).int_tuple(&t.stride);
        p.op(0x89); // NEWFALSE: requires_grad
        p.global("collections", "OrderedDict")
            .empty_tuple()
            .reduce();
        p.op(b't').reduce();
    }
    p.op(b'u').stop();
    p.0
}

/// A `torch.save` zip: `<prefix>/data.pkl`, `byteorder`, `data/<key>`, `version`, all stored.
pub fn torch_zip(prefix: &str, pickle: &[u8], storages: &[(String, Vec<u8>)]) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let mut file = |name: String, bytes: &[u8]| {
        w.start_file(name, opts).unwrap();
        w.write_all(bytes).unwrap();
    };
    file(format!("{prefix}/data.pkl"), pickle);
    file(format!("{prefix}/byteorder"), b"little");
    for (key, bytes) in storages {
        file(format!("{prefix}/data/{key}"), bytes);
    }
    file(format!("{prefix}/version"), b"3\n");
    w.finish().unwrap().into_inner()
}

fn storage_name(dtype: &str) -> &'static str {
    match dtype {
        "BF16" => "BFloat16Storage",
        "F16" => "HalfStorage",
        "F32" => "FloatStorage",
        "F64" => "DoubleStorage",
        "I64" => "LongStorage",
        other => panic!("no torch storage for {other}"),
    }
}

/// A safetensors file's tensors as (pickle entries, storages), one storage per tensor.
pub fn torch_entries(st: &St) -> (Vec<TorchTensor>, Vec<(String, Vec<u8>)>) {
    let mut specs = Vec::new();
    let mut storages = Vec::new();
    for (i, t) in st.tensors().into_iter().enumerate() {
        let key = i.to_string();
        specs.push(TorchTensor {
            name: t.name.clone(),
            storage_module: "torch".into(),
            storage: storage_name(&t.dtype).to_string(),
            key: key.clone(),
            numel: t.shape.iter().product(),
            offset: 0,
            shape: t.shape.clone(),
            stride: contiguous(&t.shape),
        });
        storages.push((key, t.data));
    }
    (specs, storages)
}

/// Turns the case's `model/` (a copy of `checkpoint/`) into a single hand-built
/// `pytorch_model.bin`; `tweak` may edit the entries and add pickle items first.
pub fn handbuilt_bin(
    ctx: &mut Ctx,
    tweak: impl FnOnce(&mut Vec<TorchTensor>, &mut Vec<(String, Vec<u8>)>),
    before: impl FnOnce(&mut Pickle),
) -> PathBuf {
    let model = ctx.model("checkpoint");
    let st = St::load(&model.join("model.safetensors"));
    remove(&model.join("model.safetensors"));
    let (mut specs, mut storages) = torch_entries(&st);
    tweak(&mut specs, &mut storages);
    let pkl = state_dict_pickle(&specs, before);
    let path = model.join("pytorch_model.bin");
    put(&path, &torch_zip("archive", &pkl, &storages));
    path
}

fn spec<'a>(specs: &'a mut [TorchTensor], name: &str) -> &'a mut TorchTensor {
    specs.iter_mut().find(|t| t.name == name).unwrap()
}

/// Byte offset of the first entry's data in a zip (its local header is at 0).
pub fn first_entry_data(zip: &[u8]) -> usize {
    assert_eq!(&zip[..4], b"PK\x03\x04");
    let n = u16::from_le_bytes([zip[26], zip[27]]) as usize;
    let e = u16::from_le_bytes([zip[28], zip[29]]) as usize;
    30 + n + e
}

/// Offset of the first central-directory record.
pub fn central_directory(zip: &[u8]) -> usize {
    zip.windows(4).position(|w| w == b"PK\x01\x02").unwrap()
}

// ---------------------------------------------------------------------------------------
// Images.

pub fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

pub fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(img)
        .unwrap();
    out
}

/// A PNG chunk: length, type, data, CRC-32 of type and data.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out
}

/// A PNG whose IHDR claims `w`×`h` RGB8 pixels, followed by a tiny IDAT (one empty stored
/// deflate block) and IEND: valid chunks and CRCs, so only the size can be refused.
pub fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, adaptive, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(png_chunk(b"IHDR", &ihdr));
    // zlib header, final stored block of length 0, adler32 of nothing.
    out.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 1],
    ));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

/// Offset of the first chunk of `kind` in a PNG (its length field).
pub fn png_find(png: &[u8], kind: &[u8; 4]) -> usize {
    png.windows(4).position(|w| w == kind).unwrap() - 4
}

/// Sets the frame size in a JPEG's SOF0 segment.
pub fn jpeg_set_size(jpg: &mut [u8], w: u16, h: u16) {
    let sof = jpg.windows(2).position(|m| m == [0xff, 0xc0]).unwrap();
    jpg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    jpg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
}

// ---------------------------------------------------------------------------------------
// The table.

const ST: &str = "model.safetensors";
const SHARD1: &str = "pytorch_model-00001-of-00002.bin";
const SHARD2: &str = "pytorch_model-00002-of-00002.bin";
const BIN_INDEX: &str = "pytorch_model.bin.index.json";

/// A valid odd image: encoded, written, expected to segment at its size.
fn ok_image(ctx: &mut Ctx, name: &str, img: DynamicImage) {
    ctx.run.size = (img.width(), img.height());
    let bytes = encode(&img, ImageFormat::Png);
    ctx.image(name, &bytes);
}

/// A pickle payload that would create `ctx.dir/PWNED` if it were ever executed.
fn payload_path(ctx: &mut Ctx) -> String {
    let p = ctx.dir.join("PWNED");
    ctx.run.must_not_exist.push(p.clone());
    p.display().to_string()
}

macro_rules! case {
    ($name:literal, $expect:expr, $build:expr) => {
        Case {
            name: $name,
            build: $build,
            expect: $expect,
        }
    };
}

use Expect::{Err as E, Ok as OK};

/// Every case. Failures are expected to exit with code 1 and one `error: ` line.
pub fn cases() -> Vec<Case> {
    vec![
        // ---- safetensors (copy of checkpoint/) --------------------------------------
        case!("st_empty", E(&["model.safetensors", "empty"]), |c| {
            let m = c.model("checkpoint");
            put(&m.join(ST), b"");
        }),
        case!(
            "st_truncated_to_4_bytes",
            E(&["model.safetensors", "safetensors"]),
            |c| {
                let m = c.model("checkpoint");
                truncate(&m.join(ST), 4);
            }
        ),
        case!(
            "st_truncated_in_header",
            E(&["model.safetensors", "header length", "truncated"]),
            |c| {
                let m = c.model("checkpoint");
                truncate(&m.join(ST), 1000);
            }
        ),
        case!(
            "st_truncated_in_data",
            E(&["model.safetensors", "truncated"]),
            |c| {
                let m = c.model("checkpoint");
                let len = read(&m.join(ST)).len();
                truncate(&m.join(ST), len / 2);
            }
        ),
        case!(
            "st_truncated_last_byte",
            E(&["model.safetensors", "truncated"]),
            |c| {
                let m = c.model("checkpoint");
                let len = read(&m.join(ST)).len();
                truncate(&m.join(ST), len - 1);
            }
        ),
        case!(
            "st_trailing_bytes",
            E(&["model.safetensors", "trailing"]),
            |c| {
                let m = c.model("checkpoint");
                edit(&m.join(ST), |mut b| {
                    b.extend_from_slice(&[0; 64]);
                    b
                });
            }
        ),
        case!(
            "st_bitflip_header_length_2_40",
            E(&["model.safetensors", "header length", "1099511"]),
            |c| {
                // Bit 40 of the length field: the header claims 2^40 + n bytes.
                let m = c.model("checkpoint");
                flip(&m.join(ST), 5, 0x01);
            }
        ),
        case!(
            "st_header_length_u64_max",
            E(&["model.safetensors", "header length"]),
            |c| {
                let m = c.model("checkpoint");
                edit(&m.join(ST), |mut b| {
                    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                    b
                });
            }
        ),
        case!(
            "st_bitflip_header_json",
            E(&["model.safetensors", "header"]),
            |c| {
                // The opening brace of the JSON header becomes a '['... of garbage.
                let m = c.model("checkpoint");
                flip(&m.join(ST), 9, 0x20);
            }
        ),
        case!(
            "st_offsets_overlap",
            E(&[
                "model.safetensors",
                "model.embed_tokens.weight|lm_head.weight",
                "offset"
            ]),
            |c| {
                // embed_tokens starts 16 bytes inside lm_head's data.
                let m = c.model("checkpoint");
                let mut st = St::load(&m.join(ST));
                let (s, e) = st.range("model.embed_tokens.weight");
                st.entry("model.embed_tokens.weight")["data_offsets"] = json!([s - 16, e - 16]);
                st.save(&m.join(ST));
            }
        ),
        case!(
            "st_offsets_beyond_file",
            E(&["model.safetensors", "beyond|truncated"]),
            |c| {
                // The last tensor claims twice its rows, past the end of the file.
                let m = c.model("checkpoint");
                let mut st = St::load(&m.join(ST));
                let last = st.tensors().last().unwrap().name.clone();
                let (s, e) = st.range(&last);
                let shape = st.entry(&last)["shape"].clone();
                st.entry(&last)["shape"] = json!([shape[0].as_u64().unwrap() * 2, shape[1]]);
                st.entry(&last)["data_offsets"] = json!([s, s + 2 * (e - s)]);
                st.save(&m.join(ST));
            }
        ),
        case!(
            "st_tensor_claims_2_42_bytes",
            E(&["model.safetensors", "model.text_hidden_fcs.0.2.weight"]),
            |c| {
                // Consistent shape x dtype = offsets, but 2^41 elements (4 TiB): refuse by size,
                // naming the tensor, without allocating.
                let m = c.model("checkpoint");
                let mut st = St::load(&m.join(ST));
                let name = "model.text_hidden_fcs.0.2.weight";
                let (s, _) = st.range(name);
                st.entry(name)["shape"] = json!([1u64 << 21, 1u64 << 20]);
                st.entry(name)["data_offsets"] = json!([s, s + (1usize << 42)]);
                st.save(&m.join(ST));
            }
        ),
        case!(
            "st_shape_larger_than_file",
            E(&["model.safetensors", "model.layers.2.mlp.up_proj.weight"]),
            |c| {
                // Shape [2^20, 2^20] with the original offsets: size and offsets disagree.
                let m = c.model("checkpoint");
                let mut st = St::load(&m.join(ST));
                st.entry("model.layers.2.mlp.up_proj.weight")["shape"] =
                    json!([1u64 << 20, 1u64 << 20]);
                st.save(&m.join(ST));
            }
        ),
        case!(
            "st_shape_overflows_usize",
            E(&["model.safetensors", "model.layers.3.mlp.gate_proj.weight"]),
            |c| {
                let m = c.model("checkpoint");
                let mut st = St::load(&m.join(ST));
                st.entry("model.layers.3.mlp.gate_proj.weight")["shape"] =
                    json!([1u64 << 32, 1u64 << 32, 1u64 << 32]);
                st.save(&m.join(ST));
            }
        ),
        case!(
            "st_wrong_dtype",
            E(&[
                "model.safetensors",
                "model.embed_tokens.weight",
                "I16",
                "float"
            ]),
            |c| {
                // Same element size, so the header stays consistent; only the type is wrong.
                let m = c.model("checkpoint");
                let mut st = St::load(&m.join(ST));
                st.entry("model.embed_tokens.weight")["dtype"] = json!("I16");
                st.save(&m.join(ST));
            }
        ),
        case!(
            "st_wrong_shape",
            E(&[
                "model.safetensors",
                "model.layers.0.self_attn.q_proj.weight",
                "[32, 128]",
                "[64, 64]"
            ]),
            |c| {
                let m = c.model("checkpoint");
                let mut st = St::load(&m.join(ST));
                st.entry("model.layers.0.self_attn.q_proj.weight")["shape"] = json!([32, 128]);
                st.save(&m.join(ST));
            }
        ),
        case!(
            "st_missing_tensor",
            E(&[
                "model.norm.weight",
                "not found",
                "model.safetensors",
                "[64]"
            ]),
            |c| {
                let m = c.model("checkpoint");
                let st =
                    St::load(&m.join(ST)).rebuild(|t| t.retain(|t| t.name != "model.norm.weight"));
                st.save(&m.join(ST));
            }
        ),
        case!("st_bitflip_weights_data", OK, |c| {
            // safetensors has no checksum: flipped exponent bits in lm_head (inf/NaN-sized
            // values) cannot be detected, but generation must still finish without a panic.
            let m = c.model("checkpoint");
            let path = m.join(ST);
            let start = St::data_start(&read(&path));
            for i in 0..64 {
                flip(&path, start + 1 + 2 * 997 * i, 0x40);
            }
            c.run.answer = None;
            c.arg("--max-new-tokens");
            c.arg("4");
            c.run.targets = usize::MAX; // whatever the generated text holds
        }),
        // ---- sharded .bin (copy of checkpoint-bin/) ----------------------------------
        case!(
            "index_missing_shard",
            E(&[BIN_INDEX, SHARD2, "missing"]),
            |c| {
                let m = c.model("checkpoint-bin");
                remove(&m.join(SHARD2));
            }
        ),
        case!("index_not_json", E(&[BIN_INDEX, "JSON"]), |c| {
            let m = c.model("checkpoint-bin");
            truncate(&m.join(BIN_INDEX), 100);
        }),
        case!(
            "index_names_unknown_shard",
            E(&[BIN_INDEX, "pytorch_model-00003-of-00002.bin", "missing"]),
            |c| {
                let m = c.model("checkpoint-bin");
                edit_json(&m.join(BIN_INDEX), |j| {
                    j["weight_map"]["model.norm.weight"] =
                        json!("pytorch_model-00003-of-00002.bin");
                });
            }
        ),
        case!(
            "index_tensor_in_wrong_shard",
            E(&[BIN_INDEX, "lm_head.weight", SHARD2]),
            |c| {
                let m = c.model("checkpoint-bin");
                edit_json(&m.join(BIN_INDEX), |j| {
                    j["weight_map"]["lm_head.weight"] = json!(SHARD2);
                });
            }
        ),
        case!(
            "index_shard_outside_folder",
            E(&[BIN_INDEX, "../", "inside"]),
            |c| {
                let m = c.model("checkpoint-bin");
                std::fs::copy(m.join(SHARD2), c.dir.join(SHARD2)).unwrap();
                edit_json(&m.join(BIN_INDEX), |j| {
                    for v in j["weight_map"].as_object_mut().unwrap().values_mut() {
                        if v == SHARD2 {
                            *v = json!(format!("../{SHARD2}"));
                        }
                    }
                });
            }
        ),
        case!("bin_shard_empty", E(&[SHARD1, "empty"]), |c| {
            let m = c.model("checkpoint-bin");
            put(&m.join(SHARD1), b"");
        }),
        case!(
            "bin_shard_truncated_half",
            E(&[SHARD1, "zip|truncated"]),
            |c| {
                let m = c.model("checkpoint-bin");
                let len = read(&m.join(SHARD1)).len();
                truncate(&m.join(SHARD1), len / 2);
            }
        ),
        case!(
            "bin_shard_truncated_last_byte",
            E(&[SHARD2, "zip|truncated"]),
            |c| {
                let m = c.model("checkpoint-bin");
                let len = read(&m.join(SHARD2)).len();
                truncate(&m.join(SHARD2), len - 1);
            }
        ),
        case!(
            "bin_shard_bitflip_pickle_opcode",
            E(&[SHARD1, "data.pkl", "opcode"]),
            |c| {
                // PROTO (0x80) becomes 0x00, an opcode no pickle has.
                let m = c.model("checkpoint-bin");
                let start = first_entry_data(&read(&m.join(SHARD1)));
                flip(&m.join(SHARD1), start, 0x80);
            }
        ),
        case!(
            "bin_shard_bitflip_central_directory",
            E(&[SHARD2, "zip"]),
            |c| {
                let m = c.model("checkpoint-bin");
                let cd = central_directory(&read(&m.join(SHARD2)));
                flip(&m.join(SHARD2), cd + 2, 0x04);
            }
        ),
        case!(
            "bin_shard_bitflip_storage_crc",
            E(&[SHARD2, "CRC|checksum"]),
            |c| {
                // A flipped byte in a stored tensor: the zip entry's CRC-32 no longer matches.
                let m = c.model("checkpoint-bin");
                let len = read(&m.join(SHARD2)).len();
                flip(&m.join(SHARD2), len / 2, 0x40);
            }
        ),
        // ---- hand-built torch.save archives (pytorch_model.bin from checkpoint/) ------
        case!("bin_handbuilt_control", OK, |c| {
            handbuilt_bin(c, |_, _| {}, |_| {});
        }),
        case!(
            "bin_wrong_dtype",
            E(&[
                "pytorch_model.bin",
                "model.layers.0.mlp.up_proj.weight",
                "I16",
                "float"
            ]),
            |c| {
                handbuilt_bin(
                    c,
                    |s, _| {
                        spec(s, "model.layers.0.mlp.up_proj.weight").storage = "ShortStorage".into()
                    },
                    |_| {},
                );
            }
        ),
        case!(
            "bin_wrong_shape",
            E(&[
                "pytorch_model.bin",
                "model.layers.1.mlp.down_proj.weight",
                "[256, 64]",
                "[64, 256]"
            ]),
            |c| {
                handbuilt_bin(
                    c,
                    |s, _| {
                        let t = spec(s, "model.layers.1.mlp.down_proj.weight");
                        t.shape = vec![256, 64];
                        t.stride = vec![64, 1];
                    },
                    |_| {},
                );
            }
        ),
        case!(
            "bin_missing_tensor",
            E(&[
                "lm_head.weight",
                "not found",
                "pytorch_model.bin",
                "[1008, 64]"
            ]),
            |c| {
                handbuilt_bin(c, |s, _| s.retain(|t| t.name != "lm_head.weight"), |_| {});
            }
        ),
        case!(
            "bin_storage_shorter_than_declared",
            E(&[
                "pytorch_model.bin",
                "model.mask_decoder.iou_token.weight",
                "bytes"
            ]),
            |c| {
                handbuilt_bin(
                    c,
                    |s, st| {
                        let t = spec(s, "model.mask_decoder.iou_token.weight");
                        let key = t.key.clone();
                        st.iter_mut()
                            .find(|(k, _)| *k == key)
                            .unwrap()
                            .1
                            .truncate(100);
                    },
                    |_| {},
                );
            }
        ),
        case!(
            "bin_tensor_claims_2_40_elements",
            E(&["pytorch_model.bin", "model.mask_decoder.level_embed.weight"]),
            |c| {
                // The storage declares 2^40 elements and the view [2^20, 2^20]: absurd, refused
                // before any allocation.
                handbuilt_bin(
                    c,
                    |s, _| {
                        let t = spec(s, "model.mask_decoder.level_embed.weight");
                        t.numel = 1 << 40;
                        t.shape = vec![1 << 20, 1 << 20];
                        t.stride = vec![1 << 20, 1];
                    },
                    |_| {},
                );
            }
        ),
        case!(
            "bin_stride0_view_2_40_elements",
            E(&[
                "pytorch_model.bin",
                "model.mask_decoder.iou_token.weight",
                "bytes"
            ]),
            |c| {
                // A broadcast (stride 0) view of a 256-element storage as [2^20, 2^20]: every
                // element addressed exists, but reading it would allocate 4 TiB.
                handbuilt_bin(
                    c,
                    |s, _| {
                        let t = spec(s, "model.mask_decoder.iou_token.weight");
                        t.shape = vec![1 << 20, 1 << 20];
                        t.stride = vec![0, 0];
                    },
                    |_| {},
                );
            }
        ),
        case!(
            "bin_view_beyond_storage",
            E(&[
                "pytorch_model.bin",
                "model.mask_decoder.mask_tokens.weight",
                "storage"
            ]),
            |c| {
                handbuilt_bin(
                    c,
                    |s, _| spec(s, "model.mask_decoder.mask_tokens.weight").offset = 1 << 30,
                    |_| {},
                );
            }
        ),
        case!(
            "pickle_global_os_system",
            E(&["pytorch_model.bin", "os.system", "forbidden"]),
            |c| {
                let cmd = format!("touch {}", payload_path(c));
                handbuilt_bin(
                    c,
                    |_, _| {},
                    |p| {
                        p.str("payload")
                            .global("os", "system")
                            .str(&cmd)
                            .op(0x85)
                            .reduce();
                    },
                );
            }
        ),
        case!(
            "pickle_global_builtins_eval",
            E(&["pytorch_model.bin", "builtins.eval", "forbidden"]),
            |c| {
                let code = format!("open({:?}, 'w')", payload_path(c));
                handbuilt_bin(
                    c,
                    |_, _| {},
                    |p| {
                        p.str("payload")
                            .global("builtins", "eval")
                            .str(&code)
                            .op(0x85)
                            .reduce();
                    },
                );
            }
        ),
        case!(
            "pickle_stack_global_posix_system",
            E(&["pytorch_model.bin", "posix.system", "forbidden"]),
            |c| {
                // Protocol-4 STACK_GLOBAL spelling of the same attack.
                let cmd = format!("touch {}", payload_path(c));
                handbuilt_bin(
                    c,
                    |_, _| {},
                    |p| {
                        p.str("payload").str("posix").str("system").op(0x93);
                        p.str(&cmd).op(0x85).reduce();
                    },
                );
            }
        ),
        case!(
            "pickle_global_as_storage_type",
            E(&["pytorch_model.bin", "subprocess.Popen", "forbidden"]),
            |c| {
                // The attack hidden inside a tensor's persistent id, where a storage type goes.
                handbuilt_bin(
                    c,
                    |s, _| {
                        let t = spec(s, "model.norm.weight");
                        t.storage_module = "subprocess".into();
                        t.storage = "Popen".into();
                    },
                    |_| {},
                );
            }
        ),
        case!(
            "pickle_torch_load_from_bytes",
            E(&[
                "pytorch_model.bin",
                "torch.storage._load_from_bytes",
                "forbidden"
            ]),
            |c| {
                // A torch global that is not a rebuild function: it would call torch.load.
                handbuilt_bin(
                    c,
                    |_, _| {},
                    |p| {
                        p.str("payload").global("torch.storage", "_load_from_bytes");
                        p.op(b'C').op(4).0.extend_from_slice(b"evil");
                        p.op(0x85).reduce();
                    },
                );
            }
        ),
        case!(
            "bin_legacy_raw_pickle",
            E(&["pytorch_model.bin", "legacy"]),
            |c| {
                // Pre-1.6 torch.save: a bare pickle stream, not a zip.
                let m = c.model("checkpoint");
                remove(&m.join(ST));
                let st = St::load(&c.kit.join("checkpoint").join(ST));
                let (specs, _) = torch_entries(&st);
                put(
                    &m.join("pytorch_model.bin"),
                    &state_dict_pickle(&specs, |_| {}),
                );
            }
        ),
        // ---- config.json ---------------------------------------------------------------
        case!("config_not_json", E(&["config.json", "JSON"]), |c| {
            let m = c.model("checkpoint");
            put(&m.join("config.json"), b"{\"hidden_size\": 64,\n  oops");
        }),
        case!("config_missing", E(&["config.json"]), |c| {
            let m = c.model("checkpoint");
            remove(&m.join("config.json"));
        }),
        case!(
            "config_lacks_hidden_size",
            E(&["config.json", "hidden_size"]),
            |c| {
                // Without it the LLaMA-7B default (4096) would apply to a 64-wide checkpoint.
                let m = c.model("checkpoint");
                edit_json(&m.join("config.json"), |j| {
                    j.remove("hidden_size");
                });
            }
        ),
        case!(
            "config_field_wrong_type",
            E(&["config.json", "num_hidden_layers"]),
            |c| {
                let m = c.model("checkpoint");
                edit_json(&m.join("config.json"), |j| {
                    j["num_hidden_layers"] = json!("four");
                });
            }
        ),
        case!(
            "config_zero_heads",
            E(&["config.json", "num_attention_heads"]),
            |c| {
                let m = c.model("checkpoint");
                edit_json(&m.join("config.json"), |j| {
                    j["num_attention_heads"] = json!(0);
                });
            }
        ),
        case!(
            "clip_config_not_json",
            E(&[CLIP, "config.json", "JSON"]),
            |c| {
                let clip = c.clip();
                truncate(&clip.join("config.json"), 40);
            }
        ),
        // ---- tokenizer (copy of checkpoint-bin/: tokenizer.model only) ----------------
        case!(
            "tokenizer_model_not_modelproto",
            E(&["tokenizer.model", "ModelProto"]),
            |c| {
                let m = c.model("checkpoint-bin");
                put(
                    &m.join("tokenizer.model"),
                    b"this is a text file, not a sentencepiece model\n",
                );
            }
        ),
        case!(
            "tokenizer_model_truncated",
            E(&["tokenizer.model", "ModelProto|truncated"]),
            |c| {
                let m = c.model("checkpoint-bin");
                let len = read(&m.join("tokenizer.model")).len();
                truncate(&m.join("tokenizer.model"), len / 2 + 3);
            }
        ),
        case!(
            "tokenizer_missing",
            E(&["tokenizer.model|tokenizer.json"]),
            |c| {
                let m = c.model("checkpoint-bin");
                remove(&m.join("tokenizer.model"));
            }
        ),
        case!(
            "added_tokens_not_json",
            E(&["added_tokens.json", "JSON"]),
            |c| {
                let m = c.model("checkpoint-bin");
                put(&m.join("added_tokens.json"), b"[SEG0] = 1000");
            }
        ),
        // ---- CLIP weights --------------------------------------------------------------
        case!(
            "clip_missing_tensor",
            E(&["vision_model.pre_layrnorm.weight", "not found", "[48]"]),
            |c| {
                let clip = c.clip();
                let st = St::load(&clip.join(ST))
                    .rebuild(|t| t.retain(|t| t.name != "vision_model.pre_layrnorm.weight"));
                st.save(&clip.join(ST));
            }
        ),
        case!(
            "clip_truncated",
            E(&[CLIP, "model.safetensors", "truncated"]),
            |c| {
                let clip = c.clip();
                let len = read(&clip.join(ST)).len();
                truncate(&clip.join(ST), len - 4096);
            }
        ),
        // ---- images (kit model, read only) ---------------------------------------------
        case!("img_missing_file", E(&["missing.png"]), |c| {
            c.run.image = c.dir.join("missing.png");
        }),
        case!("img_empty", E(&["empty.png", "empty"]), |c| c
            .image("empty.png", b"")),
        case!("img_not_an_image", E(&["not_an_image.png", "PNG"]), |c| {
            c.image("not_an_image.png", b"plain text, no image signature\n");
        }),
        case!(
            "img_gif_unsupported",
            E(&["fake.gif", "Gif|GIF", "not supported"]),
            |c| {
                // A GIF signature: recognised, but not a format the front end accepts.
                c.image("fake.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;");
            }
        ),
        case!(
            "img_png_truncated",
            E(&["truncated.png", "truncated|corrupt"]),
            |c| {
                let png = c.kit_png();
                c.image("truncated.png", &png[..png.len() / 2]);
            }
        ),
        case!(
            "img_png_truncated_in_header",
            E(&["truncated_header.png", "truncated|corrupt"]),
            |c| {
                let png = c.kit_png();
                c.image("truncated_header.png", &png[..20]);
            }
        ),
        case!(
            "img_png_bad_crc",
            E(&["bad_crc.png", "corrupt|CRC|checksum"]),
            |c| {
                let mut png = c.kit_png();
                let idat = png_find(&png, b"IDAT");
                png[idat + 8 + 100] ^= 0x10;
                c.image("bad_crc.png", &png);
            }
        ),
        case!(
            "img_jpeg_truncated",
            E(&["truncated.jpg", "truncated|corrupt"]),
            |c| {
                let jpg = jpeg(&c.kit_image());
                c.image("truncated.jpg", &jpg[..jpg.len() / 3]);
            }
        ),
        case!(
            "img_jpeg_truncated_in_header",
            E(&["truncated_header.jpg", "truncated|corrupt"]),
            |c| {
                let jpg = jpeg(&c.kit_image());
                c.image("truncated_header.jpg", &jpg[..100]);
            }
        ),
        case!("img_png_0x0", E(&["zero.png", "zero|0x0|dimension"]), |c| {
            c.image("zero.png", &png_header_only(0, 0));
        }),
        case!(
            "img_png_60000x60000_bomb",
            E(&["bomb.png", "too large"]),
            |c| {
                c.image("bomb.png", &png_header_only(60000, 60000));
            }
        ),
        case!(
            "img_png_30000x30000_bomb",
            E(&["bomb30k.png", "too large"]),
            |c| {
                // Each side below the per-side limit; 9e8 pixels above the pixel budget.
                c.image("bomb30k.png", &png_header_only(30000, 30000));
            }
        ),
        case!(
            "img_jpeg_60000x60000_bomb",
            E(&["bomb.jpg", "too large"]),
            |c| {
                let mut jpg = jpeg(&RgbImage::from_pixel(16, 16, Rgb([10, 200, 30])));
                jpeg_set_size(&mut jpg, 60000, 60000);
                c.image("bomb.jpg", &jpg);
            }
        ),
        case!("img_png_1x1", OK, |c| {
            // Also: a previous result in the output directory is updated in place: the
            // stale mask it listed goes, a file of the user's beside it stays byte for byte.
            std::fs::create_dir_all(&c.run.out).unwrap();
            let manifest = serde_json::json!({
                "written_by": {"program": "pixellm", "command": "segment", "version": "0"},
                "files": ["result.json", "mask_00.png", "mask_07.png"],
            });
            put(
                &c.run.out.join("result.json"),
                manifest.to_string().as_bytes(),
            );
            put(
                &c.run.out.join("mask_07.png"),
                b"stale mask from an earlier run",
            );
            put(&c.run.out.join("notes.txt"), b"the user's own notes");
            c.run.must_not_exist.push(c.run.out.join("mask_07.png"));
            c.run.must_keep.push((
                c.run.out.join("notes.txt"),
                b"the user's own notes".to_vec(),
            ));
            let img = RgbImage::from_pixel(1, 1, Rgb([200, 30, 30]));
            ok_image(c, "one.png", DynamicImage::ImageRgb8(img));
        }),
        case!("img_png_rgb16", OK, |c| {
            let img = DynamicImage::ImageRgb8(c.kit_image()).to_rgb16();
            ok_image(c, "rgb16.png", DynamicImage::ImageRgb16(img));
        }),
        case!("img_png_gray8", OK, |c| {
            let img = DynamicImage::ImageRgb8(c.kit_image()).to_luma8();
            ok_image(c, "gray8.png", DynamicImage::ImageLuma8(img));
        }),
        case!("img_png_gray16", OK, |c| {
            let img = DynamicImage::ImageRgb8(c.kit_image()).to_luma16();
            ok_image(c, "gray16.png", DynamicImage::ImageLuma16(img));
        }),
        case!("img_png_rgba8", OK, |c| {
            let mut img = DynamicImage::ImageRgb8(c.kit_image()).to_rgba8();
            for (x, _, p) in img.enumerate_pixels_mut() {
                p[3] = (x % 256) as u8; // partly transparent: alpha is dropped, not composited
            }
            ok_image(c, "rgba8.png", DynamicImage::ImageRgba8(img));
        }),
        case!("img_png_rgba16", OK, |c| {
            let img = DynamicImage::ImageRgb8(c.kit_image()).to_rgba16();
            ok_image(c, "rgba16.png", DynamicImage::ImageRgba16(img));
        }),
        // ---- prompt vs context ---------------------------------------------------------
        case!(
            "prompt_longer_than_context",
            E(&["prompt", "context", "300"]),
            |c| {
                // The kit prompt takes exactly 300 positions; leave no room to generate.
                let m = c.model("checkpoint");
                edit_json(&m.join("config.json"), |j| {
                    j["max_position_embeddings"] = json!(300)
                });
                c.run.answer = None;
            }
        ),
        case!(
            "answer_longer_than_context",
            E(&["prompt", "context", "310"]),
            |c| {
                // The prompt fits (300 < 310), prompt + forced answer (324) does not.
                let m = c.model("checkpoint");
                edit_json(&m.join("config.json"), |j| {
                    j["max_position_embeddings"] = json!(310)
                });
            }
        ),
        case!(
            "prompt_longer_than_default_context",
            E(&["prompt", "context", "2048"]),
            |c| {
                c.run.prompt = "Please segment the dog and the cat. ".repeat(300);
                c.run.answer = None;
            }
        ),
        case!(
            "prompt_with_image_placeholder",
            E(&["prompt", "<image>"]),
            |c| {
                // A literal <image> in the question would splice the image twice.
                c.run.prompt = "<image> Please segment the dog.".into();
            }
        ),
        // ---- backend / dtype -----------------------------------------------------------
        case!(
            "backend_cuda_not_compiled",
            E(&["backend", "cuda", "not compiled", "available", "cpu"]),
            |c| {
                c.arg("--backend");
                c.arg("cuda");
            }
        ),
        case!("backend_unknown", E(&["backend", "nonsense", "cpu"]), |c| {
            c.arg("--backend");
            c.arg("nonsense");
        }),
        case!(
            "backend_vulkan_without_adapter",
            E(&["backend", "vulkan", "available", "cpu"]),
            |c| {
                // No Vulkan driver manifest: either no adapter, or not compiled in.
                c.arg("--backend");
                c.arg("vulkan");
                for var in ["VK_ICD_FILENAMES", "VK_DRIVER_FILES"] {
                    c.run.env.push((
                        var.into(),
                        c.dir.join("no-driver.json").display().to_string(),
                    ));
                }
            }
        ),
        case!("dtype_unknown", E(&["dtype", "f8", "f32"]), |c| {
            c.arg("--dtype");
            c.arg("f8");
        }),
        // ---- output ----------------------------------------------------------------------
        case!("out_parent_is_a_file", E(&["blocker"]), |c| {
            // Fails at the very end, after the whole pipeline ran: nothing may remain.
            put(
                &c.dir.join("blocker"),
                b"a file where a directory should be",
            );
            c.run.out = c.dir.join("blocker").join("out");
        }),
        case!(
            "out_is_an_existing_file",
            E(&["user-file.txt", "not a directory|is a file|already exists"]),
            |c| {
                // --out names a user's file: refuse, and leave the file where and as it is
                // (no hidden `.user-file.txt.*` copy next to it).
                c.run.out = c.dir.join("user-file.txt");
                let bytes = b"a user's file, not an output directory".to_vec();
                put(&c.run.out, &bytes);
                c.run.out_file = Some(bytes);
            }
        ),
    ]
}

/// Cases only meaningful on some platforms.
pub fn platform_cases() -> Vec<Case> {
    let mut v = Vec::new();
    if !cfg!(target_os = "macos") {
        v.push(case!(
            "backend_metal_not_compiled",
            E(&["backend", "metal", "available", "cpu"]),
            |c| {
                c.arg("--backend");
                c.arg("metal");
            }
        ));
    }
    v
}

// ---------------------------------------------------------------------------------------
// Seeds for the cargo-fuzz targets in fuzz/ (small inputs of each format, valid and not).

/// `(target, file name, bytes)` for `fuzz/seeds/<target>/<file>`.
pub fn fuzz_seeds(kit: &Path) -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |t: &'static str, name: &str, b: Vec<u8>| out.push((t, name.to_string(), b));

    // safetensors_header: first byte 0 = whole file, 1 = JSON header only.
    let st = St::load(&kit.join("checkpoint").join(ST));
    let small: Vec<StTensor> = st
        .tensors()
        .into_iter()
        .filter(|t| t.data.len() <= 512)
        .take(4)
        .collect();
    let tiny = St::from_tensors(st.header.get("__metadata__"), &small);
    let bytes = tiny.to_bytes();
    let header = bytes[8..St::data_start(&bytes)].to_vec();
    add(
        "safetensors_header",
        "tiny.st",
        [&[0u8][..], &bytes].concat(),
    );
    add(
        "safetensors_header",
        "tiny.header",
        [&[1u8][..], &header].concat(),
    );
    let mut f32s = tiny.clone();
    let name = small[0].name.clone();
    f32s.entry(&name)["dtype"] = json!("F16");
    add("safetensors_header", "f16.header", {
        let b = f32s.to_bytes();
        [&[1u8][..], &b[8..St::data_start(&b)]].concat()
    });

    // torch_pickle: state dicts over the fuzz target's storages 0 (256 bytes) and 1 (64).
    let specs = vec![
        TorchTensor {
            name: "a.weight".into(),
            storage_module: "torch".into(),
            storage: "BFloat16Storage".into(),
            key: "0".into(),
            numel: 128,
            offset: 0,
            shape: vec![8, 16],
            stride: vec![16, 1],
        },
        TorchTensor {
            name: "b.weight".into(),
            storage_module: "torch".into(),
            storage: "FloatStorage".into(),
            key: "1".into(),
            numel: 16,
            offset: 0,
            shape: vec![4, 4],
            stride: vec![1, 4],
        },
    ];
    add(
        "torch_pickle",
        "two_tensors.pkl",
        state_dict_pickle(&specs, |_| {}),
    );
    add(
        "torch_pickle",
        "forbidden_global.pkl",
        state_dict_pickle(&specs, |p| {
            p.str("x")
                .global("os", "system")
                .str("true")
                .op(0x85)
                .reduce();
        }),
    );
    let shard = read(&kit.join("checkpoint-bin").join(SHARD1));
    let mut zip = zip::ZipArchive::new(Cursor::new(shard)).unwrap();
    let mut pkl = Vec::new();
    std::io::Read::read_to_end(
        &mut zip
            .by_name("pytorch_model-00001-of-00002/data.pkl")
            .unwrap(),
        &mut pkl,
    )
    .unwrap();
    add("torch_pickle", "kit_shard.pkl", pkl);

    // sentencepiece_model.
    let sp = read(&kit.join("checkpoint").join("tokenizer.model"));
    add("sentencepiece_model", "kit.model", sp.clone());
    add(
        "sentencepiece_model",
        "truncated.model",
        sp[..sp.len() / 2].to_vec(),
    );

    // image_decode.
    let img = RgbImage::from_fn(16, 12, |x, y| Rgb([(x * 16) as u8, (y * 20) as u8, 99]));
    let dynimg = DynamicImage::ImageRgb8(img.clone());
    add(
        "image_decode",
        "rgb8.png",
        encode(&dynimg, ImageFormat::Png),
    );
    add(
        "image_decode",
        "gray16.png",
        encode(
            &DynamicImage::ImageLuma16(dynimg.to_luma16()),
            ImageFormat::Png,
        ),
    );
    add(
        "image_decode",
        "rgba8.png",
        encode(
            &DynamicImage::ImageRgba8(dynimg.to_rgba8()),
            ImageFormat::Png,
        ),
    );
    add("image_decode", "rgb.jpg", jpeg(&img));
    add("image_decode", "rgb.bmp", encode(&dynimg, ImageFormat::Bmp));
    add(
        "image_decode",
        "rgb.webp",
        encode(&dynimg, ImageFormat::WebP),
    );
    add("image_decode", "bomb.png", png_header_only(60000, 60000));
    out
}
