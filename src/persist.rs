//! The storage seam for persistent sessions: what the Registry asks the database to make
//! durable ([`StoreOp`], committed in groups by `messages::Commit`) and what it reads back at
//! start-up ([`StoredState`]). These are plain data; only `db/` knows they end up in SQLite, so
//! a second backend implements the same two operations without touching the actors.
//!
//! Only sessions with a Session Expiry Interval above 0 are stored, and only their QoS 1/2
//! messages: clean sessions and QoS 0 never touch the disk.

use std::sync::Arc;

use crate::message::AppMessage;
use crate::mqtt::QoS;
use crate::registry::subscriptions::Subscription;

/// The Will of a stored session, kept so that it can be published after a crash, or after
/// its Will Delay Interval once the connection has ended (§3.1.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWill {
    /// Topic, payload, QoS, RETAIN and forwarded properties; `expires_at_ms` is `None` here,
    /// the expiry starts when the Will is published.
    pub message: Arc<AppMessage>,
    /// The Will's Message Expiry Interval, seconds.
    pub expiry_interval: Option<u32>,
    /// Will Delay Interval, seconds.
    pub delay: u32,
}

impl StoredWill {
    /// The Will of a CONNECT, as `publisher` would publish it.
    pub fn new(will: &crate::mqtt::Will, publisher: &Arc<str>) -> StoredWill {
        StoredWill {
            message: Arc::new(AppMessage {
                topic: will.topic.as_str().into(),
                payload: will.payload.clone(),
                qos: will.qos,
                retain: will.retain,
                properties: crate::message::forwarded_properties(will.properties.clone()),
                expires_at_ms: None,
                publisher: publisher.clone(),
            }),
            expiry_interval: will.properties.message_expiry_interval,
            delay: will.properties.will_delay_interval.unwrap_or(0),
        }
    }

    /// The message to publish at `now_ms`: its expiry runs from now.
    pub fn publication(&self, now_ms: i64) -> Arc<AppMessage> {
        match self.expiry_interval {
            None => self.message.clone(),
            Some(seconds) => Arc::new(AppMessage {
                expires_at_ms: Some(now_ms + i64::from(seconds) * 1000),
                ..AppMessage::clone(&self.message)
            }),
        }
    }
}

/// When a session whose connection ended at `end_ms` expires; `None`: never (0xFFFFFFFF,
/// §3.1.2.11.2).
pub fn session_deadline(end_ms: i64, expiry_interval: u32) -> Option<i64> {
    (expiry_interval != u32::MAX).then(|| end_ms + i64::from(expiry_interval) * 1000)
}

/// One change to the durable state. A batch of them is applied in one transaction, in order.
#[derive(Debug, Clone)]
pub enum StoreOp {
    /// A connection now holds `client_id`'s session. `clean`: the previous session, if any,
    /// is deleted first (Clean Start 1) [MQTT-3.1.2-4]; else its subscriptions and messages
    /// are kept and the row is updated. Either way the session is marked connected (no
    /// expiry deadline) with this expiry interval and Will.
    OpenSession {
        client_id: Arc<str>,
        clean: bool,
        expiry_interval: u32,
        will: Option<StoredWill>,
    },
    /// The connection ended: the session expires at `expires_at_ms` (`None`: never). Its Will
    /// is due at `will_at_ms`, or is gone when that is `None`.
    CloseSession {
        client_id: Arc<str>,
        expires_at_ms: Option<i64>,
        will_at_ms: Option<i64>,
    },
    /// The session ended (expired, or replaced by a clean one): delete it and everything it
    /// holds.
    DeleteSession { client_id: Arc<str> },
    /// Add or replace a subscription.
    Subscribe {
        client_id: Arc<str>,
        filter: Arc<str>,
        subscription: Subscription,
    },
    Unsubscribe {
        client_id: Arc<str>,
        filter: Arc<str>,
    },
    /// A QoS 1/2 message for the session, to be sent with `packet_id`. The message is stored
    /// once under `message_id` however many sessions reference it.
    Enqueue {
        client_id: Arc<str>,
        message_id: i64,
        message: Arc<AppMessage>,
        delivery: StoredDelivery,
    },
    /// The client answered PUBREC: from now on PUBREL is sent for it, never the PUBLISH again
    /// [MQTT-4.3.3-6].
    Released { client_id: Arc<str>, packet_id: u16 },
    /// The outbound exchange of `packet_id` is over (PUBACK, PUBCOMP, or dropped).
    Completed { client_id: Arc<str>, packet_id: u16 },
    /// An inbound QoS 2 PUBLISH was accepted: a re-sent one with this id is a duplicate until
    /// PUBREL [MQTT-4.3.3-10].
    InboundQos2 { client_id: Arc<str>, packet_id: u16 },
    /// PUBREL arrived for an inbound QoS 2 id: the id is free again. PUBCOMP is sent only once
    /// this is committed, so a reused id is never taken for a duplicate (bad-inputs.md 3.3).
    InboundReleased { client_id: Arc<str>, packet_id: u16 },
}

/// How a queued message goes out to one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    /// Queue order within the session.
    pub seq: i64,
    pub packet_id: u16,
    /// min(published QoS, granted QoS): 1 or 2.
    pub qos: QoS,
    /// The RETAIN flag to send.
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// PUBREC received: PUBREL is what is owed now.
    pub released: bool,
}

/// A session as read back at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    pub client_id: String,
    pub expiry_interval: u32,
    /// `None`: it was connected when the broker stopped, i.e. the broker crashed.
    pub expires_at_ms: Option<i64>,
    pub will: Option<StoredWill>,
    /// When its Will is due, for a session whose connection had ended.
    pub will_at_ms: Option<i64>,
    pub subscriptions: Vec<(String, Subscription)>,
    /// Its messages in queue order, each with the message it carries.
    pub queue: Vec<(Arc<AppMessage>, StoredDelivery)>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound_qos2: Vec<u16>,
    /// The username its last connection authenticated as (from the `clients` record), which
    /// owns it under `client_id_binding`; `None`: anonymous, or not recorded.
    pub username: Option<String>,
}

/// Everything read back at start-up.
#[derive(Debug, Clone, Default)]
pub struct StoredState {
    pub sessions: Vec<StoredSession>,
    /// The last time the previous run was known alive (ms since the Unix epoch), to date the
    /// end of sessions that were connected at a crash.
    pub last_alive_ms: Option<i64>,
    /// Above every stored message id and queue seq, to continue numbering from.
    pub next_message_id: i64,
    pub next_seq: i64,
}

/// The durability levels of `durability` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// WAL with synchronous=NORMAL; acknowledgements wait for the commit: survives kill -9,
    /// panics and OOM kills, not necessarily power loss.
    #[default]
    Process,
    /// WAL with synchronous=FULL: the WAL is fsynced at every commit, so acknowledged state
    /// also survives power loss on a disk that honours flushes.
    Power,
}

impl Durability {
    /// The `PRAGMA synchronous` value for this level.
    pub fn synchronous(self) -> &'static str {
        match self {
            Durability::Process => "NORMAL",
            Durability::Power => "FULL",
        }
    }
}
