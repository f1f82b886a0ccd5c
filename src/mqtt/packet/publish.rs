//! PUBLISH (§3.3).

use bytes::{BufMut, Bytes, BytesMut};

use super::{ProtocolVersion, Publish, QoS, read_nonzero_packet_id};
use crate::mqtt::error::{DecodeError, EncodeError};
use crate::mqtt::primitives::{read_string, string_len, write_string};
use crate::mqtt::properties::{Properties, PropertyContext};

// Fixed header flags (§3.3.1).
const DUP: u8 = 0x08;
const QOS_SHIFT: u8 = 1;
const QOS_MASK: u8 = 0x06;
const RETAIN: u8 = 0x01;

impl Publish {
    /// Decodes a PUBLISH body; `flags` is the low nibble of the fixed header. The payload is
    /// whatever follows the properties and shares `body`'s buffer.
    pub(crate) fn decode_body(
        flags: u8,
        body: &mut Bytes,
        version: ProtocolVersion,
    ) -> Result<Publish, DecodeError> {
        let (dup, qos, retain) = decode_flags(flags)?;
        let topic = read_string(body)?;
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            Some(read_nonzero_packet_id(body)?)
        };
        let properties = if version.is_v5() {
            Properties::decode(body, PropertyContext::Publish)?
        } else {
            Properties::default()
        };
        let payload = std::mem::take(body);
        Ok(Publish {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload,
        })
    }

    /// The low nibble of the fixed header.
    pub(crate) fn header_flags(&self) -> u8 {
        Publish::flags(self.dup, self.qos, self.retain)
    }

    /// The Topic Name, and the Packet Identifier QoS 1 and 2 require.
    pub(crate) fn encode_topic_and_id(
        dst: &mut BytesMut,
        topic: &str,
        qos: QoS,
        packet_id: Option<u16>,
    ) -> Result<(), EncodeError> {
        write_string(dst, topic)?;
        if qos != QoS::AtMostOnce {
            dst.put_u16(packet_id.ok_or(EncodeError::MissingPacketId(qos as u8))?);
        }
        Ok(())
    }

    /// The low nibble of the fixed header for these flags.
    pub(crate) fn flags(dup: bool, qos: QoS, retain: bool) -> u8 {
        let mut flags = (qos as u8) << QOS_SHIFT;
        if dup {
            flags |= DUP;
        }
        if retain {
            flags |= RETAIN;
        }
        flags
    }

    pub(crate) fn remaining_len(&self, version: ProtocolVersion) -> usize {
        string_len(&self.topic)
            + if self.qos == QoS::AtMostOnce { 0 } else { 2 }
            + if version.is_v5() {
                self.properties.encoded_len()
            } else {
                0
            }
            + self.payload.len()
    }

    pub(crate) fn encode_body(
        &self,
        dst: &mut BytesMut,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        Publish::encode_topic_and_id(dst, &self.topic, self.qos, self.packet_id)?;
        if version.is_v5() {
            self.properties.encode(dst)?;
        }
        dst.put_slice(&self.payload);
        Ok(())
    }
}

/// DUP, QoS and RETAIN from the fixed header, with [MQTT-3.3.1-4] and [MQTT-3.3.1-2].
fn decode_flags(flags: u8) -> Result<(bool, QoS, bool), DecodeError> {
    let qos = QoS::from_u8((flags & QOS_MASK) >> QOS_SHIFT).ok_or(DecodeError::InvalidQoS)?;
    let dup = flags & DUP != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::DupOnQoS0);
    }
    Ok((dup, qos, flags & RETAIN != 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::PropertyValues;
    use crate::mqtt::packet::Packet;
    use crate::mqtt::testutil::{decode_with, encode_with};

    const V5: ProtocolVersion = ProtocolVersion::V5;
    const V311: ProtocolVersion = ProtocolVersion::V311;

    #[test]
    fn qos0_v311() {
        let bytes: &[u8] = &[0x31, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
        let expected = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::from_static(b"hi"),
        };
        assert_eq!(
            decode_with(bytes, V311).unwrap(),
            Packet::Publish(Box::new(expected.clone()))
        );
        assert_eq!(
            encode_with(&Packet::Publish(Box::new(expected)), V311),
            bytes
        );
    }

    #[test]
    fn qos2_dup_v5_with_properties() {
        let bytes: &[u8] = &[
            0x3C, 0x11, // DUP, QoS 2
            0x00, 0x01, b't', // topic
            0x12, 0x34, // packet id
            0x0A, 0x01, 0x01, 0x0B, 0x02, 0x0B, 0x80, 0x01, 0x23, 0x00, 0x05, // properties
            0xFF, // payload
        ];
        let expected = Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "t".into(),
            packet_id: Some(0x1234),
            properties: Properties::from(PropertyValues {
                payload_format_indicator: Some(1),
                subscription_identifiers: vec![2, 128],
                topic_alias: Some(5),
                ..PropertyValues::default()
            }),
            payload: Bytes::from_static(&[0xFF]),
        };
        assert_eq!(
            decode_with(bytes, V5).unwrap(),
            Packet::Publish(Box::new(expected.clone()))
        );
        assert_eq!(encode_with(&Packet::Publish(Box::new(expected)), V5), bytes);
    }

    #[test]
    fn payload_shares_the_read_buffer() {
        let frame = Bytes::from_static(&[0x00, 0x01, b't', 0x00, b'p', b'a', b'y']);
        let mut body = frame.clone();
        let p = Publish::decode_body(0, &mut body, V5).unwrap();
        assert_eq!(&p.payload[..], b"pay");
        assert_eq!(p.payload.as_ptr(), frame[4..].as_ptr());
    }

    #[test]
    fn flag_and_packet_id_errors() {
        assert!(matches!(
            decode_with(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01], V311),
            Err(DecodeError::InvalidQoS)
        ));
        assert!(matches!(
            decode_with(&[0x38, 0x03, 0x00, 0x01, b't'], V311),
            Err(DecodeError::DupOnQoS0)
        ));
        assert!(matches!(
            decode_with(&[0x32, 0x06, 0x00, 0x01, b't', 0x00, 0x00, 0x00], V5),
            Err(DecodeError::ZeroPacketIdentifier)
        ));
        // QoS 1 that ends right after the topic (NanoMQ #2270).
        assert!(matches!(
            decode_with(&[0x32, 0x03, 0x00, 0x01, b't'], V5),
            Err(DecodeError::Truncated)
        ));
        // Topic length past RL.
        assert!(matches!(
            decode_with(&[0x30, 0x03, 0x00, 0x05, b't'], V311),
            Err(DecodeError::Truncated)
        ));
    }

    #[test]
    fn property_errors() {
        let publish = |props: &[u8]| {
            let mut v = vec![
                0x30,
                (4 + props.len()) as u8,
                0x00,
                0x01,
                b't',
                props.len() as u8,
            ];
            v.extend_from_slice(props);
            decode_with(&v, V5)
        };
        assert!(matches!(
            publish(&[0x23, 0x00, 0x00]),
            Err(DecodeError::TopicAliasZero)
        ));
        assert!(matches!(
            publish(&[0x11, 0x00, 0x00, 0x00, 0x01]),
            Err(DecodeError::PropertyNotAllowed {
                id: 0x11,
                packet: "PUBLISH"
            })
        ));
        assert!(matches!(
            publish(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1]),
            Err(DecodeError::DuplicateProperty(0x02))
        ));
        assert!(matches!(
            publish(&[0x01, 0x02]),
            Err(DecodeError::InvalidPropertyValue { id: 0x01, value: 2 })
        ));
        assert!(matches!(
            publish(&[0x0B, 0x00]),
            Err(DecodeError::InvalidPropertyValue { id: 0x0B, value: 0 })
        ));
        for unknown in [
            &[0x00, 0x00][..],
            &[0x04, 0x00],
            &[0x7F, 0x00],
            &[0x80, 0x01, 0x00],
        ] {
            assert!(
                matches!(publish(unknown), Err(DecodeError::UnknownProperty(_))),
                "{unknown:02X?}"
            );
        }
        // A non-minimal identifier (bad-inputs A.2 shape).
        assert!(matches!(
            publish(&[0x81, 0x00, 0x00]),
            Err(DecodeError::MalformedVariableByteInteger)
        ));
        // Property value truncated inside the block.
        assert!(matches!(
            publish(&[0x02, 0x00, 0x01]),
            Err(DecodeError::Truncated)
        ));
        // Property Length past the end of the packet.
        assert!(matches!(
            decode_with(&[0x30, 0x04, 0x00, 0x01, b't', 0x05], V5),
            Err(DecodeError::Truncated)
        ));
        // Content Type with bad UTF-8.
        assert!(matches!(
            publish(&[0x03, 0x00, 0x01, 0xFF]),
            Err(DecodeError::InvalidUtf8)
        ));
    }

    #[test]
    fn encode_refuses_missing_packet_id_and_long_topics() {
        let mut p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::new(),
        };
        let mut dst = BytesMut::new();
        assert!(matches!(
            p.encode_body(&mut dst, V5),
            Err(EncodeError::MissingPacketId(1))
        ));
        p.packet_id = Some(1);
        p.topic = "x".repeat(70_000);
        assert!(matches!(
            p.encode_body(&mut BytesMut::new(), V5),
            Err(EncodeError::StringTooLong(70_000))
        ));
    }
}
