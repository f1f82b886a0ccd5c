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
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
