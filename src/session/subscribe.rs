//! SUBSCRIBE and UNSUBSCRIBE (§3.8-§3.11): one reason code per filter, in order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actix::prelude::*;
use log::{debug, warn};

use super::{Session, SessionError};
use crate::acl::{Acl, AclAction, AclSubject};
use crate::config::AclDefault;
use crate::db::DbActor;
use crate::message::{AppMessage, Delivery};
use crate::messages::{
    LoadPublisherRules, Subscribe as AddSubscriptions, SubscribeOutcome,
    Unsubscribe as RemoveSubscriptions,
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
            deliveries: self.open_queue(),
        };
        let request = self.shared.registry.send(add);
        let db = self.shared.db.clone();
        let recheck = self.shared.config.retained_recheck_publisher;
        let default_allow = self.shared.config.acl_default == AclDefault::Allow;
        async move {
            // A persistent session's SUBACK waits for its subscriptions to be committed.
            let mut reply = request.await.ok()?;
            let stored = match reply.committed.take() {
                Some(committed) => committed.await == Ok(true),
                None => true,
            };
            let publishers = if recheck {
                load_publisher_rules(&db, &reply.retained, default_allow).await
            } else {
                Ok(None)
            };
            Some((reply, stored, publishers))
        }
        .into_actor(self)
        .map(move |result, act, ctx| match result {
            Some((mut reply, stored, publishers)) => {
                for (at, outcome) in granted_at.into_iter().zip(reply.outcomes) {
                    if !stored {
                        reasons[at] = ReasonCode::UnspecifiedError;
                    } else if outcome == SubscribeOutcome::QuotaExceeded {
                        reasons[at] = ReasonCode::QuotaExceeded;
                    }
                }
                act.send_suback(packet_id, reasons);
                let retained = std::mem::take(&mut reply.retained);
                for skipped in act.drop_unpublishable(retained, publishers) {
                    // A persistent session stored it: forget it, as if delivered.
                    act.forget_stored(skipped, ctx);
                }
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

    /// Puts the retained messages of a new subscription in `pending` (after the SUBACK, ahead
    /// of anything newer from the queue), except, with `retained_recheck_publisher`, those
    /// whose publisher may no longer publish to their topic (bad-inputs.md H114). When the
    /// publishers' rules could not be loaded, none is sent: the messages stay retained for a
    /// later subscription. Returns the stored packet ids of the messages left out.
    fn drop_unpublishable(
        &mut self,
        retained: Vec<Delivery>,
        publishers: Result<Option<PublisherAcls>, String>,
    ) -> Vec<u16> {
        let client_id = self
            .client
            .as_ref()
            .map_or_else(|| Arc::from(""), |c| c.client_id.clone());
        let publishers = match publishers {
            Ok(None) => {
                self.pending.extend(retained);
                return Vec::new();
            }
            Ok(Some(publishers)) => Some(publishers),
            Err(e) => {
                warn!(
                    "client {client_id:?}: retained messages not sent, their publishers' rules \
                     could not be loaded: {e}"
                );
                None
            }
        };
        let mut skipped = Vec::new();
        for delivery in retained {
            let message = &delivery.message;
            let allowed = is_broker_own(message)
                || publishers
                    .as_ref()
                    .is_some_and(|p| p.may_have_published(message));
            if allowed {
                self.pending.push_back(delivery);
            } else {
                debug!(
                    "client {client_id:?}: retained message on {:?} not sent: its publisher {:?} may no \
                     longer publish there",
                    message.topic, message.publisher
                );
                skipped.extend(delivery.packet_id);
            }
        }
        skipped
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

/// The current rules of the publishers of some retained messages.
struct PublisherAcls {
    by_client_id: HashMap<Arc<str>, Acl>,
}

impl PublisherAcls {
    /// Whether the message's publisher may publish it under the current rules.
    fn may_have_published(&self, message: &AppMessage) -> bool {
        self.by_client_id
            .get(&message.publisher)
            .is_some_and(|acl| super::may_publish(acl, &message.topic))
    }
}

/// The broker's own `$SYS` messages need no publisher check: no client may publish there.
fn is_broker_own(message: &AppMessage) -> bool {
    message.topic.starts_with("$SYS")
}

/// One DbActor round trip for every publisher of `retained` (`LoadPublisherRules`); `None`
/// when there is nothing to check.
async fn load_publisher_rules(
    db: &Addr<DbActor>,
    retained: &[Delivery],
    default_allow: bool,
) -> Result<Option<PublisherAcls>, String> {
    let publishers: HashSet<Arc<str>> = retained
        .iter()
        .filter(|d| !is_broker_own(&d.message))
        .map(|d| d.message.publisher.clone())
        .collect();
    if publishers.is_empty() {
        return Ok(None);
    }
    let load = LoadPublisherRules {
        publishers: publishers.into_iter().collect(),
    };
    let publishers = load.publishers.clone();
    let loaded = match db.send(load).await {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => return Err(format!("database actor unavailable: {e}")),
    };
    // The same default as at CONNECT: the publisher was judged by it when it published.
    let by_client_id = publishers
        .into_iter()
        .map(|id| {
            let username = loaded.usernames.get(&*id).map(String::as_str);
            // Only this publisher's rules are copied (`Acl::new` would drop the others).
            let rules = loaded
                .rules
                .iter()
                .filter(|r| match &r.subject {
                    AclSubject::All => true,
                    AclSubject::User(name) => username == Some(name.as_str()),
                    AclSubject::Client(client) => **client == *id,
                })
                .cloned()
                .collect();
            let acl = Acl::new(rules, username, &id, default_allow);
            (id, acl)
        })
        .collect();
    Ok(Some(PublisherAcls { by_client_id }))
}
