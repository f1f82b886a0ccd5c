//! `mqttd bench`: a load generator for any MQTT broker, built on mqttd's own codec.
//!
//! Every client is a tokio task on one multi-threaded runtime (no actix here), so one thread
//! drives many connections. Publishers stamp each payload with their id, a sequence number and
//! the send time; subscribers check the sequences (lost, duplicated, reordered messages) and
//! measure end-to-end latency. The result is a readable summary and one JSON line on stdout.
//!
//! Scenarios: `fanin` (N publishers -> 1 subscriber on a wildcard), `fanout` (1 publisher ->
//! N subscribers), `p2p` (N publishers, each to its own subscriber), `latency` (p2p at a fixed
//! rate) and `conn` (open N connections as fast as possible and hold them).

mod client;
mod conn;
pub mod payload;
mod report;
pub mod tracker;
mod traffic;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::{ValueEnum, value_parser};

use crate::mqtt::ProtocolVersion;
use client::ConnectOptions;
pub use report::Report;

/// `mqttd bench ...`
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    pub scenario: Scenario,
    /// The broker's address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Publishers (fanin), subscribers (fanout), publisher/subscriber pairs (p2p, latency) or
    /// connections (conn) [default: 8; latency 1; conn 1000].
    #[arg(long, value_parser = value_parser!(u32).range(1..))]
    pub clients: Option<u32>,
    /// QoS of the messages and of the subscriptions.
    #[arg(long, default_value_t = 0, value_parser = value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes (at least 20: publisher id, sequence, timestamp).
    #[arg(long, default_value_t = 64, value_parser = value_parser!(u32).range(20..=268_435_000))]
    pub payload: u32,
    /// Seconds of publishing (conn: seconds the connections are held).
    #[arg(long, default_value_t = 10, value_parser = value_parser!(u64).range(1..=86_400))]
    pub duration: u64,
    /// Unacknowledged QoS 1/2 messages each publisher may have in flight.
    #[arg(long, default_value_t = 64, value_parser = value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Messages per second over all publishers, evenly spread; without it publishers go as
    /// fast as they can [default for latency: 1000].
    #[arg(long, value_parser = value_parser!(u32).range(1..))]
    pub rate: Option<u32>,
    /// MQTT protocol version: 5 or 3 (3.1.1).
    #[arg(long, default_value = "5")]
    pub mqtt: MqttVersion,
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long, requires = "username")]
    pub password: Option<String>,
    /// Persistent sessions (Clean Start 0, Session Expiry 300 s) instead of clean ones.
    #[arg(long)]
    pub persistent: bool,
    /// The broker's process id (conn): its resident memory is read from /proc before and
    /// after the connections are opened.
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// Bench threads [default: one per core].
    #[arg(long, value_parser = value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// N publishers -> 1 subscriber on a wildcard.
    Fanin,
    /// 1 publisher -> N subscribers.
    Fanout,
    /// N publishers, each to its own topic and its own subscriber.
    P2p,
    /// Open N connections as fast as possible and hold them.
    Conn,
    /// p2p at a fixed rate (--rate), for end-to-end latency percentiles.
    Latency,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::P2p => "p2p",
            Scenario::Conn => "conn",
            Scenario::Latency => "latency",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MqttVersion {
    #[value(name = "5")]
    V5,
    #[value(name = "3")]
    V311,
}

impl MqttVersion {
    fn protocol(self) -> ProtocolVersion {
        match self {
            MqttVersion::V5 => ProtocolVersion::V5,
            MqttVersion::V311 => ProtocolVersion::V311,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot start the bench runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{client}: {reason}")]
    Client { client: String, reason: String },
    #[error("cannot read the broker's memory from {path}: {reason}")]
    BrokerMemory { path: String, reason: String },
    #[error("{count} client(s) failed; the first: {first}")]
    ClientsFailed { count: usize, first: String },
}

/// What every task of a run shares. Counters are statistics: relaxed atomics.
pub(crate) struct Shared {
    /// Time zero of the payload timestamps; one `Instant` for the whole process.
    epoch: Instant,
    /// Latencies are recorded from here on (the end of the warm-up), ns since `epoch`.
    measure_from_ns: u64,
    published: AtomicU64,
    received: AtomicU64,
    /// Messages each publisher sent, by publisher id, once all of them have stopped.
    final_sent: OnceLock<Vec<u64>>,
}

impl Shared {
    fn new(warm_up: Duration) -> Shared {
        Shared {
            epoch: Instant::now(),
            measure_from_ns: nanos(warm_up),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            final_sent: OnceLock::new(),
        }
    }

    fn now_ns(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }

    fn final_sent(&self) -> Option<&[u64]> {
        self.final_sent.get().map(Vec::as_slice)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs one scenario and prints its summary and JSON line on stdout. Fails when the run could
/// not start, or when a client failed during it (after the report is printed).
pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = args.threads {
        builder.worker_threads(usize::from(threads));
    }
    let runtime = builder.build().map_err(BenchError::Runtime)?;
    let report = runtime.block_on(execute(&args))?;
    report.print();
    match report.errors.first() {
        Some(first) => Err(BenchError::ClientsFailed {
            count: report.errors.len(),
            first: first.clone(),
        }),
        None => Ok(()),
    }
}

async fn execute(args: &BenchArgs) -> Result<Report, BenchError> {
    let options = ConnectOptions {
        addr: format!("{}:{}", args.host, args.port),
        version: args.mqtt.protocol(),
        username: args.username.clone(),
        password: args.password.clone(),
        persistent: args.persistent,
        // No PINGREQ is sent: the keep-alive outlasts the run instead.
        keep_alive: u16::try_from(args.duration + 60).unwrap_or(u16::MAX),
        buffer: match args.scenario {
            Scenario::Conn => client::IDLE_BUFFER,
            _ => client::BUFFER,
        },
    };
    let mut report = match args.scenario {
        Scenario::Conn => conn::run(args, &options).await?,
        _ => traffic::run(args, &options).await?,
    };
    report.threads = args.threads.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    Ok(report)
}

/// Connections opened at once: enough to keep the broker busy, few enough not to overflow its
/// listen backlog (a dropped SYN costs a 1 s retransmit and spoils the connect rate). Below
/// 100, Mosquitto's backlog, the smallest of the brokers compared (mqttd's and rumqttd's are
/// 128): at 128, Mosquitto's overflowed on some runs and measured 1.9k connections/s instead
/// of 20k.
const CONCURRENT_OPENS: usize = 96;

/// Runs `opens` (each opening a connection) with at most `CONCURRENT_OPENS` at a time and
/// returns their results in order.
async fn open_all<T, F>(opens: impl IntoIterator<Item = F>) -> Vec<Result<T, BenchError>>
where
    T: Send + 'static,
    F: Future<Output = Result<T, BenchError>> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_OPENS));
    let tasks: Vec<_> = opens
        .into_iter()
        .map(|open| {
            let permits = permits.clone();
            tokio::spawn(async move {
                // The semaphore is never closed, so acquiring cannot fail.
                let _permit = permits.acquire_owned().await;
                open.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.unwrap_or_else(|e| {
            Err(BenchError::Client {
                client: "connect task".into(),
                reason: e.to_string(),
            })
        }));
    }
    results
}
