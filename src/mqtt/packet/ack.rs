//! PUBACK (§3.4), PUBREC (§3.5), PUBREL (§3.6) and PUBCOMP (§3.7): one layout, one type.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Ack, ProtocolVersion, decode_reason_tail, encode_reason_tail, reason_tail_len};
use crate::mqtt::error::{DecodeError, EncodeError};
use crate::mqtt::primitives::{expect_end, read_u16};
use crate::mqtt::properties::PropertyContext;
use crate::mqtt::reason::ReasonCode;

/// Which of the four acknowledgements an `Ack` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckKind {
    /// PUBACK
    Ack,
    /// PUBREC
    Received,
    /// PUBREL
    Release,
    /// PUBCOMP
    Complete,
}

impl AckKind {
    fn context(self) -> PropertyContext {
        match self {
            AckKind::Ack => PropertyContext::PubAck,
            AckKind::Received => PropertyContext::PubRec,
            AckKind::Release => PropertyContext::PubRel,
            AckKind::Complete => PropertyContext::PubComp,
        }
    }

    /// The reason codes §3.4.2.1, §3.5.2.1, §3.6.2.1 and §3.7.2.1 list.
    fn reason_ok(self) -> fn(ReasonCode) -> bool {
        match self {
            AckKind::Ack | AckKind::Received => |rc| {
                matches!(
                    rc as u8,
                    0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
                )
            },
            AckKind::Release | AckKind::Complete => |rc| {
                matches!(
                    rc,
                    ReasonCode::Success | ReasonCode::PacketIdentifierNotFound
                )
            },
        }
    }
}

impl Ack {
    /// Decodes the body of `kind`. In v5 a Remaining Length of 2 means Success without
    /// properties and 3 means a reason code without properties (§3.4.2.1).
    pub(crate) fn decode_body(
        kind: AckKind,
        body: &mut Bytes,
        version: ProtocolVersion,
    ) -> Result<Ack, DecodeError> {
        // Packet id 0 is not rejected here: an acknowledgement for an unknown id is ignored by
        // the session, and 0 is just one more unknown id.
        let packet_id = read_u16(body)?;
        if !version.is_v5() {
            expect_end(body, kind.context().name())?;
            return Ok(Ack {
                packet_id,
                ..Ack::default()
            });
        }
        let (reason, properties) = decode_reason_tail(body, kind.context(), kind.reason_ok())?;
        Ok(Ack {
            packet_id,
            reason,
            properties,
        })
    }

    pub(crate) fn remaining_len(&self, version: ProtocolVersion) -> usize {
        if version.is_v5() {
            2 + reason_tail_len(self.reason, &self.properties)
        } else {
            2
        }
    }

    /// Writes 2 bytes when the reason is Success and there are no properties; otherwise the
    /// reason code and the Property Length (see `reason_tail_len`).
    pub(crate) fn encode_body(
        &self,
        dst: &mut BytesMut,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        dst.put_u16(self.packet_id);
        if version.is_v5() {
            encode_reason_tail(dst, self.reason, &self.properties)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::PropertyValues;
    use crate::mqtt::packet::Packet;
    use crate::mqtt::properties::Properties;
    use crate::mqtt::testutil::{decode_with, encode_with};

    const V5: ProtocolVersion = ProtocolVersion::V5;
    const V311: ProtocolVersion = ProtocolVersion::V311;

    fn ack(packet_id: u16, reason: ReasonCode) -> Ack {
        Ack {
            packet_id,
            reason,
            properties: Properties::default(),
        }
    }

    #[test]
    fn short_forms() {
        let cases: Vec<(&[u8], Packet)> = vec![
            (
                &[0x40, 0x02, 0x00, 0x01],
                Packet::PubAck(ack(1, ReasonCode::Success)),
            ),
            (
                &[0x50, 0x03, 0x00, 0x02, 0x10],
                Packet::PubRec(ack(2, ReasonCode::NoMatchingSubscribers)),
            ),
            (
                &[0x62, 0x02, 0x00, 0x03],
                Packet::PubRel(ack(3, ReasonCode::Success)),
            ),
            (
                &[0x70, 0x03, 0x00, 0x04, 0x92],
                Packet::PubComp(ack(4, ReasonCode::PacketIdentifierNotFound)),
            ),
        ];
        for (bytes, packet) in cases {
            assert_eq!(decode_with(bytes, V5).unwrap(), packet, "{bytes:02X?}");
        }
        // The encoder writes a reason code together with its (empty) Property Length.
        let pubrec = Packet::PubRec(ack(2, ReasonCode::NoMatchingSubscribers));
        assert_eq!(
            encode_with(&pubrec, V5),
            [0x50, 0x04, 0x00, 0x02, 0x10, 0x00]
        );
        let puback = Packet::PubAck(ack(1, ReasonCode::Success));
        assert_eq!(encode_with(&puback, V5), [0x40, 0x02, 0x00, 0x01]);
        // RL 3 with Success is a valid long form too.
        assert_eq!(
            decode_with(&[0x40, 0x03, 0x00, 0x01, 0x00], V5).unwrap(),
            Packet::PubAck(ack(1, ReasonCode::Success))
        );
        // RL 4 with an empty property block.
        assert_eq!(
            decode_with(&[0x40, 0x04, 0x00, 0x01, 0x87, 0x00], V5).unwrap(),
            Packet::PubAck(ack(1, ReasonCode::NotAuthorized))
        );
    }

    #[test]
    fn v5_with_reason_string() {
        let bytes: &[u8] = &[0x40, 0x08, 0x00, 0x07, 0x97, 0x04, 0x1F, 0x00, 0x01, b'q'];
        let packet = Packet::PubAck(Ack {
            packet_id: 7,
            reason: ReasonCode::QuotaExceeded,
            properties: Properties::from(PropertyValues {
                reason_string: Some("q".into()),
                ..PropertyValues::default()
            }),
        });
        assert_eq!(decode_with(bytes, V5).unwrap(), packet);
        assert_eq!(encode_with(&packet, V5), bytes);
    }

    #[test]
    fn v311_is_two_bytes() {
        for (first, packet) in [
            (0x40, Packet::PubAck(ack(0x0102, ReasonCode::Success))),
            (0x50, Packet::PubRec(ack(0x0102, ReasonCode::Success))),
            (0x62, Packet::PubRel(ack(0x0102, ReasonCode::Success))),
            (0x70, Packet::PubComp(ack(0x0102, ReasonCode::Success))),
        ] {
            let bytes = [first, 0x02, 0x01, 0x02];
            assert_eq!(decode_with(&bytes, V311).unwrap(), packet);
            assert_eq!(encode_with(&packet, V311), bytes);
        }
        // v5 fields are dropped in 3.1.1.
        let v5_only = Packet::PubAck(Ack {
            packet_id: 1,
            reason: ReasonCode::UnspecifiedError,
            properties: Properties::from(PropertyValues {
                reason_string: Some("x".into()),
                ..PropertyValues::default()
            }),
        });
        assert_eq!(encode_with(&v5_only, V311), [0x40, 0x02, 0x00, 0x01]);
    }

    #[test]
    fn errors() {
        assert!(matches!(
            decode_with(&[0x40, 0x03, 0x00, 0x01, 0x00], V311),
            Err(DecodeError::TrailingBytes("PUBACK"))
        ));
        assert!(matches!(
            decode_with(&[0x40, 0x01, 0x00], V311),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            decode_with(&[0x62, 0x03, 0x00, 0x01, 0x10], V5),
            Err(DecodeError::InvalidReasonCode {
                code: 0x10,
                packet: "PUBREL"
            })
        ));
        assert!(matches!(
            decode_with(&[0x40, 0x03, 0x00, 0x01, 0x92], V5),
            Err(DecodeError::InvalidReasonCode {
                code: 0x92,
                packet: "PUBACK"
            })
        ));
        assert!(matches!(
            decode_with(&[0x40, 0x03, 0x00, 0x01, 0x03], V5),
            Err(DecodeError::InvalidReasonCode {
                code: 0x03,
                packet: "PUBACK"
            })
        ));
        // Only Reason String and User Property may appear in a PUBREL.
        assert!(matches!(
            decode_with(&[0x62, 0x06, 0x00, 0x01, 0x00, 0x02, 0x23, 0x00], V5),
            Err(DecodeError::PropertyNotAllowed {
                id: 0x23,
                packet: "PUBREL"
            })
        ));
        assert!(matches!(
            decode_with(&[0x70, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00], V5),
            Err(DecodeError::TrailingBytes("PUBCOMP"))
        ));
        // PUBREL must have flags 0010, the others 0000.
        for bytes in [
            [0x60, 0x02, 0x00, 0x01],
            [0x63, 0x02, 0x00, 0x01],
            [0x42, 0x02, 0x00, 0x01],
        ] {
            assert!(
                matches!(
                    decode_with(&bytes, V5),
                    Err(DecodeError::InvalidHeaderFlags { .. })
                ),
                "{bytes:02X?}"
            );
        }
    }
}
