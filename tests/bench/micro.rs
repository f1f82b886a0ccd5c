//! Micro-benchmarks of the two hot paths that do not touch a socket: the codec (PUBLISH in and
//! out) and routing (which subscribers a topic goes to). Public API only.
//!
//! Run: `cargo bench --bench micro` (about a minute); one group: `cargo bench --bench micro --
//! route`. Measurement times are short so that the run fits a 2-core machine shared with other
//! work: `cargo bench --bench micro -- --measurement-time 10` gives steadier figures.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput};
use mqttd::message::AppMessage;
use mqttd::mqtt::{
    Frame, MqttCodec, OutPublish, Packet, Properties, ProtocolVersion, Publish, QoS,
    SubscriptionOptions,
};
use mqttd::registry::subscriptions::{Route, Subscription, SubscriptionTree};
use tokio_util::codec::{Decoder, Encoder};

const PAYLOADS: [(&str, usize); 4] = [("16B", 16), ("256B", 256), ("4KB", 4096), ("64KB", 65536)];
const TOPIC: &str = "site/42/sensor/7/temp";

/// A v5 QoS 1 PUBLISH without properties, as a client sends it.
fn publish(payload: usize) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TOPIC.into(),
        packet_id: Some(1),
        properties: Properties::default(),
        payload: Bytes::from(vec![b'x'; payload]),
    }))
}

fn codec() -> MqttCodec {
    MqttCodec::new(ProtocolVersion::V5, u32::MAX)
}

fn wire_len(packet: &Packet) -> u64 {
    MqttCodec::encoded_len(packet, ProtocolVersion::V5) as u64
}

/// One iteration decodes one packet. Packets are decoded from a read buffer holding 1 MB of
/// them back to back (at least 16, so that reading the clock costs little per packet), refilled
/// outside the timed part as a socket read would fill it.
fn decode_publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_publish");
    for (name, size) in PAYLOADS {
        let packet = publish(size);
        let len = wire_len(&packet);
        let per_fill = (1024 * 1024 / len).max(16);
        let mut wire = BytesMut::new();
        for _ in 0..per_fill {
            codec().encode(packet.clone(), &mut wire).unwrap();
        }
        group.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: len,
        });
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut codec = codec();
                let mut elapsed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(per_fill);
                    let mut buf = BytesMut::from(&wire[..(n * len) as usize]);
                    let start = Instant::now();
                    for _ in 0..n {
                        black_box(codec.decode(&mut buf).unwrap().unwrap());
                    }
                    elapsed += start.elapsed();
                    left -= n;
                }
                elapsed
            })
        });
    }
    group.finish();
}

/// One iteration encodes one `Packet::Publish` into a write buffer that keeps its capacity.
/// The clone handed to the encoder is made outside the timed part; dropping it is timed.
fn encode_publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_publish");
    for (name, size) in PAYLOADS {
        let packet = publish(size);
        group.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: wire_len(&packet),
        });
        let mut codec = codec();
        let mut dst = BytesMut::new();
        group.bench_function(name, |b| {
            b.iter_batched(
                || packet.clone(),
                |packet| {
                    dst.clear();
                    codec.encode(packet, black_box(&mut dst)).unwrap();
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// One iteration builds and encodes the `OutPublish` the broker writes to one subscriber of a
/// QoS 1 message: the shared message is an `Arc`, only the per-delivery fields are new.
fn encode_delivery(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_delivery");
    for (name, size) in PAYLOADS {
        let message = Arc::new(AppMessage {
            topic: TOPIC.into(),
            payload: Bytes::from(vec![b'x'; size]),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
            expires_at_ms: None,
            publisher: "publisher".into(),
        });
        let delivery = || OutPublish {
            message: message.clone(),
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            packet_id: Some(1),
            topic_alias: None,
            send_topic: true,
            message_expiry_interval: None,
            subscription_identifiers: Vec::new(),
        };
        group.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: delivery().encoded_len(ProtocolVersion::V5) as u64,
        });
        let mut codec = codec();
        let mut dst = BytesMut::new();
        group.bench_function(name, |b| {
            b.iter(|| {
                dst.clear();
                codec
                    .encode(Frame::Publish(delivery()), black_box(&mut dst))
                    .unwrap();
            })
        });
    }
    group.finish();
}

#[derive(Clone, Copy)]
enum Mix {
    /// Per site: its 10 sensor topics, each subscribed by 2 clients. A topic: 2 routes.
    Exact,
    /// Per site: the 10 sensor topics (1 client each), `site/{s}/sensor/+/temp` (2 clients),
    /// `site/{s}/sensor/{k}/+` for 5 of the sensors, `site/{s}/#` (3 clients); and, for all
    /// sites, `site/+/sensor/+/temp` (a dashboard) and `site/+/status` (never matched here,
    /// but walked). A topic: 7 or 8 routes.
    Wildcards,
    /// As `Wildcards`, but the three `site/{s}/#` are one `$share/g/site/{s}/#` group, which
    /// takes one route. A topic: 5 or 6 routes.
    Shared,
}

/// Subscriptions per site, in every mix.
const SITE_SUBS: usize = 20;

/// `n` subscriptions in the given mix (plus 2 for all sites with wildcards), by `n / 10` clients
/// holding 10 each. The 20 of one site belong to 20 different clients, so no Route merges two
/// subscriptions.
fn tree(n: usize, mix: Mix) -> SubscriptionTree {
    let clients: Vec<Arc<str>> = (0..n / 10).map(|i| format!("client-{i}").into()).collect();
    let sub = Subscription {
        options: SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..SubscriptionOptions::default()
        },
        identifier: None,
    };
    let mut tree = SubscriptionTree::default();
    let mut next = 0;
    for s in 0..n / SITE_SUBS {
        let mut filters = Vec::with_capacity(SITE_SUBS);
        match mix {
            Mix::Exact => {
                for k in 0..10 {
                    filters.push(format!("site/{s}/sensor/{k}/temp"));
                    filters.push(format!("site/{s}/sensor/{k}/temp"));
                }
            }
            Mix::Wildcards | Mix::Shared => {
                filters.extend((0..10).map(|k| format!("site/{s}/sensor/{k}/temp")));
                filters.extend([0, 1].map(|_| format!("site/{s}/sensor/+/temp")));
                filters.extend((0..5).map(|k| format!("site/{s}/sensor/{k}/+")));
                let share = if matches!(mix, Mix::Shared) {
                    "$share/g/"
                } else {
                    ""
                };
                filters.extend([0, 1, 2].map(|_| format!("{share}site/{s}/#")));
            }
        }
        for filter in filters {
            tree.subscribe(&clients[next % clients.len()], &filter, sub);
            next += 1;
        }
    }
    if !matches!(mix, Mix::Exact) {
        tree.subscribe(&"dashboard".into(), "site/+/sensor/+/temp", sub);
        tree.subscribe(&"status".into(), "site/+/status", sub);
    }
    tree
}

/// xorshift64*: enough randomness for benchmark topics, without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

/// One iteration routes one `site/{s}/sensor/{k}/temp` topic, cycling through 4,096 drawn at
/// random over all sites, and drops the Routes.
fn route(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for (size, n) in [("1k", 1_000), ("100k", 100_000)] {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let topics: Vec<String> = (0..4096)
            .map(|_| {
                let s = rng.below(n / SITE_SUBS);
                format!("site/{s}/sensor/{}/temp", rng.below(10))
            })
            .collect();
        for (name, mix, routes) in [
            ("exact", Mix::Exact, 2..=2),
            ("wildcards", Mix::Wildcards, 7..=8),
            ("shared", Mix::Shared, 5..=6),
        ] {
            let mut tree = tree(n, mix);
            let mut out: Vec<Route> = Vec::new();
            for topic in &topics {
                out.clear();
                tree.route(topic, "publisher", &mut out);
                assert!(routes.contains(&out.len()), "{name}: {topic}: {out:?}");
            }
            let mut next_topic = topics.iter().cycle();
            group.bench_function(format!("{name}/{size}"), |b| {
                b.iter(|| {
                    out.clear();
                    tree.route(black_box(next_topic.next().unwrap()), "publisher", &mut out);
                    black_box(&out);
                })
            });
        }
    }
    group.finish();
}

criterion::criterion_group! {
    name = benches;
    // Short defaults; the command line's --warm-up-time, --measurement-time and --sample-size
    // override them.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = decode_publish, encode_publish, encode_delivery, route
}
criterion::criterion_main!(benches);
