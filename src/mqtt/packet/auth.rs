//! AUTH (§3.15), MQTT 5 only.

use bytes::{Bytes, BytesMut};

use super::{Auth, decode_reason_tail, encode_reason_tail, reason_tail_len};
use crate::mqtt::error::{DecodeError, EncodeError};
use crate::mqtt::properties::PropertyContext;
use crate::mqtt::reason::ReasonCode;

/// The reason codes §3.15.2.1 lists for AUTH.
fn auth_reason_ok(rc: ReasonCode) -> bool {
    matches!(
        rc,
        ReasonCode::Success | ReasonCode::ContinueAuthentication | ReasonCode::ReAuthenticate
    )
}

impl Auth {
    /// Remaining Length 0 means Success without properties (§3.15.2.1). The codec refuses AUTH
    /// in 3.1.x before this is reached.
    pub(crate) fn decode_body(body: &mut Bytes) -> Result<Auth, DecodeError> {
        let (reason, properties) = decode_reason_tail(body, PropertyContext::Auth, auth_reason_ok)?;
        Ok(Auth { reason, properties })
    }

    pub(crate) fn remaining_len(&self) -> usize {
        reason_tail_len(self.reason, &self.properties)
    }

    pub(crate) fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        encode_reason_tail(dst, self.reason, &self.properties)
    }
}

#[cfg(test)]
mod tests {
    use crate::mqtt::PropertyValues;
    use bytes::Bytes;

    use super::*;
    use crate::mqtt::packet::{Packet, ProtocolVersion};
    use crate::mqtt::properties::Properties;
    use crate::mqtt::testutil::{decode_with, encode_with, try_encode_with};

    const V5: ProtocolVersion = ProtocolVersion::V5;

    #[test]
    fn auth_forms() {
        let success = Packet::Auth(Auth::default());
        assert_eq!(decode_with(&[0xF0, 0x00], V5).unwrap(), success);
        assert_eq!(encode_with(&success, V5), [0xF0, 0x00]);

        let bytes: &[u8] = &[
            0xF0, 0x0C, 0x18, 0x0A, 0x15, 0x00, 0x03, b'S', b'C', b'R', 0x16, 0x00, 0x01, 0x2A,
        ];
        let expected = Packet::Auth(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: Properties::from(PropertyValues {
                authentication_method: Some("SCR".into()),
                authentication_data: Some(Bytes::from_static(&[0x2A])),
                ..PropertyValues::default()
            }),
        });
        assert_eq!(decode_with(bytes, V5).unwrap(), expected);
        assert_eq!(encode_with(&expected, V5), bytes);
    }

    #[test]
    fn auth_errors() {
        // AUTH does not exist before MQTT 5, in either direction.
        for version in [ProtocolVersion::V311, ProtocolVersion::V31] {
            assert!(matches!(
                decode_with(&[0xF0, 0x00], version),
                Err(DecodeError::PacketNotInVersion("AUTH"))
            ));
            assert!(matches!(
                try_encode_with(&Packet::Auth(Auth::default()), version),
                Err(EncodeError::PacketNotInVersion("AUTH"))
            ));
        }
        assert!(matches!(
            decode_with(&[0xF1, 0x00], V5),
            Err(DecodeError::InvalidHeaderFlags {
                packet_type: 15,
                flags: 1
            })
        ));
        assert!(matches!(
            decode_with(&[0xF0, 0x01, 0x87], V5),
            Err(DecodeError::InvalidReasonCode {
                code: 0x87,
                packet: "AUTH"
            })
        ));
        assert!(matches!(
            decode_with(&[0xF0, 0x05, 0x18, 0x03, 0x16, 0x00, 0x00], V5),
            Err(DecodeError::AuthDataWithoutMethod)
        ));
    }
}
