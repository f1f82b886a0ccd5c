//! Broker-wide counters and histograms, shared by every actor (relaxed atomics: they are
//! statistics, not synchronisation), and the `$SYS` load averages computed from them.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::mqtt::QoS;

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
    /// How long each group commit took, from sending it to the database actor to its answer.
    pub commit_duration: Histogram<CommitMicros>,
    /// Journal operations per group commit (0: one that only records that the broker is alive).
    pub commit_batch_ops: Histogram<BatchOps>,
    /// PUBLISH packets received from clients, by QoS.
    pub messages_received: ByQos,
    /// PUBLISH packets sent to clients, by QoS.
    pub messages_sent: ByQos,
    /// Payload bytes of the PUBLISH packets received from clients, by QoS (not packet bytes:
    /// the payload is what a session has at hand without re-encoding).
    pub bytes_received: ByQos,
    /// Payload bytes of the PUBLISH packets sent to clients, by the QoS they were sent at.
    pub bytes_sent: ByQos,
    /// CONNECTs refused for a wrong username or password.
    pub auth_failures: AtomicU64,
    /// CONNECTs refused because their address or username is banned after repeated
    /// authentication failures.
    pub logins_banned: AtomicU64,
    /// CONNECT packets received (accepted or not): `$SYS/broker/load/connections/*`.
    pub connects_received: AtomicU64,
    /// Connections closed at accept: over `max_connections`, the per-address caps, or from a
    /// banned address.
    pub connections_refused: AtomicU64,
    /// Deliveries written to an idle subscriber's socket by the publisher's thread (see
    /// `session::bypass`); also counted in `messages_sent`.
    pub messages_direct: Striped,
}

impl Counters {
    /// How many counters there are (the length of [`Counters::all`]).
    pub const LEN: usize = 14;

    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_n(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Every counter without labels with its metric name (`mqttd_<name>_total` on `/metrics`)
    /// and help text, read now. The destructuring names every field, so a new counter does not
    /// compile until it is listed here too (or in `by_qos`, or is a histogram).
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
            commit_duration: _,
            commit_batch_ops: _,
            messages_received: _,
            messages_sent: _,
            bytes_received: _,
            bytes_sent: _,
            auth_failures,
            logins_banned,
            connects_received,
            connections_refused,
            messages_direct,
        } = self;
        [
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
                "auth_failures",
                "CONNECTs refused for a wrong username or password",
                Self::get(auth_failures),
            ),
            (
                "logins_banned",
                "CONNECTs refused for an address or username banned after authentication \
                 failures",
                Self::get(logins_banned),
            ),
            (
                "messages_direct",
                "Deliveries written to an idle subscriber's socket by the publisher's thread \
                 (also in messages_sent)",
                messages_direct.get(),
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

    /// The counters labelled by QoS (`mqttd_<name>_total{qos="0"}` ...), read now.
    pub fn by_qos(&self) -> [(&'static str, &'static str, [u64; 3]); 4] {
        [
            (
                "messages_received",
                "PUBLISH packets received from clients",
                self.messages_received.read(),
            ),
            (
                "messages_sent",
                "PUBLISH packets sent to clients",
                self.messages_sent.read(),
            ),
            (
                "bytes_received",
                "Payload bytes of the PUBLISH packets received from clients",
                self.bytes_received.read(),
            ),
            (
                "bytes_sent",
                "Payload bytes of the PUBLISH packets sent to clients",
                self.bytes_sent.read(),
            ),
        ]
    }
}

/// Threads that add to a [`Striped`] counter without sharing a stripe; more share them.
const STRIPES: usize = 8;

/// A counter added to on every PUBLISH by every session thread: one stripe per thread, each on
/// its own cache lines, summed when read. A single atomic bounced its cache line between the
/// threads on every delivery (over half of `Session::release`'s samples in a QoS 1 fan-out,
/// in `perf annotate`).
#[derive(Debug, Default)]
pub struct Striped([Stripe; STRIPES]);

/// 128 bytes: the CPU prefetches cache lines in pairs.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

impl Striped {
    pub fn add_n(&self, n: usize) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        }
        let stripe = STRIPE.with(|s| *s);
        self.0[stripe].0.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add(&self) {
        self.add_n(1);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// A counter per QoS level.
#[derive(Debug, Default)]
pub struct ByQos([Striped; 3]);

impl ByQos {
    pub fn add(&self, qos: QoS) {
        self.add_n(qos, 1);
    }

    pub fn add_n(&self, qos: QoS, n: usize) {
        self.0[qos as usize].add_n(n);
    }

    /// QoS 0, 1 and 2.
    pub fn read(&self) -> [u64; 3] {
        self.0.each_ref().map(Striped::get)
    }

    pub fn total(&self) -> u64 {
        self.read().iter().sum()
    }
}

/// The fixed buckets of a [`Histogram`]: upper bounds (inclusive, as Prometheus's `le`) in
/// the unit observed, ascending; a last `+Inf` bucket is implied.
pub trait Buckets {
    const BOUNDS: &'static [u64];
    /// Observed units per exported unit (µs per second: 1e6). A division, not a
    /// multiplication by 1e-6, so that bounds print as written (`0.0001`, not `9.99...e-5`).
    const PER_UNIT: f64;
}

/// Commit latency, observed in microseconds, exported in seconds: 100 µs to 10 s.
#[derive(Debug)]
pub enum CommitMicros {}

impl Buckets for CommitMicros {
    const BOUNDS: &'static [u64] = &[
        100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 5_000_000, 10_000_000,
    ];
    const PER_UNIT: f64 = 1e6;
}

/// Operations per commit: 0 (a liveness-only commit) to 10,000.
#[derive(Debug)]
pub enum BatchOps {}

impl Buckets for BatchOps {
    const BOUNDS: &'static [u64] = &[
        0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000,
    ];
    const PER_UNIT: f64 = 1.0;
}

/// A Prometheus histogram with fixed buckets as relaxed atomics: observing is a binary search
/// and two `fetch_add`s, and a scrape reads the atomics without stopping the observer (the
/// Registry). The count is the sum of the buckets, so `_count` always equals the `+Inf`
/// bucket; `_sum` may lag a concurrent observation by one.
#[derive(Debug)]
pub struct Histogram<B> {
    /// Observations per bucket (not cumulative), `B::BOUNDS.len() + 1` of them, the last
    /// one `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    bounds: PhantomData<B>,
}

impl<B: Buckets> Default for Histogram<B> {
    fn default() -> Self {
        Histogram {
            buckets: (0..=B::BOUNDS.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            bounds: PhantomData,
        }
    }
}

impl<B: Buckets> Histogram<B> {
    pub fn observe(&self, value: u64) {
        // The first bound >= value; past the last one, the +Inf bucket.
        let i = B::BOUNDS.partition_point(|&bound| bound < value);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Read now, in the exported unit.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self.buckets.iter().map(Counters::get).collect();
        let bounds = B::BOUNDS.iter().map(|&b| b as f64 / B::PER_UNIT);
        HistogramSnapshot {
            count: counts.iter().sum(),
            sum: Counters::get(&self.sum) as f64 / B::PER_UNIT,
            buckets: bounds.chain([f64::INFINITY]).zip(counts).collect(),
        }
    }
}

/// A histogram as read: `buckets` are (upper bound, observations in that bucket alone) as
/// `prometheus-client` takes them (it makes them cumulative), the last bound `+Inf`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub sum: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
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
            messages_received: LoadAverage::new(counters.messages_received.total()),
            messages_sent: LoadAverage::new(counters.messages_sent.total()),
            connections: LoadAverage::new(Counters::get(&counters.connects_received)),
        }
    }

    /// Brings every average up to date with the counters.
    pub fn update(&mut self, counters: &Counters) {
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(self.at);
        self.at = now;
        self.messages_received
            .update(counters.messages_received.total(), elapsed);
        self.messages_sent
            .update(counters.messages_sent.total(), elapsed);
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
    fn a_striped_counter_sums_what_every_thread_added() {
        let counter = ByQos::default();
        // More threads than stripes, so that some share one.
        std::thread::scope(|s| {
            for _ in 0..STRIPES * 2 + 1 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        counter.add(QoS::AtLeastOnce);
                    }
                    counter.add_n(QoS::ExactlyOnce, 5);
                });
            }
        });
        let threads = (STRIPES * 2 + 1) as u64;
        assert_eq!(counter.read(), [0, 1000 * threads, 5 * threads]);
        assert_eq!(counter.total(), 1005 * threads);
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
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let h = Histogram::<BatchOps>::default();
        for value in [0, 1, 2, 3, 5, 6, 10_000, 10_001, u64::MAX / 2] {
            h.observe(value);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 9);
        assert_eq!(s.buckets.len(), BatchOps::BOUNDS.len() + 1);
        let count_at = |bound: f64| s.buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        // `le` is inclusive: 5 is in the 5 bucket, 3 in it too, 6 in the 10 bucket.
        assert_eq!(count_at(0.0), 1);
        assert_eq!(count_at(1.0), 1);
        assert_eq!(count_at(2.0), 1);
        assert_eq!(count_at(5.0), 2);
        assert_eq!(count_at(10.0), 1);
        assert_eq!(count_at(10_000.0), 1);
        assert_eq!(count_at(f64::INFINITY), 2);
        assert_eq!(s.buckets.iter().map(|(_, n)| n).sum::<u64>(), s.count);
    }

    #[test]
    fn commit_durations_are_exported_in_seconds() {
        let h = Histogram::<CommitMicros>::default();
        h.observe(1_500);
        h.observe(100);
        let s = h.snapshot();
        assert_eq!(s.count, 2);
        assert!(close(s.sum, 0.0016), "{}", s.sum);
        assert_eq!(s.buckets[0], (0.0001, 1));
        // 1.5 ms: in the 2.5 ms bucket.
        let (bound, n) = s.buckets[4];
        assert!(close(bound, 0.0025) && n == 1, "{:?}", s.buckets);
        assert!(BatchOps::BOUNDS.is_sorted() && CommitMicros::BOUNDS.is_sorted());
    }

    #[test]
    fn by_qos_counts_each_level_and_sums() {
        let c = ByQos::default();
        c.add(QoS::AtMostOnce);
        c.add(QoS::ExactlyOnce);
        c.add(QoS::ExactlyOnce);
        assert_eq!(c.read(), [1, 0, 2]);
        assert_eq!(c.total(), 3);
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
