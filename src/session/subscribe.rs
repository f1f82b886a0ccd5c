//! SUBSCRIBE and UNSUBSCRIBE (§3.8-§3.11).
//!
//! Subscriptions are not built yet: every filter is answered with its own failure code
//! (0x8F invalid, 0x9E shared, 0xA2 wildcard, 0x83 otherwise; 0x80 in 3.1.1), so clients learn
//! the truth instead of waiting for messages that cannot come.

use super::{Session, SessionError};
use crate::mqtt::{
    Packet, Properties, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe, topic,
};

impl Session {
    pub(super) fn on_subscribe(&mut self, subscribe: Subscribe) -> Result<(), SessionError> {
        if !subscribe.properties.subscription_identifiers.is_empty() {
            return Err(SessionError::SubscriptionIdentifiersNotSupported);
        }
        let reasons = subscribe
            .filters
            .iter()
            .map(|(filter, _)| {
                if topic::validate_topic_filter(filter).is_err() {
                    ReasonCode::TopicFilterInvalid
                } else if filter.starts_with("$share/") {
                    ReasonCode::SharedSubscriptionsNotSupported
                } else if filter.contains(['+', '#']) {
                    ReasonCode::WildcardSubscriptionsNotSupported
                } else {
                    ReasonCode::ImplementationSpecificError
                }
            })
            .collect();
        self.send(Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            properties: Properties::default(),
            reasons,
        }));
        Ok(())
    }

    pub(super) fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Result<(), SessionError> {
        let reasons = vec![ReasonCode::NoSubscriptionExisted; unsubscribe.filters.len()];
        self.send(Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            properties: Properties::default(),
            reasons,
        }));
        Ok(())
    }
}
