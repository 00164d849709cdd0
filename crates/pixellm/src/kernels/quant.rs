//! Block-quantised weight matrices, byte-compatible with GGUF's `Q8_0`, `Q4_0` and `Q4_1`
//! (`ggml-common.h`, `ggml-quants.c`), and the policy that decides which weights are packed.
//!
//! A [`QuantMatrix`] holds a PyTorch-layout `[out, in]` weight as `out` rows of `in / 32`
//! blocks; each block carries its scale (and, for `Q4_1`, its minimum) as f16 beside 32
//! quantised values:
//!
//! | format | bytes per 32 values | value |
//! |---|---:|---|
//! | `Q8_0` | 34: `f16 d`, `i8 q[32]` | `d · q` |
//! | `Q4_0` | 18: `f16 d`, `u8 qs[16]` | `d · (nibble − 8)` |
//! | `Q4_1` | 20: `f16 d`, `f16 m`, `u8 qs[16]` | `d · nibble + m` |
//!
//! In the 4-bit formats, value `j < 16` is the low nibble of `qs[j]` and value `j + 16` its
//! high nibble. Quantisation follows ggml's reference routines operation for operation, so
//! a matrix quantised here has the bytes `llama-quantize` would write for the same values.
//!
//! The matrices are host data here; [`crate::kernels::qlinear`] multiplies by them without
//! ever unpacking a whole matrix (`kernels/cpu/qgemm.rs` on the CPU backend).

use burn::tensor::{Device, Int, Tensor, TensorData};
use half::f16;

use crate::error::{Error, Result};

/// Values per quantisation block (all three formats).
pub const BLOCK: usize = 32;

/// How a checkpoint's weights are held on the device (`--quant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quant {
    /// As stored: tensors a GGUF file holds in `Q8_0`, `Q4_0` or `Q4_1` stay packed where the
    /// backend multiplies packed weights (the CPU), everything else is dequantised to the
    /// model's dtype. The default.
    #[default]
    Stored,
    /// Every weight dequantised to the model's dtype (what this runtime did before packed
    /// kernels).
    None,
    /// The LLM's matrices in 8 bits (`Q8_0`); a stored `Q8_0` tensor is kept as is.
    Q8,
    /// The LLM's matrices in 4 bits (`Q4_0`); a stored `Q4_0` or `Q4_1` tensor is kept as is.
    Q4,
}

impl Quant {
    /// The policy for the token embedding and the LM head: `q4` keeps them at 8 bits. In
    /// 4 bits they cost SmolLM2-135M 20 % perplexity (50.08 → 60.25 on this repository's
    /// docs) against 0.1 % for `q8`; llama.cpp's 4-bit presets keep that tensor at 6–8 bits
    /// for the same reason. The others are unchanged.
    pub fn for_output(self) -> Self {
        match self {
            Self::Q4 => Self::Q8,
            other => other,
        }
    }

    /// The policy for the vision tower's projections: packed at 8 bits under `q4` only (a
    /// fifth of a 7B's weights in f32: without it `q4` keeps 0.35× of the f32 bytes at the
    /// mid shape, with it 0.20×); dense otherwise, since the masks are read from its
    /// features (at 8 bits under `q8` the kit's greedy ids moved at a 2 % margin).
    ///
    /// As stored (the default), blocks a checkpoint holds (`pixellm quantize --quant q4`)
    /// stay packed.
    pub fn for_vision(self) -> Self {
        match self {
            Self::Q4 => Self::Q8,
            Self::Stored => Self::Stored,
            _ => Self::None,
        }
    }

    /// Parses `none`, `q8`, `q4` (and `stored`).
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "stored" => Ok(Self::Stored),
            "none" => Ok(Self::None),
            "q8" | "q8_0" => Ok(Self::Q8),
            "q4" | "q4_0" => Ok(Self::Q4),
            _ => Err(Error::Config {
                file: "--quant".into(),
                msg: format!("`{s}` is not a quantisation (none, q8, q4)"),
            }),
        }
    }

    /// The name `parse` reads back.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::None => "none",
            Self::Q8 => "q8",
            Self::Q4 => "q4",
        }
    }

    /// What a weight stored as `stored` (`None`: a float tensor) becomes: `None` for a
    /// dense tensor in the model's dtype, else the packed format to hold it in.
    pub fn target(self, stored: Option<QuantFormat>) -> Option<QuantFormat> {
        match (self, stored) {
            (Self::None, _) => None,
            (Self::Stored, s) => s,
            (Self::Q8, _) => Some(QuantFormat::Q8_0),
            (Self::Q4, Some(f @ (QuantFormat::Q4_0 | QuantFormat::Q4_1))) => Some(f),
            (Self::Q4, _) => Some(QuantFormat::Q4_0),
        }
    }
}

/// A GGUF block format this runtime keeps packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QuantFormat {
    /// 8-bit values, one f16 scale per block.
    Q8_0,
    /// 4-bit values centred on 8, one f16 scale per block.
    Q4_0,
    /// 4-bit values, an f16 scale and an f16 minimum per block.
    Q4_1,
}

impl QuantFormat {
    /// Bytes of one block of [`BLOCK`] values.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
        }
    }

    /// ggml's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
        }
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A `[rows, cols]` matrix as `rows` rows of `cols / 32` blocks of one [`QuantFormat`].
#[derive(Clone, PartialEq)]
pub struct QuantMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantMatrix({} [{}, {}], {} bytes)",
            self.format,
            self.rows,
            self.cols,
            self.data.len()
        )
    }
}

impl QuantMatrix {
    /// Wraps stored blocks, checking that `data` holds exactly `rows · cols / 32` blocks.
    /// The error is a sentence for the caller to put after the tensor's name.
    pub fn from_blocks(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> std::result::Result<Self, String> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(format!(
                "{format} rows of {cols} values are not whole blocks of {BLOCK}"
            ));
        }
        let want = rows
            .checked_mul(cols / BLOCK)
            .and_then(|b| b.checked_mul(format.block_bytes()));
        if want != Some(data.len()) {
            return Err(format!(
                "{} bytes of {format} blocks, expected {} for [{rows}, {cols}]",
                data.len(),
                want.map_or_else(|| "more than memory".to_string(), |w| w.to_string())
            ));
        }
        Ok(Self {
            format,
            rows,
            cols,
            data,
        })
    }

    /// Quantises a row-major `[rows, cols]` f32 matrix (ggml's reference quantisers);
    /// `cols` must be a positive multiple of 32.
    pub fn quantize(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> std::result::Result<Self, String> {
        if values.len() != rows * cols {
            return Err(format!(
                "{} values for a [{rows}, {cols}] matrix",
                values.len()
            ));
        }
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(format!(
                "rows of {cols} values are not whole blocks of {BLOCK}"
            ));
        }
        let mut data = Vec::with_capacity(values.len() / BLOCK * format.block_bytes());
        for block in values.chunks_exact(BLOCK) {
            let block: &[f32; BLOCK] = block.try_into().expect("chunks of BLOCK");
            match format {
                QuantFormat::Q8_0 => quantize_q8_0(block, &mut data),
                QuantFormat::Q4_0 => quantize_q4_0(block, &mut data),
                QuantFormat::Q4_1 => quantize_q4_1(block, &mut data),
            }
        }
        Ok(Self {
            format,
            rows,
            cols,
            data,
        })
    }

    /// The block format.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Rows (`out` of a linear weight).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (`in` of a linear weight).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The packed bytes (what the matrix occupies).
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Bytes of one row of blocks.
    pub fn row_bytes(&self) -> usize {
        self.cols / BLOCK * self.format.block_bytes()
    }

    /// Row `r`'s blocks.
    pub fn row(&self, r: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// Row `r` as f32 (ggml's `dequantize_row_*`).
    pub fn dequantize_row(&self, r: usize, out: &mut Vec<f32>) {
        let size = self.format.block_bytes();
        for b in self.row(r).chunks_exact(size) {
            dequantize_block(self.format, b, out);
        }
    }

    /// The whole matrix as row-major f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            self.dequantize_row(r, &mut out);
        }
        out
    }

    /// The rows of `parts` one after another (projections of one input stacked into one
    /// matrix); `None` unless the parts share one format and width.
    pub fn stack_rows(parts: &[&Self]) -> Option<Self> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.format != first.format || p.cols != first.cols)
        {
            return None;
        }
        Some(Self {
            format: first.format,
            cols: first.cols,
            rows: parts.iter().map(|p| p.rows).sum(),
            data: parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
        })
    }

    /// The matrix with its rows reordered: row `i` of the result is row `order[i]` of this
    /// one (GGUF stores LLaMA's q/k projections with rows permuted for its RoPE layout).
    pub fn select_rows(&self, order: &[usize]) -> Self {
        let mut data = Vec::with_capacity(self.data.len());
        for &r in order {
            data.extend_from_slice(self.row(r));
        }
        Self {
            rows: order.len(),
            data,
            ..*self
        }
    }
}

/// A [`QuantMatrix`] held on a GPU device for the packed CubeCL kernels (`kernels/cube.rs`):
/// each block's values as 32-bit words in the GGUF byte order (`Q8_0`: 8 words of four
/// signed bytes; `Q4_0`/`Q4_1`: 4 words, byte `j` holding value `j` in its low nibble and
/// value `j + 16` in its high one), and its f16 scale (and `Q4_1`'s f16 minimum) two to a
/// word, row by row (a row's last word is half empty when it has an odd number of
/// blocks). Words keep every buffer 4-byte aligned, which WGSL needs, and the f16 bits are
/// unpacked in the kernels (no `shader-f16` needed): the same bytes per value as GGUF.
#[derive(Debug, Clone)]
pub struct DeviceQuantMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    /// `[rows · cols / 32 · words_per_block]` (i32 bit patterns of the u32 words).
    pub(crate) words: Tensor<1, Int>,
    /// `[rows · ⌈cols / 64⌉]` words of two f16 scales.
    pub(crate) scales: Tensor<1, Int>,
    /// Like `scales`, `Q4_1`'s minimums.
    pub(crate) mins: Option<Tensor<1, Int>>,
}

impl DeviceQuantMatrix {
    /// Words per block of `format`.
    pub fn words_per_block(format: QuantFormat) -> usize {
        match format {
            QuantFormat::Q8_0 => 8,
            QuantFormat::Q4_0 | QuantFormat::Q4_1 => 4,
        }
    }

    /// Words of two f16 values per row of `blocks` blocks.
    pub fn half_words_per_row(blocks: usize) -> usize {
        blocks.div_ceil(2)
    }

    /// Uploads `m`'s blocks to `device` in the kernels' layout.
    pub fn upload(m: &QuantMatrix, device: &Device) -> Self {
        let format = m.format();
        let per_row = m.cols() / BLOCK;
        let blocks = m.rows() * per_row;
        let mut words = Vec::with_capacity(blocks * Self::words_per_block(format));
        let half_words = m.rows() * Self::half_words_per_row(per_row);
        let (mut scales, mut mins) = (Vec::with_capacity(half_words), Vec::new());
        // The f16 bits at `at` of a block, placed in the low or high half of a word.
        let bits = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as u32;
        for r in 0..m.rows() {
            let row = m.row(r);
            let pair = |out: &mut Vec<i32>, at: usize| {
                for two in row.chunks(2 * format.block_bytes()) {
                    let mut word = bits(two, at);
                    if two.len() > format.block_bytes() {
                        word |= bits(&two[format.block_bytes()..], at) << 16;
                    }
                    out.push(word as i32);
                }
            };
            pair(&mut scales, 0);
            if format == QuantFormat::Q4_1 {
                pair(&mut mins, 2);
            }
            for b in row.chunks_exact(format.block_bytes()) {
                let values = match format {
                    QuantFormat::Q8_0 => &b[2..34],
                    QuantFormat::Q4_0 => &b[2..18],
                    QuantFormat::Q4_1 => &b[4..20],
                };
                words.extend(
                    values
                        .chunks_exact(4)
                        .map(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]])),
                );
            }
        }
        let ints = |v: Vec<i32>| {
            super::counts::note_upload();
            let n = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), device)
        };
        Self {
            format,
            rows: m.rows(),
            cols: m.cols(),
            words: ints(words),
            scales: ints(scales),
            mins: (format == QuantFormat::Q4_1).then(|| ints(mins)),
        }
    }

    /// The rows of `parts` one after another (stacked projections); `None` unless they
    /// share one format and width.
    pub fn stack_rows(parts: &[&Self]) -> Option<Self> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.format != first.format || p.cols != first.cols)
        {
            return None;
        }
        let mins = match first.format {
            QuantFormat::Q4_1 => Some(Tensor::cat(
                parts.iter().filter_map(|p| p.mins.clone()).collect(),
                0,
            )),
            _ => None,
        };
        Some(Self {
            format: first.format,
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            words: Tensor::cat(parts.iter().map(|p| p.words.clone()).collect(), 0),
            scales: Tensor::cat(parts.iter().map(|p| p.scales.clone()).collect(), 0),
            mins,
        })
    }

    /// The block format.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Rows (`out`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (`in`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the matrix occupies on the device.
    pub fn bytes(&self) -> u64 {
        let blocks = (self.rows * self.cols / BLOCK) as u64;
        let half_words = (self.rows * Self::half_words_per_row(self.cols / BLOCK)) as u64;
        let tables = if self.mins.is_some() { 2 } else { 1 };
        blocks * 4 * Self::words_per_block(self.format) as u64 + tables * half_words * 4
    }
}

/// The little-endian f16 at byte `at` of a block, as f32.
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

fn push_f16(data: &mut Vec<u8>, v: f32) {
    data.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// Appends block `b`'s 32 values as f32 (ggml's `dequantize_row_*`, same float operation
/// order; the GGUF reader uses it too).
pub(crate) fn dequantize_block(format: QuantFormat, b: &[u8], out: &mut Vec<f32>) {
    match format {
        QuantFormat::Q8_0 => {
            let d = f16_at(b, 0);
            out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
        }
        QuantFormat::Q4_0 => {
            let d = f16_at(b, 0);
            let qs = &b[2..18];
            out.extend(qs.iter().map(|&q| f32::from((q & 0xF) as i8 - 8) * d));
            out.extend(qs.iter().map(|&q| f32::from((q >> 4) as i8 - 8) * d));
        }
        QuantFormat::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let qs = &b[4..20];
            out.extend(qs.iter().map(|&q| f32::from(q & 0xF) * d + m));
            out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
        }
    }
}

/// `quantize_row_q8_0_ref`: `d = amax / 127`, `q = round(x / d)`.
fn quantize_q8_0(x: &[f32; BLOCK], data: &mut Vec<u8>) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_f16(data, d);
    data.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// `quantize_row_q4_0_ref`: the value of largest magnitude maps to −8,
/// `q = min(15, (i8)(x / d + 8.5))`.
fn quantize_q4_0(x: &[f32; BLOCK], data: &mut Vec<u8>) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_f16(data, d);
    // C's `(int8_t)(float)` truncates toward zero; the argument is ≥ 0.5 here.
    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    data.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
}

/// `quantize_row_q4_1_ref`: `d = (max − min) / 15`, `m = min`,
/// `q = min(15, (i8)((x − min) / d + 0.5))`.
fn quantize_q4_1(x: &[f32; BLOCK], data: &mut Vec<u8>) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        min = min.min(v);
        max = max.max(v);
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_f16(data, d);
    push_f16(data, min);
    let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
    data.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> Vec<f32> {
        (0..BLOCK).map(|i| i as f32 - 12.0).collect()
    }

    #[test]
    fn q8_0_block_matches_ggml_reference_bytes() {
        // amax 19 → d = 19/127; x = -12 → round(-12·127/19) = round(-80.21) = -80.
        let m = QuantMatrix::quantize(QuantFormat::Q8_0, 1, BLOCK, &ramp()).unwrap();
        let b = m.bytes();
        assert_eq!(b.len(), 34);
        assert_eq!(
            u16::from_le_bytes([b[0], b[1]]),
            f16::from_f32(19.0 / 127.0).to_bits()
        );
        assert_eq!(b[2] as i8, -80);
        assert_eq!(b[2 + 12] as i8, 0);
        assert_eq!(b[2 + 31] as i8, 127);
        let back = m.dequantize();
        for (x, y) in ramp().iter().zip(&back) {
            // Half a step, plus the f16 rounding of the scale times |q| ≤ 127.
            assert!((x - y).abs() <= 19.0 / 127.0 * 0.6, "{x} vs {y}");
        }
    }

    #[test]
    fn q4_0_block_matches_ggml_reference_bytes() {
        // The largest magnitude is +19 → d = 19 / −8 = −2.375; x = 19 → q = (i8)(−8 + 8.5)
        // = 0; x = −12 → (i8)(5.05 + 8.5) = 13; x = 0 → 8.
        let m = QuantMatrix::quantize(QuantFormat::Q4_0, 1, BLOCK, &ramp()).unwrap();
        let b = m.bytes();
        assert_eq!(b.len(), 18);
        assert_eq!(f16_at(b, 0), -2.375);
        assert_eq!(b[2] & 0xF, 13, "x[0] = -12 in the low nibble of qs[0]");
        assert_eq!(b[2 + 12] & 0xF, 8, "x[12] = 0");
        assert_eq!(b[2 + 15] >> 4, 0, "x[31] = 19 in the high nibble of qs[15]");
        let back = m.dequantize();
        assert_eq!(back[31], 19.0);
        assert_eq!(back[12], 0.0);
        assert_eq!(back[0], -2.375 * 5.0);
    }

    #[test]
    fn q4_1_block_matches_ggml_reference_bytes() {
        // min −12, max 19 → d = 31/15, m = −12; x = 19 → (i8)(15 + 0.5) = 15.
        let m = QuantMatrix::quantize(QuantFormat::Q4_1, 1, BLOCK, &ramp()).unwrap();
        let b = m.bytes();
        assert_eq!(b.len(), 20);
        assert_eq!(f16_at(b, 0), f16::from_f32(31.0 / 15.0).to_f32());
        assert_eq!(f16_at(b, 2), -12.0);
        assert_eq!(b[4] & 0xF, 0);
        assert_eq!(b[4 + 15] >> 4, 15);
        let d = f16_at(b, 0);
        let back = m.dequantize();
        for (x, y) in ramp().iter().zip(&back) {
            assert!((x - y).abs() <= d * 0.52, "{x} vs {y}");
        }
    }

    #[test]
    fn packed_bytes_round_trip_and_rows_reorder() {
        let values: Vec<f32> = (0..4 * 64)
            .map(|i| ((i * 37) % 101) as f32 / 7.0 - 6.0)
            .collect();
        for f in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4_1] {
            let m = QuantMatrix::quantize(f, 4, 64, &values).unwrap();
            assert_eq!(m.bytes().len(), 4 * 2 * f.block_bytes());
            let again = QuantMatrix::from_blocks(f, 4, 64, m.bytes().to_vec()).unwrap();
            assert_eq!(again, m);
            // Quantising the dequantised values gives the same blocks back.
            let requant = QuantMatrix::quantize(f, 4, 64, &m.dequantize()).unwrap();
            assert_eq!(requant.dequantize(), m.dequantize(), "{f}");
            let swapped = m.select_rows(&[2, 0, 3, 1]);
            let (a, b) = (m.dequantize(), swapped.dequantize());
            assert_eq!(&b[..64], &a[128..192]);
            assert_eq!(&b[192..], &a[64..128]);
        }
    }

    #[test]
    fn wrong_block_counts_are_refused() {
        let e = QuantMatrix::from_blocks(QuantFormat::Q4_0, 2, 64, vec![0; 71]).unwrap_err();
        assert_eq!(e, "71 bytes of Q4_0 blocks, expected 72 for [2, 64]");
        let e = QuantMatrix::from_blocks(QuantFormat::Q8_0, 2, 48, vec![0; 68]).unwrap_err();
        assert!(e.contains("not whole blocks"), "{e}");
        assert!(QuantMatrix::quantize(QuantFormat::Q8_0, 1, 48, &[0.0; 48]).is_err());
    }

    #[test]
    fn policy_keeps_what_fits_and_converts_the_rest() {
        use QuantFormat::*;
        assert_eq!(Quant::Stored.target(Some(Q4_1)), Some(Q4_1));
        assert_eq!(Quant::Stored.target(None), None);
        assert_eq!(Quant::None.target(Some(Q8_0)), None);
        assert_eq!(Quant::Q8.target(Some(Q4_1)), Some(Q8_0));
        assert_eq!(Quant::Q4.target(Some(Q4_1)), Some(Q4_1));
        assert_eq!(Quant::Q4.target(Some(Q8_0)), Some(Q4_0));
        assert_eq!(Quant::Q4.target(None), Some(Q4_0));
        // The embedding/head and the vision tower: 8 bits at most, blocks as stored kept.
        assert_eq!(Quant::Q4.for_output(), Quant::Q8);
        assert_eq!(Quant::Q8.for_output(), Quant::Q8);
        assert_eq!(Quant::Q4.for_vision(), Quant::Q8);
        assert_eq!(Quant::Q8.for_vision(), Quant::None);
        assert_eq!(Quant::Stored.for_vision(), Quant::Stored);
        assert_eq!(Quant::parse("Q8").unwrap(), Quant::Q8);
        assert!(Quant::parse("q3").is_err());
    }
}
