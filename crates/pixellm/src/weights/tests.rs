//! Tests against the conformance fixtures and against broken inputs built from them.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use super::pickle::test_support::run_pickle;
use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/conformance")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn shard1() -> PathBuf {
    fixtures().join("checkpoint-bin/pytorch_model-00001-of-00002.bin")
}

/// A fresh, empty directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pixellm-weights-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn err_text(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "`{text}` does not contain `{p}`");
    }
}

// ---------- builders for synthetic inputs ----------

/// A safetensors buffer with the given JSON header and data.
fn safetensors_bytes(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// Splits a safetensors buffer into its parsed header and data section.
fn split_safetensors(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

/// Pickle opcodes for a `torch.save`d state dict, as torch emits them (protocol 2).
struct PickleBuilder(Vec<u8>);

impl PickleBuilder {
    fn new() -> Self {
        PickleBuilder(vec![0x80, 2, b'}', b'('])
    }
    fn str(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: usize) {
        self.0.push(b'J');
        self.0.extend_from_slice(&(v as i32).to_le_bytes());
    }
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn ints(&mut self, v: &[usize]) {
        self.0.push(b'(');
        for &x in v {
            self.int(x);
        }
        self.0.push(b't');
    }
    #[allow(clippy::too_many_arguments)]
    fn tensor(
        &mut self,
        name: &str,
        storage: &str,
        key: &str,
        numel: usize,
        offset: usize,
        size: &[usize],
        stride: &[usize],
    ) {
        self.str(name);
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.0.extend_from_slice(b"((");
        self.str("storage");
        self.global("torch", storage);
        self.str(key);
        self.str("cpu");
        self.int(numel);
        self.0.extend_from_slice(b"tQ");
        self.int(offset);
        self.ints(size);
        self.ints(stride);
        self.0.push(0x89);
        self.global("collections", "OrderedDict");
        self.0.extend_from_slice(b")RtR");
    }
    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(b"u.");
        self.0
    }
}

/// A torch.save-style zip: `<prefix>/data.pkl`, `<prefix>/byteorder`, `<prefix>/data/<key>`.
fn torch_zip(
    prefix: &str,
    pkl: &[u8],
    storages: &[(&str, Vec<u8>)],
    method: CompressionMethod,
) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(method);
    w.start_file(format!("{prefix}/data.pkl"), opts).unwrap();
    w.write_all(pkl).unwrap();
    w.start_file(format!("{prefix}/byteorder"), opts).unwrap();
    w.write_all(b"little").unwrap();
    for (key, data) in storages {
        w.start_file(format!("{prefix}/data/{key}"), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Rewrites a zip entry by entry with `method`, letting `edit` change any entry's bytes.
fn rezip(
    bytes: &[u8],
    method: CompressionMethod,
    edit: impl Fn(&str, Vec<u8>) -> Vec<u8>,
) -> Vec<u8> {
    let mut src = ZipArchive::new(Cursor::new(bytes)).unwrap();
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default()
        .compression_method(method)
        .large_file(false);
    for i in 0..src.len() {
        let mut f = src.by_index(i).unwrap();
        let name = f.name().to_string();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        w.start_file(name.clone(), opts).unwrap();
        w.write_all(&edit(&name, data)).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---------- fixtures: the two released formats agree ----------

#[test]
fn weight_files_is_send_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<WeightFiles>();
}

#[test]
fn safetensors_and_bin_shards_agree_bit_for_bit() {
    let st = WeightFiles::open_dir(&fixtures().join("checkpoint")).unwrap();
    let bin = WeightFiles::open_dir(&fixtures().join("checkpoint-bin")).unwrap();
    assert_eq!(st.names(), bin.names());
    assert!(st.len() > 100, "only {} tensors", st.len());
    assert_eq!(bin.files().len(), 2);

    let (mut bf16, mut f32s) = (0, 0);
    for name in st.names() {
        let a = st.info(&name).unwrap();
        let b = bin.info(&name).unwrap();
        assert_eq!(a.shape, b.shape, "{name}");
        assert_eq!(a.dtype, StoredDType::BF16, "{name}");
        match b.dtype {
            StoredDType::BF16 => bf16 += 1,
            StoredDType::F32 => f32s += 1,
            other => panic!("{name}: unexpected dtype {other}"),
        }
        let x = st.read_f32(&name, &a.shape).unwrap();
        let (shape, y) = bin.read_f32_any(&name).unwrap();
        assert_eq!(shape, a.shape);
        assert_eq!(x.len(), y.len());
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name}: values differ"
        );
        assert!(bin.file_of(&name).unwrap().ends_with(".bin"));
        assert!(st.file_of(&name).unwrap().ends_with("model.safetensors"));
    }
    // The fixture mixes storages as the release does.
    assert!(bf16 > 0 && f32s > 0, "bf16 {bf16}, f32 {f32s}");

    let lm = st.read_f32("lm_head.weight", &[1008, 64]).unwrap();
    assert_eq!(lm.len(), 1008 * 64);
    assert!(lm.iter().all(|v| v.is_finite()) && lm.iter().any(|&v| v != 0.0));
}

#[test]
fn single_shard_opens_from_path_and_from_bytes() {
    let a = WeightFiles::open(&shard1()).unwrap();
    let b = WeightFiles::from_bytes("shard1", read(&shard1())).unwrap();
    assert_eq!(a.names(), b.names());
    assert_eq!(b.file_of("lm_head.weight"), Some("shard1"));
    let name = "model.embed_tokens.weight";
    assert_eq!(a.read_f32_any(name).unwrap(), b.read_f32_any(name).unwrap());
}

/// Also a regression test: this file's header length starts with byte 0x80, which once
/// sniffed as a legacy pickle.
#[test]
fn clip_tower_safetensors_opens() {
    let w =
        WeightFiles::open(&fixtures().join("clip-vit-tiny-patch14-336/model.safetensors")).unwrap();
    assert!(!w.is_empty());
    let name = w
        .names()
        .into_iter()
        .find(|n| n.ends_with("patch_embedding.weight"))
        .unwrap();
    let info = w.info(&name).unwrap().clone();
    assert_eq!(info.dtype, StoredDType::F32);
    assert_eq!(info.shape, vec![48, 3, 14, 14]);
    assert_eq!(
        w.read_f32(&name, &info.shape).unwrap().len(),
        48 * 3 * 14 * 14
    );
}

#[test]
fn extend_merges_and_later_wins() {
    let header = |v: f32| {
        safetensors_bytes(
            &serde_json::json!({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}),
            &f32_bytes(&[v]),
        )
    };
    let mut w = WeightFiles::new();
    assert!(w.is_empty());
    w.extend(WeightFiles::from_bytes("one", header(1.0)).unwrap());
    w.extend(WeightFiles::from_bytes("two", header(2.0)).unwrap());
    assert_eq!(w.read_f32("a", &[1]).unwrap(), vec![2.0]);
    assert_eq!(w.file_of("a"), Some("two"));
    assert_eq!(w.files(), ["one", "two"]);
}

#[test]
fn open_dir_reports_what_it_looked_for() {
    let dir = temp_dir("empty-dir");
    let msg = err_text(WeightFiles::open_dir(&dir));
    assert_contains(
        &msg,
        &[
            &dir.display().to_string(),
            "model.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin.index.json",
            "pytorch_model.bin",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------- dtypes and layouts ----------

#[test]
fn dtype_conversion_and_non_float_error() {
    let f16: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
        .collect();
    let f64b: Vec<u8> = [0.25f64, -8.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let i64b: Vec<u8> = [1i64, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut data = f16.clone();
    data.extend(&f64b);
    data.extend(&i64b);
    let header = serde_json::json!({
        "__metadata__": {"format": "pt"},
        "h": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
        "d": {"dtype": "F64", "shape": [2], "data_offsets": [4, 20]},
        "i": {"dtype": "I64", "shape": [2], "data_offsets": [20, 36]},
        "e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [36, 36]},
    });
    let w = WeightFiles::from_bytes("mixed", safetensors_bytes(&header, &data)).unwrap();
    assert_eq!(w.read_f32("h", &[2]).unwrap(), vec![1.5, -2.0]);
    assert_eq!(w.read_f32("d", &[2]).unwrap(), vec![0.25, -8.0]);
    assert_eq!(w.read_f32("e", &[0, 3]).unwrap(), Vec::<f32>::new());
    assert_eq!(w.info("i").unwrap().dtype, StoredDType::I64);
    let msg = err_text(w.read_f32("i", &[2]));
    assert_contains(&msg, &["mixed", "`i`", "dtype I64 is not a float type"]);

    // fp8 is listed but not converted; an unknown dtype name fails at open.
    let fp8 = serde_json::json!({"q": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}});
    let w = WeightFiles::from_bytes("fp8", safetensors_bytes(&fp8, &[0, 0])).unwrap();
    assert_eq!(w.info("q").unwrap().dtype, StoredDType::Other("F8_E4M3"));
    assert_contains(
        &err_text(w.read_f32_any("q")),
        &["F8_E4M3 cannot be converted"],
    );
    let odd = serde_json::json!({"q": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 2]}});
    let msg = err_text(WeightFiles::from_bytes(
        "odd",
        safetensors_bytes(&odd, &[0, 0]),
    ));
    assert_contains(&msg, &["odd", "invalid safetensors header", "Q7"]);
}

#[test]
fn strided_and_offset_views_are_gathered() {
    // Storage 0..12; `t` is a transposed 3x4 view, `o` a row slice with an offset,
    // `b` a stride-0 broadcast; all share one storage entry like torch views do.
    let storage: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let mut p = PickleBuilder::new();
    p.tensor("t", "FloatStorage", "0", 12, 0, &[4, 3], &[1, 4]);
    p.tensor("o", "FloatStorage", "0", 12, 5, &[2, 3], &[3, 1]);
    p.tensor("b", "FloatStorage", "0", 12, 2, &[2, 2], &[0, 1]);
    p.tensor("s", "FloatStorage", "0", 12, 7, &[], &[]);
    let zip = torch_zip(
        "archive",
        &p.finish(),
        &[("0", f32_bytes(&storage))],
        CompressionMethod::Stored,
    );
    let w = WeightFiles::from_bytes("views.pt", zip).unwrap();
    let t = w.read_f32("t", &[4, 3]).unwrap();
    assert_eq!(t, vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
    assert_eq!(
        w.read_f32("o", &[2, 3]).unwrap(),
        vec![5., 6., 7., 8., 9., 10.]
    );
    assert_eq!(w.read_f32("b", &[2, 2]).unwrap(), vec![2., 3., 2., 3.]);
    assert_eq!(w.read_f32("s", &[]).unwrap(), vec![7.]);
}

#[test]
fn any_prefix_and_deflated_entries_work() {
    let storage: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
    let mut p = PickleBuilder::new();
    p.tensor("w", "FloatStorage", "7", 6, 0, &[2, 3], &[3, 1]);
    let pkl = p.finish();
    for method in [CompressionMethod::Stored, CompressionMethod::Deflated] {
        let zip = torch_zip("my_model-01", &pkl, &[("7", f32_bytes(&storage))], method);
        let w = WeightFiles::from_bytes("x.pth", zip).unwrap();
        assert_eq!(w.read_f32("w", &[2, 3]).unwrap(), storage);
    }
    // A real shard re-zipped with deflate reads identically.
    let orig = read(&shard1());
    let deflated = rezip(&orig, CompressionMethod::Deflated, |_, d| d);
    let a = WeightFiles::from_bytes("orig", orig).unwrap();
    let b = WeightFiles::from_bytes("deflated", deflated).unwrap();
    for name in a.names() {
        assert_eq!(
            a.read_f32_any(&name).unwrap(),
            b.read_f32_any(&name).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn state_dict_key_is_unwrapped_and_non_tensors_skipped() {
    // {"epoch": 3, "state_dict": {"w": tensor}} written by hand.
    let mut inner = PickleBuilder::new();
    inner.tensor("w", "HalfStorage", "0", 2, 0, &[2], &[1]);
    let inner = inner.finish();
    let body = &inner[2..inner.len() - 1]; // without PROTO and STOP
    let mut pkl = vec![0x80, 2, b'}', b'('];
    pkl.extend_from_slice(b"X\x05\x00\x00\x00epochK\x03");
    pkl.extend_from_slice(b"X\x0a\x00\x00\x00state_dict");
    pkl.extend_from_slice(body);
    pkl.extend_from_slice(b"u.");
    let data: Vec<u8> = [0.5f32, 4.0]
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
        .collect();
    let zip = torch_zip("archive", &pkl, &[("0", data)], CompressionMethod::Stored);
    let w = WeightFiles::from_bytes("ckpt.pt", zip).unwrap();
    assert_eq!(w.names(), ["w"]);
    assert_eq!(w.info("w").unwrap().dtype, StoredDType::F16);
    assert_eq!(w.read_f32("w", &[2]).unwrap(), vec![0.5, 4.0]);
}

// ---------- error cases ----------

#[test]
fn truncated_safetensors_is_an_error() {
    let bytes = read(&fixtures().join("checkpoint/model.safetensors"));
    let (header, _) = split_safetensors(&bytes);
    let header_len = serde_json::to_vec(&header).unwrap().len();
    // Cut in the data section: the header is intact but the tensors overrun the file.
    let msg = err_text(WeightFiles::from_bytes(
        "cut.safetensors",
        bytes[..bytes.len() - 1000].to_vec(),
    ));
    assert_contains(&msg, &["cut.safetensors", "truncated"]);
    // Cut inside the header, and cuts at every tiny length.
    let msg = err_text(WeightFiles::from_bytes(
        "cut.safetensors",
        bytes[..header_len / 2].to_vec(),
    ));
    assert_contains(&msg, &["cut.safetensors", "exceeds the file size"]);
    for len in 0..=16 {
        let r = WeightFiles::from_bytes("tiny", bytes[..len].to_vec());
        assert!(r.is_err(), "length {len} accepted");
    }
    // Truncated on disk, through open().
    let dir = temp_dir("truncated-st");
    let path = dir.join("model.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = err_text(WeightFiles::open(&path));
    assert_contains(&msg, &[&path.display().to_string(), "truncated"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn safetensors_header_length_is_checked_before_use() {
    let bytes = read(&fixtures().join("checkpoint/model.safetensors"));
    for claimed in [bytes.len() as u64, 1u64 << 40, u64::MAX] {
        let mut b = bytes.clone();
        b[..8].copy_from_slice(&claimed.to_le_bytes());
        let msg = err_text(WeightFiles::from_bytes("bad.safetensors", b));
        assert_contains(
            &msg,
            &[
                "bad.safetensors",
                &format!("header length {claimed} exceeds the file size"),
            ],
        );
    }
}

#[test]
fn safetensors_offsets_beyond_the_data_are_rejected() {
    let bytes = read(&fixtures().join("checkpoint/model.safetensors"));
    let (mut header, data) = split_safetensors(&bytes);
    // Grow the last tensor (by offset) past the end of the data section, consistently.
    let (last, end) = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| (k.clone(), v["data_offsets"][1].as_u64().unwrap()))
        .max_by_key(|(_, e)| *e)
        .unwrap();
    let t = &mut header[&last];
    let start = t["data_offsets"][0].as_u64().unwrap();
    let dim0 = t["shape"][0].as_u64().unwrap();
    t["shape"][0] = (dim0 * 2).into();
    t["data_offsets"][1] = (start + (end - start) * 2).into();
    let msg = err_text(WeightFiles::from_bytes(
        "big.safetensors",
        safetensors_bytes(&header, &data),
    ));
    assert_contains(&msg, &["big.safetensors", "beyond the data"]);

    // Offsets that disagree with the shape name the tensor.
    let (mut header, data) = split_safetensors(&bytes);
    header[&last]["data_offsets"][0] = (start + 2).into();
    let msg = err_text(WeightFiles::from_bytes(
        "gap.safetensors",
        safetensors_bytes(&header, &data),
    ));
    assert_contains(
        &msg,
        &[
            "gap.safetensors",
            &format!("tensor `{last}`"),
            "data_offsets",
        ],
    );

    // A shape whose element count overflows.
    let (mut header, data) = split_safetensors(&bytes);
    header[&last]["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40, 1u64 << 40]);
    let msg = err_text(WeightFiles::from_bytes(
        "huge.safetensors",
        safetensors_bytes(&header, &data),
    ));
    assert_contains(
        &msg,
        &["huge.safetensors", &format!("tensor `{last}`"), "shape"],
    );
}

#[test]
fn truncated_bin_is_an_error() {
    let bytes = read(&shard1());
    for len in [
        0,
        1,
        4,
        100,
        30_000,
        bytes.len() / 2,
        bytes.len() - 22,
        bytes.len() - 1,
    ] {
        let msg = err_text(WeightFiles::from_bytes("cut.bin", bytes[..len].to_vec()));
        assert!(msg.contains("cut.bin"), "{msg}");
    }
    let msg = err_text(WeightFiles::from_bytes(
        "cut.bin",
        bytes[..bytes.len() / 2].to_vec(),
    ));
    assert_contains(&msg, &["cut.bin", "zip"]);
}

#[test]
fn short_storage_entry_is_an_error() {
    let bytes = read(&shard1());
    let edited = rezip(&bytes, CompressionMethod::Stored, |name, mut d| {
        if name.ends_with("/data/0") {
            d.truncate(d.len() - 2);
        }
        d
    });
    let msg = err_text(WeightFiles::from_bytes("short.bin", edited));
    assert_contains(
        &msg,
        &[
            "short.bin",
            "lm_head.weight",
            "storage `0` declares 64512 elements of BF16",
        ],
    );
}

#[test]
fn view_outside_its_storage_is_an_error() {
    let mut p = PickleBuilder::new();
    p.tensor("w", "FloatStorage", "0", 4, 1, &[2, 2], &[2, 1]);
    let zip = torch_zip(
        "archive",
        &p.finish(),
        &[("0", f32_bytes(&[0.0; 4]))],
        CompressionMethod::Stored,
    );
    let msg = err_text(WeightFiles::from_bytes("view.pt", zip));
    assert_contains(&msg, &["view.pt", "`w`", "addresses element 4"]);

    let mut p = PickleBuilder::new();
    p.tensor("w", "FloatStorage", "0", 4, 0, &[1 << 30, 1 << 30], &[0, 0]);
    let zip = torch_zip(
        "archive",
        &p.finish(),
        &[("0", f32_bytes(&[0.0; 4]))],
        CompressionMethod::Stored,
    );
    let msg = err_text(WeightFiles::from_bytes("bomb.pt", zip));
    assert_contains(&msg, &["bomb.pt", "more bytes than the whole file"]);

    let mut p = PickleBuilder::new();
    p.tensor("w", "FloatStorage", "9", 4, 0, &[4], &[1]);
    let zip = torch_zip(
        "archive",
        &p.finish(),
        &[("0", f32_bytes(&[0.0; 4]))],
        CompressionMethod::Stored,
    );
    let msg = err_text(WeightFiles::from_bytes("nokey.pt", zip));
    assert_contains(&msg, &["nokey.pt", "storage `9`", "archive/data/9"]);
}

#[test]
fn forbidden_globals_are_refused() {
    // GLOBAL 'os system' ; BINUNICODE 'echo pwned' ; TUPLE1 ; REDUCE ; STOP
    let mut os_system = vec![0x80, 2, b'c'];
    os_system.extend_from_slice(b"os\nsystem\nX\x0a\x00\x00\x00echo pwned\x85R.");
    // Protocol 4: SHORT_BINUNICODE module/name ; STACK_GLOBAL ; ...
    let stack_global = |module: &str, name: &str| {
        let mut v = vec![
            0x80,
            4,
            0x95,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0x8c,
            module.len() as u8,
        ];
        v.extend_from_slice(module.as_bytes());
        v.extend_from_slice(&[0x8c, name.len() as u8]);
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(b"\x93\x94X\x01\x00\x00\x001\x85R.");
        v
    };
    let cases = [
        (os_system, "os.system"),
        (stack_global("builtins", "eval"), "builtins.eval"),
        (stack_global("posix", "system"), "posix.system"),
        (stack_global("subprocess", "Popen"), "subprocess.Popen"),
        (stack_global("torch", "load"), "torch.load"),
    ];
    for (pkl, global) in cases {
        let zip = torch_zip("archive", &pkl, &[], CompressionMethod::Stored);
        let msg = err_text(WeightFiles::from_bytes("evil.bin", zip));
        assert_contains(
            &msg,
            &[
                "evil.bin",
                &format!("pickle references forbidden global `{global}`"),
                "only torch tensor rebuild functions are allowed",
            ],
        );
        // The bare interpreter refuses it too.
        let msg = err_text(run_pickle(&pkl));
        assert_contains(&msg, &[global]);
    }
    // The refusal happens at the GLOBAL even when the rest of the stream is a valid state dict.
    let mut p = PickleBuilder::new();
    p.tensor("w", "FloatStorage", "0", 1, 0, &[1], &[1]);
    let mut pkl = p.finish();
    let at = pkl.len() - 2;
    pkl.splice(at..at, b"X\x01\x00\x00\x00xcos\nsystem\n".iter().copied());
    let msg = err_text(run_pickle(&pkl));
    assert_contains(&msg, &["forbidden global `os.system`"]);
}

#[test]
fn legacy_and_unknown_formats_are_named() {
    // torch<1.6 files start with a pickled magic number: PROTO 2, LONG1 ...
    let legacy = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.".to_vec();
    let msg = err_text(WeightFiles::from_bytes("old.bin", legacy));
    assert_contains(
        &msg,
        &[
            "old.bin",
            "legacy torch serialization is not supported; re-save with torch>=1.6",
        ],
    );
    let msg = err_text(WeightFiles::from_bytes(
        "junk",
        b"hello world, not weights".to_vec(),
    ));
    assert_contains(&msg, &["junk", "unrecognised checkpoint format"]);
    let msg = err_text(WeightFiles::from_bytes("empty", Vec::new()));
    assert_contains(&msg, &["empty", "file is empty"]);
    let dir = temp_dir("empty-file");
    let path = dir.join("pytorch_model.bin");
    std::fs::write(&path, b"").unwrap();
    assert_contains(&err_text(WeightFiles::open(&path)), &["file is empty"]);
    assert!(matches!(
        WeightFiles::open(&dir.join("nope.bin")),
        Err(Error::Io { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn big_endian_archives_are_refused() {
    let mut p = PickleBuilder::new();
    p.tensor("w", "FloatStorage", "0", 1, 0, &[1], &[1]);
    let zip = torch_zip(
        "archive",
        &p.finish(),
        &[("0", vec![0; 4])],
        CompressionMethod::Stored,
    );
    let zip = rezip(&zip, CompressionMethod::Stored, |name, d| {
        if name.ends_with("byteorder") {
            b"big".to_vec()
        } else {
            d
        }
    });
    let msg = err_text(WeightFiles::from_bytes("be.pt", zip));
    assert_contains(&msg, &["be.pt", "big-endian"]);
}

#[test]
fn index_naming_a_missing_shard_is_an_error() {
    let dir = temp_dir("missing-shard");
    let src = fixtures().join("checkpoint-bin");
    std::fs::copy(
        src.join("pytorch_model.bin.index.json"),
        dir.join("pytorch_model.bin.index.json"),
    )
    .unwrap();
    std::fs::copy(shard1(), dir.join("pytorch_model-00001-of-00002.bin")).unwrap();
    let index = dir.join("pytorch_model.bin.index.json");
    let msg = err_text(WeightFiles::open_index(&index));
    assert_contains(
        &msg,
        &[
            &index.display().to_string(),
            "shard `pytorch_model-00002-of-00002.bin`",
            "missing",
        ],
    );
    // open_dir goes through the same path.
    let msg = err_text(WeightFiles::open_dir(&dir));
    assert_contains(&msg, &["pytorch_model-00002-of-00002.bin"]);

    // A shard escaping the folder, and a weight_map entry its shard does not hold.
    let escape = serde_json::json!({"weight_map": {"a": "../x.bin"}});
    std::fs::write(&index, serde_json::to_vec(&escape).unwrap()).unwrap();
    assert_contains(
        &err_text(WeightFiles::open_index(&index)),
        &["../x.bin", "inside the index's folder"],
    );
    let wrong =
        serde_json::json!({"weight_map": {"not.there": "pytorch_model-00001-of-00002.bin"}});
    std::fs::write(&index, serde_json::to_vec(&wrong).unwrap()).unwrap();
    assert_contains(
        &err_text(WeightFiles::open_index(&index)),
        &["`not.there`", "does not contain it"],
    );
    std::fs::write(&index, b"{not json").unwrap();
    assert_contains(
        &err_text(WeightFiles::open_index(&index)),
        &["invalid index JSON"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_shape_names_tensor_file_and_both_shapes() {
    for dir in ["checkpoint", "checkpoint-bin"] {
        let w = WeightFiles::open_dir(&fixtures().join(dir)).unwrap();
        let err = w.read_f32("lm_head.weight", &[64, 1008]).unwrap_err();
        assert!(matches!(err, Error::Tensor { .. }), "{err:?}");
        let msg = err.to_string();
        let file = w.file_of("lm_head.weight").unwrap().to_string();
        assert_contains(
            &msg,
            &[
                "lm_head.weight",
                &file,
                "shape [1008, 64] but expected [64, 1008]",
            ],
        );
    }
}

#[test]
fn missing_tensor_is_missing_tensor() {
    let w = WeightFiles::open_dir(&fixtures().join("checkpoint")).unwrap();
    let err = w.read_f32("model.vision_tower.x", &[3, 4]).unwrap_err();
    match &err {
        Error::MissingTensor {
            name,
            searched,
            expected,
        } => {
            assert_eq!(name, "model.vision_tower.x");
            assert!(searched.contains("model.safetensors"), "{searched}");
            assert_eq!(expected, &vec![3, 4]);
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    assert_contains(
        &err.to_string(),
        &["model.vision_tower.x", "model.safetensors", "[3, 4]"],
    );
    assert!(matches!(
        WeightFiles::new().read_f32_any("x"),
        Err(Error::MissingTensor { .. })
    ));
    assert!(!w.contains("model.vision_tower.x") && w.contains("lm_head.weight"));
    assert!(w.info("nope").is_none() && w.file_of("nope").is_none());
}

// ---------- robustness: no input panics ----------

/// Deterministic pseudo-random numbers for the mutation tests.
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

#[test]
fn mutated_pickles_never_panic() {
    let bytes = read(&shard1());
    let mut zip = ZipArchive::new(Cursor::new(&bytes[..])).unwrap();
    let mut pkl = Vec::new();
    zip.by_name("pytorch_model-00001-of-00002/data.pkl")
        .unwrap()
        .read_to_end(&mut pkl)
        .unwrap();
    assert!(run_pickle(&pkl).unwrap().len() > 100);
    // Every truncation of the first 2 KiB, then sampled ones.
    for len in (0..2048).chain((2048..pkl.len()).step_by(97)) {
        assert!(
            run_pickle(&pkl[..len]).is_err(),
            "truncated at {len} accepted"
        );
    }
    let mut seed = 7u64;
    for _ in 0..3000 {
        let mut m = pkl.clone();
        for _ in 0..1 + lcg(&mut seed) % 3 {
            let at = lcg(&mut seed) as usize % m.len();
            m[at] = lcg(&mut seed) as u8;
        }
        let _ = run_pickle(&m);
    }
}

#[test]
fn mutated_archives_never_panic() {
    let storage: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let mut p = PickleBuilder::new();
    p.tensor("w", "FloatStorage", "0", 6, 0, &[2, 3], &[3, 1]);
    p.tensor("v", "FloatStorage", "0", 6, 1, &[3, 2], &[1, 2]);
    let pkl = p.finish();
    let mut seed = 11u64;
    for method in [CompressionMethod::Stored, CompressionMethod::Deflated] {
        let zip = torch_zip("archive", &pkl, &[("0", f32_bytes(&storage))], method);
        for len in 0..zip.len() {
            assert!(WeightFiles::from_bytes("m", zip[..len].to_vec()).is_err());
        }
        for _ in 0..3000 {
            let mut m = zip.clone();
            let at = lcg(&mut seed) as usize % m.len();
            m[at] = lcg(&mut seed) as u8;
            if let Ok(w) = WeightFiles::from_bytes("m", m) {
                for name in w.names() {
                    let _ = w.read_f32_any(&name);
                }
            }
        }
    }
}

#[test]
fn mutated_safetensors_never_panic() {
    let header = serde_json::json!({
        "a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
    });
    let st = safetensors_bytes(&header, &[1u8; 20]);
    let mut seed = 3u64;
    for _ in 0..3000 {
        let mut m = st.clone();
        let at = lcg(&mut seed) as usize % m.len();
        m[at] = lcg(&mut seed) as u8;
        if let Ok(w) = WeightFiles::from_bytes("m", m) {
            for name in w.names() {
                let _ = w.read_f32_any(&name);
            }
        }
    }
}

// ---------- packed matrices (`pixellm quantize`) ----------

/// A safetensors file holding one packed matrix `w` (`U8 [bytes]`) described by `spec`.
fn packed_file(spec: &str, bytes: &[u8]) -> Vec<u8> {
    safetensors_bytes(
        &serde_json::json!({
            "__metadata__": {"pixellm.packed.w": spec},
            "w": {"dtype": "U8", "shape": [bytes.len()], "data_offsets": [0, bytes.len()]},
        }),
        bytes,
    )
}

#[test]
fn packed_safetensors_round_trip_and_dequantise() {
    let values: Vec<f32> = (0..2 * 64).map(|i| (i as f32 - 60.0) / 17.0).collect();
    let m = crate::kernels::quant::QuantMatrix::quantize(
        crate::kernels::quant::QuantFormat::Q4_0,
        2,
        64,
        &values,
    )
    .unwrap();
    let files =
        WeightFiles::from_bytes("q.safetensors", packed_file("Q4_0 2 64", m.bytes())).unwrap();
    assert_eq!(files.info("w").unwrap().shape, vec![2, 64]);
    assert_eq!(
        files.packed_format("w"),
        Some(crate::kernels::quant::QuantFormat::Q4_0)
    );
    assert_eq!(files.read_packed("w", [2, 64]).unwrap(), m);
    // Readers that want floats get the dequantised values.
    assert_eq!(files.read_f32("w", &[2, 64]).unwrap(), m.dequantize());
    assert_eq!(files.stored_bytes("w"), 72);
    assert_contains(
        &err_text(files.read_packed("w", [64, 2])),
        &["`w`", "shape [2, 64] but expected [64, 2]"],
    );
}

#[test]
fn malformed_packed_safetensors_are_refused_in_one_line() {
    let blocks = vec![0u8; 72]; // 2 rows × 2 blocks × 18 bytes of Q4_0
    let cases: [(&str, Vec<u8>, &[&str]); 6] = [
        // A truncated tensor (a block's scale and values missing).
        (
            "Q4_0 2 64",
            blocks[..54].to_vec(),
            &["54 bytes of Q4_0 blocks, expected 72 for [2, 64]"],
        ),
        // The wrong block count for the stated shape.
        (
            "Q4_0 3 64",
            blocks.clone(),
            &["72 bytes of Q4_0 blocks, expected 108 for [3, 64]"],
        ),
        ("Q8_0 2 64", blocks.clone(), &["expected 136"]),
        // Rows that are not whole blocks, unknown formats, garbled specs.
        ("Q4_0 4 16", blocks.clone(), &["not whole blocks of 32"]),
        (
            "Q3_K 2 64",
            blocks.clone(),
            &["is not `<Q8_0|Q4_0|Q4_1> <rows> <cols>`"],
        ),
        (
            "Q4_0 two 64",
            blocks.clone(),
            &["is not `<Q8_0|Q4_0|Q4_1> <rows> <cols>`"],
        ),
    ];
    for (spec, bytes, want) in cases {
        let e = err_text(WeightFiles::from_bytes(
            "bad.safetensors",
            packed_file(spec, &bytes),
        ));
        assert_contains(&e, want);
        assert_contains(&e, &["bad.safetensors", "`w`"]);
        assert!(!e.contains('\n'), "{e}");
    }
    // Metadata naming a tensor the file does not hold.
    let bytes = safetensors_bytes(
        &serde_json::json!({
            "__metadata__": {"pixellm.packed.nope": "Q4_0 2 64"},
            "w": {"dtype": "U8", "shape": [72], "data_offsets": [0, 72]},
        }),
        &blocks,
    );
    assert_contains(
        &err_text(WeightFiles::from_bytes("bad.safetensors", bytes)),
        &[
            "pixellm.packed.nope",
            "names a tensor the file does not hold",
        ],
    );
    // Packed blocks must be bytes.
    let bytes = safetensors_bytes(
        &serde_json::json!({
            "__metadata__": {"pixellm.packed.w": "Q4_0 2 64"},
            "w": {"dtype": "F32", "shape": [18], "data_offsets": [0, 72]},
        }),
        &blocks,
    );
    assert_contains(
        &err_text(WeightFiles::from_bytes("bad.safetensors", bytes)),
        &["must be stored as U8 [bytes]"],
    );
}
