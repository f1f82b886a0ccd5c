//! Inbound PUBLISH and the acknowledgements of both directions (§3.3-§3.7).
//!
//! Inbound QoS 2 uses the spec's "method A": the message is passed on when the PUBLISH
//! arrives, and a re-sent PUBLISH with a packet id still awaiting PUBREL is only acknowledged
//! again, never passed on twice [MQTT-4.3.3-10].

use std::sync::Arc;

use actix::prelude::*;
use log::{debug, warn};

use tokio::sync::oneshot;

use super::{AckState, Outbound, PendingAck, Session, SessionError};
use crate::clock::unix_millis;
use crate::message::AppMessage;
use crate::messages::{Publish as RoutePublish, StoreRetained};
use crate::mqtt::{Ack, Packet, Properties, Publish, QoS, ReasonCode, topic};
use crate::stats::Counters;

impl Session {
    pub(super) fn on_publish(
        &mut self,
        publish: Publish,
        ctx: &mut Context<Self>,
    ) -> Result<(), SessionError> {
        let receive_maximum = self.shared.config.limits.receive_maximum;
        let alias_maximum = self.shared.config.limits.topic_alias_maximum;
        Counters::add(&self.shared.counters.messages_received);
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        let p = &publish.properties;
        if !p.subscription_identifiers.is_empty() {
            return Err(SessionError::SubscriptionIdentifierInPublish);
        }
        if let Some(response) = &p.response_topic
            && topic::validate_topic_name(response).is_err()
        {
            return Err(SessionError::InvalidResponseTopic(response.clone()));
        }
        let topic: Arc<str> = match (p.topic_alias, publish.topic.is_empty()) {
            (Some(alias), _) if alias > alias_maximum => {
                return Err(SessionError::TopicAliasInvalid(alias));
            }
            (Some(alias), true) => client
                .aliases_in
                .get(&alias)
                .cloned()
                .ok_or(SessionError::UnknownTopicAlias(alias))?,
            (alias, false) => {
                if topic::validate_topic_name(&publish.topic).is_err()
                    || self.shared.config.topic_over_limits(&publish.topic)
                {
                    return Err(SessionError::TopicNameInvalid(publish.topic));
                }
                let topic: Arc<str> = publish.topic.into();
                if let Some(alias) = alias {
                    client.aliases_in.insert(alias, topic.clone());
                }
                topic
            }
            (None, true) => return Err(SessionError::EmptyTopic),
        };
        let (qos, packet_id) = (publish.qos, publish.packet_id.unwrap_or(0));
        if qos == QoS::ExactlyOnce && client.awaiting_rel.contains(&packet_id) {
            self.acknowledge(qos, packet_id, ReasonCode::Success);
            return Ok(());
        }
        // Unacknowledged QoS 1/2 from this client: QoS 2 until PUBREL, QoS 1 until its PUBACK
        // is sent (which waits for routing, see `route_and_acknowledge`).
        let pending_qos1 = self
            .acks
            .iter()
            .filter(|a| a.qos == QoS::AtLeastOnce)
            .count();
        let unacknowledged = client.awaiting_rel.len() + pending_qos1;
        if qos != QoS::AtMostOnce && unacknowledged >= usize::from(receive_maximum) {
            return Err(SessionError::ReceiveMaximumExceeded(receive_maximum));
        }
        if !client.may_publish(&topic) {
            debug!(
                "{:?}: PUBLISH to {topic:?} not authorised",
                client.client_id
            );
            self.acknowledge(qos, packet_id, ReasonCode::NotAuthorized);
            return Ok(());
        }
        let now = unix_millis();
        let message = Arc::new(AppMessage {
            topic,
            payload: publish.payload,
            qos,
            retain: publish.retain,
            expires_at_ms: p.message_expiry_interval.map(|s| now + i64::from(s) * 1000),
            properties: forwarded_properties(publish.properties),
            publisher: client.client_id.clone(),
        });
        if message.retain {
            // The retained store changes only once the database has it; the session reads no
            // further packet until then, which keeps the publisher's order.
            let max_messages = self.shared.config.limits.max_retained_messages;
            self.shared
                .db
                .send(StoreRetained {
                    message: message.clone(),
                    max_messages,
                })
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(Ok(true)) => act.route_and_acknowledge(message, packet_id, ctx),
                    Ok(Ok(false)) => {
                        let live = act.retained_over_quota(&message);
                        act.route_and_acknowledge(live, packet_id, ctx);
                    }
                    Ok(Err(e)) => {
                        warn!("storing a retained message failed: {e}");
                        act.acknowledge(qos, packet_id, ReasonCode::UnspecifiedError);
                    }
                    Err(e) => {
                        warn!("database actor unavailable: {e}");
                        act.acknowledge(qos, packet_id, ReasonCode::UnspecifiedError);
                    }
                })
                .wait(ctx);
        } else {
            self.route_and_acknowledge(message, packet_id, ctx);
        }
        Ok(())
    }

    /// The message to deliver when its topic could not be retained (`max_retained_messages`):
    /// delivered live, without RETAIN, so the Registry does not keep it either (as EMQX does
    /// for retained messages over its limits). Counted.
    fn retained_over_quota(&self, message: &Arc<AppMessage>) -> Arc<AppMessage> {
        if message.retain {
            Counters::add(&self.shared.counters.retained_refused);
        }
        Arc::new(AppMessage {
            retain: false,
            ..AppMessage::clone(message)
        })
    }

    /// Routes a message and acknowledges it (QoS 1/2) once the Registry has put it in every
    /// subscriber's queue.
    fn route_and_acknowledge(
        &mut self,
        message: Arc<AppMessage>,
        packet_id: u16,
        ctx: &mut Context<Self>,
    ) {
        let qos = message.qos;
        if qos == QoS::AtMostOnce {
            self.route(message, None, ctx);
            return;
        }
        if qos == QoS::ExactlyOnce
            && let Some(client) = self.client.as_mut()
        {
            // Known from now on, so a re-sent PUBLISH is not routed twice [MQTT-4.3.3-10].
            client.awaiting_rel.insert(packet_id);
        }
        let (routed, when_routed) = oneshot::channel();
        self.route(message, Some(routed), ctx);
        self.acks.push_back(PendingAck {
            qos,
            packet_id,
            reason: ReasonCode::Success,
            state: AckState::Routing(when_routed),
        });
        self.flush_acks(ctx);
    }

    /// Hands a message to the Registry. When its mailbox is full the session waits for room
    /// and reads nothing meanwhile: backpressure reaches the publisher through TCP.
    fn route(
        &mut self,
        message: Arc<AppMessage>,
        ack: Option<oneshot::Sender<()>>,
        ctx: &mut Context<Self>,
    ) {
        match self.shared.registry.try_send(RoutePublish { message, ack }) {
            Ok(()) => {}
            Err(SendError::Full(msg)) => {
                self.shared
                    .registry
                    .send(msg)
                    .into_actor(self)
                    .map(|_, _, _| ())
                    .wait(ctx);
            }
            Err(SendError::Closed(_)) => debug!("registry stopped: message not routed"),
        }
    }

    /// PUBACK for QoS 1, PUBREC for QoS 2, in the order the PUBLISH packets arrived
    /// [MQTT-4.6.0-2] [MQTT-4.6.0-3]: behind any acknowledgement still waiting for routing.
    fn acknowledge(&mut self, qos: QoS, packet_id: u16, reason: ReasonCode) {
        if qos == QoS::AtMostOnce {
            return;
        }
        if self.acks.is_empty() {
            self.send_ack(qos, packet_id, reason);
        } else {
            self.acks.push_back(PendingAck {
                qos,
                packet_id,
                reason,
                state: AckState::Ready,
            });
        }
    }

    fn send_ack(&mut self, qos: QoS, packet_id: u16, reason: ReasonCode) {
        let ack = Ack {
            packet_id,
            reason,
            properties: Properties::default(),
        };
        if qos == QoS::AtLeastOnce {
            self.send(Packet::PubAck(ack));
        } else {
            self.send(Packet::PubRec(ack));
        }
    }

    /// Sends the acknowledgements at the front of `acks` whose messages are routed, and waits
    /// (without holding up the session) for the first one that is not.
    fn flush_acks(&mut self, ctx: &mut Context<Self>) {
        while let Some(front) = self.acks.front_mut() {
            match &mut front.state {
                AckState::Ready => {}
                AckState::Waiting => return,
                AckState::Routing(when_routed) => match when_routed.try_recv() {
                    // Closed: the Registry dropped it (a subscriber went away): routed as far
                    // as it ever will be.
                    Ok(()) | Err(oneshot::error::TryRecvError::Closed) => {}
                    Err(oneshot::error::TryRecvError::Empty) => {
                        let AckState::Routing(when_routed) =
                            std::mem::replace(&mut front.state, AckState::Waiting)
                        else {
                            return;
                        };
                        when_routed
                            .into_actor(self)
                            .map(|_, act, ctx| {
                                if let Some(front) = act.acks.front_mut() {
                                    front.state = AckState::Ready;
                                }
                                act.flush_acks(ctx);
                            })
                            .spawn(ctx);
                        return;
                    }
                },
            }
            if let Some(ack) = self.acks.pop_front() {
                self.send_ack(ack.qos, ack.packet_id, ack.reason);
            }
        }
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
            properties: Properties::default(),
        }));
        Ok(())
    }

    /// PUBACK ends an outbound QoS 1 exchange. Acknowledgements of unknown ids, or of the wrong
    /// kind, are ignored, as [MQTT-2.2.1-5] lets a receiver do.
    pub(super) fn on_puback(
        &mut self,
        ack: Ack,
        ctx: &mut Context<Self>,
    ) -> Result<(), SessionError> {
        self.complete(ack.packet_id, Outbound::Qos1Sent, ctx);
        Ok(())
    }

    /// PUBREC moves an outbound QoS 2 exchange on to PUBREL, unless it reports a failure.
    pub(super) fn on_pubrec(
        &mut self,
        ack: Ack,
        ctx: &mut Context<Self>,
    ) -> Result<(), SessionError> {
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        match client.inflight.get(&ack.packet_id) {
            Some(Outbound::Qos2Sent) if ack.reason.is_failure() => {
                // A PUBREC with a failure code ends the exchange (§4.3.3) and frees its slot.
                client.inflight.remove(&ack.packet_id);
                self.release(ctx);
            }
            Some(Outbound::Qos2Sent | Outbound::Released) => {
                client.inflight.insert(ack.packet_id, Outbound::Released);
                let pubrel = Ack {
                    packet_id: ack.packet_id,
                    reason: ReasonCode::Success,
                    ..Ack::default()
                };
                self.send(Packet::PubRel(pubrel));
            }
            _ => debug!(
                "{:?}: PUBREC for unknown id {}",
                client.client_id, ack.packet_id
            ),
        }
        Ok(())
    }

    pub(super) fn on_pubcomp(
        &mut self,
        ack: Ack,
        ctx: &mut Context<Self>,
    ) -> Result<(), SessionError> {
        self.complete(ack.packet_id, Outbound::Released, ctx);
        Ok(())
    }

    fn complete(&mut self, packet_id: u16, expected: Outbound, ctx: &mut Context<Self>) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        if client.inflight.get(&packet_id) == Some(&expected) {
            client.inflight.remove(&packet_id);
            self.release(ctx);
        } else {
            debug!(
                "{:?}: unexpected acknowledgement for id {packet_id}",
                client.client_id
            );
        }
    }

    /// The Will to publish now that the connection ends without DISCONNECT 0x00 (§3.1.2.5),
    /// if the client may publish it. Sessions end with their connection for now, so it is due
    /// at once, whatever the Will Delay. `None` once taken.
    pub(super) fn take_will(&mut self) -> Option<Arc<AppMessage>> {
        let client = self.client.as_mut().filter(|c| c.accepted)?;
        let will = client.will.take()?;
        if !client.may_publish(&will.topic) {
            debug!(
                "{:?}: Will to {:?} not authorised",
                client.client_id, will.topic
            );
            return None;
        }
        Some(Arc::new(AppMessage {
            topic: will.topic.into(),
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            expires_at_ms: will
                .properties
                .message_expiry_interval
                .map(|s| unix_millis() + i64::from(s) * 1000),
            properties: forwarded_properties(will.properties),
            publisher: client.client_id.clone(),
        }))
    }

    /// Publishes a Will like any retained-or-not PUBLISH: a retained Will is committed before
    /// the Registry sees it, so the database and memory agree on the order of retained
    /// updates.
    pub(super) fn will_publication(
        &self,
        will: Arc<AppMessage>,
    ) -> impl Future<Output = ()> + 'static {
        let db = self.shared.db.clone();
        let registry = self.shared.registry.clone();
        let max_messages = self.shared.config.limits.max_retained_messages;
        let over_quota = self.retained_over_quota(&will);
        async move {
            let mut will = will;
            if will.retain {
                let store = StoreRetained {
                    message: will.clone(),
                    max_messages,
                };
                match db.send(store).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => will = over_quota,
                    Ok(Err(e)) => warn!("storing a retained Will failed: {e}"),
                    Err(e) => warn!("database actor unavailable: {e}"),
                }
            }
            let _ = registry
                .send(RoutePublish {
                    message: will,
                    ack: None,
                })
                .await;
        }
    }
}

/// The properties a subscriber receives unchanged and in order [MQTT-3.3.2-17..18]; Topic
/// Alias, Message Expiry, Will Delay and Subscription Identifiers are per hop.
fn forwarded_properties(p: Properties) -> Properties {
    Properties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        ..Properties::default()
    }
}
