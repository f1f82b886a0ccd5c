//! The data representations of §1.5: integers, Variable Byte Integers, UTF-8 strings, binary
//! data and string pairs.
//!
//! Readers take the unread rest of one packet as a `&mut Bytes`, so they can never read past its
//! Remaining Length: running out is `DecodeError::Truncated`, never a panic. Binary data is split
//! off the packet's buffer, not copied. Writers append to a `BytesMut` the caller has already
//! reserved; string and binary writers refuse lengths that do not fit the 2-byte prefix.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};

/// The largest value a Variable Byte Integer can hold (§1.5.5).
pub const MAX_VARIABLE_BYTE_INTEGER: u32 = 268_435_455;

pub fn read_u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
    if buf.is_empty() {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u8())
}

pub fn read_u16(buf: &mut Bytes) -> Result<u16, DecodeError> {
    if buf.len() < 2 {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u16())
}

pub fn read_u32(buf: &mut Bytes) -> Result<u32, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u32())
}

/// Outcome of scanning the start of a slice for a Variable Byte Integer.
#[derive(Debug, PartialEq, Eq)]
pub enum VbiScan {
    /// The value and the number of bytes it took.
    Complete(u32, usize),
    /// The slice ends inside the integer.
    Incomplete,
}

/// Scans a Variable Byte Integer at the start of `bytes` without consuming anything, so the
/// codec can look at a Remaining Length before the rest of the packet has arrived. A 4th byte
/// with the continuation bit, or a non-minimal encoding such as `80 00` [MQTT-1.5.5-1], is
/// malformed as soon as it is seen.
pub fn scan_vbi(bytes: &[u8]) -> Result<VbiScan, DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in bytes.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A zero final byte after at least one continuation byte adds nothing: non-minimal.
            if i > 0 && byte == 0 {
                return Err(DecodeError::MalformedVariableByteInteger);
            }
            return Ok(VbiScan::Complete(value, i + 1));
        }
        if i == 3 {
            return Err(DecodeError::MalformedVariableByteInteger);
        }
    }
    Ok(VbiScan::Incomplete)
}

/// Reads a Variable Byte Integer; running out of bytes inside it is `Truncated`.
pub fn read_vbi(buf: &mut Bytes) -> Result<u32, DecodeError> {
    match scan_vbi(buf)? {
        VbiScan::Complete(value, len) => {
            buf.advance(len);
            Ok(value)
        }
        VbiScan::Incomplete => Err(DecodeError::Truncated),
    }
}

/// Splits `len` bytes off the front of `buf` without copying.
pub fn read_bytes(buf: &mut Bytes, len: usize) -> Result<Bytes, DecodeError> {
    if buf.len() < len {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.split_to(len))
}

/// Binary Data (§1.5.6): a 2-byte length, then that many bytes, shared with `buf`.
pub fn read_binary(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = read_u16(buf)?;
    read_bytes(buf, usize::from(len))
}

/// UTF-8 Encoded String (§1.5.4): well-formed UTF-8 [MQTT-1.5.4-1] without U+0000
/// [MQTT-1.5.4-2]. Rust's UTF-8 check already rejects overlong forms and encoded surrogates.
/// U+FEFF is kept, as [MQTT-1.5.4-3] requires.
pub fn read_string(buf: &mut Bytes) -> Result<String, DecodeError> {
    let raw = read_binary(buf)?;
    let s = std::str::from_utf8(&raw).map_err(|_| DecodeError::InvalidUtf8)?;
    if s.contains('\0') {
        return Err(DecodeError::NullCharacter);
    }
    Ok(s.to_owned())
}

/// UTF-8 String Pair (§1.5.7): name, then value.
pub fn read_string_pair(buf: &mut Bytes) -> Result<(String, String), DecodeError> {
    let name = read_string(buf)?;
    let value = read_string(buf)?;
    Ok((name, value))
}

/// Bytes a Variable Byte Integer takes on the wire. Values above the maximum are counted as
/// 4 bytes; `write_vbi` refuses them.
pub fn vbi_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a Variable Byte Integer in its minimal form.
pub fn write_vbi(dst: &mut BytesMut, value: u32) -> Result<(), EncodeError> {
    if value > MAX_VARIABLE_BYTE_INTEGER {
        return Err(EncodeError::VariableByteIntegerTooLarge(value));
    }
    let mut rest = value;
    loop {
        // Truncation is the point: the low 7 bits go into this byte.
        let mut byte = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest > 0 {
            byte |= 0x80;
        }
        dst.put_u8(byte);
        if rest == 0 {
            return Ok(());
        }
    }
}

/// Fails with `TrailingBytes` unless every byte of the packet has been read.
pub fn expect_end(buf: &Bytes, packet: &'static str) -> Result<(), DecodeError> {
    if buf.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes(packet))
    }
}

/// Bytes a UTF-8 string takes on the wire, length prefix included.
pub fn string_len(s: &str) -> usize {
    2 + s.len()
}

/// Bytes a Binary Data field takes on the wire, length prefix included.
pub fn binary_len(b: &[u8]) -> usize {
    2 + b.len()
}

pub fn write_string(dst: &mut BytesMut, s: &str) -> Result<(), EncodeError> {
    let len = u16::try_from(s.len()).map_err(|_| EncodeError::StringTooLong(s.len()))?;
    dst.put_u16(len);
    dst.put_slice(s.as_bytes());
    Ok(())
}

pub fn write_binary(dst: &mut BytesMut, b: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(b.len()).map_err(|_| EncodeError::BinaryTooLong(b.len()))?;
    dst.put_u16(len);
    dst.put_slice(b);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(bytes: &[u8]) -> Bytes {
        Bytes::copy_from_slice(bytes)
    }

    #[test]
    fn vbi_spec_boundaries() {
        // The table in §1.5.5.
        let cases: &[(u32, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for &(value, wire) in cases {
            let mut dst = BytesMut::new();
            write_vbi(&mut dst, value).unwrap();
            assert_eq!(&dst[..], wire, "encode {value}");
            assert_eq!(vbi_len(value), wire.len());
            let mut buf = b(wire);
            assert_eq!(read_vbi(&mut buf).unwrap(), value, "decode {value}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn vbi_rejects_five_bytes_and_non_minimal() {
        assert!(matches!(
            scan_vbi(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(DecodeError::MalformedVariableByteInteger)
        ));
        for wire in [
            &[0x80, 0x00][..],
            &[0x81, 0x00],
            &[0xFF, 0x80, 0x00],
            &[0x80, 0x80, 0x80, 0x00],
        ] {
            assert!(
                matches!(
                    scan_vbi(wire),
                    Err(DecodeError::MalformedVariableByteInteger)
                ),
                "{wire:02X?}"
            );
        }
        assert_eq!(scan_vbi(&[0x80, 0x80]).unwrap(), VbiScan::Incomplete);
        assert!(matches!(
            read_vbi(&mut b(&[0x80])),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            write_vbi(&mut BytesMut::new(), MAX_VARIABLE_BYTE_INTEGER + 1),
            Err(EncodeError::VariableByteIntegerTooLarge(_))
        ));
    }

    #[test]
    fn integers_are_big_endian_and_truncation_is_an_error() {
        let mut buf = b(&[0x12, 0x34, 0xDE, 0xAD, 0xBE, 0xEF, 0x07]);
        assert_eq!(read_u16(&mut buf).unwrap(), 0x1234);
        assert_eq!(read_u32(&mut buf).unwrap(), 0xDEAD_BEEF);
        assert_eq!(read_u8(&mut buf).unwrap(), 7);
        assert!(matches!(read_u8(&mut buf), Err(DecodeError::Truncated)));
        assert!(matches!(
            read_u16(&mut b(&[1])),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            read_u32(&mut b(&[1, 2, 3])),
            Err(DecodeError::Truncated)
        ));
    }

    #[test]
    fn strings() {
        // §1.5.4 example: "A𪛔" is 41 F0 AA 9B 94.
        let mut buf = b(&[0x00, 0x05, 0x41, 0xF0, 0xAA, 0x9B, 0x94]);
        assert_eq!(read_string(&mut buf).unwrap(), "A\u{2A6D4}");
        // U+FEFF must not be stripped or rejected [MQTT-1.5.4-3].
        let mut buf = b(&[0x00, 0x04, 0xEF, 0xBB, 0xBF, 0x61]);
        assert_eq!(read_string(&mut buf).unwrap(), "\u{FEFF}a");
        assert!(matches!(
            read_string(&mut b(&[0x00, 0x01, 0x00])),
            Err(DecodeError::NullCharacter)
        ));
        for bad in [
            &[0x00, 0x03, 0xED, 0xA0, 0x80][..],
            &[0x00, 0x02, 0xC0, 0xAF],
            &[0x00, 0x01, 0xE2],
        ] {
            assert!(
                matches!(read_string(&mut b(bad)), Err(DecodeError::InvalidUtf8)),
                "{bad:02X?}"
            );
        }
        // Length prefix running past the end.
        assert!(matches!(
            read_string(&mut b(&[0x00, 0x05, 0x41])),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            read_string(&mut b(&[0x00])),
            Err(DecodeError::Truncated)
        ));

        let mut dst = BytesMut::new();
        write_string(&mut dst, "A\u{2A6D4}").unwrap();
        assert_eq!(&dst[..], &[0x00, 0x05, 0x41, 0xF0, 0xAA, 0x9B, 0x94]);
        let long = "x".repeat(65_536);
        assert!(matches!(
            write_string(&mut dst, &long),
            Err(EncodeError::StringTooLong(65_536))
        ));
        assert!(matches!(
            write_binary(&mut dst, long.as_bytes()),
            Err(EncodeError::BinaryTooLong(65_536))
        ));
    }

    #[test]
    fn binary_is_zero_copy_and_pairs_read_in_order() {
        let buf_all = b(&[0x00, 0x02, 0xAA, 0xBB, 0x00, 0x01, b'k', 0x00, 0x01, b'v']);
        let mut buf = buf_all.clone();
        let data = read_binary(&mut buf).unwrap();
        assert_eq!(&data[..], &[0xAA, 0xBB]);
        assert_eq!(data.as_ptr(), buf_all[2..].as_ptr());
        assert_eq!(
            read_string_pair(&mut buf).unwrap(),
            ("k".into(), "v".into())
        );
        assert!(buf.is_empty());
    }
}
