//! Inbound PUBLISH and the acknowledgements of both directions (§3.3-§3.7).
//!
//! Inbound QoS 2 uses the spec's "method A": the message is passed on when the PUBLISH
//! arrives, and a re-sent PUBLISH with a packet id still awaiting PUBREL is only acknowledged
//! again, never passed on twice [MQTT-4.3.3-10].

use std::sync::Arc;

use actix::prelude::*;
use log::{debug, warn};

use tokio::sync::{mpsc, oneshot};

use super::{AckState, Outbound, PendingAck, Session, SessionError};
use crate::clock::unix_millis;
use crate::message::{AppMessage, Delivery};
use crate::messages::{AckStep, Acknowledged, Publish as RoutePublish, StoreRetained};
use crate::mqtt::{Ack, Packet, Properties, Publish, QoS, ReasonCode, topic};
use crate::persist::StoredWill;
use crate::registry::subscriptions::Route;
use crate::registry::{HOLD_LIMIT, Registry};
use crate::stats::Counters;

impl Session {
    pub(super) fn on_publish(
        &mut self,
        publish: Publish,
        ctx: &mut Context<Self>,
    ) -> Result<(), SessionError> {
        let receive_maximum = self.shared.config.limits.receive_maximum;
        let alias_maximum = self.shared.config.limits.topic_alias_maximum;
        let counters = &self.shared.counters;
        counters.messages_received.add(publish.qos);
        counters
            .bytes_received
            .add_n(publish.qos, publish.payload.len());
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
                .aliases
                .as_ref()
                .and_then(|a| a.inbound.get(&alias))
                .cloned()
                .ok_or(SessionError::UnknownTopicAlias(alias))?,
            (alias, false) => {
                if topic::validate_topic_name(&publish.topic).is_err()
                    || self.shared.config.topic_over_limits(&publish.topic)
                {
                    return Err(SessionError::TopicNameInvalid(publish.topic));
                }
                // A publisher mostly repeats its last topic: share that copy.
                let topic: Arc<str> = match self.routes.as_ref().and_then(|r| r.topic()) {
                    Some(last) if **last == *publish.topic => last.clone(),
                    _ => publish.topic.into(),
                };
                if let Some(alias) = alias {
                    let aliases = client.aliases.get_or_insert_default();
                    aliases.inbound.insert(alias, topic.clone());
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
        let message = Arc::new(AppMessage {
            topic,
            payload: publish.payload,
            qos,
            retain: publish.retain,
            expires_at_ms: p
                .message_expiry_interval
                .map(|s| unix_millis() + i64::from(s) * 1000),
            properties: crate::message::forwarded_properties(publish.properties),
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

    /// Routes a message and acknowledges it (QoS 1/2) once it is in every subscriber's queue:
    /// at once if the session could deliver it all itself (see `registry::router`), else when
    /// the Registry has delivered the rest.
    fn route_and_acknowledge(
        &mut self,
        message: Arc<AppMessage>,
        packet_id: u16,
        ctx: &mut Context<Self>,
    ) {
        let qos = message.qos;
        if qos == QoS::ExactlyOnce
            && let Some(client) = self.client.as_mut()
        {
            // Known from now on, so a re-sent PUBLISH is not routed twice [MQTT-4.3.3-10].
            client.awaiting_rel.insert(packet_id);
        }
        // A persistent session stores the id, so a re-sent PUBLISH is a duplicate after a
        // crash too.
        let inbound_qos2 = (qos == QoS::ExactlyOnce
            && self.client.as_ref().is_some_and(|c| c.is_stored()))
        .then_some(packet_id);
        // Retained messages and expiring ones are the Registry's (it keeps the first and
        // counts the expired), as is an id to store; nothing overtakes what waits there.
        let direct = inbound_qos2.is_none()
            && !message.retain
            && message.expires_at_ms.is_none()
            && self.in_registry.as_ref().is_none_or(|sent| sent.is_empty());
        let routes = if direct {
            let cache = self.routes.get_or_insert_default();
            let mut rest = Vec::new();
            let mut full = Vec::new();
            let counters = &self.shared.counters;
            self.shared
                .router
                .route_direct(&message, cache, &mut rest, &mut full, counters);
            if !full.is_empty() {
                self.wait_for_room(&message, full, ctx);
            }
            if rest.is_empty() {
                self.acknowledge(qos, packet_id, ReasonCode::Success);
                return;
            }
            Some(rest)
        } else {
            None
        };
        if qos == QoS::AtMostOnce {
            self.route(message, None, inbound_qos2, routes, ctx);
            return;
        }
        let (routed, when_routed) = oneshot::channel();
        self.route(message, Some(routed), inbound_qos2, routes, ctx);
        self.acks.push_back(PendingAck {
            qos,
            packet_id,
            reason: ReasonCode::Success,
            state: AckState::Routing(when_routed),
        });
        self.flush_acks(ctx);
    }

    /// QoS 0 has no acknowledgement to hold back, so a publisher whose subscriber's queue is
    /// full waits for room, reading nothing meanwhile (its deliveries and mailbox go on): TCP
    /// slows the publisher down instead of the message being dropped. A subscriber that makes
    /// no room within `HOLD_LIMIT` is left to the Registry, whose backlog for it is bounded
    /// (drop-new, counted); while that backlog lasts, nobody waits for the subscriber again.
    fn wait_for_room(
        &mut self,
        message: &Arc<AppMessage>,
        full: Vec<(Route, mpsc::Sender<Delivery>)>,
        ctx: &mut Context<Self>,
    ) {
        let message = message.clone();
        let late_message = message.clone();
        self.hold();
        async move {
            let mut late = Vec::new();
            for (mut route, queue) in full {
                match tokio::time::timeout(HOLD_LIMIT, queue.reserve_owned()).await {
                    Ok(Ok(permit)) => {
                        permit.send(route.take_delivery(&message));
                    }
                    Ok(Err(_)) => {}
                    Err(_) => late.push(route),
                }
            }
            late
        }
        .into_actor(self)
        .map(move |late, act, ctx| {
            if !late.is_empty() {
                act.route(late_message, None, None, Some(late), ctx);
            }
            act.release_hold(ctx);
        })
        .spawn(ctx);
    }

    /// Hands a message to the Registry, to route it all (`routes: None`) or the deliveries
    /// the session left to it.
    fn route(
        &mut self,
        message: Arc<AppMessage>,
        ack: Option<oneshot::Sender<bool>>,
        inbound_qos2: Option<u16>,
        routes: Option<Vec<Route>>,
        ctx: &mut Context<Self>,
    ) {
        let in_registry = self.in_registry.get_or_insert_default().clone();
        in_registry.sent();
        let publish = RoutePublish {
            message,
            ack,
            inbound_qos2,
            routes,
            sender: Some(in_registry),
        };
        self.tell_registry(publish, ctx);
    }

    /// Sends the Registry a message that needs no answer. When its mailbox is full the
    /// session waits for room and reads nothing meanwhile: backpressure reaches the client
    /// through TCP, and nothing piles up without bound.
    pub(super) fn tell_registry<M>(&mut self, msg: M, ctx: &mut Context<Self>)
    where
        M: Message<Result = ()> + Send + 'static,
        Registry: Handler<M>,
    {
        match self.shared.registry.try_send(msg) {
            Ok(()) => {}
            Err(SendError::Full(msg)) => {
                self.shared
                    .registry
                    .send(msg)
                    .into_actor(self)
                    .map(|_, _, _| ())
                    .wait(ctx);
            }
            Err(SendError::Closed(_)) => debug!("registry stopped: message not delivered"),
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

    /// Sends the acknowledgements at the front of `acks` whose messages are routed (and
    /// stored), and waits (without holding up the session) for the first one that is not.
    fn flush_acks(&mut self, ctx: &mut Context<Self>) {
        while let Some(front) = self.acks.front_mut() {
            match &mut front.state {
                AckState::Ready => {}
                AckState::Waiting => return,
                AckState::Routing(when_routed) => match when_routed.try_recv() {
                    // Closed: the Registry dropped it (a subscriber went away): routed as far
                    // as it ever will be.
                    Ok(true) | Err(oneshot::error::TryRecvError::Closed) => {}
                    Ok(false) => front.reason = ReasonCode::UnspecifiedError,
                    Err(oneshot::error::TryRecvError::Empty) => {
                        let AckState::Routing(when_routed) =
                            std::mem::replace(&mut front.state, AckState::Waiting)
                        else {
                            return;
                        };
                        when_routed
                            .into_actor(self)
                            .map(|stored, act, ctx| {
                                if let Some(front) = act.acks.front_mut() {
                                    front.state = AckState::Ready;
                                    if stored == Ok(false) {
                                        front.reason = ReasonCode::UnspecifiedError;
                                    }
                                }
                                act.flush_acks(ctx);
                            })
                            .spawn(ctx);
                        return;
                    }
                },
            }
            if let Some(ack) = self.acks.pop_front() {
                if ack.qos == QoS::ExactlyOnce
                    && ack.reason.is_failure()
                    && let Some(client) = self.client.as_mut()
                {
                    // Not stored: a failing PUBREC ends the exchange (§4.3.3), so a re-sent
                    // PUBLISH is a new attempt, not a duplicate.
                    client.awaiting_rel.remove(&ack.packet_id);
                }
                self.send_ack(ack.qos, ack.packet_id, ack.reason);
            }
        }
    }

    /// PUBREL releases a QoS 2 packet id; an unknown id gets PUBCOMP 0x92 [MQTT-4.3.3-11]. A
    /// persistent session's PUBCOMP waits until the id's release is committed: were it lost
    /// in a crash after PUBCOMP, the client's next PUBLISH reusing the id would be taken for a
    /// duplicate and dropped (bad-inputs.md 3.3).
    pub(super) fn on_pubrel(
        &mut self,
        pubrel: Ack,
        ctx: &mut Context<Self>,
    ) -> Result<(), SessionError> {
        let packet_id = pubrel.packet_id;
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        if !client.awaiting_rel.remove(&packet_id) {
            self.send_pubcomp(packet_id, ReasonCode::PacketIdentifierNotFound);
            return Ok(());
        }
        if !client.is_stored() {
            self.send_pubcomp(packet_id, ReasonCode::Success);
            return Ok(());
        }
        let (reply, committed) = oneshot::channel();
        let released = Acknowledged {
            client_id: client.client_id.clone(),
            packet_id,
            step: AckStep::InboundReleased(reply),
        };
        self.tell_registry(released, ctx);
        // `wait`: the PUBCOMPs go out in PUBREL order, and nothing is read meanwhile.
        committed
            .into_actor(self)
            .map(move |stored, act, _| {
                let reason = if stored == Ok(false) {
                    ReasonCode::UnspecifiedError
                } else {
                    ReasonCode::Success
                };
                act.send_pubcomp(packet_id, reason);
            })
            .wait(ctx);
        Ok(())
    }

    fn send_pubcomp(&mut self, packet_id: u16, reason: ReasonCode) {
        self.send(Packet::PubComp(Ack {
            packet_id,
            reason,
            properties: Properties::default(),
        }));
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
        self.reclaim_ids();
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        let packet_id = ack.packet_id;
        match client.inflight.get(&packet_id) {
            Some(Outbound::Qos2Sent) if ack.reason.is_failure() => {
                // A PUBREC with a failure code ends the exchange (§4.3.3) and frees its slot.
                self.complete(packet_id, Outbound::Qos2Sent, ctx);
            }
            Some(Outbound::Qos2Sent | Outbound::Released) if client.is_stored() => {
                // PUBREL only once "PUBREC received" is committed: after a crash the PUBLISH
                // must not be sent again [MQTT-4.3.3-6].
                client.inflight.insert(packet_id, Outbound::Released);
                let (reply, committed) = oneshot::channel();
                let released = Acknowledged {
                    client_id: client.client_id.clone(),
                    packet_id,
                    step: AckStep::Released(reply),
                };
                self.tell_registry(released, ctx);
                committed
                    .into_actor(self)
                    .map(move |_, act, _| act.send_pubrel(packet_id))
                    .spawn(ctx);
            }
            Some(Outbound::Qos2Sent | Outbound::Released) => {
                client.inflight.insert(packet_id, Outbound::Released);
                self.send_pubrel(packet_id);
            }
            _ => debug!(
                "{:?}: PUBREC for unknown id {}",
                client.client_id, ack.packet_id
            ),
        }
        Ok(())
    }

    fn send_pubrel(&mut self, packet_id: u16) {
        self.send(Packet::PubRel(Ack {
            packet_id,
            reason: ReasonCode::Success,
            ..Ack::default()
        }));
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
        self.reclaim_ids();
        let Some(client) = self.client.as_mut() else {
            return;
        };
        if client.inflight.get(&packet_id) == Some(&expected) {
            client.inflight.remove(&packet_id);
            self.forget_stored(packet_id, ctx);
            self.release(ctx);
            // The bypass may have used its ids while the session's pump waited.
            self.lend_ids();
        } else {
            debug!(
                "{:?}: unexpected acknowledgement for id {packet_id}",
                client.client_id
            );
        }
    }

    /// Tells the Registry that a stored outbound message is done with (acknowledged, or
    /// skipped), so it is not sent again. Deleting it need not be committed before anything:
    /// if the deletion is lost, the message is re-sent with DUP 1, which QoS 1 allows and a
    /// QoS 2 receiver answers without delivering twice.
    pub(super) fn forget_stored(&mut self, packet_id: u16, ctx: &mut Context<Self>) {
        let Some(client) = self.client.as_ref().filter(|c| c.is_stored()) else {
            return;
        };
        let done = Acknowledged {
            client_id: client.client_id.clone(),
            packet_id,
            step: AckStep::Completed,
        };
        self.tell_registry(done, ctx);
    }

    /// The Will, now that the connection ends without DISCONNECT 0x00 (§3.1.2.5), if the
    /// client may publish it. `None` once taken.
    pub(super) fn take_will(&mut self) -> Option<StoredWill> {
        let client = self.client.as_mut().filter(|c| c.accepted)?;
        let will = client.will.take()?;
        if !client.may_publish(&will.topic) {
            debug!(
                "{:?}: Will to {:?} not authorised",
                client.client_id, will.topic
            );
            return None;
        }
        Some(StoredWill::new(&will, &client.client_id))
    }

    /// Whether the Will waits for its delay rather than going out when the connection ends:
    /// only a persistent session outlives the connection; otherwise the session ends now,
    /// which is the earlier of the two [MQTT-3.1.3-9].
    pub(super) fn will_waits(&self) -> bool {
        self.client.as_ref().is_some_and(|c| {
            c.is_stored()
                && c.will
                    .as_ref()
                    .is_some_and(|w| w.properties.will_delay_interval.unwrap_or(0) > 0)
        })
    }

    /// The Will to publish as the connection ends, if any. One that waits is left for
    /// `stopped` to hand to the Registry, or dropped when another connection takes the
    /// session over, since that resumes it before the delay ran out [MQTT-3.1.3-9].
    pub(super) fn will_due_now(&mut self, taken_over: bool) -> Option<Arc<AppMessage>> {
        if self.will_waits() {
            if taken_over {
                self.take_will();
            }
            return None;
        }
        self.take_will().map(|w| w.publication(unix_millis()))
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
                    inbound_qos2: None,
                    routes: None,
                    sender: None,
                })
                .await;
        }
    }
}
