//! Inbound PUBLISH and its acknowledgements (§3.3-§3.7).
//!
//! Routing is not built yet, so every message is accepted and has no subscriber: QoS 1 gets
//! PUBACK and QoS 2 gets PUBREC with reason 0x10 (No matching subscribers), and the QoS 2
//! exchange completes with PUBREL/PUBCOMP.

use super::{Session, SessionError};
use crate::mqtt::{Ack, Packet, Publish, QoS, ReasonCode, topic};

impl Session {
    pub(super) fn on_publish(&mut self, publish: Publish) -> Result<(), SessionError> {
        let receive_maximum = self.shared.config.limits.receive_maximum;
        if publish.properties.topic_alias.is_some() {
            return Err(SessionError::TopicAliasInvalid);
        }
        if publish.topic.is_empty() {
            return Err(SessionError::EmptyTopic);
        }
        if topic::validate_topic_name(&publish.topic).is_err() {
            return Err(SessionError::TopicNameInvalid(publish.topic));
        }
        if !publish.properties.subscription_identifiers.is_empty() {
            return Err(SessionError::SubscriptionIdentifierInPublish);
        }
        if publish.retain {
            return Err(SessionError::RetainNotSupported);
        }
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        let ack = |packet_id| Ack {
            packet_id,
            reason: ReasonCode::NoMatchingSubscribers,
            ..Default::default()
        };
        match (publish.qos, publish.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(Packet::PubAck(ack(id))),
            (QoS::ExactlyOnce, Some(id)) => {
                // A re-sent PUBLISH with an id already awaiting PUBREL is answered again and
                // not counted twice [MQTT-4.3.3-10].
                if !client.awaiting_rel.contains(&id)
                    && client.awaiting_rel.len() >= usize::from(receive_maximum)
                {
                    return Err(SessionError::ReceiveMaximumExceeded(receive_maximum));
                }
                client.awaiting_rel.insert(id);
                self.send(Packet::PubRec(ack(id)));
            }
            _ => {}
        }
        Ok(())
    }

    /// PUBREL releases a QoS 2 packet id; an unknown id gets PUBCOMP 0x92 [MQTT-4.3.3-11].
    pub(super) fn on_pubrel(&mut self, pubrel: Ack) -> Result<(), SessionError> {
        let known = self
            .client
            .as_mut()
            .is_some_and(|c| c.awaiting_rel.remove(&pubrel.packet_id));
        let reason = if known {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        self.send(Packet::PubComp(Ack {
            packet_id: pubrel.packet_id,
            reason,
            ..Default::default()
        }));
        Ok(())
    }
}
