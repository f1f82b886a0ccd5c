//! The bench payload: who sent it, its place in that publisher's sequence and when it was sent,
//! padded to the requested size. Big-endian, fixed offsets, so decoding costs nothing.

use bytes::{BufMut, Bytes, BytesMut};

/// Publisher id (u32) + sequence (u64) + send timestamp (u64).
pub const HEADER_LEN: usize = 4 + 8 + 8;

/// What a subscriber reads back from a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub sequence: u64,
    /// Nanoseconds since the bench's epoch (one `Instant` shared by every task).
    pub sent_ns: u64,
}

/// Writes `stamp` followed by zero padding up to `size` bytes (at least `HEADER_LEN`).
pub fn encode(stamp: Stamp, size: usize, buf: &mut BytesMut) -> Bytes {
    let size = size.max(HEADER_LEN);
    buf.reserve(size);
    buf.put_u32(stamp.publisher);
    buf.put_u64(stamp.sequence);
    buf.put_u64(stamp.sent_ns);
    buf.put_bytes(0, size - HEADER_LEN);
    buf.split().freeze()
}

/// `None` when the payload is too short to be one of ours.
pub fn decode(payload: &[u8]) -> Option<Stamp> {
    let header: &[u8; HEADER_LEN] = payload.get(..HEADER_LEN)?.try_into().ok()?;
    let (publisher, rest) = header.split_at(4);
    let (sequence, sent_ns) = rest.split_at(8);
    Some(Stamp {
        publisher: u32::from_be_bytes(publisher.try_into().ok()?),
        sequence: u64::from_be_bytes(sequence.try_into().ok()?),
        sent_ns: u64::from_be_bytes(sent_ns.try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        publisher: 7,
        sequence: 0x0102_0304_0506_0708,
        sent_ns: u64::MAX - 1,
    };

    #[test]
    fn round_trip_with_padding() {
        let mut buf = BytesMut::new();
        let payload = encode(STAMP, 64, &mut buf);
        assert_eq!(payload.len(), 64);
        assert!(payload[HEADER_LEN..].iter().all(|&b| b == 0));
        assert_eq!(decode(&payload), Some(STAMP));
    }

    #[test]
    fn never_shorter_than_the_header() {
        let mut buf = BytesMut::new();
        let payload = encode(STAMP, 3, &mut buf);
        assert_eq!(payload.len(), HEADER_LEN);
        assert_eq!(decode(&payload), Some(STAMP));
    }

    #[test]
    fn short_or_empty_payloads_are_refused() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[0; HEADER_LEN - 1]), None);
    }

    #[test]
    fn layout_is_big_endian_at_fixed_offsets() {
        let mut buf = BytesMut::new();
        let payload = encode(STAMP, HEADER_LEN, &mut buf);
        assert_eq!(&payload[..4], &[0, 0, 0, 7]);
        assert_eq!(&payload[4..12], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
