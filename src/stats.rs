//! Broker-wide counters, shared by every actor (relaxed atomics: they are statistics, not
//! synchronisation), and the `$SYS` load averages computed from them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    /// CONNECT packets received (accepted or not): `$SYS/broker/load/connections/*`.
    pub connects_received: AtomicU64,
    /// Connections closed at accept: over `max_connections`, the per-address caps, or from a
    /// banned address.
    pub connections_refused: AtomicU64,
}

impl Counters {
    /// How many counters there are (the length of [`Counters::all`]).
    pub const LEN: usize = 13;

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
            connects_received,
            connections_refused,
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
                "connects_received",
                "CONNECT packets received, accepted or not",
                Self::get(connects_received),
            ),
            (
                "connections_refused",
                "Connections closed at accept (connection caps, rate caps, bans)",
                Self::get(connections_refused),
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

/// The windows of the load averages, as Mosquitto names them.
pub const LOAD_WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// Exponentially-decaying averages of a counter's rate per minute over 1, 5 and 15 minutes,
/// as Mosquitto computes its `$SYS/broker/load/...` values (`sys_tree.c`, `calc_load`): at
/// each update, after `t` seconds, the rate over that interval `r = delta * 60 / t` moves
/// each average `a` to `r + e^(-t / window) * (a - r)`. A steady rate `r` is approached
/// with the window as time constant; with no traffic each average decays by `e^(-t/window)`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadAverage {
    /// The counter at the last update.
    last: u64,
    /// Per minute, over each of `LOAD_WINDOWS`.
    pub averages: [f64; 3],
}

impl LoadAverage {
    /// Averages starting at 0 from the counter's current value.
    pub fn new(count: u64) -> LoadAverage {
        LoadAverage {
            last: count,
            averages: [0.0; 3],
        }
    }

    /// The counter is `count` now, `elapsed` after the last update. Nothing changes when no
    /// time has passed (Mosquitto skips such an update too).
    pub fn update(&mut self, count: u64, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if seconds <= 0.0 {
            return;
        }
        let rate = count.saturating_sub(self.last) as f64 * 60.0 / seconds;
        for (average, (_, window)) in self.averages.iter_mut().zip(LOAD_WINDOWS) {
            let decay = (-seconds / window).exp();
            *average = rate + decay * (*average - rate);
        }
        self.last = count;
    }
}

/// The `$SYS/broker/load/...` averages the Registry publishes every `sys_interval`.
#[derive(Debug, Clone, Copy)]
pub struct SysLoad {
    at: std::time::Instant,
    pub messages_received: LoadAverage,
    pub messages_sent: LoadAverage,
    pub connections: LoadAverage,
}

impl SysLoad {
    pub fn new(counters: &Counters) -> SysLoad {
        SysLoad {
            at: std::time::Instant::now(),
            messages_received: LoadAverage::new(Counters::get(&counters.messages_received)),
            messages_sent: LoadAverage::new(Counters::get(&counters.messages_sent)),
            connections: LoadAverage::new(Counters::get(&counters.connects_received)),
        }
    }

    /// Brings every average up to date with the counters.
    pub fn update(&mut self, counters: &Counters) {
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(self.at);
        self.at = now;
        self.messages_received
            .update(Counters::get(&counters.messages_received), elapsed);
        self.messages_sent
            .update(Counters::get(&counters.messages_sent), elapsed);
        self.connections
            .update(Counters::get(&counters.connects_received), elapsed);
    }

    /// `(topic under $SYS/broker/, value)`, values per minute with two decimals as Mosquitto
    /// prints them: `load/messages/received/1min` ... `load/connections/15min`.
    pub fn values(&self) -> impl Iterator<Item = (String, String)> + '_ {
        [
            ("messages/received", &self.messages_received),
            ("messages/sent", &self.messages_sent),
            ("connections", &self.connections),
        ]
        .into_iter()
        .flat_map(|(name, load)| {
            LOAD_WINDOWS
                .iter()
                .zip(load.averages)
                .map(move |((window, _), value)| {
                    (format!("load/{name}/{window}"), format!("{value:.2}"))
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn one_interval_moves_each_average_by_its_share_of_the_rate() {
        let mut load = LoadAverage::new(1000);
        // 50 messages in 10 s: 300 per minute.
        load.update(1050, secs(10));
        for (average, (_, window)) in load.averages.iter().zip(LOAD_WINDOWS) {
            let expected = 300.0 * (1.0 - (-10.0 / window).exp());
            assert!(close(*average, expected), "{average} != {expected}");
        }
        // 1 min: 300 * (1 - e^(-1/6)) = 46.055...
        assert_eq!(format!("{:.2}", load.averages[0]), "46.06");
        assert!(load.averages[0] > load.averages[1] && load.averages[1] > load.averages[2]);
    }

    #[test]
    fn a_steady_rate_converges_and_silence_decays() {
        let mut load = LoadAverage::new(0);
        let mut count = 0;
        // 120 per minute for 4 hours (16 times the longest window), updated every 10 s.
        for _ in 0..1440 {
            count += 20;
            load.update(count, secs(10));
        }
        for average in load.averages {
            assert!((average - 120.0).abs() < 0.01, "{average}");
        }
        // One minute without messages: each average is multiplied by e^(-60/window).
        let before = load.averages;
        load.update(count, secs(60));
        for ((after, before), (_, window)) in load.averages.iter().zip(before).zip(LOAD_WINDOWS) {
            assert!(close(*after, before * (-60.0 / window).exp()), "{after}");
        }
        assert!(close(load.averages[0], 120.0 * (-1.0f64).exp()));
    }

    #[test]
    fn updates_compose_like_one_longer_interval_at_a_constant_rate() {
        // Two 5 s steps at the same rate give the same averages as one 10 s step.
        let (mut split, mut whole) = (LoadAverage::new(0), LoadAverage::new(0));
        split.update(10, secs(5));
        split.update(20, secs(5));
        whole.update(20, secs(10));
        for (a, b) in split.averages.iter().zip(whole.averages) {
            assert!(close(*a, b), "{a} != {b}");
        }
    }

    #[test]
    fn no_elapsed_time_changes_nothing() {
        let mut load = LoadAverage::new(5);
        load.update(10, Duration::ZERO);
        assert_eq!(load, LoadAverage::new(5));
    }

    #[test]
    fn sys_values_use_mosquittos_names_and_two_decimals() {
        let counters = Counters::default();
        let load = SysLoad::new(&counters);
        let values: Vec<(String, String)> = load.values().collect();
        assert_eq!(values.len(), 9);
        assert_eq!(
            values[0],
            ("load/messages/received/1min".into(), "0.00".into())
        );
        assert_eq!(values[5].0, "load/messages/sent/15min");
        assert_eq!(values[8].0, "load/connections/15min");
    }
}
