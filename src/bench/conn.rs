//! The `conn` scenario: open N connections as fast as possible, hold them, and measure the
//! connect rate and (with --broker-pid) the broker's memory per connection.

use std::time::{Duration, Instant};

use super::client::{self, ConnectOptions};
use super::report::{Latency, Report};
use super::{BenchArgs, BenchError, nanos, open_all};

pub async fn run(args: &BenchArgs, options: &ConnectOptions) -> Result<Report, BenchError> {
    let clients = args.clients.unwrap_or(1000);
    let mut report = Report::new(args, clients);
    let rss_before = args.broker_pid.map(rss_kb).transpose()?;
    let tag = std::process::id();
    let started = Instant::now();
    let results = open_all((0..clients).map(|i| {
        let options = options.clone();
        async move { client::open_and_time(&options, i, format!("bench-{tag}-c{i}")).await }
    }))
    .await;
    let opening = started.elapsed();
    let mut handshakes = client::new_histogram();
    let mut conns = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok((conn, took)) => {
                handshakes.saturating_record(nanos(took).max(1));
                conns.push(conn);
            }
            Err(e) => report.add_error(e),
        }
    }
    let opened = conns.len() as u64;
    eprintln!(
        "opened {opened} connections in {:.2} s; holding them for {} s",
        opening.as_secs_f64(),
        args.duration
    );
    report.connections = Some(opened);
    report.connect_rate = Some((opened as f64 / opening.as_secs_f64().max(1e-9)).round());
    report.latency_us = Latency::from_histogram(&handshakes);
    for second in 1..=args.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!("[{second:>4}s] holding {opened} connections");
    }
    // Read while every connection is still open and the broker has settled.
    let rss_after = args.broker_pid.map(rss_kb).transpose()?;
    futures_util::future::join_all(conns.into_iter().map(client::Conn::disconnect)).await;
    report.rss_before_kb = rss_before;
    report.rss_after_kb = rss_after;
    if let (Some(before), Some(after)) = (rss_before, rss_after)
        && opened > 0
    {
        let grown = after.saturating_sub(before) as f64 * 1024.0;
        report.rss_per_connection_bytes = Some((grown / opened as f64).round());
    }
    Ok(report)
}

/// The resident set size of process `pid`, in kB (`VmRSS` in /proc/PID/status).
fn rss_kb(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let fail = |reason: String| BenchError::BrokerMemory {
        path: path.clone(),
        reason,
    };
    let status = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
    parse_vm_rss(&status).ok_or_else(|| fail("no VmRSS line".into()))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss_in_kb() {
        let status = "Name:\tmosquitto\nVmPeak:\t  9000 kB\nVmRSS:\t    6144 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(6144));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn reads_our_own_memory() {
        assert!(rss_kb(std::process::id()).is_ok_and(|kb| kb > 0));
    }
}
