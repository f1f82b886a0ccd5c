//! CONNECT (§3.1) with its Will, and CONNACK (§3.2).

use bytes::{BufMut, Bytes, BytesMut};

use super::{ConnAck, Connect, ProtocolVersion, QoS, Will, read_reason};
use crate::mqtt::error::{DecodeError, EncodeError};
use crate::mqtt::primitives::{
    binary_len, expect_end, read_binary, read_string, read_u8, read_u16, string_len, write_binary,
    write_string,
};
use crate::mqtt::properties::{Properties, PropertyContext};
use crate::mqtt::reason::ReasonCode;

const NAME_MQTT: &[u8] = b"MQTT";
const NAME_MQISDP: &[u8] = b"MQIsdp";

// Connect Flags (§3.1.2.3).
const RESERVED: u8 = 0x01;
const CLEAN_START: u8 = 0x02;
const WILL_FLAG: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_QOS_MASK: u8 = 0x18;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD_FLAG: u8 = 0x40;
const USERNAME_FLAG: u8 = 0x80;

fn protocol_name(version: ProtocolVersion) -> &'static [u8] {
    match version {
        ProtocolVersion::V31 => NAME_MQISDP,
        ProtocolVersion::V311 | ProtocolVersion::V5 => NAME_MQTT,
    }
}

impl Connect {
    /// Decodes a CONNECT body. Errors found after the protocol level was read come wrapped in
    /// `InConnect`, so the session can answer with a CONNACK in the client's format.
    pub(crate) fn decode_body(body: &mut Bytes) -> Result<Connect, DecodeError> {
        // Compared as bytes: a name that is not valid UTF-8 is simply not "MQTT".
        let name = read_binary(body)?;
        let level = read_u8(body)?;
        let version = match (&name[..], level) {
            (NAME_MQTT, 4) => ProtocolVersion::V311,
            (NAME_MQTT, 5) => ProtocolVersion::V5,
            (NAME_MQISDP, 3) => ProtocolVersion::V31,
            (NAME_MQTT | NAME_MQISDP, 3..=5) => return Err(DecodeError::InvalidProtocolName),
            (NAME_MQTT | NAME_MQISDP, _) => {
                // Answered in v5 format, as Mosquitto does: a v3 client still sees a failure.
                return Err(DecodeError::InConnect {
                    version: ProtocolVersion::V5,
                    source: Box::new(DecodeError::UnsupportedProtocolVersion(level)),
                });
            }
            _ => return Err(DecodeError::InvalidProtocolName),
        };
        Self::decode_after_level(body, version).map_err(|e| DecodeError::InConnect {
            version,
            source: Box::new(e),
        })
    }

    fn decode_after_level(
        body: &mut Bytes,
        protocol: ProtocolVersion,
    ) -> Result<Connect, DecodeError> {
        let flags = read_u8(body)?;
        if flags & RESERVED != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let has_will = flags & WILL_FLAG != 0;
        let will_qos_bits = (flags & WILL_QOS_MASK) >> WILL_QOS_SHIFT;
        let will_retain = flags & WILL_RETAIN != 0;
        if !has_will && (will_qos_bits != 0 || will_retain) {
            return Err(DecodeError::WillFlagsWithoutWill);
        }
        let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::InvalidQoS)?;
        let has_username = flags & USERNAME_FLAG != 0;
        let has_password = flags & PASSWORD_FLAG != 0;
        // 3.1.1 [MQTT-3.1.2-22]; MQTT 5 allows a password alone.
        if has_password && !has_username && !protocol.is_v5() {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let keep_alive = read_u16(body)?;
        let properties = if protocol.is_v5() {
            Properties::decode(body, PropertyContext::Connect)?
        } else {
            Properties::default()
        };
        let client_id = read_string(body)?;
        let will = if has_will {
            let properties = if protocol.is_v5() {
                Properties::decode(body, PropertyContext::Will)?
            } else {
                Properties::default()
            };
            let topic = read_string(body)?;
            let payload = read_binary(body)?;
            Some(Will {
                qos: will_qos,
                retain: will_retain,
                properties,
                topic,
                payload,
            })
        } else {
            None
        };
        let username = has_username.then(|| read_string(body)).transpose()?;
        let password = has_password.then(|| read_binary(body)).transpose()?;
        expect_end(body, "CONNECT")?;
        Ok(Connect {
            protocol,
            clean_start: flags & CLEAN_START != 0,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    /// Remaining Length of this CONNECT, in its own protocol version.
    pub(crate) fn remaining_len(&self) -> usize {
        let v5 = self.protocol.is_v5();
        let props = |p: &Properties| if v5 { p.encoded_len() } else { 0 };
        2 + protocol_name(self.protocol).len()
            + 1 // level
            + 1 // flags
            + 2 // keep alive
            + props(&self.properties)
            + string_len(&self.client_id)
            + self.will.as_ref().map_or(0, |w| {
                props(&w.properties) + string_len(&w.topic) + binary_len(&w.payload)
            })
            + self.username.as_deref().map_or(0, string_len)
            + self.password.as_deref().map_or(0, binary_len)
    }

    pub(crate) fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let v5 = self.protocol.is_v5();
        write_binary(dst, protocol_name(self.protocol))?;
        dst.put_u8(self.protocol as u8);
        let mut flags = 0;
        if self.clean_start {
            flags |= CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= WILL_FLAG | ((will.qos as u8) << WILL_QOS_SHIFT);
            if will.retain {
                flags |= WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= USERNAME_FLAG;
        }
        if self.password.is_some() {
            flags |= PASSWORD_FLAG;
        }
        dst.put_u8(flags);
        dst.put_u16(self.keep_alive);
        if v5 {
            self.properties.encode(dst)?;
        }
        write_string(dst, &self.client_id)?;
        if let Some(will) = &self.will {
            if v5 {
                will.properties.encode(dst)?;
            }
            write_string(dst, &will.topic)?;
            write_binary(dst, &will.payload)?;
        }
        if let Some(username) = &self.username {
            write_string(dst, username)?;
        }
        if let Some(password) = &self.password {
            write_binary(dst, password)?;
        }
        Ok(())
    }
}

/// The reason codes §3.2.2.2 lists for CONNACK.
fn connack_reason_ok(rc: ReasonCode) -> bool {
    rc == ReasonCode::Success
        || matches!(rc as u8, 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F)
}

impl ConnAck {
    pub(crate) fn decode_body(
        body: &mut Bytes,
        version: ProtocolVersion,
    ) -> Result<ConnAck, DecodeError> {
        let flags = read_u8(body)?;
        if flags & 0xFE != 0 {
            return Err(DecodeError::ConnAckReservedFlags);
        }
        let (reason, properties) = if version.is_v5() {
            let reason = read_reason(body, "CONNACK", connack_reason_ok)?;
            (reason, Properties::decode(body, PropertyContext::ConnAck)?)
        } else {
            let code = read_u8(body)?;
            let reason =
                ReasonCode::from_v3_connack(code).ok_or(DecodeError::InvalidReasonCode {
                    code,
                    packet: "CONNACK",
                })?;
            (reason, Properties::default())
        };
        expect_end(body, "CONNACK")?;
        Ok(ConnAck {
            session_present: flags & 1 != 0,
            reason,
            properties,
        })
    }

    pub(crate) fn remaining_len(&self, version: ProtocolVersion) -> usize {
        2 + if version.is_v5() {
            self.properties.encoded_len()
        } else {
            0
        }
    }

    pub(crate) fn encode_body(
        &self,
        dst: &mut BytesMut,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        dst.put_u8(u8::from(self.session_present));
        if version.is_v5() {
            dst.put_u8(self.reason as u8);
            self.properties.encode(dst)?;
        } else {
            dst.put_u8(self.reason.to_v3_connack());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::mqtt::PropertyValues;
    use bytes::Bytes;

    use super::*;
    use crate::mqtt::packet::Packet;
    use crate::mqtt::testutil::{decode_server, decode_with, encode_with};

    const V5: ProtocolVersion = ProtocolVersion::V5;
    const V311: ProtocolVersion = ProtocolVersion::V311;

    fn minimal(protocol: ProtocolVersion) -> Connect {
        Connect {
            protocol,
            clean_start: true,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: "c".into(),
            will: None,
            username: None,
            password: None,
        }
    }

    /// Unwraps `InConnect`, checking the version it carries.
    fn in_connect(bytes: &[u8], version: ProtocolVersion) -> DecodeError {
        match decode_server(bytes) {
            Err(DecodeError::InConnect { version: v, source }) => {
                assert_eq!(v, version, "{bytes:02X?}");
                *source
            }
            other => panic!("expected InConnect for {bytes:02X?}, got {other:?}"),
        }
    }

    #[test]
    fn v311_connect_with_everything() {
        let bytes: &[u8] = &[
            0x10, 0x23, // fixed header, RL 35
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, // protocol
            0xF6, // username, password, will retain, will QoS 2, will, clean session
            0x00, 0x3C, // keep alive 60
            0x00, 0x03, b'c', b'i', b'd', // client id
            0x00, 0x03, b'w', b'/', b't', // will topic
            0x00, 0x02, b'h', b'i', // will payload
            0x00, 0x04, b'u', b's', b'e', b'r', // username
            0x00, 0x03, b'p', b'w', b'd', // password
        ];
        let expected = Connect {
            protocol: V311,
            clean_start: true,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: "cid".into(),
            will: Some(Will {
                qos: QoS::ExactlyOnce,
                retain: true,
                properties: Properties::default(),
                topic: "w/t".into(),
                payload: Bytes::from_static(b"hi"),
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"pwd")),
        };
        assert_eq!(
            decode_server(bytes).unwrap(),
            Packet::Connect(Box::new(expected.clone()))
        );
        assert_eq!(
            encode_with(&Packet::Connect(Box::new(expected)), V311),
            bytes
        );
    }

    #[test]
    fn v31_connect_uses_mqisdp() {
        let bytes: &[u8] = &[
            0x10, 0x11, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x0A,
            0x00, 0x03, b'a', b'b', b'c',
        ];
        let expected = Connect {
            keep_alive: 10,
            client_id: "abc".into(),
            ..minimal(ProtocolVersion::V31)
        };
        assert_eq!(
            decode_server(bytes).unwrap(),
            Packet::Connect(Box::new(expected.clone()))
        );
        assert_eq!(
            encode_with(&Packet::Connect(Box::new(expected)), V311),
            bytes
        );
    }

    #[test]
    fn v5_connect_with_properties_and_will_properties() {
        let bytes: &[u8] = &[
            0x10, 0x27, // RL 39
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // protocol
            0xCE, // username, password, will QoS 1, will, clean start
            0x00, 0x0A, // keep alive
            0x08, // properties length
            0x11, 0x00, 0x00, 0x00, 0x78, // session expiry 120
            0x21, 0x00, 0x0A, // receive maximum 10
            0x00, 0x00, // empty client id
            0x05, 0x18, 0x00, 0x00, 0x00, 0x05, // will delay 5
            0x00, 0x01, b't', // will topic
            0x00, 0x00, // empty will payload
            0x00, 0x01, b'u', // username
            0x00, 0x02, 0x00, 0xFF, // binary password
        ];
        let expected = Connect {
            protocol: V5,
            clean_start: true,
            keep_alive: 10,
            properties: Properties::from(PropertyValues {
                session_expiry_interval: Some(120),
                receive_maximum: Some(10),
                ..PropertyValues::default()
            }),
            client_id: String::new(),
            will: Some(Will {
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties::from(PropertyValues {
                    will_delay_interval: Some(5),
                    ..PropertyValues::default()
                }),
                topic: "t".into(),
                payload: Bytes::new(),
            }),
            username: Some("u".into()),
            password: Some(Bytes::from_static(&[0x00, 0xFF])),
        };
        assert_eq!(
            decode_server(bytes).unwrap(),
            Packet::Connect(Box::new(expected.clone()))
        );
        assert_eq!(encode_with(&Packet::Connect(Box::new(expected)), V5), bytes);
    }

    #[test]
    fn v5_allows_password_without_username() {
        let bytes: &[u8] = &[
            0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x42, 0x00, 0x00, 0x00, 0x00,
            0x01, b'c', 0x00, 0x01, b'p',
        ];
        let Packet::Connect(c) = decode_server(bytes).unwrap() else {
            panic!()
        };
        assert_eq!(c.username, None);
        assert_eq!(c.password.as_deref(), Some(&b"p"[..]));
    }

    #[test]
    fn protocol_name_and_level_errors() {
        // Name errors are not wrapped: the server just closes.
        for bytes in [
            &[
                0x10, 0x0C, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x05, 0x02, 0x00, 0x00,
            ][..],
            &[
                0x10, 0x0A, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x03, 0x02, 0x00, 0x00,
            ],
            &[
                0x10, 0x09, 0x00, 0x03, b'M', b'Q', b'T', 0x04, 0x02, 0x00, 0x00,
            ],
            &[0x10, 0x06, 0x00, 0x00, 0x04, 0x02, 0x00, 0x00],
            &[
                0x10, 0x0A, 0x00, 0x04, b'm', b'q', b't', b't', 0x04, 0x02, 0x00, 0x00,
            ],
        ] {
            assert!(
                matches!(decode_server(bytes), Err(DecodeError::InvalidProtocolName)),
                "{bytes:02X?}"
            );
        }
        for level in [2u8, 6, 0, 0xFF] {
            let bytes = [
                0x10, 0x0A, 0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0x02, 0x00, 0x00,
            ];
            assert!(
                matches!(in_connect(&bytes, V5), DecodeError::UnsupportedProtocolVersion(l) if l == level)
            );
        }
        // Truncated before the level: nothing known yet, not wrapped.
        assert!(matches!(
            decode_server(&[0x10, 0x06, 0x00, 0x04, b'M', b'Q', b'T', b'T']),
            Err(DecodeError::Truncated)
        ));
    }

    #[test]
    fn connect_flag_errors() {
        let with_flags = |level: u8, flags: u8| {
            vec![
                0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', level, flags, 0x00, 0x00, 0x00,
                0x00, 0x00,
            ]
        };
        assert!(matches!(
            in_connect(&with_flags(5, 0x03), V5),
            DecodeError::ConnectReservedFlag
        ));
        assert!(matches!(
            in_connect(&with_flags(4, 0x01), V311),
            DecodeError::ConnectReservedFlag
        ));
        assert!(matches!(
            in_connect(&with_flags(5, 0x0A), V5),
            DecodeError::WillFlagsWithoutWill
        ));
        assert!(matches!(
            in_connect(&with_flags(5, 0x22), V5),
            DecodeError::WillFlagsWithoutWill
        ));
        assert!(matches!(
            in_connect(&with_flags(4, 0x1E), V311),
            DecodeError::InvalidQoS
        ));
        assert!(matches!(
            in_connect(&with_flags(4, 0x42), V311),
            DecodeError::PasswordWithoutUsername
        ));
    }

    #[test]
    fn connect_fields_must_match_flags() {
        // Will flag set but the packet ends after the client id [MQTT-3.1.2-9].
        let missing_will = [
            0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x06, 0x00, 0x00, 0x00, 0x01,
            b'c',
        ];
        assert!(matches!(
            in_connect(&missing_will, V311),
            DecodeError::Truncated
        ));
        // Username present without the flag.
        let extra = [
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x01,
            b'c', 0x00, 0x01, b'u',
        ];
        assert!(matches!(
            in_connect(&extra, V311),
            DecodeError::TrailingBytes("CONNECT")
        ));
        // RL shorter than the fields inside (bad-inputs A.6): the client id runs past RL.
        let short = [
            0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x0B,
            b'a', b'b',
        ];
        assert!(matches!(in_connect(&short, V311), DecodeError::Truncated));
        // Ill-formed UTF-8 and U+0000 in the client id.
        let bad_utf8 = [
            0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x02,
            0xC0, 0xAF,
        ];
        assert!(matches!(
            in_connect(&bad_utf8, V311),
            DecodeError::InvalidUtf8
        ));
        let nul = [
            0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00, 0x00, 0x00,
            0x01, 0x00,
        ];
        assert!(matches!(in_connect(&nul, V5), DecodeError::NullCharacter));
    }

    #[test]
    fn connect_property_errors_are_wrapped() {
        let connect_v5 = |props: &[u8]| {
            let mut v = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00];
            v.push(props.len() as u8);
            v.extend_from_slice(props);
            v.extend_from_slice(&[0x00, 0x00]);
            let mut packet = vec![0x10, v.len() as u8];
            packet.extend(v);
            packet
        };
        // Topic Alias (0x23) is not a CONNECT property.
        assert!(matches!(
            in_connect(&connect_v5(&[0x23, 0x00, 0x01]), V5),
            DecodeError::PropertyNotAllowed {
                id: 0x23,
                packet: "CONNECT"
            }
        ));
        assert!(matches!(
            in_connect(&connect_v5(&[0x21, 0x00, 0x05, 0x21, 0x00, 0x05]), V5),
            DecodeError::DuplicateProperty(0x21)
        ));
        assert!(matches!(
            in_connect(&connect_v5(&[0x21, 0x00, 0x00]), V5),
            DecodeError::InvalidPropertyValue { id: 0x21, value: 0 }
        ));
        assert!(matches!(
            in_connect(&connect_v5(&[0x16, 0x00, 0x01, 0xAA]), V5),
            DecodeError::AuthDataWithoutMethod
        ));
        // Request Problem Information in the Will (CVE-2023-3592 shape).
        let will = [
            0x10, 0x14, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x02, 0x17, 0x01, 0x00, 0x00, 0x00, 0x00,
        ];
        assert!(matches!(
            in_connect(&will, V5),
            DecodeError::PropertyNotAllowed {
                id: 0x17,
                packet: "Will Properties"
            }
        ));
    }

    #[test]
    fn connack_v5_and_v311() {
        let v5: &[u8] = &[0x20, 0x07, 0x01, 0x00, 0x04, 0x24, 0x01, 0x25, 0x00];
        let expected = ConnAck {
            session_present: true,
            reason: ReasonCode::Success,
            properties: Properties::from(PropertyValues {
                maximum_qos: Some(1),
                retain_available: Some(0),
                ..PropertyValues::default()
            }),
        };
        assert_eq!(
            decode_with(v5, V5).unwrap(),
            Packet::ConnAck(expected.clone())
        );
        assert_eq!(encode_with(&Packet::ConnAck(expected), V5), v5);

        let failure: &[u8] = &[0x20, 0x03, 0x00, 0x85, 0x00];
        let expected = ConnAck {
            reason: ReasonCode::ClientIdentifierNotValid,
            ..ConnAck::default()
        };
        assert_eq!(
            decode_with(failure, V5).unwrap(),
            Packet::ConnAck(expected.clone())
        );
        assert_eq!(encode_with(&Packet::ConnAck(expected.clone()), V5), failure);
        // 3.1.1: the return code 2, properties dropped.
        assert_eq!(
            encode_with(&Packet::ConnAck(expected.clone()), V311),
            [0x20, 0x02, 0x00, 0x02]
        );
        assert_eq!(
            decode_with(&[0x20, 0x02, 0x00, 0x02], V311).unwrap(),
            Packet::ConnAck(expected)
        );
        // Every other failure is "Server unavailable" in 3.1.1.
        let busy = ConnAck {
            reason: ReasonCode::ServerBusy,
            ..ConnAck::default()
        };
        assert_eq!(
            encode_with(&Packet::ConnAck(busy), V311),
            [0x20, 0x02, 0x00, 0x03]
        );
    }

    #[test]
    fn connack_errors() {
        assert!(matches!(
            decode_with(&[0x20, 0x02, 0x02, 0x00], V311),
            Err(DecodeError::ConnAckReservedFlags)
        ));
        assert!(matches!(
            decode_with(&[0x20, 0x02, 0x00, 0x06], V311),
            Err(DecodeError::InvalidReasonCode {
                code: 6,
                packet: "CONNACK"
            })
        ));
        assert!(matches!(
            decode_with(&[0x20, 0x03, 0x00, 0x04, 0x00], V5),
            Err(DecodeError::InvalidReasonCode {
                code: 4,
                packet: "CONNACK"
            })
        ));
        assert!(matches!(
            decode_with(&[0x20, 0x03, 0x00, 0x00, 0x00], V311),
            Err(DecodeError::TrailingBytes("CONNACK"))
        ));
        assert!(matches!(
            decode_with(&[0x20, 0x04, 0x00, 0x00, 0x00, 0xFF], V5),
            Err(DecodeError::TrailingBytes("CONNACK"))
        ));
        // v5 needs the Property Length.
        assert!(matches!(
            decode_with(&[0x20, 0x02, 0x00, 0x00], V5),
            Err(DecodeError::Truncated)
        ));
        // A property only CONNECT may carry.
        assert!(matches!(
            decode_with(&[0x20, 0x05, 0x00, 0x00, 0x02, 0x17, 0x01], V5),
            Err(DecodeError::PropertyNotAllowed {
                id: 0x17,
                packet: "CONNACK"
            })
        ));
    }
}
