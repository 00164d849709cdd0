//! Element types, strided-view validation and conversion to `f32`.
//!
//! Validation happens once per tensor when a file is opened, so that reading later can
//! only fail on a dtype that does not convert.

use std::fmt;

use super::Entry;

/// Element type of a stored tensor. Only the float types convert to `f32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredDType {
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16 (the upper half of an `f32`).
    BF16,
    /// IEEE 754 double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Signed 32-bit integer.
    I32,
    /// Signed 16-bit integer.
    I16,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// Boolean, one byte per element.
    Bool,
    /// A type this reader can locate but not convert (fp8, sub-byte floats, complex, ...);
    /// holds the format's own name for it.
    Other(&'static str),
}

impl StoredDType {
    /// Bytes per element; `None` for [`StoredDType::Other`].
    pub fn size(self) -> Option<usize> {
        Some(match self {
            StoredDType::F64 | StoredDType::I64 | StoredDType::U64 => 8,
            StoredDType::F32 | StoredDType::I32 | StoredDType::U32 => 4,
            StoredDType::F16 | StoredDType::BF16 | StoredDType::I16 | StoredDType::U16 => 2,
            StoredDType::I8 | StoredDType::U8 | StoredDType::Bool => 1,
            StoredDType::Other(_) => return None,
        })
    }

    /// Whether [`super::WeightFiles::read_f32`] accepts this type.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            StoredDType::F32 | StoredDType::F16 | StoredDType::BF16 | StoredDType::F64
        )
    }
}

impl fmt::Display for StoredDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoredDType::Other(name) => f.write_str(name),
            other => fmt::Debug::fmt(other, f),
        }
    }
}

/// Product of the dimensions; `None` on overflow. A zero dimension wins over overflow in
/// the others because such a tensor addresses nothing.
pub(crate) fn numel(shape: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Row-major strides for `shape`, in elements.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    let mut acc = 1usize;
    for i in (0..shape.len()).rev() {
        strides[i] = acc;
        acc = acc.saturating_mul(shape[i]);
    }
    strides
}

/// Checks that every element the view addresses lies inside the storage region, that the
/// region lies inside its source, and that the tensor is no bigger than the source (which
/// bounds what a read may allocate even for stride-0 views).
pub(crate) fn validate(entry: &Entry) -> Result<(), String> {
    let shape = &entry.info.shape;
    if entry.strides.len() != shape.len() {
        return Err(format!(
            "stride {:?} has {} dimensions but shape {:?} has {}",
            entry.strides,
            entry.strides.len(),
            shape,
            shape.len()
        ));
    }
    let source_len = entry.source.bytes.as_slice().len();
    let region_fits = entry
        .region_start
        .checked_add(entry.region_len)
        .is_some_and(|end| end <= source_len);
    if !region_fits {
        return Err(format!(
            "data region {}..+{} lies outside the file ({source_len} bytes)",
            entry.region_start, entry.region_len
        ));
    }
    let n = numel(shape).ok_or_else(|| format!("shape {shape:?} overflows the element count"))?;
    let Some(elem) = entry.info.dtype.size() else {
        // Exotic types are only listed, never read; their region was checked above.
        return Ok(());
    };
    if n == 0 {
        return Ok(());
    }
    if n.checked_mul(elem).is_none_or(|b| b > source_len) {
        return Err(format!(
            "shape {shape:?} holds more bytes than the whole file ({source_len} bytes)"
        ));
    }
    // Highest element index the view touches; strides are unsigned, so the lowest is the offset.
    let mut last = entry.elem_offset;
    for (&d, &s) in shape.iter().zip(&entry.strides) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| last.checked_add(x))
            .ok_or_else(|| format!("shape {shape:?} with stride {:?} overflows", entry.strides))?;
    }
    let end_byte = last.checked_add(1).and_then(|x| x.checked_mul(elem));
    if end_byte.is_none_or(|b| b > entry.region_len) {
        return Err(format!(
            "shape {shape:?} with stride {:?} and offset {} addresses element {last}, \
             beyond the {} bytes ({} elements of {}) of its storage",
            entry.strides,
            entry.elem_offset,
            entry.region_len,
            entry.region_len / elem,
            entry.info.dtype
        ));
    }
    Ok(())
}

/// Reads the tensor as `f32` in row-major order. Assumes [`validate`] passed, but still
/// uses checked slicing so a logic error becomes a message, not a panic.
pub(crate) fn read_f32(entry: &Entry) -> Result<Vec<f32>, String> {
    let dtype = entry.info.dtype;
    if let StoredDType::Other(name) = dtype {
        return Err(format!(
            "dtype {name} cannot be converted to f32 by this reader"
        ));
    }
    if !dtype.is_float() {
        return Err(format!("dtype {dtype} is not a float type"));
    }
    let elem = dtype.size().unwrap_or(1);
    let shape = &entry.info.shape;
    let n = numel(shape).ok_or("element count overflows")?;
    let region = entry.region().ok_or("data region lies outside the file")?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let out_of_range = || "view addresses bytes outside its storage".to_string();
    if is_contiguous(shape, &entry.strides) {
        let start = entry
            .elem_offset
            .checked_mul(elem)
            .ok_or_else(out_of_range)?;
        let len = n.checked_mul(elem).ok_or_else(out_of_range)?;
        let bytes = region
            .get(start..)
            .and_then(|s| s.get(..len))
            .ok_or_else(out_of_range)?;
        return Ok(convert(dtype, bytes));
    }
    // Non-contiguous: gather element bytes in row-major order, then convert once.
    let mut gathered = Vec::with_capacity(n.checked_mul(elem).ok_or_else(out_of_range)?);
    let mut index = vec![0usize; shape.len()];
    let mut pos = entry.elem_offset;
    for _ in 0..n {
        let start = pos.checked_mul(elem).ok_or_else(out_of_range)?;
        let bytes = region
            .get(start..)
            .and_then(|s| s.get(..elem))
            .ok_or_else(out_of_range)?;
        gathered.extend_from_slice(bytes);
        // Odometer step: bump the last dimension, carrying into earlier ones.
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            pos = pos.wrapping_add(entry.strides[d]);
            if index[d] < shape[d] {
                break;
            }
            pos = pos.wrapping_sub(entry.strides[d].wrapping_mul(shape[d]));
            index[d] = 0;
        }
    }
    Ok(convert(dtype, &gathered))
}

/// Whether the view reads `numel` consecutive elements; size-1 dimensions may carry any
/// stride (torch often stores those as 1 or as the neighbouring stride).
fn is_contiguous(shape: &[usize], strides: &[usize]) -> bool {
    let expected = contiguous_strides(shape);
    shape
        .iter()
        .zip(strides.iter().zip(&expected))
        .all(|(&d, (&s, &e))| d == 1 || s == e)
}

/// Little-endian element bytes to `f32`. `bytes.len()` is a multiple of the element size.
fn convert(dtype: StoredDType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        StoredDType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        StoredDType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        StoredDType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        StoredDType::F64 => bytes
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                f64::from_le_bytes(b) as f32
            })
            .collect(),
        _ => Vec::new(),
    }
}
