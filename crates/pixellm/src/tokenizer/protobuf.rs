//! A minimal, bounds-checked protobuf wire-format reader.
//!
//! Only what `tokenizer.model` needs: walk the fields of one message, hand back
//! varints, fixed-width values and length-delimited payloads, and skip the rest.
//! Every read is checked against the buffer, so arbitrary bytes produce an error
//! message and never a panic or an out-of-bounds slice.

/// One field value as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2: a nested message, a string, bytes or a packed array.
    Bytes(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
}

impl Value<'_> {
    fn wire_name(&self) -> &'static str {
        match self {
            Value::Varint(_) => "varint",
            Value::Fixed64(_) => "fixed64",
            Value::Bytes(_) => "length-delimited",
            Value::Fixed32(_) => "fixed32",
        }
    }
}

/// Iterates over the `(field number, value)` pairs of one message.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading a message that spans all of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(format!("truncated varint at byte {}", self.pos));
            };
            self.pos += 1;
            // The 10th byte may only carry the single top bit of a u64.
            if i == 9 && byte > 1 {
                return Err(format!("varint overflows 64 bits at byte {}", self.pos - 1));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let remaining = self.buf.len() - self.pos;
        if n > remaining as u64 {
            return Err(format!(
                "field of {n} bytes at byte {} runs past the end ({remaining} bytes left)",
                self.pos
            ));
        }
        let n = n as usize;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// The next field, `Ok(None)` at the end of the message.
    pub(crate) fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(format!("invalid field number {field} at byte {at}"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Value::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
            }
            // Groups (3, 4) are deprecated and never used by sentencepiece; 6 and 7 do not exist.
            w => return Err(format!("unsupported wire type {w} at byte {at}")),
        };
        Ok(Some((field as u32, value)))
    }
}

/// Typed accessors that reject a known field sent with the wrong wire type,
/// which is the usual sign that the bytes are not the expected message at all.
pub(crate) fn expect_varint(field: u32, v: Value<'_>) -> Result<u64, String> {
    match v {
        Value::Varint(x) => Ok(x),
        other => Err(format!(
            "field {field} should be a varint, found {}",
            other.wire_name()
        )),
    }
}

/// See [`expect_varint`].
pub(crate) fn expect_bytes<'a>(field: u32, v: Value<'a>) -> Result<&'a [u8], String> {
    match v {
        Value::Bytes(x) => Ok(x),
        other => Err(format!(
            "field {field} should be length-delimited, found {}",
            other.wire_name()
        )),
    }
}

/// See [`expect_varint`]; decodes a protobuf `float`.
pub(crate) fn expect_f32(field: u32, v: Value<'_>) -> Result<f32, String> {
    match v {
        Value::Fixed32(x) => Ok(f32::from_bits(x)),
        other => Err(format!(
            "field {field} should be a fixed32 float, found {}",
            other.wire_name()
        )),
    }
}

/// See [`expect_varint`]; decodes a protobuf `string` (must be UTF-8).
pub(crate) fn expect_string(field: u32, v: Value<'_>) -> Result<String, String> {
    let b = expect_bytes(field, v)?;
    String::from_utf8(b.to_vec()).map_err(|_| format!("field {field} is not valid UTF-8"))
}

/// Protobuf `int32` is sent as a sign-extended varint; keep the low 32 bits.
pub(crate) fn as_i32(v: u64) -> i32 {
    v as u32 as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_all_wire_types() {
        // field 1 varint 150, field 2 string "hi", field 3 fixed32 1.0f, field 4 fixed64 7
        let mut buf = vec![0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x1d];
        buf.extend_from_slice(&1.0f32.to_le_bytes());
        buf.push(0x21);
        buf.extend_from_slice(&7u64.to_le_bytes());
        let mut r = Reader::new(&buf);
        assert_eq!(r.next_field().unwrap(), Some((1, Value::Varint(150))));
        assert_eq!(r.next_field().unwrap(), Some((2, Value::Bytes(b"hi"))));
        assert_eq!(
            r.next_field().unwrap(),
            Some((3, Value::Fixed32(1.0f32.to_bits())))
        );
        assert_eq!(r.next_field().unwrap(), Some((4, Value::Fixed64(7))));
        assert_eq!(r.next_field().unwrap(), None);
    }

    #[test]
    fn negative_int32_round_trips() {
        // -1 as int32 is a 10-byte varint.
        let buf = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        let mut r = Reader::new(&buf);
        let (_, v) = r.next_field().unwrap().unwrap();
        assert_eq!(as_i32(expect_varint(1, v).unwrap()), -1);
    }

    #[test]
    fn rejects_truncation_and_bad_wire_types() {
        assert!(Reader::new(&[0x12, 0x05, b'a']).next_field().is_err());
        assert!(Reader::new(&[0x08, 0x80]).next_field().is_err());
        assert!(Reader::new(&[0x0b]).next_field().is_err()); // group start
        assert!(Reader::new(&[0x00]).next_field().is_err()); // field 0
        let eleven = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(Reader::new(&eleven).next_field().is_err());
        // Huge declared length must not overflow the bounds arithmetic.
        let huge = [
            0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(Reader::new(&huge).next_field().is_err());
    }
}
