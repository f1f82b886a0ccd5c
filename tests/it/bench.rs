//! `mqttd bench` against an in-process broker: every scenario runs for about a second, prints
//! a JSON line that parses, and loses nothing at QoS 1 and 2 at a rate the broker sustains.
//! At full speed the broker may drop QoS 1/2 deliveries for a subscriber whose queue is full
//! (drop-new); the bench must then report exactly what the broker counted as dropped.

use std::process::Command;

use mqttd::stats::Counters;
use serde_json::Value;

use crate::common::*;

/// Runs `mqttd bench ARGS --port <broker> --duration 1` and returns its JSON line.
fn bench(broker: &TestBroker, args: &[&str]) -> Value {
    let port = broker.addr.port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_mqttd"))
        .arg("bench")
        .args(args)
        .args(["--port", &port, "--duration", "1", "--threads", "2"])
        .output()
        .expect("run mqttd bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?} failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in\n{stdout}"));
    serde_json::from_str(json).expect("the JSON line parses")
}

fn figure(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {report}"))
}

/// Everything published reached every subscriber it was meant for, once and in order.
fn assert_complete(report: &Value) {
    assert!(figure(report, "published") > 0, "{report}");
    assert_eq!(
        figure(report, "received"),
        figure(report, "expected"),
        "{report}"
    );
    for key in [
        "lost",
        "duplicates",
        "reordered",
        "malformed",
        "error_count",
    ] {
        assert_eq!(figure(report, key), 0, "{key} in {report}");
    }
}

#[test]
fn fanin_qos1_at_full_speed_accounts_for_every_message() {
    let broker = start_broker();
    let report = bench(&broker, &["fanin", "--qos", "1", "--clients", "4"]);
    assert_eq!(report["scenario"], "fanin");
    assert_eq!(figure(&report, "subscribers"), 1);
    assert!(report["throughput"].as_f64().is_some_and(|t| t > 0.0));
    assert_eq!(
        figure(&report, "received") + figure(&report, "lost"),
        figure(&report, "expected"),
        "{report}"
    );
    let dropped = Counters::get(&broker.counters.dropped_queue_full);
    assert_eq!(figure(&report, "lost"), dropped, "{report}");
    for key in ["duplicates", "reordered", "malformed", "error_count"] {
        assert_eq!(figure(&report, key), 0, "{key} in {report}");
    }
}

#[test]
fn fanin_qos1_paced_loses_nothing() {
    let broker = start_broker();
    let report = bench(
        &broker,
        &["fanin", "--qos", "1", "--clients", "4", "--rate", "2000"],
    );
    assert_complete(&report);
}

#[test]
fn fanout_qos2_paced_loses_nothing() {
    let broker = start_broker();
    let report = bench(
        &broker,
        &["fanout", "--qos", "2", "--clients", "3", "--rate", "1000"],
    );
    assert_eq!(figure(&report, "publishers"), 1);
    assert_eq!(
        figure(&report, "expected"),
        3 * figure(&report, "published")
    );
    assert_complete(&report);
}

#[test]
fn p2p_qos1_over_mqtt_3_1_1_paced_loses_nothing() {
    let broker = start_broker();
    let report = bench(
        &broker,
        &[
            "p2p",
            "--qos",
            "1",
            "--clients",
            "3",
            "--mqtt",
            "3",
            "--rate",
            "2000",
        ],
    );
    assert_eq!(report["mqtt"], "3.1.1");
    assert_complete(&report);
}

#[test]
fn p2p_qos0_reports() {
    let broker = start_broker();
    let report = bench(&broker, &["p2p", "--qos", "0", "--clients", "2"]);
    // QoS 0 may drop under load; what arrives must still add up.
    assert_eq!(
        figure(&report, "received") + figure(&report, "lost"),
        figure(&report, "expected"),
        "{report}"
    );
}

#[test]
fn latency_qos2_at_a_fixed_rate() {
    let broker = start_broker();
    let report = bench(&broker, &["latency", "--qos", "2", "--rate", "200"]);
    assert_complete(&report);
    // 200 msg/s for one second, give or take the timer.
    let published = figure(&report, "published");
    assert!((150..=250).contains(&published), "{report}");
    for figure in ["latency_us", "ack_latency_us"] {
        assert!(
            report[figure]["p99"].as_f64().is_some_and(|p| p > 0.0),
            "{figure}: {report}"
        );
    }
}

#[test]
fn conn_opens_holds_and_measures_memory() {
    let broker = start_broker();
    // The broker runs in this process, so its memory is ours.
    let pid = std::process::id().to_string();
    let report = bench(&broker, &["conn", "--clients", "50", "--broker-pid", &pid]);
    assert_eq!(figure(&report, "connections"), 50);
    assert_eq!(figure(&report, "error_count"), 0);
    assert!(report["connect_rate"].as_f64().is_some_and(|r| r > 0.0));
    assert!(figure(&report, "rss_after_kb") > 0);
}
