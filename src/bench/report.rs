//! The result of a run: a readable summary, then the same figures as one JSON line.

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{BenchArgs, MqttVersion, Scenario};

/// Error messages kept in the report; the count covers them all.
const ERRORS_KEPT: usize = 5;

pub const SHARED_CORES_NOTE: &str = "the load generator shares the machine's cores with the broker";

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub broker: String,
    pub mqtt: &'static str,
    pub qos: u8,
    pub payload: u32,
    pub clients: u32,
    pub publishers: u32,
    pub subscribers: u32,
    pub duration_s: u64,
    pub inflight: u16,
    pub rate: Option<u32>,
    pub persistent: bool,
    pub threads: usize,
    /// Seconds over which throughput was measured (the run less its warm-up).
    pub measured_s: f64,
    /// Messages received by all subscribers per second over `measured_s`.
    pub throughput: f64,
    /// Messages published per second over `measured_s`.
    pub publish_rate: f64,
    pub published: u64,
    /// Deliveries subscribers should have had: each published message once per subscriber
    /// that listens to its publisher.
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub malformed: u64,
    /// End-to-end latency (traffic scenarios) or CONNECT-to-CONNACK time (conn), microseconds.
    pub latency_us: Option<Latency>,
    /// QoS 1/2 only: publisher-side acknowledgement latency over all publishers, microseconds,
    /// from feeding a PUBLISH into the client's write buffer to reading its PUBACK (QoS 1) or
    /// PUBREC (QoS 2) with a success reason. It includes the client's own write batching (a
    /// PUBLISH may wait for the rest of its batch before it is written to the socket); only
    /// acknowledgements read after the warm-up count.
    pub ack_latency_us: Option<Latency>,
    pub connections: Option<u64>,
    /// Connections per second while they were being opened.
    pub connect_rate: Option<f64>,
    pub rss_before_kb: Option<u64>,
    pub rss_after_kb: Option<u64>,
    pub rss_per_connection_bytes: Option<f64>,
    pub error_count: usize,
    pub errors: Vec<String>,
    pub note: &'static str,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// `None` when nothing was recorded.
    pub fn from_histogram(ns: &Histogram<u64>) -> Option<Latency> {
        let us = |v: u64| (v as f64 / 1000.0 * 10.0).round() / 10.0;
        (!ns.is_empty()).then(|| Latency {
            samples: ns.len(),
            p50: us(ns.value_at_quantile(0.5)),
            p99: us(ns.value_at_quantile(0.99)),
            p999: us(ns.value_at_quantile(0.999)),
            max: us(ns.max()),
            mean: (ns.mean() / 100.0).round() / 10.0,
        })
    }
}

impl Report {
    /// A report with the run's settings and every figure at zero.
    pub fn new(args: &BenchArgs, clients: u32) -> Report {
        Report {
            scenario: args.scenario,
            broker: format!("{}:{}", args.host, args.port),
            mqtt: match args.mqtt {
                MqttVersion::V5 => "5",
                MqttVersion::V311 => "3.1.1",
            },
            qos: args.qos,
            payload: args.payload,
            clients,
            publishers: 0,
            subscribers: 0,
            duration_s: args.duration,
            inflight: args.inflight,
            rate: args.rate,
            persistent: args.persistent,
            threads: 0,
            measured_s: 0.0,
            throughput: 0.0,
            publish_rate: 0.0,
            published: 0,
            expected: 0,
            received: 0,
            lost: 0,
            duplicates: 0,
            reordered: 0,
            malformed: 0,
            latency_us: None,
            ack_latency_us: None,
            connections: None,
            connect_rate: None,
            rss_before_kb: None,
            rss_after_kb: None,
            rss_per_connection_bytes: None,
            error_count: 0,
            errors: Vec::new(),
            note: SHARED_CORES_NOTE,
        }
    }

    pub fn add_error(&mut self, error: impl ToString) {
        self.error_count += 1;
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(error.to_string());
        }
    }

    /// The summary, then the JSON line, on stdout.
    pub fn print(&self) {
        println!("{}", self.summary());
        match serde_json::to_string(self) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("cannot write the JSON report: {e}"),
        }
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "mqttd bench {} against {} (MQTT {}, {} bench threads)\n",
            self.scenario.name(),
            self.broker,
            self.mqtt,
            self.threads
        );
        if self.scenario == Scenario::Conn {
            s += &format!(
                "  connections     {} opened at {:.0}/s\n",
                self.connections.unwrap_or(0),
                self.connect_rate.unwrap_or(0.0)
            );
            if let (Some(before), Some(after)) = (self.rss_before_kb, self.rss_after_kb) {
                s += &format!(
                    "  broker RSS      {before} kB -> {after} kB ({:.0} bytes per connection)\n",
                    self.rss_per_connection_bytes.unwrap_or(0.0)
                );
            }
        } else {
            s += &format!(
                "  clients         {} publishers, {} subscribers, QoS {}, {}-byte payload, inflight {}{}\n",
                self.publishers,
                self.subscribers,
                self.qos,
                self.payload,
                self.inflight,
                self.rate.map_or(String::new(), |r| format!(", {r} msg/s")),
            );
            s += &format!(
                "  throughput      {:.0} msg/s received, {:.0} msg/s published (over {:.1} s)\n",
                self.throughput, self.publish_rate, self.measured_s
            );
            s += &format!(
                "  messages        {} published, {} expected, {} received\n",
                self.published, self.expected, self.received
            );
            s += &format!(
                "  correctness     {} lost, {} duplicated, {} reordered, {} malformed\n",
                self.lost, self.duplicates, self.reordered, self.malformed
            );
        }
        if let Some(l) = self.latency_us {
            let what = if self.scenario == Scenario::Conn {
                "connect"
            } else {
                "latency"
            };
            s += &format!(
                "  {what:<15} p50 {} us, p99 {} us, p99.9 {} us, max {} us ({} samples)\n",
                l.p50, l.p99, l.p999, l.max, l.samples
            );
        }
        if let Some(l) = self.ack_latency_us {
            s += &format!(
                "  ack latency     p50 {} us, p99 {} us, p99.9 {} us, max {} us ({} samples)\n",
                l.p50, l.p99, l.p999, l.max, l.samples
            );
        }
        if self.error_count > 0 {
            s += &format!("  errors          {}\n", self.error_count);
            for e in &self.errors {
                s += &format!("    {e}\n");
            }
        }
        s += &format!("  note            {SHARED_CORES_NOTE}");
        s
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::bench::client::new_histogram;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn report(argv: &[&str]) -> Report {
        let cli = Cli::try_parse_from(argv).expect("valid bench arguments");
        Report::new(&cli.args, 1)
    }

    /// A latency of 1 ms to 2 ms, recorded in nanoseconds.
    fn one_to_two_ms() -> Option<Latency> {
        let mut ns = new_histogram();
        for v in 1_000_000..=2_000_000u64 {
            ns.saturating_record(v);
        }
        Latency::from_histogram(&ns)
    }

    #[test]
    fn ack_latency_is_shown_and_serialized_like_latency() {
        let mut report = report(&["bench", "p2p", "--qos", "1"]);
        report.latency_us = one_to_two_ms();
        report.ack_latency_us = one_to_two_ms();
        let summary = report.summary();
        let line = summary
            .lines()
            .find(|l| l.trim_start().starts_with("ack latency"))
            .expect("an ack latency line");
        assert!(line.contains("p50 1500"), "{line}");
        assert!(line.contains("(1000001 samples)"), "{line}");

        let json: serde_json::Value = serde_json::to_value(&report).expect("the report serializes");
        let (ack, e2e) = (&json["ack_latency_us"], &json["latency_us"]);
        for key in ["samples", "p50", "p99", "p999", "max", "mean"] {
            assert!(ack[key].is_number(), "{key} in {ack}");
            assert_eq!(ack[key], e2e[key], "{key}");
        }
    }

    #[test]
    fn no_ack_latency_without_acknowledgements() {
        let mut report = report(&["bench", "p2p", "--qos", "0"]);
        report.latency_us = one_to_two_ms();
        report.ack_latency_us = Latency::from_histogram(&new_histogram());
        assert!(report.ack_latency_us.is_none());
        assert!(!report.summary().contains("ack latency"));
        let json: serde_json::Value = serde_json::to_value(&report).expect("the report serializes");
        assert!(json["ack_latency_us"].is_null(), "{json}");
    }
}
