//! `MqttCodec`: the tokio-util `Decoder`/`Encoder` that frames MQTT packets on a byte stream.
//!
//! Decoding is check-then-parse: the fixed header and Remaining Length are read first, the size
//! is checked against the limit, and only a completely buffered packet is split off and parsed.
//! Nothing is ever allocated from a length the peer declares. The frame is split off the read
//! buffer with `split_to(..).freeze()`, so payloads and binary fields are slices of it, not copies.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::error::{DecodeError, EncodeError};
use super::outbound::{Frame, OutPublish, SharedPublish};
use super::packet::ack::AckKind;
use super::packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, ProtocolVersion, Publish, SubAck, Subscribe,
    UnsubAck, Unsubscribe,
};
use super::primitives::{
    MAX_VARIABLE_BYTE_INTEGER, VbiScan, expect_end, scan_vbi, vbi_len, write_vbi,
};

/// The largest packet the wire format can express: type byte, 4-byte length, maximum body.
const MAX_WIRE_PACKET: usize = 1 + 4 + MAX_VARIABLE_BYTE_INTEGER as usize;

/// At most this much is reserved ahead while a packet is incomplete, whatever its declared size.
const RESERVE_AHEAD: usize = 8 * 1024;

/// Packets decoded from one read that mark a busy connection: its next read gets room for
/// `RESERVE_AHEAD` bytes, so a stream of small packets costs one syscall per 8 KB rather than
/// per few hundred bytes. A connection that sends a packet now and then keeps a small buffer.
const BUSY_STREAK: u8 = 4;

/// Frames MQTT packets for one connection.
///
/// A server codec (`MqttCodec::server`) starts without a protocol version: the first packet must
/// be CONNECT, and decoding it fixes the version for the rest of the connection. A codec made
/// with `MqttCodec::new` has a fixed version and decodes packets of both directions, so it also
/// serves as a client codec in tests.
#[derive(Debug, Clone)]
pub struct MqttCodec {
    version: Option<ProtocolVersion>,
    /// Largest inbound packet, fixed header included.
    max_inbound: u32,
    /// The peer's Maximum Packet Size, if it sent one.
    max_outbound: Option<u32>,
    /// Packets decoded since the buffer last ran out (see `BUSY_STREAK`).
    streak: u8,
    /// The last read held at least `BUSY_STREAK` packets.
    busy: bool,
}

impl MqttCodec {
    /// A server-side codec whose version is set by the first CONNECT. `max_packet_size` is the
    /// largest packet accepted, fixed header included (our Maximum Packet Size).
    pub fn server(max_packet_size: u32) -> Self {
        MqttCodec {
            version: None,
            max_inbound: max_packet_size,
            max_outbound: None,
            streak: 0,
            busy: false,
        }
    }

    /// A codec for a known protocol version.
    pub fn new(version: ProtocolVersion, max_packet_size: u32) -> Self {
        MqttCodec {
            version: Some(version),
            max_inbound: max_packet_size,
            max_outbound: None,
            streak: 0,
            busy: false,
        }
    }

    /// The protocol version in use; `None` on a server codec before CONNECT.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Sets the peer's Maximum Packet Size: encoding a larger packet fails with
    /// `EncodeError::PacketTooLarge` and writes nothing. `None` removes the limit.
    pub fn set_max_outbound(&mut self, max: Option<u32>) {
        self.max_outbound = max;
    }

    /// Total bytes `packet` takes on the wire in `version`, fixed header included. CONNECT is
    /// always sized in its own `protocol` version.
    pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
        let remaining = remaining_len(packet, version);
        1 + vbi_len(u32::try_from(remaining).unwrap_or(u32::MAX)) + remaining
    }
}

/// Checks the first byte of a fixed header (§2.1.2, §2.1.3) before anything else is read.
fn check_first_byte(first: u8, version: Option<ProtocolVersion>) -> Result<(), DecodeError> {
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    // CVE-2023-0809: refuse a non-CONNECT first packet before even reading its length.
    if version.is_none() && packet_type != 1 {
        return Err(DecodeError::FirstPacketNotConnect);
    }
    let expected = match packet_type {
        0 => return Err(DecodeError::ReservedPacketType(0)),
        // PUBLISH flags carry DUP/QoS/RETAIN and are checked while decoding it.
        3 => return Ok(()),
        // PUBREL, SUBSCRIBE and UNSUBSCRIBE [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1].
        6 | 8 | 10 => 0b0010,
        15 if version.is_some_and(|v| !v.is_v5()) => {
            return Err(DecodeError::PacketNotInVersion("AUTH"));
        }
        _ => 0,
    };
    if flags != expected {
        return Err(DecodeError::InvalidHeaderFlags { packet_type, flags });
    }
    Ok(())
}

/// Parses one complete packet body. `first` is the fixed header's first byte, already checked.
fn decode_packet(
    first: u8,
    body: &mut Bytes,
    version: Option<ProtocolVersion>,
) -> Result<Packet, DecodeError> {
    let packet_type = first >> 4;
    if packet_type == 1 {
        return Ok(Packet::Connect(Box::new(Connect::decode_body(body)?)));
    }
    let Some(version) = version else {
        return Err(DecodeError::FirstPacketNotConnect);
    };
    let packet = match packet_type {
        2 => Packet::ConnAck(ConnAck::decode_body(body, version)?),
        3 => Packet::Publish(Box::new(Publish::decode_body(first & 0x0F, body, version)?)),
        4 => Packet::PubAck(Ack::decode_body(AckKind::Ack, body, version)?),
        5 => Packet::PubRec(Ack::decode_body(AckKind::Received, body, version)?),
        6 => Packet::PubRel(Ack::decode_body(AckKind::Release, body, version)?),
        7 => Packet::PubComp(Ack::decode_body(AckKind::Complete, body, version)?),
        8 => Packet::Subscribe(Subscribe::decode_body(body, version)?),
        9 => Packet::SubAck(SubAck::decode_body(body, version)?),
        10 => Packet::Unsubscribe(Unsubscribe::decode_body(body, version)?),
        11 => Packet::UnsubAck(UnsubAck::decode_body(body, version)?),
        12 => {
            expect_end(body, "PINGREQ")?;
            Packet::PingReq
        }
        13 => {
            expect_end(body, "PINGRESP")?;
            Packet::PingResp
        }
        14 => Packet::Disconnect(Disconnect::decode_body(body, version)?),
        15 => Packet::Auth(Auth::decode_body(body)?),
        other => return Err(DecodeError::ReservedPacketType(other)),
    };
    Ok(packet)
}

impl MqttCodec {
    /// The buffer holds no complete packet: the next read follows.
    fn ran_out(&mut self, src: &mut BytesMut) {
        self.busy = self.streak >= BUSY_STREAK;
        if self.busy {
            src.reserve(RESERVE_AHEAD);
        }
        self.streak = 0;
    }

    /// The room a new read buffer should have for this connection, at least `min`: more for
    /// a busy one (see `BUSY_STREAK`).
    pub fn read_buffer_size(&self, min: usize) -> usize {
        if self.busy {
            min.max(RESERVE_AHEAD)
        } else {
            min
        }
    }
}

impl Decoder for MqttCodec {
    type Item = Packet;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some((&first, rest)) = src.split_first() else {
            self.ran_out(src);
            return Ok(None);
        };
        check_first_byte(first, self.version)?;
        let (remaining, len_bytes) = match scan_vbi(rest)? {
            VbiScan::Complete(value, len) => (value as usize, len),
            VbiScan::Incomplete => {
                self.ran_out(src);
                return Ok(None);
            }
        };
        let header_len = 1 + len_bytes;
        let total = header_len + remaining;
        if total > self.max_inbound as usize {
            return Err(DecodeError::PacketTooLarge {
                size: total,
                max: self.max_inbound,
            });
        }
        if src.len() < total {
            // Bounded: a peer that declares 256 MB and stalls costs us at most RESERVE_AHEAD.
            src.reserve((total - src.len()).min(RESERVE_AHEAD));
            self.ran_out(src);
            return Ok(None);
        }
        self.streak = self.streak.saturating_add(1);
        let mut body = src.split_to(total).freeze();
        body.advance(header_len);
        let packet = decode_packet(first, &mut body, self.version)?;
        if let (None, Packet::Connect(connect)) = (self.version, &packet) {
            self.version = Some(connect.protocol);
        }
        Ok(Some(packet))
    }
}

/// The fixed header's first byte for `packet`.
fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => 0x30 | p.header_flags(),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

fn remaining_len(packet: &Packet, version: ProtocolVersion) -> usize {
    match packet {
        Packet::Connect(c) => c.remaining_len(),
        Packet::ConnAck(c) => c.remaining_len(version),
        Packet::Publish(p) => p.remaining_len(version),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            a.remaining_len(version)
        }
        Packet::Subscribe(s) => s.remaining_len(version),
        Packet::SubAck(s) => s.remaining_len(version),
        Packet::Unsubscribe(u) => u.remaining_len(version),
        Packet::UnsubAck(u) => u.remaining_len(version),
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => d.remaining_len(version),
        Packet::Auth(a) => a.remaining_len(),
    }
}

fn encode_body(
    packet: &Packet,
    dst: &mut BytesMut,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(c) => c.encode_body(dst),
        Packet::ConnAck(c) => c.encode_body(dst, version),
        Packet::Publish(p) => p.encode_body(dst, version),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            a.encode_body(dst, version)
        }
        Packet::Subscribe(s) => s.encode_body(dst, version),
        Packet::SubAck(s) => s.encode_body(dst, version),
        Packet::Unsubscribe(u) => u.encode_body(dst, version),
        Packet::UnsubAck(u) => u.encode_body(dst, version),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(d) => d.encode_body(dst, version),
        Packet::Auth(a) => a.encode_body(dst),
    }
}

impl MqttCodec {
    fn encode_packet(&self, packet: &Packet, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let version = match (packet, self.version) {
            (Packet::Connect(c), _) => c.protocol,
            (_, Some(version)) => version,
            (_, None) => return Err(EncodeError::UnknownVersion),
        };
        if matches!(packet, Packet::Auth(_)) && !version.is_v5() {
            return Err(EncodeError::PacketNotInVersion("AUTH"));
        }
        let remaining = remaining_len(packet, version);
        self.write_frame(first_byte(packet), remaining, dst, |dst| {
            encode_body(packet, dst, version)
        })
    }

    fn encode_publish<M: SharedPublish>(
        &self,
        publish: &OutPublish<M>,
        dst: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let version = self.version.ok_or(EncodeError::UnknownVersion)?;
        let remaining = publish.remaining_len(version);
        self.write_frame(publish.first_byte(), remaining, dst, |dst| {
            publish.encode_body(dst, version)
        })
    }

    /// Writes a fixed header and the body `body` writes, after checking the size against the
    /// wire format and the peer's Maximum Packet Size.
    fn write_frame(
        &self,
        first: u8,
        remaining: usize,
        dst: &mut BytesMut,
        body: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        let total = 1 + vbi_len(u32::try_from(remaining).unwrap_or(u32::MAX)) + remaining;
        let remaining = u32::try_from(remaining)
            .ok()
            .filter(|&r| r <= MAX_VARIABLE_BYTE_INTEGER)
            .ok_or(EncodeError::PacketTooLarge {
                size: total,
                max: MAX_WIRE_PACKET as u32,
            })?;
        if let Some(max) = self.max_outbound
            && total > max as usize
        {
            return Err(EncodeError::PacketTooLarge { size: total, max });
        }
        dst.reserve(total);
        let start = dst.len();
        let written = (|| {
            dst.put_u8(first);
            write_vbi(dst, remaining)?;
            body(dst)
        })();
        // A field that does not fit its length prefix leaves nothing half-written behind.
        if written.is_err() {
            dst.truncate(start);
        }
        written
    }
}

impl Encoder<Packet> for MqttCodec {
    type Error = EncodeError;

    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode_packet(&packet, dst)
    }
}

impl<M: SharedPublish> Encoder<Frame<M>> for MqttCodec {
    type Error = EncodeError;

    fn encode(&mut self, item: Frame<M>, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match item {
            Frame::Packet(packet) => self.encode_packet(&packet, dst),
            Frame::Publish(publish) => self.encode_publish(&publish, dst),
            Frame::Raw(bytes) => {
                dst.extend_from_slice(&bytes);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::mqtt::packet::QoS;
    use crate::mqtt::properties::Properties;
    use crate::mqtt::testutil::{self, decode_server, decode_with, encode_with};

    const V5: ProtocolVersion = ProtocolVersion::V5;
    const V311: ProtocolVersion = ProtocolVersion::V311;

    const CONNECT_V311: &[u8] = &[
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, b'c',
    ];

    /// Decodes everything in `bytes`, stopping at the first error or incomplete packet.
    fn decode_all(codec: &mut MqttCodec, bytes: &[u8]) -> Result<Vec<Packet>, DecodeError> {
        let mut src = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(packet) = codec.decode(&mut src)? {
            out.push(packet);
        }
        Ok(out)
    }

    /// A read that held several packets makes room for a large next read; a lone packet
    /// leaves the buffer as small as it was.
    #[test]
    fn the_read_buffer_grows_only_for_a_busy_connection() {
        let ping = encode_with(&Packet::PingReq, V5);
        let mut codec = MqttCodec::new(V5, u32::MAX);
        let mut src = BytesMut::with_capacity(64);
        src.extend_from_slice(&ping);
        assert!(codec.decode(&mut src).unwrap().is_some());
        assert!(codec.decode(&mut src).unwrap().is_none());
        assert!(src.capacity() < RESERVE_AHEAD);
        for _ in 0..BUSY_STREAK {
            src.extend_from_slice(&ping);
        }
        while codec.decode(&mut src).unwrap().is_some() {}
        assert!(src.capacity() >= RESERVE_AHEAD);
    }

    #[test]
    fn first_packet_must_be_connect_and_is_refused_at_the_first_byte() {
        // CVE-2023-0809 shape: a huge declared length after a non-CONNECT type; only the first
        // byte is present and it is enough.
        for first in [0x30u8, 0x82, 0x40, 0xC0, 0xF0, 0x00, 0x20] {
            let mut src = BytesMut::from(&[first][..]);
            assert!(
                matches!(
                    MqttCodec::server(1024).decode(&mut src),
                    Err(DecodeError::FirstPacketNotConnect)
                ),
                "{first:#04x}"
            );
        }
        assert!(matches!(
            decode_server(&[0x40, 0x02, 0x00, 0x01]),
            Err(DecodeError::FirstPacketNotConnect)
        ));
    }

    #[test]
    fn server_codec_takes_the_version_of_the_connect() {
        let mut codec = MqttCodec::server(1024);
        assert_eq!(codec.version(), None);
        let mut stream = CONNECT_V311.to_vec();
        stream.extend_from_slice(&[0xE0, 0x00]);
        let packets = decode_all(&mut codec, &stream).unwrap();
        assert_eq!(packets.len(), 2);
        assert_eq!(codec.version(), Some(V311));
        // A v5-only packet is now refused, and a second CONNECT still decodes (the session
        // rejects it with 0x82).
        assert!(matches!(
            decode_all(&mut codec, &[0xF0, 0x00]),
            Err(DecodeError::PacketNotInVersion("AUTH"))
        ));
        assert!(matches!(
            decode_all(&mut codec, CONNECT_V311).unwrap()[..],
            [Packet::Connect(_)]
        ));
        assert_eq!(codec.version(), Some(V311));
    }

    #[test]
    fn malformed_remaining_length() {
        // bad-inputs A.1: a 5-byte length is refused once the 4th continuation byte is seen.
        let mut src = BytesMut::from(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF][..]);
        assert!(matches!(
            MqttCodec::server(u32::MAX).decode(&mut src),
            Err(DecodeError::MalformedVariableByteInteger)
        ));
        // A.2: non-minimal `80 00`.
        assert!(matches!(
            decode_with(&[0xC0, 0x80, 0x00], V5),
            Err(DecodeError::MalformedVariableByteInteger)
        ));
        // Incomplete length: wait.
        let mut src = BytesMut::from(&[0x10, 0xFF, 0xFF][..]);
        assert!(
            MqttCodec::server(u32::MAX)
                .decode(&mut src)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn too_large_is_refused_before_buffering() {
        // A.4 / A.5: the declared size alone decides.
        let mut src = BytesMut::from(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        assert!(matches!(
            MqttCodec::server(1024).decode(&mut src),
            Err(DecodeError::PacketTooLarge {
                size: 268_435_460,
                max: 1024
            })
        ));
        // Exactly at the limit is fine, one byte above is not.
        let publish = |payload: usize| {
            let mut v = vec![0x30, (3 + payload) as u8, 0x00, 0x01, b't'];
            v.resize(v.len() + payload, b'x');
            v
        };
        let at_limit = publish(10);
        assert_eq!(at_limit.len(), 15);
        assert!(decode_all(&mut MqttCodec::new(V5, 16), &publish(10)).is_err());
        let mut codec = MqttCodec::new(V311, 15);
        assert_eq!(decode_all(&mut codec, &at_limit).unwrap().len(), 1);
        assert!(matches!(
            decode_all(&mut codec, &publish(11)),
            Err(DecodeError::PacketTooLarge { size: 16, max: 15 })
        ));
    }

    #[test]
    fn incomplete_body_does_not_reserve_the_declared_length() {
        // A.4: a 256 MB CONNECT header, then silence.
        let mut src = BytesMut::from(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        let mut codec = MqttCodec::server(u32::MAX);
        assert!(codec.decode(&mut src).unwrap().is_none());
        assert!(
            src.capacity() <= 5 + RESERVE_AHEAD + 64,
            "capacity {}",
            src.capacity()
        );
        assert_eq!(src.len(), 5);
    }

    #[test]
    fn reserved_types_and_header_flags() {
        // A.9
        assert!(matches!(
            decode_with(&[0x00, 0x00], V5),
            Err(DecodeError::ReservedPacketType(0))
        ));
        assert!(matches!(
            decode_with(&[0xF0, 0x00], V311),
            Err(DecodeError::PacketNotInVersion("AUTH"))
        ));
        // A.10
        for first in [0x11u8, 0x12, 0x14, 0x18] {
            assert!(matches!(
                MqttCodec::server(1024).decode(&mut BytesMut::from(&[first][..])),
                Err(DecodeError::InvalidHeaderFlags { packet_type: 1, .. })
            ));
        }
        for first in [
            0x63u8, 0x83, 0x80, 0xA3, 0xA0, 0xC1, 0xD1, 0xE1, 0xF1, 0x21, 0x41, 0x51, 0x71, 0x91,
            0xB1,
        ] {
            assert!(
                matches!(
                    MqttCodec::new(V5, 1024).decode(&mut BytesMut::from(&[first][..])),
                    Err(DecodeError::InvalidHeaderFlags { .. })
                ),
                "{first:#04x}"
            );
        }
    }

    #[test]
    fn eof_inside_a_packet_is_an_io_error() {
        let mut src = BytesMut::from(&CONNECT_V311[..5]);
        assert!(matches!(
            MqttCodec::server(1024).decode_eof(&mut src),
            Err(DecodeError::Io(_))
        ));
    }

    #[test]
    fn pings() {
        for version in [V5, V311] {
            assert_eq!(
                decode_with(&[0xC0, 0x00], version).unwrap(),
                Packet::PingReq
            );
            assert_eq!(
                decode_with(&[0xD0, 0x00], version).unwrap(),
                Packet::PingResp
            );
            assert_eq!(encode_with(&Packet::PingReq, version), [0xC0, 0x00]);
            assert_eq!(encode_with(&Packet::PingResp, version), [0xD0, 0x00]);
        }
        // A.12
        assert!(matches!(
            decode_with(&[0xC0, 0x01, 0x00], V5),
            Err(DecodeError::TrailingBytes("PINGREQ"))
        ));
        assert!(matches!(
            decode_with(&[0xD0, 0x01, 0x00], V311),
            Err(DecodeError::TrailingBytes("PINGRESP"))
        ));
    }

    #[test]
    fn coalesced_packets_decode_in_order() {
        // A.8: 50 packets in one segment.
        let mut stream = CONNECT_V311.to_vec();
        for _ in 0..50 {
            stream.extend_from_slice(&[0xC0, 0x00]);
        }
        let packets = decode_all(&mut MqttCodec::server(1024), &stream).unwrap();
        assert_eq!(packets.len(), 51);
        assert!(packets[1..].iter().all(|p| *p == Packet::PingReq));
    }

    #[test]
    fn encode_limits_write_nothing() {
        let publish = Packet::Publish(Box::new(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::from_static(&[0; 100]),
        }));
        let mut codec = MqttCodec::new(V5, 1024);
        codec.set_max_outbound(Some(105));
        let mut dst = BytesMut::from(&b"prior"[..]);
        assert!(matches!(
            codec.encode(publish.clone(), &mut dst),
            Err(EncodeError::PacketTooLarge {
                size: 106,
                max: 105
            })
        ));
        assert_eq!(&dst[..], b"prior");
        codec.set_max_outbound(Some(106));
        codec.encode(publish, &mut dst).unwrap();
        assert_eq!(dst.len(), 5 + 106);

        // A string too long for its prefix, found mid-write: the partial packet is removed.
        codec.set_max_outbound(None);
        let mut dst = BytesMut::from(&b"prior"[..]);
        let long = Packet::Unsubscribe(Unsubscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec!["a".into(), "x".repeat(70_000)],
        });
        assert!(matches!(
            codec.encode(long, &mut dst),
            Err(EncodeError::StringTooLong(70_000))
        ));
        assert_eq!(&dst[..], b"prior");

        // Nothing but CONNECT can be encoded before the version is known.
        let mut server = MqttCodec::server(1024);
        assert!(matches!(
            server.encode(Packet::PingResp, &mut dst),
            Err(EncodeError::UnknownVersion)
        ));
    }

    #[test]
    fn payload_is_a_slice_of_the_read_buffer() {
        let mut src = BytesMut::from(&[0x30, 0x06, 0x00, 0x01, b't', b'a', b'b', b'c'][..]);
        let start = src.as_ptr() as usize;
        let Some(Packet::Publish(p)) = MqttCodec::new(V311, 1024).decode(&mut src).unwrap() else {
            panic!("not a publish")
        };
        assert_eq!(p.payload.as_ptr() as usize, start + 5);
    }

    macro_rules! roundtrip {
        ($($name:ident: $strategy:expr, $version:expr;)*) => {
            proptest! {
                #![proptest_config(ProptestConfig::with_cases(64))]
                $(
                    #[test]
                    fn $name(packet in $strategy) {
                        let bytes = encode_with(&packet, $version);
                        prop_assert_eq!(decode_with(&bytes, $version).unwrap(), packet);
                    }
                )*
            }
        };
    }

    roundtrip! {
        roundtrip_connect_v5: testutil::connect(V5), V5;
        roundtrip_connect_v311: testutil::connect(V311), V311;
        roundtrip_connect_v31: testutil::connect(ProtocolVersion::V31), ProtocolVersion::V31;
        roundtrip_connack_v5: testutil::connack(V5), V5;
        roundtrip_connack_v311: testutil::connack(V311), V311;
        roundtrip_publish_v5: testutil::publish(V5), V5;
        roundtrip_publish_v311: testutil::publish(V311), V311;
        roundtrip_puback_v5: testutil::puback(V5), V5;
        roundtrip_puback_v311: testutil::puback(V311), V311;
        roundtrip_pubrec_v5: testutil::pubrec(V5), V5;
        roundtrip_pubrec_v311: testutil::pubrec(V311), V311;
        roundtrip_pubrel_v5: testutil::pubrel(V5), V5;
        roundtrip_pubrel_v311: testutil::pubrel(V311), V311;
        roundtrip_pubcomp_v5: testutil::pubcomp(V5), V5;
        roundtrip_pubcomp_v311: testutil::pubcomp(V311), V311;
        roundtrip_subscribe_v5: testutil::subscribe(V5), V5;
        roundtrip_subscribe_v311: testutil::subscribe(V311), V311;
        roundtrip_suback_v5: testutil::suback(V5), V5;
        roundtrip_suback_v311: testutil::suback(V311), V311;
        roundtrip_unsubscribe_v5: testutil::unsubscribe(V5), V5;
        roundtrip_unsubscribe_v311: testutil::unsubscribe(V311), V311;
        roundtrip_unsuback_v5: testutil::unsuback(V5), V5;
        roundtrip_unsuback_v311: testutil::unsuback(V311), V311;
        roundtrip_pingreq_v5: Just(Packet::PingReq), V5;
        roundtrip_pingreq_v311: Just(Packet::PingReq), V311;
        roundtrip_pingresp_v5: Just(Packet::PingResp), V5;
        roundtrip_pingresp_v311: Just(Packet::PingResp), V311;
        roundtrip_disconnect_v5: testutil::disconnect(V5), V5;
        roundtrip_disconnect_v311: testutil::disconnect(V311), V311;
        roundtrip_auth_v5: testutil::auth(), V5;
    }

    fn version() -> impl Strategy<Value = ProtocolVersion> {
        prop_oneof![Just(V5), Just(V311), Just(ProtocolVersion::V31)]
    }

    /// A CONNECT of `version` followed by any packets of that version, as one byte stream.
    fn session_stream() -> impl Strategy<Value = (Vec<Packet>, Vec<u8>)> {
        version()
            .prop_flat_map(|v| {
                (
                    testutil::connect(v),
                    vec(testutil::packet(v), 0..8),
                    Just(v),
                )
            })
            .prop_map(|(connect, rest, v)| {
                let packets: Vec<Packet> = std::iter::once(connect).chain(rest).collect();
                let mut codec = MqttCodec::new(v, u32::MAX);
                let mut dst = BytesMut::new();
                for p in &packets {
                    codec.encode(p.clone(), &mut dst).unwrap();
                }
                (packets, dst.to_vec())
            })
    }

    /// Decodes until the buffer runs dry or an error; must never panic.
    fn drain(codec: &mut MqttCodec, bytes: &[u8]) {
        let mut src = BytesMut::from(bytes);
        while let Ok(Some(_)) = codec.decode(&mut src) {}
    }

    proptest! {
        /// A.8: delivering a valid stream one byte at a time gives the same packets, with
        /// `Ok(None)` until each one is complete.
        #[test]
        fn byte_at_a_time_equals_whole((packets, bytes) in session_stream()) {
            let version = match &packets[0] {
                Packet::Connect(c) => c.protocol,
                other => panic!("stream starts with {other:?}"),
            };
            // Where each packet ends in the stream.
            let ends: Vec<usize> = packets
                .iter()
                .scan(0, |end, p| {
                    *end += MqttCodec::encoded_len(p, version);
                    Some(*end)
                })
                .collect();
            let mut codec = MqttCodec::server(u32::MAX);
            let mut src = BytesMut::new();
            let mut decoded = Vec::new();
            for (fed, &b) in bytes.iter().enumerate() {
                src.extend_from_slice(&[b]);
                if let Some(p) = codec.decode(&mut src).unwrap() {
                    prop_assert_eq!(fed + 1, ends[decoded.len()], "packet completed early");
                    decoded.push(p);
                }
            }
            prop_assert!(src.is_empty());
            prop_assert_eq!(&decoded, &packets);
            let mut whole = MqttCodec::server(u32::MAX);
            prop_assert_eq!(decode_all(&mut whole, &bytes).unwrap(), packets);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), v in version()) {
            drain(&mut MqttCodec::server(4096), &bytes);
            drain(&mut MqttCodec::new(v, 4096), &bytes);
        }

        /// Random bytes rarely get past the fixed header; corrupting valid packets reaches the
        /// field parsers.
        #[test]
        fn corrupted_packets_never_panic(
            (_, bytes) in session_stream(),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = bytes;
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            drain(&mut MqttCodec::server(u32::MAX), &bytes);
            drain(&mut MqttCodec::new(V5, u32::MAX), &bytes);
            drain(&mut MqttCodec::new(V311, u32::MAX), &bytes);
        }
    }
}
