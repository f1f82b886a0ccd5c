//! SUBSCRIBE and UNSUBSCRIBE (§3.8-§3.11): one reason code per filter, in order.

use actix::prelude::*;

use super::{Session, SessionError};
use crate::acl::AclAction;
use crate::messages::{
    Subscribe as AddSubscriptions, SubscribeOutcome, Unsubscribe as RemoveSubscriptions,
};
use crate::mqtt::{
    Packet, Properties, QoS, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe, topic,
};
use crate::registry::subscriptions::Subscription;

impl Session {
    pub(super) fn on_subscribe(
        &mut self,
        subscribe: Subscribe,
        ctx: &mut Context<Self>,
    ) -> Result<(), SessionError> {
        let Some(client) = self.client.as_ref() else {
            return Ok(());
        };
        let identifier = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut granted = Vec::new();
        // Where each granted filter's reason code is, to apply the Registry's outcome.
        let mut granted_at = Vec::new();
        for (filter, options) in subscribe.filters {
            let shared = topic::split_shared(&filter).is_some();
            if shared && options.no_local {
                return Err(SessionError::NoLocalOnShared);
            }
            let reason = if topic::validate_topic_filter(&filter).is_err()
                || self.shared.config.topic_over_limits(&filter)
            {
                ReasonCode::TopicFilterInvalid
            } else if !client.acl.allows(AclAction::Subscribe, &filter) {
                ReasonCode::NotAuthorized
            } else {
                granted_at.push(reasons.len());
                granted.push((
                    filter,
                    Subscription {
                        options,
                        identifier,
                    },
                ));
                match options.qos {
                    QoS::AtMostOnce => ReasonCode::Success,
                    QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                    QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                }
            };
            reasons.push(reason);
        }
        let packet_id = subscribe.packet_id;
        if granted.is_empty() {
            self.send_suback(packet_id, reasons);
            return Ok(());
        }
        // `wait`: no other packet is handled until the SUBACK is written.
        let add = AddSubscriptions {
            client_id: client.client_id.clone(),
            conn_id: self.conn_id,
            filters: granted,
            max_subscriptions: self.shared.config.limits.max_subscriptions_per_client,
        };
        let request = self.shared.registry.send(add);
        async move {
            // A persistent session's SUBACK waits for its subscriptions to be committed.
            let mut reply = request.await.ok()?;
            let stored = match reply.committed.take() {
                Some(committed) => committed.await == Ok(true),
                None => true,
            };
            Some((reply, stored))
        }
        .into_actor(self)
        .map(move |result, act, ctx| match result {
            Some((reply, stored)) => {
                for (at, outcome) in granted_at.into_iter().zip(reply.outcomes) {
                    if !stored {
                        reasons[at] = ReasonCode::UnspecifiedError;
                    } else if outcome == SubscribeOutcome::QuotaExceeded {
                        reasons[at] = ReasonCode::QuotaExceeded;
                    }
                }
                act.send_suback(packet_id, reasons);
                // After the SUBACK, ahead of anything newer from the queue.
                act.pending.extend(reply.retained);
                act.release(ctx);
            }
            None => {
                for at in granted_at {
                    reasons[at] = ReasonCode::UnspecifiedError;
                }
                act.send_suback(packet_id, reasons);
            }
        })
        .wait(ctx);
        Ok(())
    }

    fn send_suback(&mut self, packet_id: u16, reasons: Vec<ReasonCode>) {
        self.send(Packet::SubAck(SubAck {
            packet_id,
            properties: Properties::default(),
            reasons,
        }));
    }

    pub(super) fn on_unsubscribe(
        &mut self,
        unsubscribe: Unsubscribe,
        ctx: &mut Context<Self>,
    ) -> Result<(), SessionError> {
        let Some(client) = self.client.as_ref() else {
            return Ok(());
        };
        let packet_id = unsubscribe.packet_id;
        let count = unsubscribe.filters.len();
        let remove = RemoveSubscriptions {
            client_id: client.client_id.clone(),
            conn_id: self.conn_id,
            filters: unsubscribe.filters,
        };
        let request = self.shared.registry.send(remove);
        async move {
            let (existed, committed) = request.await.ok()?;
            // A persistent session's UNSUBACK waits for the removal to be committed.
            if let Some(committed) = committed
                && committed.await != Ok(true)
            {
                return None;
            }
            Some(existed)
        }
        .into_actor(self)
        .map(move |result, act, _| {
            let reasons = match result {
                Some(existed) => existed
                    .into_iter()
                    .map(|had| {
                        if had {
                            ReasonCode::Success
                        } else {
                            ReasonCode::NoSubscriptionExisted
                        }
                    })
                    .collect(),
                None => vec![ReasonCode::UnspecifiedError; count],
            };
            act.send(Packet::UnsubAck(UnsubAck {
                packet_id,
                properties: Properties::default(),
                reasons,
            }));
        })
        .wait(ctx);
        Ok(())
    }
}
