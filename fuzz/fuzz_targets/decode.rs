//! `decode`: arbitrary bytes through `MqttCodec` (server and fixed-version codecs).
//!
//! Input layout (see README): byte 0 picks the inbound size limit, bytes 1-2 (little endian) the
//! point where the stream is split into two reads; the rest is the byte stream. Shorter inputs
//! are taken as a stream with the defaults.
//!
//! Checks, for every packet decoded:
//! - the codec took at least one byte, no more than it had, and no more than its limit;
//! - the packet re-encodes with the codec's `Encoder` in the version the decoder was in, to
//!   exactly `MqttCodec::encoded_len` bytes, and those bytes decode to an equal packet, taking
//!   all of them.
//!
//! The decoder must never panic, and after an error the stream is abandoned (as the session
//! does: it closes the connection).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqttd::mqtt::{MqttCodec, Packet, ProtocolVersion};
use tokio_util::codec::{Decoder, Encoder};

fn limit(selector: u8) -> u32 {
    match selector % 4 {
        0 => u32::MAX,
        // Exactly the largest packet the wire format can express.
        1 => 1 + 4 + 268_435_455,
        // Small limits, 0..=63, so that the size check is hit at every packet length.
        2 => u32::from(selector >> 2),
        _ => 64 + 16 * u32::from(selector >> 2),
    }
}

/// Re-encodes `packet` as a codec of `version` would, and decodes it back.
fn roundtrip(packet: &Packet, version: ProtocolVersion) {
    let mut encoder = MqttCodec::new(version, u32::MAX);
    let mut wire = BytesMut::new();
    if let Err(e) = encoder.encode(packet.clone(), &mut wire) {
        panic!("decoded packet does not re-encode in {version:?}: {e:?}\n{packet:?}");
    }
    assert_eq!(
        wire.len(),
        MqttCodec::encoded_len(packet, version),
        "encoded_len disagrees with the encoder for {packet:?}"
    );
    let encoded = wire.clone();
    let mut decoder = MqttCodec::new(version, u32::MAX);
    match decoder.decode(&mut wire) {
        Ok(Some(again)) => {
            assert_eq!(
                &again, packet,
                "re-encoded packet decodes differently in {version:?}: {encoded:02x?}"
            );
            assert!(wire.is_empty(), "re-encoded packet has trailing bytes");
        }
        other => panic!(
            "re-encoded packet does not decode in {version:?}: {other:?}\n{packet:?}\n{encoded:02x?}"
        ),
    }
}

/// Feeds `stream` to `codec` in two reads split at `split`, until it wants more input that is
/// not there or fails.
fn drive(mut codec: MqttCodec, max: u32, stream: &[u8], split: usize) {
    let mut src = BytesMut::from(&stream[..split]);
    let mut rest = &stream[split..];
    loop {
        let version_before = codec.version();
        let before = src.len();
        match codec.decode(&mut src) {
            Ok(Some(packet)) => {
                let taken = before - src.len();
                assert!(taken > 0, "a packet from no bytes");
                assert!(taken as u64 <= u64::from(max), "took {taken} > limit {max}");
                let version = match (&packet, version_before) {
                    (Packet::Connect(c), _) => c.protocol,
                    (_, Some(v)) => v,
                    (_, None) => panic!("server codec decoded {packet:?} before CONNECT"),
                };
                roundtrip(&packet, version);
            }
            Ok(None) => {
                assert_eq!(src.len(), before, "Ok(None) consumed input");
                if rest.is_empty() {
                    // The stream ended: decode_eof must not panic either.
                    let _ = codec.decode_eof(&mut src);
                    return;
                }
                src.extend_from_slice(rest);
                rest = &[];
            }
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (max, split, stream) = match data {
        [sel, lo, hi, stream @ ..] => {
            let split = usize::from(u16::from_le_bytes([*lo, *hi])) % (stream.len() + 1);
            (limit(*sel), split, stream)
        }
        _ => (u32::MAX, 0, data),
    };
    drive(MqttCodec::server(max), max, stream, split);
    for version in [
        ProtocolVersion::V5,
        ProtocolVersion::V311,
        ProtocolVersion::V31,
    ] {
        drive(MqttCodec::new(version, max), max, stream, split);
    }
});
