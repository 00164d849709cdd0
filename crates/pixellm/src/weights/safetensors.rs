//! safetensors files: an 8-byte little-endian header length, a JSON header, then the data.
//!
//! The `safetensors` crate parses and validates the header (offsets contiguous and
//! matching shape x dtype, data exactly covering the file); this module checks the header
//! length first so that absurd lengths get a message naming the numbers involved, and turns
//! the crate's errors into [`Error::Format`] naming the file.

use std::sync::Arc;

use ::safetensors::{Dtype, SafeTensorError, SafeTensors};

use super::layout::{contiguous_strides, StoredDType};
use super::{Entry, Source, TensorInfo};
use crate::error::{Error, Result};
use crate::kernels::quant::QuantFormat;

/// Bytes taken by the header-length field.
const LEN_FIELD: usize = 8;

/// Locates every tensor of a safetensors buffer.
pub(crate) fn parse(source: &Arc<Source>) -> Result<Vec<(String, Entry)>> {
    let label = source.label.as_str();
    let bytes = source.bytes.as_slice();
    let header_len = check_header_len(bytes).map_err(|msg| Error::format(label, msg))?;
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::format(label, describe(&e, bytes, header_len)))?;
    let data_start = LEN_FIELD + header_len;
    let notes = metadata.metadata().clone().unwrap_or_default();
    for key in notes.keys() {
        if let Some(name) = key.strip_prefix(PACKED_PREFIX) {
            if !metadata.tensors().contains_key(name) {
                return Err(Error::format(
                    label,
                    format!("metadata `{key}` names a tensor the file does not hold"),
                ));
            }
        }
    }

    let tensors = metadata.tensors();
    let mut out = Vec::with_capacity(tensors.len());
    for (name, info) in tensors {
        let (start, end) = info.data_offsets;
        // The crate guarantees start <= end <= data length; re-checked by layout::validate.
        let region_len = end.checked_sub(start).ok_or_else(|| {
            Error::format(
                label,
                format!("tensor `{name}` has data_offsets end before start"),
            )
        })?;
        let region_start = data_start.checked_add(start).ok_or_else(|| {
            Error::format(
                label,
                format!("tensor `{name}` has an overflowing data offset"),
            )
        })?;
        let (dtype, shape, packed) = match notes.get(&format!("{PACKED_PREFIX}{name}")) {
            None => (map_dtype(info.dtype), info.shape.clone(), None),
            Some(spec) => {
                let (format, rows, cols) =
                    packed_spec(spec, info.dtype, &info.shape).map_err(|msg| Error::Tensor {
                        file: label.to_string(),
                        name: name.clone(),
                        msg,
                    })?;
                (
                    StoredDType::Other(format.name()),
                    vec![rows, cols],
                    Some(format),
                )
            }
        };
        let entry = Entry {
            info: TensorInfo {
                dtype,
                shape: shape.clone(),
            },
            source: Arc::clone(source),
            region_start,
            region_len,
            elem_offset: 0,
            strides: contiguous_strides(&shape),
            packed,
        };
        out.push((name, entry));
    }
    Ok(out)
}

/// The `__metadata__` key prefix that marks a tensor `pixellm quantize` stored in blocks:
/// `"pixellm.packed.<tensor name>": "<format> <rows> <cols>"` (e.g. `"Q4_0 4096 11008"`),
/// the tensor itself `U8 [bytes]` holding the blocks row by row exactly as GGUF does.
pub const PACKED_PREFIX: &str = "pixellm.packed.";

/// Checks a packed tensor's metadata against its stored bytes: a known format, a row length
/// of whole blocks, and exactly `rows · cols / 32` blocks (a truncated or padded tensor,
/// wrong block count or missing scales, is refused here, at open).
fn packed_spec(
    spec: &str,
    dtype: Dtype,
    shape: &[usize],
) -> std::result::Result<(QuantFormat, usize, usize), String> {
    let parts: Vec<&str> = spec.split_whitespace().collect();
    let bad = || format!("packed metadata `{spec}` is not `<Q8_0|Q4_0|Q4_1> <rows> <cols>`");
    let [format, rows, cols] = parts[..] else {
        return Err(bad());
    };
    let format = match format {
        "Q8_0" => QuantFormat::Q8_0,
        "Q4_0" => QuantFormat::Q4_0,
        "Q4_1" => QuantFormat::Q4_1,
        _ => return Err(bad()),
    };
    let (rows, cols): (usize, usize) = match (rows.parse(), cols.parse()) {
        (Ok(r), Ok(c)) => (r, c),
        _ => return Err(bad()),
    };
    if dtype != Dtype::U8 || shape.len() != 1 {
        return Err(format!(
            "packed {format} blocks must be stored as U8 [bytes], not {dtype:?} {shape:?}"
        ));
    }
    if cols == 0 || !cols.is_multiple_of(crate::kernels::quant::BLOCK) {
        return Err(format!(
            "{format} rows of {cols} values are not whole blocks of 32"
        ));
    }
    let want = rows
        .checked_mul(cols / crate::kernels::quant::BLOCK)
        .and_then(|b| b.checked_mul(format.block_bytes()));
    if want != Some(shape[0]) {
        return Err(format!(
            "{} bytes of {format} blocks, expected {} for [{rows}, {cols}] (truncated or wrong block count)",
            shape[0],
            want.map_or_else(|| "more than memory".into(), |w| w.to_string())
        ));
    }
    Ok((format, rows, cols))
}

/// Returns the JSON header length after checking it against the buffer size.
fn check_header_len(bytes: &[u8]) -> std::result::Result<usize, String> {
    let Some(field) = bytes.get(..LEN_FIELD) else {
        return Err(format!(
            "file is {} bytes, too short for the 8-byte safetensors header length",
            bytes.len()
        ));
    };
    let mut raw = [0u8; LEN_FIELD];
    raw.copy_from_slice(field);
    let claimed = u64::from_le_bytes(raw);
    let available = (bytes.len() - LEN_FIELD) as u64;
    if claimed > available {
        return Err(format!(
            "header length {claimed} exceeds the file size ({} bytes): truncated or not a safetensors file",
            bytes.len()
        ));
    }
    // claimed <= available <= usize::MAX, so this cannot truncate.
    Ok(claimed as usize)
}

/// A message for a crate error, naming the first tensor whose entry is wrong where the
/// header can be read, with the numbers the crate leaves out.
fn describe(err: &SafeTensorError, bytes: &[u8], header_len: usize) -> String {
    if let Some(msg) = bad_entry(bytes, header_len) {
        return msg;
    }
    match err {
        SafeTensorError::MetadataIncompleteBuffer => {
            let data_len = bytes.len().saturating_sub(LEN_FIELD + header_len);
            match max_data_end(bytes, header_len) {
                Some(end) if end > data_len => format!(
                    "tensor data extends to byte {end} of the data section but the file holds only {data_len} \
                     bytes after the header (truncated file or offsets beyond the data)"
                ),
                Some(end) => format!(
                    "tensor data ends at byte {end} of the data section but the file holds {data_len} \
                     bytes after the header (unexpected trailing bytes)"
                ),
                None => format!("invalid safetensors file: {err}"),
            }
        }
        _ => format!("invalid safetensors header: {err}"),
    }
}

/// The first tensor (by data offset) whose shape, dtype and offsets disagree with each
/// other or with the file; read leniently, only used for messages.
fn bad_entry(bytes: &[u8], header_len: usize) -> Option<String> {
    let header = bytes.get(LEN_FIELD..LEN_FIELD.checked_add(header_len)?)?;
    let json: serde_json::Value = serde_json::from_slice(header).ok()?;
    let data_len = (bytes.len() - LEN_FIELD - header_len) as u128;
    let mut entries: Vec<(&String, &serde_json::Value)> = json
        .as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .collect();
    let start_of = |v: &serde_json::Value| v.get("data_offsets")?.get(0)?.as_u64();
    entries.sort_by_key(|(_, v)| start_of(v).unwrap_or(0));
    for (name, v) in entries {
        let shape: Option<Vec<u64>> = v
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let offsets: Option<Vec<u64>> = v
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let (Some(shape), Some(offsets)) = (shape, offsets) else {
            return Some(format!("tensor `{name}`: `shape` and `data_offsets` must be lists of non-negative integers"));
        };
        let [start, end] = offsets[..] else {
            return Some(format!(
                "tensor `{name}`: `data_offsets` must hold two numbers, not {offsets:?}"
            ));
        };
        let elem = v
            .get("dtype")
            .and_then(|d| d.as_str())
            .and_then(dtype_bytes);
        let elems = shape
            .iter()
            .try_fold(1u128, |acc, &d| acc.checked_mul(u128::from(d)));
        let Some(elems) = elems.filter(|&n| n <= u128::from(u64::MAX)) else {
            return Some(format!(
                "tensor `{name}`: shape {shape:?} has more elements than can be addressed"
            ));
        };
        if end < start {
            return Some(format!(
                "tensor `{name}`: data_offsets [{start}, {end}] end before they start"
            ));
        }
        if let Some(elem) = elem {
            let want = elems * elem;
            let have = u128::from(end - start);
            if want != have {
                return Some(format!(
                    "tensor `{name}`: shape {shape:?} needs {want} bytes but data_offsets [{start}, {end}] span {have}"
                ));
            }
        }
        if u128::from(end) > data_len {
            return Some(format!(
                "tensor `{name}`: data_offsets end at byte {end} but the file holds only {data_len} bytes after the header \
                 (truncated file or offsets beyond the data)"
            ));
        }
    }
    None
}

/// Bytes per element of a safetensors dtype name (`None` for sub-byte or unknown types).
fn dtype_bytes(name: &str) -> Option<u128> {
    Some(match name {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        _ => return None,
    })
}

/// Largest `data_offsets` end in the header, read leniently; only used for messages.
fn max_data_end(bytes: &[u8], header_len: usize) -> Option<usize> {
    let header = bytes.get(LEN_FIELD..LEN_FIELD.checked_add(header_len)?)?;
    let json: serde_json::Value = serde_json::from_slice(header).ok()?;
    json.as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .and_then(|e| usize::try_from(e).ok())
}

fn map_dtype(dtype: Dtype) -> StoredDType {
    match dtype {
        Dtype::F32 => StoredDType::F32,
        Dtype::F16 => StoredDType::F16,
        Dtype::BF16 => StoredDType::BF16,
        Dtype::F64 => StoredDType::F64,
        Dtype::I64 => StoredDType::I64,
        Dtype::I32 => StoredDType::I32,
        Dtype::I16 => StoredDType::I16,
        Dtype::I8 => StoredDType::I8,
        Dtype::U8 => StoredDType::U8,
        Dtype::U16 => StoredDType::U16,
        Dtype::U32 => StoredDType::U32,
        Dtype::U64 => StoredDType::U64,
        Dtype::BOOL => StoredDType::Bool,
        Dtype::F8_E4M3 => StoredDType::Other("F8_E4M3"),
        Dtype::F8_E5M2 => StoredDType::Other("F8_E5M2"),
        Dtype::F8_E8M0 => StoredDType::Other("F8_E8M0"),
        Dtype::F4 => StoredDType::Other("F4"),
        Dtype::F6_E2M3 => StoredDType::Other("F6_E2M3"),
        Dtype::F6_E3M2 => StoredDType::Other("F6_E3M2"),
        // The enum is non-exhaustive and grows between crate versions (C64, FNUZ fp8, ...).
        _ => StoredDType::Other("an unsupported safetensors dtype"),
    }
}
