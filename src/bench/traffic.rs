//! The publish/subscribe scenarios: fanin, fanout, p2p and latency.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::client::{self, Conn, ConnectOptions, PublisherPlan};
use super::report::{Latency, Report};
use super::tracker::Tally;
use super::{BenchArgs, BenchError, Scenario, Shared, open_all};
use crate::mqtt::QoS;

/// The warm-up is excluded from the throughput: a fifth of the run, at most one second.
const MAX_WARM_UP: Duration = Duration::from_secs(1);

/// Who publishes where and who listens to whom.
struct Layout {
    /// Topic of each publisher; the index is the publisher id.
    publishers: Vec<String>,
    /// Filter of each subscriber and the publishers it hears.
    subscribers: Vec<(String, Vec<u32>)>,
}

fn layout(scenario: Scenario, clients: u32, prefix: &str) -> Layout {
    match scenario {
        Scenario::Fanin => Layout {
            publishers: (0..clients).map(|i| format!("{prefix}/{i}")).collect(),
            subscribers: vec![(format!("{prefix}/+"), (0..clients).collect())],
        },
        Scenario::Fanout => Layout {
            publishers: vec![prefix.to_string()],
            subscribers: (0..clients)
                .map(|_| (prefix.to_string(), vec![0]))
                .collect(),
        },
        // p2p and latency (conn publishes nothing).
        _ => Layout {
            publishers: (0..clients).map(|i| format!("{prefix}/{i}")).collect(),
            subscribers: (0..clients)
                .map(|i| (format!("{prefix}/{i}"), vec![i]))
                .collect(),
        },
    }
}

pub async fn run(args: &BenchArgs, options: &ConnectOptions) -> Result<Report, BenchError> {
    let clients = args.clients.unwrap_or(match args.scenario {
        Scenario::Latency => 1,
        _ => 8,
    });
    let qos = QoS::from_u8(args.qos).unwrap_or_default();
    let rate = match args.scenario {
        Scenario::Latency => Some(args.rate.unwrap_or(1000)),
        _ => args.rate,
    };
    // The process id keeps concurrent or repeated runs apart (topics and client ids).
    let tag = std::process::id();
    let layout = layout(
        args.scenario,
        clients,
        &format!("mqttd-bench/{tag}/{}", args.scenario.name()),
    );

    // Subscriptions first, so that no message is published before someone listens.
    let subscribers = open_all(
        layout
            .subscribers
            .iter()
            .enumerate()
            .map(|(i, (filter, _))| {
                let (options, filter) = (options.clone(), filter.clone());
                async move {
                    let mut conn =
                        client::connect(&options, i as u32, format!("bench-{tag}-s{i}")).await?;
                    client::subscribe(&mut conn, &filter, qos).await?;
                    Ok(conn)
                }
            }),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<Conn>, _>>()?;
    let publishers = open_all((0..layout.publishers.len()).map(|i| {
        let options = options.clone();
        async move { client::connect(&options, i as u32, format!("bench-{tag}-p{i}")).await }
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<Conn>, _>>()?;

    let duration = Duration::from_secs(args.duration);
    let warm_up = (duration / 5).min(MAX_WARM_UP);
    let shared = Arc::new(Shared::new(warm_up));
    let deadline = shared.epoch + duration;
    let publisher_count = layout.publishers.len();
    // The rate is for all publishers together.
    let interval = rate.map(|r| Duration::from_secs_f64(publisher_count as f64 / f64::from(r)));

    let sub_tasks: Vec<JoinHandle<_>> = subscribers
        .into_iter()
        .zip(&layout.subscribers)
        .map(|(conn, (_, sources))| {
            tokio::spawn(client::receive(conn, sources.clone(), shared.clone()))
        })
        .collect();
    let pub_tasks: Vec<JoinHandle<_>> = publishers
        .into_iter()
        .zip(layout.publishers)
        .enumerate()
        .map(|(id, (conn, topic))| {
            let plan = PublisherPlan {
                id: id as u32,
                topic,
                qos,
                payload: args.payload as usize,
                inflight: usize::from(args.inflight),
                interval,
                deadline,
            };
            tokio::spawn(client::publish(conn, plan, shared.clone()))
        })
        .collect();
    let progress = tokio::spawn(progress(shared.clone()));

    tokio::time::sleep_until((shared.epoch + warm_up).into()).await;
    let start = sample(&shared);
    tokio::time::sleep_until(deadline.into()).await;
    let end = sample(&shared);

    let mut report = Report::new(args, clients);
    report.rate = rate;
    report.publishers = publisher_count as u32;
    report.subscribers = layout.subscribers.len() as u32;
    let mut sent = Vec::with_capacity(publisher_count);
    let mut ack_latency = client::new_histogram();
    for task in pub_tasks {
        match task.await {
            Ok(outcome) => {
                sent.push(outcome.sent);
                // Same bounds everywhere, so adding cannot fail.
                let _ = ack_latency.add(&outcome.ack_latency);
                if let Some(e) = outcome.error {
                    report.add_error(e);
                }
            }
            Err(e) => {
                sent.push(0);
                report.add_error(format!("publisher task: {e}"));
            }
        }
    }
    report.published = sent.iter().sum();
    // Subscribers now know how much to wait for.
    let _ = shared.final_sent.set(sent.clone());

    let mut tally = Tally::default();
    let mut latency = client::new_histogram();
    for (task, (_, sources)) in sub_tasks.into_iter().zip(&layout.subscribers) {
        let expected = sources.iter().map(|&p| (p, sent[p as usize]));
        report.expected += expected.clone().map(|(_, n)| n).sum::<u64>();
        match task.await {
            Ok(outcome) => {
                tally.add(outcome.tracker.tally(expected));
                report.malformed += outcome.malformed;
                // Both histograms have the same bounds, so adding cannot fail.
                let _ = latency.add(&outcome.latency);
                if let Some(e) = outcome.error {
                    report.add_error(e);
                }
            }
            Err(e) => report.add_error(format!("subscriber task: {e}")),
        }
    }
    progress.abort();

    let seconds = end.at.duration_since(start.at).as_secs_f64();
    report.measured_s = (seconds * 100.0).round() / 100.0;
    if seconds > 0.0 {
        report.throughput = ((end.received - start.received) as f64 / seconds).round();
        report.publish_rate = ((end.published - start.published) as f64 / seconds).round();
    }
    report.received = tally.received;
    report.lost = tally.lost;
    report.duplicates = tally.duplicates;
    report.reordered = tally.reordered;
    report.latency_us = Latency::from_histogram(&latency);
    // Empty, hence `None`, at QoS 0: nothing is acknowledged.
    report.ack_latency_us = Latency::from_histogram(&ack_latency);
    Ok(report)
}

struct Sample {
    at: Instant,
    published: u64,
    received: u64,
}

fn sample(shared: &Shared) -> Sample {
    Sample {
        at: Instant::now(),
        published: shared.published.load(Ordering::Relaxed),
        received: shared.received.load(Ordering::Relaxed),
    }
}

/// A line on stderr every second with the rates of the last second.
async fn progress(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last = sample(&shared);
    loop {
        ticker.tick().await;
        let now = sample(&shared);
        let seconds = now.at.duration_since(last.at).as_secs_f64().max(1e-3);
        eprintln!(
            "[{:>4.0}s] {:>9.0} msg/s published, {:>9.0} msg/s received",
            now.at.duration_since(shared.epoch).as_secs_f64(),
            (now.published - last.published) as f64 / seconds,
            (now.received - last.received) as f64 / seconds,
        );
        last = now;
    }
}
