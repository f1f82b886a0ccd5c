//! SUBSCRIBE (§3.8), SUBACK (§3.9), UNSUBSCRIBE (§3.10) and UNSUBACK (§3.11).

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    ProtocolVersion, QoS, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe, read_nonzero_packet_id, read_reason,
};
use crate::mqtt::error::{DecodeError, EncodeError};
use crate::mqtt::primitives::{
    expect_end, read_string, read_u8, read_u16, string_len, write_string,
};
use crate::mqtt::properties::{Properties, PropertyContext};
use crate::mqtt::reason::ReasonCode;

// Subscription Options (§3.8.3.1).
const QOS_MASK: u8 = 0x03;
const NO_LOCAL: u8 = 0x04;
const RETAIN_AS_PUBLISHED: u8 = 0x08;
const RETAIN_HANDLING_SHIFT: u8 = 4;
const RETAIN_HANDLING_MASK: u8 = 0x30;
const V5_RESERVED: u8 = 0xC0;
/// In 3.1.1 only the QoS bits exist [MQTT-3.8.3-4 of 3.1.1].
const V3_RESERVED: u8 = 0xFC;

fn props_len(props: &Properties, version: ProtocolVersion) -> usize {
    if version.is_v5() {
        props.encoded_len()
    } else {
        0
    }
}

fn decode_props(
    body: &mut Bytes,
    version: ProtocolVersion,
    ctx: PropertyContext,
) -> Result<Properties, DecodeError> {
    if version.is_v5() {
        Properties::decode(body, ctx)
    } else {
        Ok(Properties::default())
    }
}

impl SubscriptionOptions {
    fn decode(byte: u8, version: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
        let reserved = if version.is_v5() {
            V5_RESERVED
        } else {
            V3_RESERVED
        };
        if byte & reserved != 0 {
            return Err(DecodeError::SubscriptionOptionsReservedBits);
        }
        let qos = QoS::from_u8(byte & QOS_MASK).ok_or(DecodeError::InvalidSubscriptionQoS)?;
        let retain_handling = match (byte & RETAIN_HANDLING_MASK) >> RETAIN_HANDLING_SHIFT {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: byte & NO_LOCAL != 0,
            retain_as_published: byte & RETAIN_AS_PUBLISHED != 0,
            retain_handling,
        })
    }

    /// In 3.1.1 only the QoS is sent.
    fn encode(self, version: ProtocolVersion) -> u8 {
        let mut byte = self.qos as u8;
        if version.is_v5() {
            if self.no_local {
                byte |= NO_LOCAL;
            }
            if self.retain_as_published {
                byte |= RETAIN_AS_PUBLISHED;
            }
            byte |= (self.retain_handling as u8) << RETAIN_HANDLING_SHIFT;
        }
        byte
    }
}

impl Subscribe {
    pub(crate) fn decode_body(
        body: &mut Bytes,
        version: ProtocolVersion,
    ) -> Result<Subscribe, DecodeError> {
        let packet_id = read_nonzero_packet_id(body)?;
        let properties = decode_props(body, version, PropertyContext::Subscribe)?;
        let mut filters = Vec::new();
        while !body.is_empty() {
            let filter = read_string(body)?;
            let options = SubscriptionOptions::decode(read_u8(body)?, version)?;
            filters.push((filter, options));
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters("SUBSCRIBE"));
        }
        Ok(Subscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn remaining_len(&self, version: ProtocolVersion) -> usize {
        2 + props_len(&self.properties, version)
            + self
                .filters
                .iter()
                .map(|(f, _)| string_len(f) + 1)
                .sum::<usize>()
    }

    pub(crate) fn encode_body(
        &self,
        dst: &mut BytesMut,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        dst.put_u16(self.packet_id);
        if version.is_v5() {
            self.properties.encode(dst)?;
        }
        for (filter, options) in &self.filters {
            write_string(dst, filter)?;
            dst.put_u8(options.encode(version));
        }
        Ok(())
    }
}

/// The reason codes §3.9.3 lists for SUBACK.
fn suback_reason_ok(rc: ReasonCode) -> bool {
    matches!(
        rc as u8,
        0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
    )
}

/// The reason codes §3.11.3 lists for UNSUBACK.
fn unsuback_reason_ok(rc: ReasonCode) -> bool {
    matches!(rc as u8, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91)
}

impl SubAck {
    pub(crate) fn decode_body(
        body: &mut Bytes,
        version: ProtocolVersion,
    ) -> Result<SubAck, DecodeError> {
        let packet_id = read_u16(body)?;
        let properties = decode_props(body, version, PropertyContext::SubAck)?;
        let mut reasons = Vec::with_capacity(body.len());
        while !body.is_empty() {
            let reason = if version.is_v5() {
                read_reason(body, "SUBACK", suback_reason_ok)?
            } else {
                let code = read_u8(body)?;
                ReasonCode::from_v3_suback(code).ok_or(DecodeError::InvalidReasonCode {
                    code,
                    packet: "SUBACK",
                })?
            };
            reasons.push(reason);
        }
        Ok(SubAck {
            packet_id,
            properties,
            reasons,
        })
    }

    pub(crate) fn remaining_len(&self, version: ProtocolVersion) -> usize {
        2 + props_len(&self.properties, version) + self.reasons.len()
    }

    pub(crate) fn encode_body(
        &self,
        dst: &mut BytesMut,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        dst.put_u16(self.packet_id);
        if version.is_v5() {
            self.properties.encode(dst)?;
            dst.extend(self.reasons.iter().map(|&rc| rc as u8));
        } else {
            dst.extend(self.reasons.iter().map(|rc| rc.to_v3_suback()));
        }
        Ok(())
    }
}

impl Unsubscribe {
    pub(crate) fn decode_body(
        body: &mut Bytes,
        version: ProtocolVersion,
    ) -> Result<Unsubscribe, DecodeError> {
        let packet_id = read_nonzero_packet_id(body)?;
        let properties = decode_props(body, version, PropertyContext::Unsubscribe)?;
        let mut filters = Vec::new();
        while !body.is_empty() {
            filters.push(read_string(body)?);
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters("UNSUBSCRIBE"));
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn remaining_len(&self, version: ProtocolVersion) -> usize {
        2 + props_len(&self.properties, version)
            + self.filters.iter().map(|f| string_len(f)).sum::<usize>()
    }

    pub(crate) fn encode_body(
        &self,
        dst: &mut BytesMut,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        dst.put_u16(self.packet_id);
        if version.is_v5() {
            self.properties.encode(dst)?;
        }
        for filter in &self.filters {
            write_string(dst, filter)?;
        }
        Ok(())
    }
}

impl UnsubAck {
    /// In 3.1.1 UNSUBACK is just the packet identifier.
    pub(crate) fn decode_body(
        body: &mut Bytes,
        version: ProtocolVersion,
    ) -> Result<UnsubAck, DecodeError> {
        let packet_id = read_u16(body)?;
        let mut ack = UnsubAck {
            packet_id,
            properties: Properties::default(),
            reasons: Vec::new(),
        };
        if version.is_v5() {
            ack.properties = Properties::decode(body, PropertyContext::UnsubAck)?;
            ack.reasons.reserve(body.len());
            while !body.is_empty() {
                ack.reasons
                    .push(read_reason(body, "UNSUBACK", unsuback_reason_ok)?);
            }
        }
        expect_end(body, "UNSUBACK")?;
        Ok(ack)
    }

    pub(crate) fn remaining_len(&self, version: ProtocolVersion) -> usize {
        if version.is_v5() {
            2 + self.properties.encoded_len() + self.reasons.len()
        } else {
            2
        }
    }

    pub(crate) fn encode_body(
        &self,
        dst: &mut BytesMut,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        dst.put_u16(self.packet_id);
        if version.is_v5() {
            self.properties.encode(dst)?;
            dst.extend(self.reasons.iter().map(|&rc| rc as u8));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::PropertyValues;
    use crate::mqtt::packet::Packet;
    use crate::mqtt::testutil::{decode_with, encode_with};

    const V5: ProtocolVersion = ProtocolVersion::V5;
    const V311: ProtocolVersion = ProtocolVersion::V311;

    fn qos(q: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos: q,
            ..SubscriptionOptions::default()
        }
    }

    #[test]
    fn subscribe_v5() {
        let bytes: &[u8] = &[
            0x82, 0x0F, 0x00, 0x0A, // packet id 10
            0x02, 0x0B, 0x07, // subscription identifier 7
            0x00, 0x03, b'a', b'/', b'#', 0x2D, // QoS 1, no local, retain as published, RH 2
            0x00, 0x01, b'b', 0x10, // QoS 0, RH 1
        ];
        let expected = Subscribe {
            packet_id: 10,
            properties: Properties::from(PropertyValues {
                subscription_identifiers: vec![7],
                ..PropertyValues::default()
            }),
            filters: vec![
                (
                    "a/#".into(),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                ),
                (
                    "b".into(),
                    SubscriptionOptions {
                        retain_handling: RetainHandling::SendIfNew,
                        ..qos(QoS::AtMostOnce)
                    },
                ),
            ],
        };
        assert_eq!(
            decode_with(bytes, V5).unwrap(),
            Packet::Subscribe(expected.clone())
        );
        assert_eq!(encode_with(&Packet::Subscribe(expected), V5), bytes);
    }

    #[test]
    fn subscribe_v311() {
        let bytes: &[u8] = &[
            0x82, 0x0A, 0x12, 0x34, 0x00, 0x01, b'a', 0x02, 0x00, 0x01, b'+', 0x00,
        ];
        let expected = Subscribe {
            packet_id: 0x1234,
            properties: Properties::default(),
            filters: vec![
                ("a".into(), qos(QoS::ExactlyOnce)),
                ("+".into(), qos(QoS::AtMostOnce)),
            ],
        };
        assert_eq!(
            decode_with(bytes, V311).unwrap(),
            Packet::Subscribe(expected.clone())
        );
        assert_eq!(encode_with(&Packet::Subscribe(expected), V311), bytes);
    }

    #[test]
    fn subscribe_errors() {
        // No topic filters (bad-inputs D.65).
        assert!(matches!(
            decode_with(&[0x82, 0x03, 0x12, 0x34, 0x00], V5),
            Err(DecodeError::NoTopicFilters("SUBSCRIBE"))
        ));
        assert!(matches!(
            decode_with(&[0x82, 0x02, 0x12, 0x34], V311),
            Err(DecodeError::NoTopicFilters("SUBSCRIBE"))
        ));
        // Options byte missing after the last filter (D.70).
        assert!(matches!(
            decode_with(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61], V5),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            decode_with(&[0x82, 0x07, 0x00, 0x00, 0x00, 0x00, 0x01, 0x61, 0x00], V5),
            Err(DecodeError::ZeroPacketIdentifier)
        ));
        let sub = |byte: u8, version: ProtocolVersion| {
            let mut v = vec![0x82, 0x06, 0x00, 0x01];
            if version.is_v5() {
                v[1] += 1;
                v.push(0x00);
            }
            v.extend_from_slice(&[0x00, 0x01, b'a', byte]);
            decode_with(&v, version)
        };
        assert!(matches!(
            sub(0x03, V5),
            Err(DecodeError::InvalidSubscriptionQoS)
        ));
        assert!(matches!(
            sub(0x30, V5),
            Err(DecodeError::InvalidRetainHandling)
        ));
        assert!(matches!(
            sub(0x40, V5),
            Err(DecodeError::SubscriptionOptionsReservedBits)
        ));
        assert!(matches!(
            sub(0x80, V5),
            Err(DecodeError::SubscriptionOptionsReservedBits)
        ));
        assert!(matches!(
            sub(0x03, V311),
            Err(DecodeError::InvalidSubscriptionQoS)
        ));
        assert!(matches!(
            sub(0x04, V311),
            Err(DecodeError::SubscriptionOptionsReservedBits)
        ));
        // Subscription Identifier 0 or twice (D.74).
        assert!(matches!(
            decode_with(
                &[
                    0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, 0x61, 0x00
                ],
                V5
            ),
            Err(DecodeError::InvalidPropertyValue { id: 0x0B, value: 0 })
        ));
        assert!(matches!(
            decode_with(
                &[
                    0x82, 0x0B, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, 0x61, 0x00
                ],
                V5
            ),
            Err(DecodeError::DuplicateProperty(0x0B))
        ));
        // Header flags must be 0010 (A.10).
        for first in [0x80, 0x83] {
            assert!(matches!(
                decode_with(&[first, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x00], V311),
                Err(DecodeError::InvalidHeaderFlags { packet_type: 8, .. })
            ));
        }
    }

    #[test]
    fn suback() {
        let v5: &[u8] = &[0x90, 0x06, 0x00, 0x0A, 0x00, 0x01, 0x8F, 0xA2];
        let expected = SubAck {
            packet_id: 10,
            properties: Properties::default(),
            reasons: vec![
                ReasonCode::GrantedQoS1,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::WildcardSubscriptionsNotSupported,
            ],
        };
        assert_eq!(
            decode_with(v5, V5).unwrap(),
            Packet::SubAck(expected.clone())
        );
        assert_eq!(encode_with(&Packet::SubAck(expected.clone()), V5), v5);
        // 3.1.1: every failure is 0x80.
        assert_eq!(
            encode_with(&Packet::SubAck(expected), V311),
            [0x90, 0x05, 0x00, 0x0A, 0x01, 0x80, 0x80]
        );
        let v3 = decode_with(&[0x90, 0x05, 0x00, 0x0A, 0x00, 0x02, 0x80], V311).unwrap();
        assert_eq!(
            v3,
            Packet::SubAck(SubAck {
                packet_id: 10,
                properties: Properties::default(),
                reasons: vec![
                    ReasonCode::Success,
                    ReasonCode::GrantedQoS2,
                    ReasonCode::UnspecifiedError
                ],
            })
        );
        assert!(matches!(
            decode_with(&[0x90, 0x03, 0x00, 0x0A, 0x8F], V311),
            Err(DecodeError::InvalidReasonCode {
                code: 0x8F,
                packet: "SUBACK"
            })
        ));
        assert!(matches!(
            decode_with(&[0x90, 0x04, 0x00, 0x0A, 0x00, 0x11], V5),
            Err(DecodeError::InvalidReasonCode {
                code: 0x11,
                packet: "SUBACK"
            })
        ));
        assert!(matches!(
            decode_with(&[0x91, 0x03, 0x00, 0x0A, 0x00], V311),
            Err(DecodeError::InvalidHeaderFlags {
                packet_type: 9,
                flags: 1
            })
        ));
    }

    #[test]
    fn unsubscribe() {
        let v5: &[u8] = &[
            0xA2, 0x0C, 0x00, 0x05, 0x05, 0x26, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, b'a', b'b',
        ];
        let expected = Unsubscribe {
            packet_id: 5,
            properties: Properties::from(PropertyValues {
                user_properties: vec![(String::new(), String::new())],
                ..PropertyValues::default()
            }),
            filters: vec!["ab".into()],
        };
        assert_eq!(
            decode_with(v5, V5).unwrap(),
            Packet::Unsubscribe(expected.clone())
        );
        assert_eq!(encode_with(&Packet::Unsubscribe(expected), V5), v5);

        let v3: &[u8] = &[0xA2, 0x08, 0x00, 0x05, 0x00, 0x01, b'a', 0x00, 0x01, b'b'];
        let expected = Unsubscribe {
            packet_id: 5,
            properties: Properties::default(),
            filters: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            decode_with(v3, V311).unwrap(),
            Packet::Unsubscribe(expected.clone())
        );
        assert_eq!(encode_with(&Packet::Unsubscribe(expected), V311), v3);

        assert!(matches!(
            decode_with(&[0xA2, 0x03, 0x00, 0x05, 0x00], V5),
            Err(DecodeError::NoTopicFilters("UNSUBSCRIBE"))
        ));
        assert!(matches!(
            decode_with(&[0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, b'a'], V311),
            Err(DecodeError::ZeroPacketIdentifier)
        ));
        assert!(matches!(
            decode_with(&[0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], V311),
            Err(DecodeError::InvalidHeaderFlags {
                packet_type: 10,
                flags: 0
            })
        ));
        // Only User Property is allowed in UNSUBSCRIBE.
        assert!(matches!(
            decode_with(
                &[
                    0xA2, 0x09, 0x00, 0x01, 0x02, 0x1F, 0x00, 0x00, 0x01, b'a', 0x00
                ],
                V5
            ),
            Err(DecodeError::PropertyNotAllowed {
                id: 0x1F,
                packet: "UNSUBSCRIBE"
            })
        ));
    }

    #[test]
    fn unsuback() {
        let v5: &[u8] = &[0xB0, 0x05, 0x00, 0x05, 0x00, 0x00, 0x11];
        let expected = UnsubAck {
            packet_id: 5,
            properties: Properties::default(),
            reasons: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
        };
        assert_eq!(
            decode_with(v5, V5).unwrap(),
            Packet::UnsubAck(expected.clone())
        );
        assert_eq!(encode_with(&Packet::UnsubAck(expected.clone()), V5), v5);
        // 3.1.1 has no payload: reasons are dropped.
        assert_eq!(
            encode_with(&Packet::UnsubAck(expected), V311),
            [0xB0, 0x02, 0x00, 0x05]
        );
        assert_eq!(
            decode_with(&[0xB0, 0x02, 0x00, 0x05], V311).unwrap(),
            Packet::UnsubAck(UnsubAck {
                packet_id: 5,
                properties: Properties::default(),
                reasons: vec![]
            })
        );
        assert!(matches!(
            decode_with(&[0xB0, 0x03, 0x00, 0x05, 0x00], V311),
            Err(DecodeError::TrailingBytes("UNSUBACK"))
        ));
        assert!(matches!(
            decode_with(&[0xB0, 0x04, 0x00, 0x05, 0x00, 0x02], V5),
            Err(DecodeError::InvalidReasonCode {
                code: 0x02,
                packet: "UNSUBACK"
            })
        ));
    }
}
