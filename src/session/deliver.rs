//! Outbound messages: the pump that takes deliveries from the session's bounded queue, and
//! the writing of each as a PUBLISH, within the client's Receive Maximum [MQTT-3.3.4-9],
//! Maximum Packet Size [MQTT-3.1.2-25] and Topic Alias Maximum.
//!
//! The queue is only read while the client can take more: when its Receive Maximum is used up,
//! or the socket's write buffer is over its high-water mark (actix `FramedWrite` then pauses
//! the actor), the queue fills and the Registry drops further messages for this client.

use std::future::poll_fn;
use std::sync::atomic::Ordering;

use actix::prelude::*;
use log::debug;

use super::bypass::{LENT_IDS, Pumped};
use super::{Client, Outbound, Phase, Session};
use crate::acl::AclAction;
use crate::clock::unix_millis;
use crate::message::{AppMessage, Delivery};
use crate::mqtt::{Frame, OutPublish, QoS};
use crate::stats::Counters;

/// Deliveries taken from the queue per wake-up: enough to amortise the wake-up, few enough to
/// bound what waits in `pending` when the Receive Maximum is reached.
const PUMP_BATCH: usize = 16;

/// Deliveries written per turn of the actor when draining `pending`.
const RELEASE_BATCH: usize = 64;

impl Session {
    /// Waits for the next deliveries, unless already waiting or the client cannot take more.
    pub(super) fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.pumping || self.phase != Phase::Connected || !self.pending.is_empty() {
            return;
        }
        let Some(mut queue) = self.deliveries.take() else {
            return;
        };
        self.lend_ids();
        self.pumping = true;
        let bypass = self.bypass.clone();
        let watch = self.watch.clone();
        async move {
            let mut batch = Vec::new();
            let first = match &bypass {
                Some(bypass) => poll_fn(|cx| bypass.poll_next(&mut queue, &watch, cx)).await,
                None => Pumped::Delivery(queue.recv().await),
            };
            let residue = match first {
                Pumped::Residue(residue) => Some(residue),
                Pumped::Delivery(None) => None,
                Pumped::Delivery(Some(first)) => {
                    batch.push(first);
                    // Woken by one delivery, let the Arbiter's other ready sessions run first:
                    // the publishers among them fill the queue meanwhile, so one write carries
                    // a batch instead of a message (fan-out QoS 1: ~10 % less CPU per message).
                    tokio::task::yield_now().await;
                    while batch.len() < PUMP_BATCH {
                        match queue.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    None
                }
            };
            (queue, batch, residue)
        }
        .into_actor(self)
        .map(|(queue, batch, residue), act, ctx| {
            act.pumping = false;
            if let Some(residue) = residue {
                // The end of a PUBLISH a publisher's thread began: before anything else.
                act.deliveries = Some(queue);
                act.write(Frame::Raw(residue));
                act.pump(ctx);
                return;
            }
            // An empty batch means the Registry dropped the sender: nothing more will come.
            if batch.is_empty() {
                return;
            }
            act.deliveries = Some(queue);
            act.pending.extend(batch);
            act.release(ctx);
        })
        .spawn(ctx);
    }

    /// Writes pending deliveries while the client's Receive Maximum allows, then pumps again.
    /// Every change to `inflight` is followed by a call to this (after CONNACK, a write, an
    /// acknowledgement), so it also updates the gauge the admin API reads.
    pub(super) fn release(&mut self, ctx: &mut Context<Self>) {
        self.write_pending(ctx);
        if let Some(client) = &self.client {
            self.inflight_gauge
                .store(client.inflight.len() - client.lent, Ordering::Relaxed);
        }
    }

    /// Takes the packet ids the bypass used in flight, then lends it free ones for QoS 1/2
    /// direct writes: up to `LENT_IDS`, an eighth of the client's Receive Maximum at most (they
    /// count against it while lent). None to a persistent session: its QoS 1/2 deliveries are
    /// numbered by the Registry.
    pub(super) fn lend_ids(&mut self) {
        self.reclaim_ids();
        let (Some(bypass), Some(client)) = (&self.bypass, self.client.as_mut()) else {
            return;
        };
        let window = usize::from(client.receive_maximum);
        let wanted = if client.is_stored() {
            0
        } else {
            LENT_IDS.min(window / 8)
        };
        let mut ids = Vec::new();
        while client.lent < wanted && client.inflight.len() < window {
            let id = client.next_free_packet_id();
            client.inflight.insert(id, Outbound::Lent);
            client.lent += 1;
            ids.push(id);
        }
        if !ids.is_empty() {
            bypass.lend(ids);
        }
    }

    /// Takes the packet ids the bypass sent a PUBLISH with into `inflight`, as sent: before
    /// any acknowledgement is matched against it.
    pub(super) fn reclaim_ids(&mut self) {
        let (Some(bypass), Some(client)) = (&self.bypass, self.client.as_mut()) else {
            return;
        };
        let mut used = Vec::new();
        bypass.take_used(&mut used);
        for (id, qos) in used {
            let state = if qos == QoS::AtLeastOnce {
                Outbound::Qos1Sent
            } else {
                Outbound::Qos2Sent
            };
            client.inflight.insert(id, state);
            client.lent -= 1;
        }
    }

    fn write_pending(&mut self, ctx: &mut Context<Self>) {
        let mut written = 0;
        while self.refill()
            && let Some(delivery) = self.pending.front()
        {
            let window_full = self.client.as_ref().is_none_or(|c| {
                delivery.qos != QoS::AtMostOnce
                    && c.inflight.len() >= usize::from(c.receive_maximum)
            });
            if window_full {
                return;
            }
            if written == RELEASE_BATCH {
                // A long backlog (a busy queue, the retained messages of a `#` subscription)
                // is written in slices, so the writer can flush, and pause this actor at its
                // high-water mark, in between: the write buffer stays small. A yield, not a
                // timer: `run_later` rounds up to the timer's 1 ms tick, which capped a busy
                // subscriber at 64 messages per millisecond.
                tokio::task::yield_now()
                    .into_actor(self)
                    .map(|(), act, ctx| act.release(ctx))
                    .spawn(ctx);
                return;
            }
            if let Some(delivery) = self.pending.pop_front() {
                if let Some(skipped) = self.write_delivery(delivery) {
                    // Dropped as if delivered: a stored copy must not be sent again.
                    self.forget_stored(skipped, ctx);
                }
                written += 1;
            }
        }
        self.pump(ctx);
    }

    /// Whether a delivery is pending, after moving what is already in the queue to `pending`
    /// if none was: a busy subscriber's queue is rarely empty, and waiting on it costs a
    /// spawned future.
    fn refill(&mut self) -> bool {
        if !self.pending.is_empty() {
            return true;
        }
        if self.pumping || self.phase != Phase::Connected {
            return false;
        }
        let Some(queue) = self.deliveries.as_mut() else {
            return false;
        };
        while self.pending.len() < PUMP_BATCH {
            match queue.try_recv() {
                Ok(next) => self.pending.push_back(next),
                Err(_) => break,
            }
        }
        !self.pending.is_empty()
    }

    /// Writes one delivery as a PUBLISH. A delivery that is skipped instead (not authorised,
    /// expired, too large) returns its stored packet id, if it has one.
    fn write_delivery(&mut self, delivery: Delivery) -> Option<u16> {
        let counters = &self.shared.counters;
        let client = self.client.as_mut()?;
        let message = &delivery.message;
        if !client.acl.allows(AclAction::Receive, &message.topic) {
            debug!(
                "{:?}: not authorised to receive {:?}",
                client.client_id, message.topic
            );
            return delivery.packet_id;
        }
        let expiry = match message.expires_at_ms {
            Some(_) => message.remaining_expiry(unix_millis()),
            None => None,
        };
        if expiry == Some(0) {
            Counters::add(&counters.dropped_expired);
            return delivery.packet_id;
        }
        let mut publish = OutPublish {
            // [MQTT-3.3.1-1]; never for QoS 0 [MQTT-3.3.1-2].
            dup: delivery.dup && delivery.qos != QoS::AtMostOnce,
            qos: delivery.qos,
            retain: delivery.retain,
            packet_id: (delivery.qos != QoS::AtMostOnce).then_some(0),
            topic_alias: None,
            send_topic: true,
            message_expiry_interval: expiry,
            subscription_identifiers: delivery.subscription_ids.into(),
            message: delivery.message,
        };
        if let Some(max) = client.maximum_packet_size {
            // Sized with the full topic plus room for a Topic Alias: the largest form it takes.
            let size = publish.encoded_len(client.protocol) + 3;
            if size > max as usize {
                debug!(
                    "{:?}: {size}-byte PUBLISH over its maximum of {max}",
                    client.client_id
                );
                Counters::add(&counters.dropped_too_large);
                return delivery.packet_id;
            }
        }
        apply_topic_alias(client, &mut publish);
        if publish.qos != QoS::AtMostOnce {
            // A stored message keeps the id it was stored with [MQTT-4.4.0-1].
            let id = match delivery.packet_id {
                Some(id) => id,
                None => client.next_free_packet_id(),
            };
            publish.packet_id = Some(id);
            let state = if publish.qos == QoS::AtLeastOnce {
                Outbound::Qos1Sent
            } else {
                Outbound::Qos2Sent
            };
            client.inflight.insert(id, state);
        }
        counters.messages_sent.add(publish.qos);
        counters
            .bytes_sent
            .add_n(publish.qos, publish.message.payload.len());
        self.write(Frame::Publish(publish));
        None
    }
}

/// The broker gives aliases to the first topics it sends, up to the client's Topic Alias
/// Maximum; later messages on those topics carry the alias and an empty topic (§3.3.2.3.4).
fn apply_topic_alias(client: &mut Client, publish: &mut OutPublish<AppMessage>) {
    if client.topic_alias_maximum == 0 {
        return;
    }
    let topic = &publish.message.topic;
    let aliases = &mut client.aliases.get_or_insert_default().outbound;
    if let Some(&alias) = aliases.get(topic) {
        publish.send_topic = false;
        publish.topic_alias = Some(alias);
    } else if aliases.len() < usize::from(client.topic_alias_maximum) {
        let alias = aliases.len() as u16 + 1;
        aliases.insert(topic.clone(), alias);
        publish.topic_alias = Some(alias);
    }
}

impl Client {
    /// A packet id not used by any outbound exchange in flight. The caller keeps `inflight`
    /// below the Receive Maximum (at most 65,535), so a free id always exists.
    fn next_free_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
    }
}
