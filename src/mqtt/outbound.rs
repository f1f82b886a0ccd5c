//! What a server writes: packets, and PUBLISH packets assembled from a message shared by all
//! its deliveries.
//!
//! A delivery differs from the published message only in its header flags, packet id, topic
//! alias, remaining Message Expiry and Subscription Identifiers (§3.3.2.3); the topic, payload
//! and forwarded properties are the message's. `OutPublish` holds the message (an `Arc`) and
//! the per-delivery fields and is encoded straight into the write buffer, so a delivery copies
//! nothing but bytes into that buffer.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::error::EncodeError;
use super::packet::{Packet, ProtocolVersion, Publish, QoS};
use super::primitives::{string_len, vbi_len, write_vbi};
use super::properties::{Properties, id};

/// The parts of a published message that every delivery of it shares.
pub trait SharedPublish {
    fn topic(&self) -> &str;
    fn payload(&self) -> &Bytes;
    /// The properties forwarded unchanged [MQTT-3.3.2-17..18]; none of the per-delivery ones.
    fn properties(&self) -> &Properties;
}

/// One packet to write.
pub enum Frame<M> {
    Packet(Packet),
    Publish(OutPublish<M>),
    /// Bytes already encoded: the unsent end of a packet whose start was written elsewhere.
    Raw(Bytes),
}

/// One delivery of a shared message as a PUBLISH.
pub struct OutPublish<M> {
    pub message: Arc<M>,
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Required for QoS 1 and 2.
    pub packet_id: Option<u16>,
    /// With an alias already known to the client the topic is sent empty (§3.3.2.3.4).
    pub topic_alias: Option<u16>,
    pub send_topic: bool,
    pub message_expiry_interval: Option<u32>,
    pub subscription_identifiers: Vec<u32>,
}

impl<M: SharedPublish> OutPublish<M> {
    fn topic(&self) -> &str {
        if self.send_topic {
            self.message.topic()
        } else {
            ""
        }
    }

    /// Property bytes after the Property Length.
    fn properties_len(&self) -> usize {
        self.message.properties().body_len()
            + self.message_expiry_interval.map_or(0, |_| 5)
            + self.topic_alias.map_or(0, |_| 3)
            + self
                .subscription_identifiers
                .iter()
                .map(|&v| 1 + vbi_len(v))
                .sum::<usize>()
    }

    pub(crate) fn remaining_len(&self, version: ProtocolVersion) -> usize {
        let properties = if version.is_v5() {
            let body = self.properties_len();
            vbi_len(u32::try_from(body).unwrap_or(u32::MAX)) + body
        } else {
            0
        };
        string_len(self.topic())
            + if self.qos == QoS::AtMostOnce { 0 } else { 2 }
            + properties
            + self.message.payload().len()
    }

    /// Total bytes on the wire in `version`, fixed header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let remaining = self.remaining_len(version);
        1 + vbi_len(u32::try_from(remaining).unwrap_or(u32::MAX)) + remaining
    }

    pub(crate) fn first_byte(&self) -> u8 {
        Publish::flags(self.dup, self.qos, self.retain) | 0x30
    }

    pub(crate) fn encode_body(
        &self,
        dst: &mut BytesMut,
        version: ProtocolVersion,
    ) -> Result<(), EncodeError> {
        Publish::encode_topic_and_id(dst, self.topic(), self.qos, self.packet_id)?;
        if version.is_v5() {
            write_vbi(
                dst,
                u32::try_from(self.properties_len()).unwrap_or(u32::MAX),
            )?;
            if let Some(v) = self.message_expiry_interval {
                dst.put_u8(id::MESSAGE_EXPIRY_INTERVAL);
                dst.put_u32(v);
            }
            for &v in &self.subscription_identifiers {
                dst.put_u8(id::SUBSCRIPTION_IDENTIFIER);
                write_vbi(dst, v)?;
            }
            if let Some(v) = self.topic_alias {
                dst.put_u8(id::TOPIC_ALIAS);
                dst.put_u16(v);
            }
            self.message.properties().encode_body(dst)?;
        }
        dst.put_slice(self.message.payload());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::MqttCodec;
    use crate::mqtt::PropertyValues;
    use crate::mqtt::testutil::decode_with;
    use tokio_util::codec::Encoder;

    struct Message {
        topic: String,
        payload: Bytes,
        properties: Properties,
    }

    impl SharedPublish for Message {
        fn topic(&self) -> &str {
            &self.topic
        }
        fn payload(&self) -> &Bytes {
            &self.payload
        }
        fn properties(&self) -> &Properties {
            &self.properties
        }
    }

    fn encode(publish: OutPublish<Message>, version: ProtocolVersion) -> Vec<u8> {
        let expected_len = publish.encoded_len(version);
        let mut dst = BytesMut::new();
        MqttCodec::new(version, u32::MAX)
            .encode(Frame::Publish(publish), &mut dst)
            .unwrap();
        assert_eq!(dst.len(), expected_len);
        dst.to_vec()
    }

    /// A delivery decodes as the PUBLISH it stands for: the message's topic, payload and
    /// forwarded properties, with its own flags, id, alias, expiry and identifiers.
    #[test]
    fn a_delivery_is_the_publish_it_stands_for() {
        let message = Arc::new(Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"hello"),
            properties: Properties::from(PropertyValues {
                content_type: Some("text/plain".into()),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
                ..PropertyValues::default()
            }),
        });
        let delivery = |send_topic| OutPublish {
            message: message.clone(),
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            packet_id: Some(7),
            topic_alias: Some(3),
            send_topic,
            message_expiry_interval: Some(60),
            subscription_identifiers: vec![1, 300],
        };
        let expected = |topic: &str| Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: topic.into(),
            packet_id: Some(7),
            properties: Properties::from(PropertyValues {
                message_expiry_interval: Some(60),
                subscription_identifiers: vec![1, 300],
                topic_alias: Some(3),
                ..message.properties.clone().into_values()
            }),
            payload: message.payload.clone(),
        };
        for (send_topic, topic) in [(true, "a/b"), (false, "")] {
            let bytes = encode(delivery(send_topic), ProtocolVersion::V5);
            assert_eq!(
                decode_with(&bytes, ProtocolVersion::V5).unwrap(),
                Packet::Publish(Box::new(expected(topic)))
            );
        }
        // 3.1.1 has no properties.
        let bytes = encode(delivery(true), ProtocolVersion::V311);
        assert_eq!(
            decode_with(&bytes, ProtocolVersion::V311).unwrap(),
            Packet::Publish(Box::new(Publish {
                properties: Properties::default(),
                ..expected("a/b")
            }))
        );
    }
}
