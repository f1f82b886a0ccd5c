//! The application message as the broker holds it between its publisher and its subscribers.

use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;

use crate::mqtt::{Properties, PropertyValues, QoS, SharedPublish};

/// One published message, shared (`Arc`) by every delivery of it; the payload is never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMessage {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// QoS as published; each delivery uses min(this, the subscription's QoS).
    pub qos: QoS,
    /// RETAIN as published.
    pub retain: bool,
    /// The properties forwarded to subscribers unchanged [MQTT-3.3.2-17..18]: Payload Format
    /// Indicator, Content Type, Response Topic, Correlation Data, User Properties. Topic Alias,
    /// Subscription Identifiers and Message Expiry are never stored here.
    pub properties: Properties,
    /// When the message expires (Message Expiry Interval), in ms since the Unix epoch.
    pub expires_at_ms: Option<i64>,
    /// Client identifier of the publisher (for No Local).
    pub publisher: Arc<str>,
}

impl AppMessage {
    /// Seconds of Message Expiry left at `now_ms`, rounded up; `Some(0)` means expired. `None`
    /// when the message does not expire [MQTT-3.3.2-5] [MQTT-3.3.2-6].
    pub fn remaining_expiry(&self, now_ms: i64) -> Option<u32> {
        self.expires_at_ms.map(|at| {
            let left = (at - now_ms).max(0);
            u32::try_from((left + 999) / 1000).unwrap_or(u32::MAX)
        })
    }
}

impl SharedPublish for AppMessage {
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

/// One message on its way to one subscriber: what the Registry puts in a session's bounded
/// delivery queue.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<AppMessage>,
    /// min(published QoS, granted QoS).
    pub qos: QoS,
    /// The RETAIN flag to send: 1 for retained messages sent on subscribe, else as published
    /// only when the subscription asked for Retain As Published [MQTT-3.3.1-12].
    pub retain: bool,
    /// Subscription Identifiers of the matching subscriptions [MQTT-3.3.4-3].
    pub subscription_ids: SubscriptionIds,
    /// Set by the Registry for a persistent session, whose QoS 1/2 messages are numbered when
    /// stored so that they are re-sent with the same id after a reconnect or a crash
    /// [MQTT-4.4.0-1]; `None`: the session picks an id when it sends the message.
    pub packet_id: Option<u16>,
    /// This may be a re-delivery (it was handed to an earlier connection) [MQTT-3.3.1-1].
    pub dup: bool,
}

/// The Subscription Identifiers of a delivery, behind one thin pointer, absent when there are
/// none (most deliveries). A session's delivery queue allocates 32 `Delivery` slots when it
/// is created, so every byte here costs 32 per idle connection; a `Vec` made `Delivery` 40
/// bytes instead of 24.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[expect(
    clippy::box_collection,
    reason = "the thin pointer is the point: a boxed slice would take 16 bytes"
)]
pub struct SubscriptionIds(Option<Box<Vec<u32>>>);

impl From<Vec<u32>> for SubscriptionIds {
    fn from(ids: Vec<u32>) -> Self {
        SubscriptionIds((!ids.is_empty()).then(|| Box::new(ids)))
    }
}

impl From<SubscriptionIds> for Vec<u32> {
    fn from(ids: SubscriptionIds) -> Self {
        ids.0.map(|ids| *ids).unwrap_or_default()
    }
}

impl FromIterator<u32> for SubscriptionIds {
    fn from_iter<I: IntoIterator<Item = u32>>(ids: I) -> Self {
        Vec::from_iter(ids).into()
    }
}

impl Deref for SubscriptionIds {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

/// The properties a subscriber receives unchanged and in order [MQTT-3.3.2-17..18]; Topic
/// Alias, Message Expiry, Will Delay and Subscription Identifiers are per hop.
pub fn forwarded_properties(p: Properties) -> Properties {
    if p.is_empty() {
        return p;
    }
    let p = p.into_values();
    Properties::from(PropertyValues {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        ..PropertyValues::default()
    })
}
