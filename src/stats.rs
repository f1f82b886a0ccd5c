//! Broker-wide counters, shared by every actor (relaxed atomics: they are statistics, not
//! synchronisation).

use std::sync::atomic::{AtomicU64, Ordering};

/// Messages the broker did not deliver, by reason. Each drop is also logged at debug level.
#[derive(Debug, Default)]
pub struct Counters {
    /// QoS 0 deliveries dropped because the subscriber's queue was full.
    pub dropped_qos0: AtomicU64,
    /// QoS 1/2 deliveries dropped because the subscriber's queue was full (drop-new policy).
    pub dropped_queue_full: AtomicU64,
    /// Deliveries larger than the subscriber's Maximum Packet Size [MQTT-3.1.2-25].
    pub dropped_too_large: AtomicU64,
    /// Messages whose Message Expiry Interval ran out before delivery [MQTT-3.3.2-5].
    pub dropped_expired: AtomicU64,
    /// Retained messages for new topics refused over `max_retained_messages` (delivered live).
    pub retained_refused: AtomicU64,
    /// QoS 1/2 messages dropped for an offline persistent session over `max_queued_messages`
    /// or `max_queued_bytes` (drop-new), or with all 65,535 packet ids in use.
    pub dropped_session_full: AtomicU64,
    /// Persistent sessions that expired (and their Wills, if any, were published).
    pub sessions_expired: AtomicU64,
    /// Group commits of persistent-session state, and those that failed (nothing they held
    /// was acknowledged as a success).
    pub commits: AtomicU64,
    pub commits_failed: AtomicU64,
    /// PUBLISH packets received from clients.
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: AtomicU64,
}

impl Counters {
    /// How many counters there are (the length of [`Counters::all`]).
    pub const LEN: usize = 11;

    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Every counter with its metric name (`mqttd_<name>_total` on `/metrics`) and help text,
    /// read now. The destructuring names every field, so a new counter does not compile until
    /// it is listed here too.
    pub fn all(&self) -> [(&'static str, &'static str, u64); Self::LEN] {
        let Counters {
            dropped_qos0,
            dropped_queue_full,
            dropped_too_large,
            dropped_expired,
            retained_refused,
            dropped_session_full,
            sessions_expired,
            commits,
            commits_failed,
            messages_received,
            messages_sent,
        } = self;
        [
            (
                "messages_received",
                "PUBLISH packets received from clients",
                Self::get(messages_received),
            ),
            (
                "messages_sent",
                "PUBLISH packets sent to clients",
                Self::get(messages_sent),
            ),
            (
                "dropped_qos0",
                "QoS 0 deliveries dropped because the subscriber's queue was full",
                Self::get(dropped_qos0),
            ),
            (
                "dropped_queue_full",
                "QoS 1/2 deliveries dropped because the subscriber's queue was full",
                Self::get(dropped_queue_full),
            ),
            (
                "dropped_too_large",
                "Deliveries larger than the subscriber's Maximum Packet Size",
                Self::get(dropped_too_large),
            ),
            (
                "dropped_expired",
                "Messages whose Message Expiry Interval ran out before delivery",
                Self::get(dropped_expired),
            ),
            (
                "dropped_session_full",
                "QoS 1/2 messages dropped for a full offline persistent session",
                Self::get(dropped_session_full),
            ),
            (
                "retained_refused",
                "Retained messages for new topics refused over max_retained_messages",
                Self::get(retained_refused),
            ),
            (
                "sessions_expired",
                "Persistent sessions that expired",
                Self::get(sessions_expired),
            ),
            (
                "commits",
                "Group commits of persistent-session state",
                Self::get(commits),
            ),
            (
                "commits_failed",
                "Group commits of persistent-session state that failed",
                Self::get(commits_failed),
            ),
        ]
    }
}
