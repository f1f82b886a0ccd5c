//! DISCONNECT (§3.14). PINGREQ and PINGRESP have no body and are handled by the codec.

use bytes::{Bytes, BytesMut};

use super::{Disconnect, ProtocolVersion, decode_reason_tail, encode_reason_tail, reason_tail_len};
use crate::mqtt::error::{DecodeError, EncodeError};
use crate::mqtt::primitives::expect_end;
use crate::mqtt::properties::PropertyContext;
use crate::mqtt::reason::ReasonCode;

/// The reason codes §3.14.2.1 lists for DISCONNECT.
fn disconnect_reason_ok(rc: ReasonCode) -> bool {
    matches!(rc as u8, 0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2)
}

impl Disconnect {
    /// v5: Remaining Length 0 means Normal disconnection, 1 a reason code without properties.
    /// 3.1.1: no body at all.
    pub(crate) fn decode_body(
        body: &mut Bytes,
        version: ProtocolVersion,
    ) -> Result<Disconnect, DecodeError> {
        if !version.is_v5() {
            expect_end(body, "DISCONNECT")?;
            return Ok(Disconnect::default());
        }
        let (reason, properties) =
            decode_reason_tail(body, PropertyContext::Disconnect, disconnect_reason_ok)?;
        Ok(Disconnect { reason, properties })
    }

    pub(crate) fn remaining_len(&self, version: ProtocolVersion) -> usize {
        if version.is_v5() {
            reason_tail_len(self.reason, &self.properties)
        } else {
            0
        }
    }

    pub(crate) fn encode_body(
        &self,
        dst: &mut BytesMut,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
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

    #[test]
    fn disconnect_forms() {
        let normal = Packet::Disconnect(Disconnect::default());
        assert_eq!(decode_with(&[0xE0, 0x00], V5).unwrap(), normal);
        assert_eq!(encode_with(&normal, V5), [0xE0, 0x00]);
        assert_eq!(decode_with(&[0xE0, 0x00], V311).unwrap(), normal);
        assert_eq!(encode_with(&normal, V311), [0xE0, 0x00]);

        let will = Packet::Disconnect(Disconnect {
            reason: ReasonCode::DisconnectWithWillMessage,
            ..Disconnect::default()
        });
        assert_eq!(decode_with(&[0xE0, 0x01, 0x04], V5).unwrap(), will);
        // Encoded with its Property Length, which rumqttc 0.25 needs.
        assert_eq!(encode_with(&will, V5), [0xE0, 0x02, 0x04, 0x00]);
        // 3.1.1 has no reason code: it is dropped.
        assert_eq!(encode_with(&will, V311), [0xE0, 0x00]);

        let full: &[u8] = &[0xE0, 0x07, 0x8E, 0x05, 0x11, 0x00, 0x00, 0x00, 0x0A];
        let expected = Packet::Disconnect(Disconnect {
            reason: ReasonCode::SessionTakenOver,
            properties: Properties::from(PropertyValues {
                session_expiry_interval: Some(10),
                ..PropertyValues::default()
            }),
        });
        assert_eq!(decode_with(full, V5).unwrap(), expected);
        assert_eq!(encode_with(&expected, V5), full);
        // Normal disconnection with an empty property block is valid too.
        assert_eq!(decode_with(&[0xE0, 0x02, 0x00, 0x00], V5).unwrap(), normal);
    }

    #[test]
    fn disconnect_errors() {
        // bad-inputs A.12: v3 DISCONNECT with a body.
        assert!(matches!(
            decode_with(&[0xE0, 0x01, 0x00], V311),
            Err(DecodeError::TrailingBytes("DISCONNECT"))
        ));
        assert!(matches!(
            decode_with(&[0xE1, 0x00], V5),
            Err(DecodeError::InvalidHeaderFlags {
                packet_type: 14,
                flags: 1
            })
        ));
        assert!(matches!(
            decode_with(&[0xE0, 0x01, 0x84], V5),
            Err(DecodeError::InvalidReasonCode {
                code: 0x84,
                packet: "DISCONNECT"
            })
        ));
        assert!(matches!(
            decode_with(&[0xE0, 0x04, 0x00, 0x02, 0x23, 0x00], V5),
            Err(DecodeError::PropertyNotAllowed {
                id: 0x23,
                packet: "DISCONNECT"
            })
        ));
        assert!(matches!(
            decode_with(&[0xE0, 0x03, 0x00, 0x00, 0x00], V5),
            Err(DecodeError::TrailingBytes("DISCONNECT"))
        ));
    }
}
