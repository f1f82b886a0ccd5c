//! Abuse under load (robustness issue, part 4): 10,000 connections, a take-over storm, a QoS 1
//! flood whose acknowledgements are never read, a subscriber reading 10 messages/s out of
//! 10,000/s, 10,000 retained topics followed by `#` subscriptions; and from docs/bad-inputs.md
//! a connection storm and `max_connections` + 10,000 (G103), 5,000 clients with large retained
//! Wills dropped at once (G107), and 10^6 random operations from 200 clients checked against a
//! reference model (D77).
//!
//! Every scenario is `#[ignore]`d: it needs a release build to mean anything, up to half a
//! minute and thousands of sockets. Run them with
//!
//! ```text
//! cargo test --release --test it load:: -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Each one starts the built `mqttd` binary as a separate process (so its resident memory is
//! its own, read from /proc/PID/status), connects a "canary" client that gets a PINGRESP and
//! a publish/subscribe round trip every 100 ms from its own thread, abuses the broker on
//! loopback for a bounded count and time, and then checks that
//! - every canary probe was answered within 1 s (`CANARY_LIMIT`),
//! - the broker never panicked, is still running, and stops cleanly on SIGTERM,
//! - its resident memory, a few seconds after the abuse ended, is back near its baseline
//!   (`assert_memory_returned` explains the bound).
//!
//! Each prints a table row (`ROW | ...`) and its details; docs/abuse-load.md has a run.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use mqttd::mqtt::{
    Ack, Connect, Disconnect, MqttCodec, Packet, Properties, PropertyValues, ProtocolVersion,
    Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe, Will,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_util::codec::Framed;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

/// The longest a canary probe (PINGREQ -> PINGRESP, or PUBLISH -> PUBACK + its own message
/// back) may take for the broker to count as serving other clients.
const CANARY_LIMIT: Duration = Duration::from_secs(1);
/// Time between two canary probes.
const CANARY_INTERVAL: Duration = Duration::from_millis(100);
/// A probe that takes this long is given up (and the canary has failed).
const CANARY_GIVE_UP: Duration = Duration::from_secs(10);
/// How long the broker is left alone after the abuse before "after" is read.
const SETTLE: Duration = Duration::from_secs(3);
/// How long a well-behaved client of a scenario waits for an answer.
const ANSWER: Duration = Duration::from_secs(10);
/// QoS 1 messages a well-behaved publisher leaves unacknowledged (the broker's Receive
/// Maximum is 100).
const WINDOW: usize = 100;
/// No subscriber of a scenario reads for longer than this.
const READ_CAP: Duration = Duration::from_secs(45);

// ---- the broker process ----------------------------------------------------------------------

/// What the broker wrote on stderr: counted, panics and warnings kept.
#[derive(Default)]
struct Log {
    lines: AtomicU64,
    panics: Mutex<Vec<String>>,
    warnings: Mutex<Vec<String>>,
    warning_count: AtomicU64,
}

struct Broker {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    log: Arc<Log>,
    _dir: tempfile::TempDir,
}

/// Starts `mqttd --config` on 127.0.0.1:0 with anonymous access and the `[limits]` lines
/// given, its open-file limit raised to the hard limit, and waits for its address.
fn start_broker_process(limits: &str) -> Broker {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("mqttd.toml");
    let db = dir.path().join("load.db");
    std::fs::write(
        &config,
        format!(
            "db_path = {:?}\nallow_anonymous = true\n[[listener]]\nbind = \"127.0.0.1:0\"\n\
             [limits]\n{limits}\n",
            db.to_str().unwrap()
        ),
    )
    .unwrap();
    let script = r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" --config "$1""#;
    let mut child = Command::new("sh")
        .args(["-c", script, env!("CARGO_BIN_EXE_mqttd")])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mqttd");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Log::default());
    let (tx, rx) = mpsc::channel();
    let reader_log = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            reader_log.lines.fetch_add(1, Ordering::Relaxed);
            if let Some(addr) = line.split("listening on ").nth(1) {
                let _ = tx.send(addr.trim().parse::<SocketAddr>().unwrap());
            }
            if line.contains("panicked") {
                eprintln!("mqttd: {line}");
                reader_log.panics.lock().unwrap().push(line);
            } else if line.contains(" WARN ") || line.contains(" ERROR ") {
                let n = reader_log.warning_count.fetch_add(1, Ordering::Relaxed);
                if n < 5 {
                    eprintln!("mqttd: {line}");
                    reader_log.warnings.lock().unwrap().push(line);
                }
            }
        }
    });
    let addr = rx.recv_timeout(ANSWER).expect("mqttd logged its address");
    // `exec` keeps the shell's pid: this is the broker's.
    let pid = child.id();
    Broker {
        child,
        pid,
        addr,
        log,
        _dir: dir,
    }
}

impl Broker {
    fn rss_kb(&self) -> u64 {
        proc_status_kb(self.pid, "VmRSS:")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits (at most 20 s) for the exit.
    fn stop(&mut self) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `kB` line of /proc/PID/status (VmRSS, VmHWM); 0 once the process is gone.
fn proc_status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

/// Reads the broker's VmRSS every 20 ms and keeps the highest value.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(proc_status_kb(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak()
    }
}

// ---- a client that reports failures instead of panicking -------------------------------------

/// Connects from one of 127.0.0.2-127.0.0.9 (picked by `n`), so that many short connections
/// do not run out of ephemeral ports of one source address.
async fn tcp(addr: SocketAddr, n: usize, recv_buffer: Option<u32>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.bind(SocketAddr::from(([127, 0, 0, 2 + (n % 8) as u8], 0)))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn connect_packet(version: ProtocolVersion, client_id: &str, will: Option<Will>) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::from(PropertyValues {
            receive_maximum: version.is_v5().then_some(u16::MAX),
            ..PropertyValues::default()
        }),
        client_id: client_id.into(),
        will,
        username: None,
        password: None,
    }))
}

fn publish(topic: &str, qos: QoS, packet_id: u16, retain: bool, payload: Bytes) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
        properties: Properties::default(),
        payload,
    }))
}

fn puback(packet_id: u16) -> Packet {
    Packet::PubAck(Ack {
        packet_id,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    })
}

struct Conn {
    framed: Framed<TcpStream, MqttCodec>,
}

impl Conn {
    fn over(stream: TcpStream, version: ProtocolVersion) -> Conn {
        Conn {
            framed: Framed::new(stream, MqttCodec::new(version, 268_435_460)),
        }
    }

    /// TCP connect, CONNECT, and a successful CONNACK.
    async fn connect(addr: SocketAddr, client_id: &str, n: usize) -> Result<Conn, String> {
        let stream = tcp(addr, n, None)
            .await
            .map_err(|e| format!("{client_id}: TCP connect: {e}"))?;
        let mut conn = Conn::over(stream, V5);
        conn.handshake(V5, client_id, None).await?;
        Ok(conn)
    }

    async fn handshake(
        &mut self,
        version: ProtocolVersion,
        client_id: &str,
        will: Option<Will>,
    ) -> Result<(), String> {
        self.send(connect_packet(version, client_id, will)).await?;
        match self.recv(ANSWER).await? {
            Packet::ConnAck(ack) if ack.reason == ReasonCode::Success => Ok(()),
            other => Err(format!("{client_id}: expected CONNACK 0x00, got {other:?}")),
        }
    }

    async fn send(&mut self, packet: Packet) -> Result<(), String> {
        self.framed
            .send(packet)
            .await
            .map_err(|e| format!("send: {e}"))
    }

    async fn feed(&mut self, packet: Packet) -> Result<(), String> {
        self.framed
            .feed(packet)
            .await
            .map_err(|e| format!("send: {e}"))
    }

    async fn flush(&mut self) -> Result<(), String> {
        SinkExt::<Packet>::flush(&mut self.framed)
            .await
            .map_err(|e| format!("send: {e}"))
    }

    async fn recv(&mut self, limit: Duration) -> Result<Packet, String> {
        match timeout(limit, self.framed.next()).await {
            Err(_) => Err(format!("nothing received within {limit:?}")),
            Ok(None) => Err("closed by the broker".into()),
            Ok(Some(Err(e))) => Err(format!("receive: {e}")),
            Ok(Some(Ok(packet))) => Ok(packet),
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), String> {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                filter.into(),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            )],
        }))
        .await?;
        match self.recv(ANSWER).await? {
            Packet::SubAck(ack) if ack.reasons.first() == Some(&ReasonCode::from_qos(qos)) => {
                Ok(())
            }
            other => Err(format!("expected SUBACK for {filter}, got {other:?}")),
        }
    }

    async fn disconnect(mut self) {
        let _ = self.send(Packet::Disconnect(Disconnect::default())).await;
    }
}

trait FromQos {
    fn from_qos(qos: QoS) -> ReasonCode;
}

impl FromQos for ReasonCode {
    fn from_qos(qos: QoS) -> ReasonCode {
        match qos {
            QoS::AtMostOnce => ReasonCode::Success,
            QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
            QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
        }
    }
}

/// A QoS 1 publisher that keeps at most `WINDOW` messages unacknowledged.
struct Publisher {
    conn: Conn,
    next_id: u16,
    inflight: usize,
    sent: u64,
    acked: u64,
    refused: u64,
}

impl Publisher {
    fn new(conn: Conn) -> Publisher {
        Publisher {
            conn,
            next_id: 0,
            inflight: 0,
            sent: 0,
            acked: 0,
            refused: 0,
        }
    }

    async fn publish(&mut self, topic: &str, retain: bool, payload: Bytes) -> Result<(), String> {
        while self.inflight >= WINDOW {
            self.reap(true).await?;
        }
        self.next_id = self.next_id % u16::MAX + 1;
        self.conn
            .feed(publish(
                topic,
                QoS::AtLeastOnce,
                self.next_id,
                retain,
                payload,
            ))
            .await?;
        self.inflight += 1;
        self.sent += 1;
        Ok(())
    }

    /// Takes the acknowledgements already received; with `wait`, waits for at least one.
    async fn reap(&mut self, wait: bool) -> Result<(), String> {
        self.conn.flush().await?;
        if wait {
            let packet = self.conn.recv(ANSWER).await?;
            self.on_packet(packet)?;
        }
        while let Some(item) = self.conn.framed.next().now_or_never() {
            match item {
                Some(Ok(packet)) => self.on_packet(packet)?,
                Some(Err(e)) => return Err(format!("receive: {e}")),
                None => return Err("closed by the broker".into()),
            }
        }
        Ok(())
    }

    fn on_packet(&mut self, packet: Packet) -> Result<(), String> {
        match packet {
            Packet::PubAck(ack) => {
                self.inflight = self.inflight.saturating_sub(1);
                self.acked += 1;
                if ack.reason != ReasonCode::Success {
                    self.refused += 1;
                }
                Ok(())
            }
            other => Err(format!("publisher: unexpected {other:?}")),
        }
    }

    async fn drain(&mut self) -> Result<(), String> {
        while self.inflight > 0 {
            self.reap(true).await?;
        }
        Ok(())
    }
}

/// What a subscriber saw.
#[derive(Debug, Default)]
struct Received {
    /// Messages whose topic starts with the prefix the subscriber counts.
    count: u64,
    /// When the last of them arrived, since the subscriber started reading.
    last: Option<Duration>,
    /// The broker closed the connection (or it failed) before the subscriber stopped.
    closed: Option<String>,
}

/// Reads messages from a subscribed `conn` (acknowledging QoS 1) until `stop` is set and
/// nothing under `prefix` arrived for `idle`, counting those under `prefix`. With `pace`, takes
/// one message per `pace` (a slow reader). Gives up after `READ_CAP` in any case.
async fn read_messages(
    mut conn: Conn,
    prefix: &str,
    pace: Option<Duration>,
    stop: Arc<AtomicBool>,
    idle: Duration,
) -> Received {
    let mut got = Received::default();
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    loop {
        if started.elapsed() > READ_CAP {
            got.closed = Some(format!("still reading after {READ_CAP:?}"));
            return got;
        }
        if let Some(pace) = pace {
            tokio::time::sleep(pace).await;
        }
        match timeout(Duration::from_millis(50), conn.framed.next()).await {
            Err(_) => {
                if let Err(e) = conn.flush().await {
                    got.closed = Some(e);
                    return got;
                }
                if stop.load(Ordering::Relaxed) && quiet_since.elapsed() >= idle {
                    break;
                }
            }
            Ok(None) => {
                got.closed = Some("closed by the broker".into());
                return got;
            }
            Ok(Some(Err(e))) => {
                got.closed = Some(format!("receive: {e}"));
                return got;
            }
            Ok(Some(Ok(Packet::Publish(p)))) => {
                // Only the counted messages: a '#' subscriber also gets the canary's.
                if p.topic.starts_with(prefix) {
                    got.count += 1;
                    got.last = Some(started.elapsed());
                    quiet_since = Instant::now();
                }
                if let Some(id) = p.packet_id {
                    let _ = conn.feed(puback(id)).await;
                }
                if conn.framed.read_buffer().is_empty() || pace.is_some() {
                    let _ = conn.flush().await;
                }
                if stop.load(Ordering::Relaxed) && pace.is_some() {
                    break;
                }
            }
            Ok(Some(Ok(Packet::Disconnect(d)))) => {
                got.closed = Some(format!("DISCONNECT {:?}", d.reason));
                return got;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    conn.disconnect().await;
    got
}

// ---- the canary --------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct CanaryReport {
    probes: u64,
    max_ping: Duration,
    max_round_trip: Duration,
    /// Probes over `CANARY_LIMIT`: when (since the canary started) and how long.
    late: Vec<String>,
    error: Option<String>,
}

impl CanaryReport {
    fn max(&self) -> Duration {
        self.max_ping.max(self.max_round_trip)
    }

    fn served(&self) -> bool {
        self.probes > 0 && self.late.is_empty() && self.error.is_none()
    }
}

/// A client on its own thread (and its own runtime, so the scenario's clients cannot delay
/// it) that probes the broker every `CANARY_INTERVAL` until stopped.
struct Canary {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<CanaryReport>,
}

impl Canary {
    /// Returns once the canary is connected and subscribed.
    fn start(addr: SocketAddr) -> Canary {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(canary(addr, flag, ready_tx))
        });
        ready_rx
            .recv_timeout(ANSWER)
            .expect("canary thread")
            .expect("canary connected");
        Canary { stop, thread }
    }

    fn finish(self) -> CanaryReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("canary thread")
    }
}

async fn canary(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<(), String>>,
) -> CanaryReport {
    let mut report = CanaryReport::default();
    let mut conn = match Conn::connect(addr, "canary", 7).await {
        Ok(conn) => conn,
        Err(e) => {
            let _ = ready.send(Err(e));
            return report;
        }
    };
    if let Err(e) = conn.subscribe("canary/#", QoS::AtLeastOnce).await {
        let _ = ready.send(Err(e));
        return report;
    }
    let _ = ready.send(Ok(()));
    let started = Instant::now();
    let mut id: u16 = 0;
    while !stop.load(Ordering::Relaxed) {
        id = id % 60_000 + 1;
        match canary_probe(&mut conn, id).await {
            Ok((ping, round_trip)) => {
                report.probes += 1;
                report.max_ping = report.max_ping.max(ping);
                report.max_round_trip = report.max_round_trip.max(round_trip);
                if ping > CANARY_LIMIT || round_trip > CANARY_LIMIT {
                    report.late.push(format!(
                        "at {:.1} s: ping {ping:?}, publish/subscribe {round_trip:?}",
                        started.elapsed().as_secs_f64()
                    ));
                }
            }
            Err(e) => {
                report.error = Some(format!("at {:.1} s: {e}", started.elapsed().as_secs_f64()));
                return report;
            }
        }
        tokio::time::sleep(CANARY_INTERVAL).await;
    }
    conn.disconnect().await;
    report
}

/// PINGREQ -> PINGRESP, then a QoS 1 PUBLISH to the canary's own subscription -> its PUBACK
/// and the message itself. Returns both durations.
async fn canary_probe(conn: &mut Conn, id: u16) -> Result<(Duration, Duration), String> {
    let t = Instant::now();
    conn.send(Packet::PingReq).await?;
    match conn.recv(CANARY_GIVE_UP).await? {
        Packet::PingResp => {}
        other => return Err(format!("expected PINGRESP, got {other:?}")),
    }
    let ping = t.elapsed();
    let t = Instant::now();
    let payload = Bytes::copy_from_slice(&id.to_be_bytes());
    conn.send(publish(
        "canary/probe",
        QoS::AtLeastOnce,
        id,
        false,
        payload.clone(),
    ))
    .await?;
    let (mut acked, mut echoed) = (false, false);
    while !(acked && echoed) {
        match conn.recv(CANARY_GIVE_UP).await? {
            Packet::PubAck(ack) if ack.packet_id == id && ack.reason == ReasonCode::Success => {
                acked = true
            }
            Packet::Publish(p) if p.payload == payload => {
                echoed = true;
                if let Some(pid) = p.packet_id {
                    conn.send(puback(pid)).await?;
                }
            }
            other => return Err(format!("canary: unexpected {other:?}")),
        }
    }
    Ok((ping, t.elapsed()))
}

// ---- the common ending ---------------------------------------------------------------------------

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

/// How far above its baseline the broker's memory may stay once the abuse is over.
///
/// Read as it is, resident memory does not come back: glibc's malloc keeps what the broker
/// freed in its per-thread arenas for reuse (a `free` returns only the free top of a heap), so
/// after 10,000 connections closed the VmRSS stays near its peak although the memory is free.
/// (A second round of 10,000 connections reuses it rather than growing: see scenario 1.) The
/// check is therefore on what the broker still holds: once the abuse is over, the test asks the
/// broker's malloc to give back whatever is free (`trimmed_rss_kb`: gdb calls `malloc_trim(0)`
/// in it) and reads VmRSS again. That may exceed the baseline by 8 MB (pages malloc_trim cannot
/// release because something small still lives on them; hash maps, slabs and buffers that keep
/// their capacity) plus a tenth of the growth during the abuse. A broker that still held the
/// abuse's state (connections, queues, buffers, per-message records) keeps most of its growth
/// and fails.
fn memory_allowance_kb(baseline_kb: u64, peak_kb: u64) -> u64 {
    8 * 1024 + peak_kb.saturating_sub(baseline_kb) / 10
}

/// The broker's VmRSS after its malloc gave back all free memory (gdb: `call malloc_trim(0)`);
/// `None` when gdb is missing or cannot attach. The broker is paused while gdb is attached.
/// On some kernels gdb then reports "Couldn't write extended state status" and prints no
/// return value, although the call ran (the memory is released and the broker carries on);
/// so success is "attached, found the symbol, detached".
fn trimmed_rss_kb(pid: u32) -> Option<u64> {
    let out = Command::new("timeout")
        // The executable through /proc: the file may have been rebuilt (replaced) meanwhile.
        .args(["60", "gdb", "-nx", "-batch", &format!("/proc/{pid}/exe")])
        .args(["-p", &pid.to_string()])
        .args(["-ex", "call (int) malloc_trim(0)"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failed = [
        "ptrace:",
        "No symbol",
        "not in executable format",
        "Cannot access memory",
    ]
    .iter()
    .any(|e| stdout.contains(e) || stderr.contains(e));
    if failed || !stdout.contains("detached") {
        eprintln!(
            "gdb could not call malloc_trim in the broker (is gdb installed, is ptrace \
             allowed?):\n{stdout}{stderr}"
        );
        return None;
    }
    Some(proc_status_kb(pid, "VmRSS:"))
}

/// A scenario's figures, printed as a table row.
struct Outcome {
    scenario: &'static str,
    baseline_kb: u64,
    peak_kb: u64,
    after_kb: u64,
    trimmed_kb: Option<u64>,
    canary: CanaryReport,
    summary: String,
}

impl Outcome {
    fn print(&self) {
        eprintln!(
            "ROW | {} | {} | {} | {} | {} | {:.0} ms ({} probes) | {} |",
            self.scenario,
            mb(self.baseline_kb),
            mb(self.peak_kb),
            mb(self.after_kb),
            self.trimmed_kb.map_or("(no gdb)".into(), mb),
            self.canary.max().as_secs_f64() * 1000.0,
            self.canary.probes,
            self.summary
        );
        eprintln!(
            "canary: {} probes, max ping {:?}, max publish/subscribe {:?}, late {:?}, error {:?}",
            self.canary.probes,
            self.canary.max_ping,
            self.canary.max_round_trip,
            self.canary.late,
            self.canary.error
        );
    }
}

/// The checks every scenario ends with; prints the row first so a failure still reports.
fn conclude(mut broker: Broker, outcome: Outcome) {
    outcome.print();
    let alive = broker.alive();
    let panics = broker.log.panics.lock().unwrap().clone();
    eprintln!(
        "broker: {} log lines, {} warnings/errors, panics: {panics:?}",
        broker.log.lines.load(Ordering::Relaxed),
        broker.log.warning_count.load(Ordering::Relaxed),
    );
    assert!(alive, "the broker process died");
    assert!(panics.is_empty(), "the broker panicked: {panics:?}");
    assert!(
        outcome.canary.served(),
        "the canary was not served within {CANARY_LIMIT:?}: {:?}",
        outcome.canary
    );
    let allowance = memory_allowance_kb(outcome.baseline_kb, outcome.peak_kb);
    match outcome.trimmed_kb {
        Some(trimmed) => assert!(
            trimmed <= outcome.baseline_kb + allowance,
            "memory still held after the abuse: baseline {}, peak {}, after {}, after \
             malloc_trim {} (allowed up to {})",
            mb(outcome.baseline_kb),
            mb(outcome.peak_kb),
            mb(outcome.after_kb),
            mb(trimmed),
            mb(outcome.baseline_kb + allowance)
        ),
        None => eprintln!("MEMORY NOT CHECKED: without gdb, freed and held memory look alike"),
    }
    let status = broker.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "the broker did not stop cleanly on SIGTERM: {status:?}"
    );
}

/// The broker, its canary and its memory before the abuse.
struct Setup {
    broker: Broker,
    canary: Canary,
    sampler: Sampler,
    baseline_kb: u64,
}

fn setup(limits: &str) -> Setup {
    let broker = start_broker_process(limits);
    let canary = Canary::start(broker.addr);
    // Let start-up allocations settle before the baseline is read.
    std::thread::sleep(Duration::from_secs(1));
    let baseline_kb = broker.rss_kb();
    let sampler = Sampler::start(broker.pid);
    eprintln!(
        "broker pid {} on {}, baseline VmRSS {} (VmHWM so far {})",
        broker.pid,
        broker.addr,
        mb(baseline_kb),
        mb(proc_status_kb(broker.pid, "VmHWM:"))
    );
    Setup {
        broker,
        canary,
        sampler,
        baseline_kb,
    }
}

impl Setup {
    /// Waits `SETTLE`, reads "after", stops the canary and the sampler.
    fn settle(self, scenario: &'static str, summary: String) {
        std::thread::sleep(SETTLE);
        let after_kb = self.broker.rss_kb();
        let canary = self.canary.finish();
        let peak_kb = self.sampler.finish();
        let trimmed_kb = trimmed_rss_kb(self.broker.pid);
        // Still serving after the abuse (and after gdb's visit).
        let addr = self.broker.addr;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let mut c = Conn::connect(addr, "after", 0)
                    .await
                    .expect("a fresh client");
                c.send(Packet::PingReq).await.unwrap();
                assert_eq!(c.recv(ANSWER).await, Ok(Packet::PingResp));
                c.disconnect().await;
            });
        conclude(
            self.broker,
            Outcome {
                scenario,
                baseline_kb: self.baseline_kb,
                peak_kb,
                after_kb,
                trimmed_kb,
                canary,
                summary,
            },
        );
    }
}

// ---- 1. 10,000 connections -----------------------------------------------------------------------

const CONNECTIONS: u32 = 10_000;

/// `mqttd bench conn --clients 10000` under `sh -c 'ulimit -n <hard limit>'`: this process
/// cannot raise its own open-file limit without libc, the bench can.
fn bench_conn(broker: &Broker, hold_secs: u64) -> Child {
    let script = r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@""#;
    Command::new("sh")
        .args(["-c", script, env!("CARGO_BIN_EXE_mqttd"), "bench", "conn"])
        .args(["--clients", &CONNECTIONS.to_string()])
        .args(["--port", &broker.addr.port().to_string()])
        .args(["--duration", &hold_secs.to_string()])
        .args(["--broker-pid", &broker.pid.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mqttd bench conn")
}

/// Waits for the bench's "opened N connections" line and returns it.
fn wait_opened(bench: &mut Child) -> String {
    let stderr = bench.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("opened ") {
                let _ = tx.send(line);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the bench opened its connections")
}

#[test]
#[ignore = "load test: run with --release -- --ignored (docs/abuse-load.md)"]
fn ten_thousand_connections_opened_held_and_closed() {
    let hard = Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    assert!(
        hard == "unlimited" || hard.parse::<u64>().unwrap_or(0) > u64::from(CONNECTIONS) + 100,
        "the hard open-file limit ({hard}) is too low for {CONNECTIONS} connections"
    );
    let s = setup("");

    // Round 1: open 10,000, hold 5 s, close each with DISCONNECT.
    let mut bench = bench_conn(&s.broker, 5);
    let opened = wait_opened(&mut bench);
    // Read when round 2's is: what the last connects left to settle (the connect records'
    // batches, SQLite's cache) counts in both.
    std::thread::sleep(Duration::from_secs(2));
    let held_kb = s.broker.rss_kb();
    let out = bench.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON from the bench:\n{stdout}"));
    eprintln!("round 1: {opened}; VmRSS while held {}", mb(held_kb));
    eprintln!(
        "round 1: connections {}, errors {}, connect rate {}/s, handshake p99 {} us",
        json["connections"], json["error_count"], json["connect_rate"], json["latency_us"]["p99"]
    );
    assert!(out.status.success(), "bench conn failed:\n{stdout}");
    assert_eq!(json["connections"], u64::from(CONNECTIONS));
    std::thread::sleep(SETTLE);
    let after_round_1 = s.broker.rss_kb();
    eprintln!(
        "round 1: VmRSS {} after the clean closes",
        mb(after_round_1)
    );

    // Round 2: open 10,000 again, then kill the bench: every socket closes without DISCONNECT.
    let mut bench = bench_conn(&s.broker, 60);
    let opened = wait_opened(&mut bench);
    std::thread::sleep(Duration::from_secs(2));
    let held_2 = s.broker.rss_kb();
    bench.kill().unwrap();
    bench.wait().unwrap();
    eprintln!(
        "round 2: {opened}; VmRSS while held {}; bench killed",
        mb(held_2)
    );
    // The second round reuses what the first freed; needing as much again would be a leak.
    // Its 10,000 new client ids add bounded state the first round did not have (their
    // `clients` rows in SQLite's page cache, the flapping counters kept for a minute): 3.5-6
    // MB on ~31 MB measured. A leak per connection also shows in `conclude`'s trimmed check.
    let growth = held_kb.saturating_sub(s.baseline_kb);
    assert!(
        held_2 <= held_kb + growth / 4,
        "round 2 needed new memory: {} held in round 1, {} in round 2",
        mb(held_kb),
        mb(held_2)
    );
    let summary = format!(
        "2 x {CONNECTIONS} held (round 1 closed by DISCONNECT, round 2 by kill -9); \
         {} while held; {} after round 1",
        mb(held_kb.max(held_2)),
        mb(after_round_1)
    );
    s.settle("10,000 connections", summary);
}

// ---- 2. take-over storm ----------------------------------------------------------------------------

#[test]
#[ignore = "load test: run with --release -- --ignored (docs/abuse-load.md)"]
fn take_over_storm_on_one_client_id() {
    const TAKERS: usize = 32;
    const STORM: Duration = Duration::from_secs(10);
    const MAX_CONNECTS: u64 = 30_000;
    // The storm itself: the flapping ban (on by default) would end it after 15 connects.
    let s = setup("max_connects_per_client_id_per_minute = 0");
    let addr = s.broker.addr;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let summary = runtime.block_on(async move {
        // A witness of the Wills: each taken-over connection publishes one.
        let mut witness = Conn::connect(addr, "witness", 0).await.unwrap();
        witness
            .subscribe("storm/will", QoS::AtMostOnce)
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let wills = tokio::spawn(read_messages(
            witness,
            "storm/will",
            None,
            stop.clone(),
            Duration::from_millis(500),
        ));
        let connects = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let taken_over = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let slowest = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let deadline = Instant::now() + STORM;
        let tasks: Vec<_> = (0..TAKERS)
            .map(|t| {
                let (connects, accepted, taken_over, refused, slowest, errors) = (
                    connects.clone(),
                    accepted.clone(),
                    taken_over.clone(),
                    refused.clone(),
                    slowest.clone(),
                    errors.clone(),
                );
                tokio::spawn(async move {
                    let version = if t % 2 == 0 { V5 } else { V311 };
                    let mut n = t;
                    while Instant::now() < deadline
                        && connects.fetch_add(1, Ordering::Relaxed) < MAX_CONNECTS
                    {
                        n += TAKERS;
                        let stream = match tcp(addr, n, None).await {
                            Ok(s) => s,
                            Err(e) => {
                                errors.lock().unwrap().push(format!("TCP: {e}"));
                                continue;
                            }
                        };
                        let mut conn = Conn::over(stream, version);
                        let will = Will {
                            qos: QoS::AtMostOnce,
                            retain: false,
                            properties: Properties::default(),
                            topic: "storm/will".into(),
                            payload: Bytes::from_static(b"gone"),
                        };
                        let t0 = Instant::now();
                        if let Err(e) = conn.handshake(version, "victim", Some(will)).await {
                            refused.fetch_add(1, Ordering::Relaxed);
                            let mut errors = errors.lock().unwrap();
                            if errors.len() < 10 {
                                errors.push(e);
                            }
                            continue;
                        }
                        slowest.fetch_max(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                        accepted.fetch_add(1, Ordering::Relaxed);
                        if conn.subscribe("storm/#", QoS::AtLeastOnce).await.is_err() {
                            // Taken over before the SUBACK: fine, that is the storm.
                            taken_over.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        // Hold it until the next taker takes it over (or the storm ends).
                        loop {
                            match timeout(Duration::from_millis(200), conn.framed.next()).await {
                                Ok(Some(Ok(Packet::Disconnect(_))))
                                | Ok(None)
                                | Ok(Some(Err(_))) => {
                                    taken_over.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                                // Wills of earlier takers arrive on storm/#.
                                Ok(Some(Ok(_))) => {}
                                Err(_) if Instant::now() >= deadline => break,
                                Err(_) => {}
                            }
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        // The client id still works: one more connection gets it, subscribes, and receives.
        let t0 = Instant::now();
        let mut last = Conn::connect(addr, "victim", 3).await.unwrap();
        let final_connect = t0.elapsed();
        last.subscribe("storm/#", QoS::AtLeastOnce).await.unwrap();
        last.send(publish(
            "storm/x",
            QoS::AtLeastOnce,
            1,
            false,
            Bytes::from_static(b"x"),
        ))
        .await
        .unwrap();
        let (mut acked, mut got) = (false, 0);
        while !acked || got == 0 {
            match last.recv(ANSWER).await.unwrap() {
                Packet::PubAck(_) => acked = true,
                Packet::Publish(p) if p.topic == "storm/x" => {
                    got += 1;
                    last.send(puback(p.packet_id.unwrap())).await.unwrap();
                }
                _ => {}
            }
        }
        last.disconnect().await;
        stop.store(true, Ordering::Relaxed);
        let wills = wills.await.unwrap();
        let errors = errors.lock().unwrap().clone();
        let summary = format!(
            "{} connects in {STORM:?} by {TAKERS} clients (v5 and 3.1.1), {} accepted, \
             {} taken over, {} refused or failed, slowest CONNACK {} ms, {} Wills seen; \
             the id still works afterwards (CONNACK in {} ms)",
            connects.load(Ordering::Relaxed).min(MAX_CONNECTS),
            accepted.load(Ordering::Relaxed),
            taken_over.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
            slowest.load(Ordering::Relaxed) / 1000,
            wills.count,
            final_connect.as_millis()
        );
        eprintln!(
            "errors (first 10): {errors:?}; witness closed: {:?}",
            wills.closed
        );
        assert!(
            wills.closed.is_none(),
            "the witness was dropped: {:?}",
            wills.closed
        );
        summary
    });
    s.settle("take-over storm", summary);
}

// ---- 3. QoS 1 flood, acknowledgements never read ---------------------------------------------------

#[test]
#[ignore = "load test: run with --release -- --ignored (docs/abuse-load.md)"]
fn qos1_flood_without_reading_acks() {
    const FLOODERS: usize = 4;
    const FLOOD: Duration = Duration::from_secs(20);
    // Lowered from 30 s so that the broker's reaction fits in the scenario.
    const SEND_TIMEOUT: u64 = 5;
    let s = setup(&format!("send_timeout = {SEND_TIMEOUT}"));
    let addr = s.broker.addr;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let summary = runtime.block_on(async move {
        let mut sub = Conn::connect(addr, "flood-reader", 0).await.unwrap();
        sub.subscribe("flood/#", QoS::AtLeastOnce).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read_messages(
            sub,
            "flood/",
            None,
            stop.clone(),
            Duration::from_millis(500),
        ));
        let started = Instant::now();
        let flooders: Vec<_> = (0..FLOODERS)
            .map(|i| {
                tokio::spawn(async move {
                    // A small receive buffer: the unread PUBACKs fill it sooner.
                    let stream = tcp(addr, i + 1, Some(16 * 1024)).await.unwrap();
                    let mut conn = Conn::over(stream, V5);
                    conn.handshake(V5, &format!("flooder-{i}"), None)
                        .await
                        .unwrap();
                    let topic = format!("flood/{i}");
                    let payload = Bytes::from(vec![b'f'; 64]);
                    let (mut sent, mut id) = (0u64, 0u16);
                    let mut stalled_at = None;
                    let mut ended = None;
                    while started.elapsed() < FLOOD {
                        id = id % u16::MAX + 1;
                        let packet = publish(&topic, QoS::AtLeastOnce, id, false, payload.clone());
                        match timeout(Duration::from_secs(1), conn.framed.feed(packet)).await {
                            Ok(Ok(())) => sent += 1,
                            Ok(Err(e)) => {
                                ended = Some((started.elapsed(), e.to_string()));
                                break;
                            }
                            Err(_) => {
                                stalled_at
                                    .get_or_insert(started.elapsed() - Duration::from_secs(1));
                            }
                        }
                    }
                    // What the broker said last, if it is still in our receive buffer.
                    let mut reason = None;
                    while let Ok(Some(Ok(packet))) =
                        timeout(Duration::from_secs(2), conn.framed.next()).await
                    {
                        if let Packet::Disconnect(d) = packet {
                            reason = Some(d.reason);
                        }
                    }
                    (sent, stalled_at, ended, reason)
                })
            })
            .collect();
        let mut lines = Vec::new();
        let mut sent_total = 0;
        let mut all_ended = true;
        let mut ended_at = Vec::new();
        for (i, f) in flooders.into_iter().enumerate() {
            let (sent, stalled, ended, reason) = f.await.unwrap();
            sent_total += sent;
            all_ended &= ended.is_some();
            if let Some((at, _)) = &ended {
                ended_at.push(format!("{:.1}", at.as_secs_f64()));
            }
            lines.push(format!(
                "flooder {i}: {sent} PUBLISH written, stalled at {:?}, disconnected at {:?}, \
                 DISCONNECT seen: {reason:?}",
                stalled.map(|d| format!("{:.1} s", d.as_secs_f64())),
                ended.map(|(d, e)| format!("{:.1} s ({e})", d.as_secs_f64()))
            ));
        }
        stop.store(true, Ordering::Relaxed);
        let received = reader.await.unwrap();
        for line in &lines {
            eprintln!("{line}");
        }
        eprintln!("flood reader: {received:?}");
        assert!(received.closed.is_none(), "the reader was dropped");
        format!(
            "{FLOODERS} publishers wrote {sent_total} QoS 1 PUBLISH (64 B) without reading; \
             {} by the broker (at {} s; send_timeout {SEND_TIMEOUT} s); a normal subscriber to \
             flood/# got {} and stayed connected",
            if all_ended {
                "all disconnected"
            } else {
                "NOT all disconnected"
            },
            ended_at.join("/"),
            received.count
        )
    });
    s.settle("QoS 1 flood, acks unread", summary);
}

// ---- 4. a subscriber reading 10 messages/s out of 10,000/s ---------------------------------------

#[test]
#[ignore = "load test: run with --release -- --ignored (docs/abuse-load.md)"]
fn slow_subscriber_reads_10_of_10000_per_second() {
    const RATE: u64 = 10_000;
    const RUN: Duration = Duration::from_secs(15);
    let s = setup("");
    let addr = s.broker.addr;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let summary = runtime.block_on(async move {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_slow = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        // Two slow readers, 10 messages/s each: one at QoS 1 (the broker holds 100 in flight
        // and queues 1000), one at QoS 0 (the socket fills, then the queue).
        for (name, qos) in [("slow-q1", QoS::AtLeastOnce), ("slow-q0", QoS::AtMostOnce)] {
            let mut c = Conn::connect(addr, name, 1).await.unwrap();
            c.subscribe("fast/#", qos).await.unwrap();
            readers.push(tokio::spawn(read_messages(
                c,
                "fast/",
                Some(Duration::from_millis(100)),
                stop_slow.clone(),
                Duration::ZERO,
            )));
        }
        // A normal reader on the same topics must get every message.
        let mut c = Conn::connect(addr, "fast-reader", 2).await.unwrap();
        c.subscribe("fast/#", QoS::AtLeastOnce).await.unwrap();
        let fast = tokio::spawn(read_messages(
            c,
            "fast/",
            None,
            stop.clone(),
            Duration::from_millis(500),
        ));
        // The publisher: QoS 1 at RATE, 100 every 10 ms.
        let mut publisher = Publisher::new(Conn::connect(addr, "fast-publisher", 3).await.unwrap());
        let payload = Bytes::from(vec![b'p'; 64]);
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut n = 0u64;
        while started.elapsed() < RUN {
            tick.tick().await;
            let due = (started.elapsed().as_millis() as u64 * RATE / 1000).min(n + 1000);
            while n < due {
                publisher
                    .publish("fast/t", false, payload.clone())
                    .await
                    .unwrap();
                n += 1;
            }
            publisher.reap(false).await.unwrap();
        }
        publisher.drain().await.unwrap();
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let fast = fast.await.unwrap();
        stop_slow.store(true, Ordering::Relaxed);
        let mut slow = Vec::new();
        for r in readers {
            slow.push(r.await.unwrap());
        }
        publisher.conn.disconnect().await;
        eprintln!(
            "published {} in {elapsed:?} ({:.0}/s), acked {}, refused {}; fast reader {fast:?}; \
             slow readers {slow:?}",
            publisher.sent,
            publisher.sent as f64 / elapsed.as_secs_f64(),
            publisher.acked,
            publisher.refused
        );
        assert!(fast.closed.is_none(), "the fast reader was dropped");
        assert_eq!(
            fast.count, publisher.sent,
            "the fast reader must get every message"
        );
        format!(
            "{} QoS 1 messages at {:.0}/s; the normal subscriber got {}; slow readers \
             (QoS 1, QoS 0) got {} and {}, {}",
            publisher.sent,
            publisher.sent as f64 / elapsed.as_secs_f64(),
            fast.count,
            slow[0].count,
            slow[1].count,
            if slow.iter().all(|s| s.closed.is_none()) {
                "both still connected".to_string()
            } else {
                format!("disconnected: {:?} / {:?}", slow[0].closed, slow[1].closed)
            }
        )
    });
    s.settle("slow subscriber 10/s of 10,000/s", summary);
}

// ---- 5. 10,000 retained topics, then '#' ---------------------------------------------------------

#[test]
#[ignore = "load test: run with --release -- --ignored (docs/abuse-load.md)"]
fn ten_thousand_retained_topics_then_hash_subscriptions() {
    const TOPICS: usize = 10_000;
    const PUBLISHERS: usize = 8;
    const READERS: usize = 4;
    let s = setup("");
    let addr = s.broker.addr;
    let pid = s.broker.pid;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let summary = runtime.block_on(async move {
        // Stores (payload 100 B) or clears (empty payload) every retained topic.
        let retain_all = |clear: bool| async move {
            let started = Instant::now();
            let tasks: Vec<_> = (0..PUBLISHERS)
                .map(|p| {
                    tokio::spawn(async move {
                        let conn = Conn::connect(addr, &format!("retainer-{p}"), p)
                            .await
                            .unwrap();
                        let mut publisher = Publisher::new(conn);
                        let payload = if clear {
                            Bytes::new()
                        } else {
                            Bytes::from(vec![b'r'; 100])
                        };
                        for i in (p..TOPICS).step_by(PUBLISHERS) {
                            publisher
                                .publish(&format!("ret/{}/{i}", i % 100), true, payload.clone())
                                .await
                                .unwrap();
                        }
                        publisher.drain().await.unwrap();
                        assert_eq!(publisher.refused, 0, "a retained message was refused");
                        publisher.conn.disconnect().await;
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            started.elapsed()
        };
        let stored_in = retain_all(false).await;
        let stored_kb = proc_status_kb(pid, "VmRSS:");
        eprintln!(
            "{TOPICS} retained messages stored in {stored_in:?}; VmRSS {}",
            mb(stored_kb)
        );

        // READERS '#' subscribers that read everything, and one that never reads.
        let mut idle = Conn::connect(addr, "hash-idle", 9).await.unwrap();
        idle.send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![("#".into(), SubscriptionOptions::default())],
        }))
        .await
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..READERS)
            .map(|r| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut c = Conn::connect(addr, &format!("hash-{r}"), r).await.unwrap();
                    c.subscribe("#", QoS::AtLeastOnce).await.unwrap();
                    read_messages(c, "ret/", None, stop, Duration::from_millis(500)).await
                })
            })
            .collect();
        // The readers go on until nothing more arrives for 500 ms after this.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let mut lines = Vec::new();
        let mut counts = Vec::new();
        let mut slowest = Duration::ZERO;
        for r in readers {
            let got = r.await.unwrap();
            lines.push(format!("{got:?}"));
            counts.push(got.count);
            slowest = slowest.max(got.last.unwrap_or_default());
            assert!(got.closed.is_none(), "a '#' reader was dropped: {got:?}");
        }
        let during_kb = proc_status_kb(pid, "VmRSS:");
        eprintln!("'#' readers: {lines:?}; VmRSS {}", mb(during_kb));
        idle.disconnect().await;
        let cleared_in = retain_all(true).await;
        eprintln!("retained messages cleared in {cleared_in:?}");
        for &c in &counts {
            assert_eq!(c, TOPICS as u64, "a '#' reader missed retained messages");
        }
        format!(
            "{TOPICS} retained (100 B, {PUBLISHERS} publishers) stored in {:.1} s \
             (VmRSS {} with them stored); {READERS} '#' readers got {counts:?} within \
             {:.2} s (VmRSS {}), one '#' subscriber never read; then all cleared ({:.1} s)",
            stored_in.as_secs_f64(),
            mb(stored_kb),
            slowest.as_secs_f64(),
            mb(during_kb),
            cleared_in.as_secs_f64()
        )
    });
    s.settle("10,000 retained + '#'", summary);
}

// ---- 6. G103: connection storm, then max_connections + N -----------------------------------------

/// How one storm connection ended.
enum StormEnd {
    /// CONNACK 0x00 (then DISCONNECT, or held).
    Accepted(Conn),
    /// Closed (EOF or reset) before any byte came back: refused at accept.
    ClosedAtAccept,
    /// Anything else: a CONNACK with an error, a timeout, a TCP error.
    Failed(String),
}

/// One connection of a storm: TCP connect, CONNECT (v5 or 3.1.1 by `n`), and what came back.
async fn storm_connect(addr: SocketAddr, n: usize) -> StormEnd {
    let stream = match tcp(addr, n, None).await {
        Ok(s) => s,
        Err(e) => return StormEnd::Failed(format!("TCP connect: {e}")),
    };
    let version = if n.is_multiple_of(2) { V5 } else { V311 };
    let mut conn = Conn::over(stream, version);
    if let Err(e) = conn
        .send(connect_packet(version, &format!("storm-{n}"), None))
        .await
    {
        // Writing into a socket the broker already closed.
        return if e.contains("reset") || e.contains("Broken pipe") {
            StormEnd::ClosedAtAccept
        } else {
            StormEnd::Failed(e)
        };
    }
    match timeout(ANSWER, conn.framed.next()).await {
        Err(_) => StormEnd::Failed(format!("no answer within {ANSWER:?}")),
        Ok(None) => StormEnd::ClosedAtAccept,
        Ok(Some(Err(e))) if e.to_string().contains("reset") => StormEnd::ClosedAtAccept,
        Ok(Some(Err(e))) => StormEnd::Failed(format!("receive: {e}")),
        Ok(Some(Ok(Packet::ConnAck(ack)))) if ack.reason == ReasonCode::Success => {
            StormEnd::Accepted(conn)
        }
        Ok(Some(Ok(other))) => StormEnd::Failed(format!("expected CONNACK, got {other:?}")),
    }
}

/// Counts of a storm's outcomes.
#[derive(Debug, Default)]
struct StormCount {
    accepted: AtomicU64,
    closed_at_accept: AtomicU64,
    failed: AtomicU64,
    /// Slowest answer (CONNACK or close), in microseconds.
    slowest_us: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// `total` connections from `tasks` concurrent tasks, each CONNECT -> answer; an accepted one
/// is closed with DISCONNECT at once. Returns the time taken.
async fn storm(addr: SocketAddr, total: u64, tasks: usize, count: Arc<StormCount>) -> Duration {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (next, count) = (next.clone(), count.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let t0 = Instant::now();
                    let end = storm_connect(addr, n as usize).await;
                    count
                        .slowest_us
                        .fetch_max(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                    match end {
                        StormEnd::Accepted(conn) => {
                            count.accepted.fetch_add(1, Ordering::Relaxed);
                            conn.disconnect().await;
                        }
                        StormEnd::ClosedAtAccept => {
                            count.closed_at_accept.fetch_add(1, Ordering::Relaxed);
                        }
                        StormEnd::Failed(e) => {
                            count.failed.fetch_add(1, Ordering::Relaxed);
                            let mut errors = count.errors.lock().unwrap();
                            if errors.len() < 10 {
                                errors.push(e);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    started.elapsed()
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// G103, first half: as many CONNECT/s as this machine generates (50,000 connections, each
/// CONNECT -> CONNACK -> DISCONNECT, 256 at a time, v5 and 3.1.1 alternating, from 8 source
/// addresses). Every one must get CONNACK 0x00 (no cap is configured, so none may be closed at
/// accept); the canary is served throughout.
#[test]
#[ignore = "load test: run with --release -- --ignored (docs/abuse-load.md)"]
fn g103_connection_storm() {
    const TOTAL: u64 = 50_000;
    const TASKS: usize = 256;
    let s = setup("");
    let addr = s.broker.addr;
    let summary = client_runtime().block_on(async move {
        let count = Arc::new(StormCount::default());
        let took = storm(addr, TOTAL, TASKS, count.clone()).await;
        let accepted = count.accepted.load(Ordering::Relaxed);
        let closed = count.closed_at_accept.load(Ordering::Relaxed);
        let failed = count.failed.load(Ordering::Relaxed);
        let rate = TOTAL as f64 / took.as_secs_f64();
        eprintln!(
            "storm: {TOTAL} connects in {took:?} ({rate:.0}/s); accepted {accepted}, closed at \
             accept {closed}, failed {failed}, slowest answer {} ms; errors {:?}",
            count.slowest_us.load(Ordering::Relaxed) / 1000,
            count.errors.lock().unwrap()
        );
        assert_eq!(failed, 0, "storm connections failed");
        assert_eq!(closed, 0, "no cap is set: nothing may be closed at accept");
        assert_eq!(accepted, TOTAL, "every connection gets CONNACK 0x00");
        format!(
            "{TOTAL} CONNECT -> CONNACK -> DISCONNECT ({TASKS} at a time, v5/3.1.1) in {:.1} s \
             = {rate:.0} connects/s; {accepted} CONNACK 0x00, {failed} failures; slowest \
             answer {} ms",
            took.as_secs_f64(),
            count.slowest_us.load(Ordering::Relaxed) / 1000
        )
    });
    s.settle("G103 connection storm", summary);
}

/// G103, second half: `max_connections = 2000`. The canary and 1,999 held clients fill it (all
/// get CONNACK); then a storm of 10,000 more connections is each closed at accept without a
/// CONNACK, while the canary is served; then the held clients leave, and 1,999 new ones get in
/// again (the refused storm leaked no slot) while the 2,000th is refused (no over-admission).
#[test]
#[ignore = "load test: run with --release -- --ignored (docs/abuse-load.md)"]
fn g103_max_connections_plus_a_storm_closed_at_accept() {
    const CAP: usize = 2000;
    const EXTRA: u64 = 10_000;
    let s = setup(&format!("max_connections = {CAP}"));
    let addr = s.broker.addr;
    let pid = s.broker.pid;
    let summary = client_runtime().block_on(async move {
        // Fill the cap (the canary holds one slot).
        let fill = |round: usize| async move {
            let started = Instant::now();
            let tasks: Vec<_> = (0..CAP - 1)
                .map(|i| {
                    tokio::spawn(async move {
                        // Slots of clients that just left are freed when their session ends:
                        // retry a refusal for a while.
                        let deadline = Instant::now() + ANSWER;
                        let mut retries = 0u32;
                        loop {
                            match storm_connect(addr, 100_000 * round + i).await {
                                StormEnd::Accepted(conn) => return Ok((conn, retries)),
                                StormEnd::ClosedAtAccept if Instant::now() < deadline => {
                                    retries += 1;
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                                StormEnd::ClosedAtAccept => {
                                    return Err(format!("client {i}: refused for {ANSWER:?}"));
                                }
                                StormEnd::Failed(e) => return Err(format!("client {i}: {e}")),
                            }
                        }
                    })
                })
                .collect();
            let mut held = Vec::new();
            let mut retries = 0;
            for t in tasks {
                let (conn, r) = t.await.unwrap().unwrap();
                retries += r;
                held.push(conn);
            }
            (held, retries, started.elapsed())
        };
        let (held, retries_1, fill_1) = fill(1).await;
        let held_kb = proc_status_kb(pid, "VmRSS:");
        eprintln!(
            "{} held ({fill_1:?}, {retries_1} retries), VmRSS {}",
            held.len(),
            mb(held_kb)
        );
        assert_eq!(retries_1, 0, "a client under the cap was refused");

        // The storm over the cap: every one closed at accept.
        let count = Arc::new(StormCount::default());
        let took = storm(addr, EXTRA, 128, count.clone()).await;
        let accepted = count.accepted.load(Ordering::Relaxed);
        let closed = count.closed_at_accept.load(Ordering::Relaxed);
        let failed = count.failed.load(Ordering::Relaxed);
        let rate = EXTRA as f64 / took.as_secs_f64();
        eprintln!(
            "over the cap: {EXTRA} connects in {took:?} ({rate:.0}/s); closed at accept \
             {closed}, accepted {accepted}, failed {failed}, slowest {} ms; errors {:?}",
            count.slowest_us.load(Ordering::Relaxed) / 1000,
            count.errors.lock().unwrap()
        );
        assert_eq!(accepted, 0, "a connection over max_connections got CONNACK");
        assert_eq!(
            failed, 0,
            "over the cap: something else than a close at accept"
        );
        assert_eq!(closed, EXTRA);

        // The held clients leave; the slots come back, all of them and no more.
        let left = Instant::now();
        for conn in held {
            conn.disconnect().await;
        }
        let (held, retries_2, fill_2) = fill(2).await;
        let back_in = left.elapsed();
        eprintln!(
            "after the held clients left: {} new clients held in {fill_2:?} ({retries_2} \
             refusals retried while the old slots were freed)",
            held.len()
        );
        let over = storm_connect(addr, 999_999).await;
        assert!(
            matches!(over, StormEnd::ClosedAtAccept),
            "the cap + 1st connection was not closed at accept"
        );
        for conn in held {
            conn.disconnect().await;
        }
        format!(
            "cap {CAP}: canary + {} held (all CONNACK, VmRSS {}); {EXTRA} more at {rate:.0}/s \
             all closed at accept (0 CONNACK, {failed} failures, slowest {} ms); after the held \
             left, {} new ones got in ({retries_2} retried refusals, {:.1} s after the first \
             left, {fill_2:.1?} to connect) and the next one was refused",
            CAP - 1,
            mb(held_kb),
            count.slowest_us.load(Ordering::Relaxed) / 1000,
            CAP - 1,
            back_in.as_secs_f64()
        )
    });
    s.settle("G103 max_connections + 10,000", summary);
}

// ---- 7. G107: mass drop of clients with large retained Wills ------------------------------------

/// G107, scaled down: 5,000 clients (the issue says 10,000) each with a retained QoS 1 Will of
/// 65,535 bytes on its own topic `wills/<i>`. The issue says 1 MB, but a Will Payload is Binary
/// Data with a two-byte length (§3.1.3.4): 65,535 bytes is the largest Will there is. All are
/// dropped at once by aborting their sockets (RST). A subscriber on `wills/#` must get all
/// 5,000 (its queue is raised to hold them: with the default `max_queued_messages = 1000` the
/// rest would be dropped, drop-new, as documented), a new subscriber must find all 5,000
/// retained, the canary is served, and once the retained messages are cleared the memory comes
/// back.
#[test]
#[ignore = "load test: run with --release -- --ignored (docs/abuse-load.md)"]
fn g107_mass_drop_of_clients_with_large_retained_wills() {
    const CLIENTS: usize = 5_000;
    const WILL_SIZE: usize = 65_535;
    let s = setup(&format!("max_queued_messages = {}", CLIENTS + 100));
    let addr = s.broker.addr;
    let pid = s.broker.pid;
    let summary = client_runtime().block_on(async move {
        let mut sub = Conn::connect(addr, "will-watcher", 0).await.unwrap();
        sub.subscribe("wills/#", QoS::AtLeastOnce).await.unwrap();

        // Connect the clients, 64 at a time.
        let started = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        let loaders: Vec<_> = (0..64)
            .map(|_| {
                let next = next.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        if i >= CLIENTS {
                            return mine;
                        }
                        let mut payload = vec![b'w'; WILL_SIZE];
                        payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
                        let will = Will {
                            qos: QoS::AtLeastOnce,
                            retain: true,
                            properties: Properties::default(),
                            topic: format!("wills/{i}"),
                            payload: Bytes::from(payload),
                        };
                        let stream = tcp(addr, i, None).await.unwrap();
                        let mut conn = Conn::over(stream, V5);
                        conn.handshake(V5, &format!("will-{i}"), Some(will))
                            .await
                            .unwrap();
                        mine.push(conn);
                    }
                })
            })
            .collect();
        let mut clients = Vec::new();
        for l in loaders {
            clients.extend(l.await.unwrap());
        }
        let connected_in = started.elapsed();
        let held_kb = proc_status_kb(pid, "VmRSS:");
        eprintln!(
            "{CLIENTS} clients with {WILL_SIZE} B Wills connected in {connected_in:?}; VmRSS {}",
            mb(held_kb)
        );

        // Drop them all at once: RST, no DISCONNECT.
        let stop = Arc::new(AtomicBool::new(true));
        let reader_started = Instant::now();
        let reader = tokio::spawn(read_messages(
            sub,
            "wills/",
            None,
            stop.clone(),
            Duration::from_secs(2),
        ));
        let dropped = Instant::now();
        for conn in clients {
            let _ = conn.framed.get_ref().set_zero_linger();
            drop(conn);
        }
        let drop_took = dropped.elapsed();
        let got = reader.await.unwrap();
        let published_in = got
            .last
            .map(|l| l.saturating_sub(dropped - reader_started))
            .unwrap_or_default();
        let drained_kb = proc_status_kb(pid, "VmRSS:");
        eprintln!(
            "dropped in {drop_took:?}; the watcher got {} Wills, the last {published_in:?} after \
             the drop ({:?}); VmRSS {}",
            got.count,
            got.closed,
            mb(drained_kb)
        );
        assert!(
            got.closed.is_none(),
            "the watcher was dropped: {:?}",
            got.closed
        );
        assert_eq!(got.count, CLIENTS as u64, "every Will reaches the watcher");

        // All of them are retained.
        let mut late = Conn::connect(addr, "will-late", 1).await.unwrap();
        let t = Instant::now();
        late.subscribe("wills/#", QoS::AtLeastOnce).await.unwrap();
        let retained = read_messages(late, "wills/", None, stop, Duration::from_secs(1)).await;
        let retained_in = retained.last.unwrap_or_default();
        eprintln!(
            "a new subscriber got {} retained Wills in {retained_in:?} ({:?} since SUBSCRIBE)",
            retained.count,
            t.elapsed()
        );
        assert_eq!(retained.count, CLIENTS as u64, "every Will is retained");

        // Clear them.
        let t = Instant::now();
        let mut publisher = Publisher::new(Conn::connect(addr, "will-clear", 2).await.unwrap());
        for i in 0..CLIENTS {
            publisher
                .publish(&format!("wills/{i}"), true, Bytes::new())
                .await
                .unwrap();
        }
        publisher.drain().await.unwrap();
        publisher.conn.disconnect().await;
        let cleared_in = t.elapsed();
        eprintln!("cleared in {cleared_in:?}");
        format!(
            "{CLIENTS} clients with retained QoS 1 Wills of {WILL_SIZE} B (the largest; issue: \
             1 MB) connected in {:.1} s (VmRSS {}); all dropped (RST) at once: the `wills/#` watcher had all {} \
             Wills {:.2} s after the drop; a new subscriber got {} retained in {:.2} s; cleared \
             in {:.1} s",
            connected_in.as_secs_f64(),
            mb(held_kb),
            got.count,
            published_in.as_secs_f64(),
            retained.count,
            retained_in.as_secs_f64(),
            cleared_in.as_secs_f64()
        )
    });
    s.settle("G107 5,000 retained 64 KB Wills dropped", summary);
}

// ---- 8. D77: 10^6 random operations from 200 clients against a reference model -------------------

/// splitmix64: a seeded generator, so that a failing run can be replayed (`D77_SEED`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn qos(&mut self) -> QoS {
        QoS::from_u8(self.below(3) as u8).unwrap()
    }
}

/// Topics are `d77/<a>/<b>` with `a`, `b` below `D77_SIDE`.
const D77_SIDE: u64 = 32;

/// The filters the clients use, in a form the reference model matches without parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum D77Filter {
    /// `d77/<a>/<b>`
    Exact(u8, u8),
    /// `d77/<a>/+`
    AnyB(u8),
    /// `d77/+/<b>`
    AnyA(u8),
    /// `d77/<a>/#`
    Under(u8),
}

impl D77Filter {
    fn random(rng: &mut Rng) -> D77Filter {
        let (a, b) = (rng.below(D77_SIDE) as u8, rng.below(D77_SIDE) as u8);
        match rng.below(100) {
            0..=89 => D77Filter::Exact(a, b),
            90..=93 => D77Filter::AnyB(a),
            94..=97 => D77Filter::AnyA(b),
            _ => D77Filter::Under(a),
        }
    }

    fn text(self) -> String {
        match self {
            D77Filter::Exact(a, b) => format!("d77/{a}/{b}"),
            D77Filter::AnyB(a) => format!("d77/{a}/+"),
            D77Filter::AnyA(b) => format!("d77/+/{b}"),
            D77Filter::Under(a) => format!("d77/{a}/#"),
        }
    }

    fn matches(self, a: u8, b: u8) -> bool {
        match self {
            D77Filter::Exact(x, y) => (x, y) == (a, b),
            D77Filter::AnyB(x) | D77Filter::Under(x) => x == a,
            D77Filter::AnyA(y) => y == b,
        }
    }
}

/// What one client does at the start of a round, before anyone publishes.
#[derive(Debug, Clone)]
enum D77Change {
    Nothing,
    Subscribe(Vec<(D77Filter, QoS)>),
    /// Filters, and whether each was held (v5 UNSUBACK 0x00 or 0x11).
    Unsubscribe(Vec<(D77Filter, bool)>),
    /// DISCONNECT, then CONNECT again.
    Reconnect {
        clean: bool,
        /// v5: Session Expiry Interval 300 s (else 0); 3.1.1: decided by `clean`.
        keep: bool,
        session_present: bool,
    },
}

/// One client's part of a round, and exactly what it must receive in it.
struct D77Plan {
    round: u32,
    change: D77Change,
    /// (a, b, QoS) of each message it publishes; its index is the message's sequence number.
    publishes: Vec<(u8, u8, QoS)>,
    /// (publisher, sequence) -> (a, b, QoS delivered).
    expected: std::collections::HashMap<(u16, u16), (u8, u8, QoS)>,
}

/// The reference model's view of one client.
#[derive(Default)]
struct D77Model {
    subs: std::collections::HashMap<D77Filter, QoS>,
    /// The current session outlives its connection.
    persistent: bool,
}

/// A client of the D77 run: one connection at a time, and the bookkeeping that checks every
/// packet against its plan.
struct D77Client {
    index: u16,
    version: ProtocolVersion,
    addr: SocketAddr,
    conn: Conn,
    round: u32,
    expected: std::collections::HashMap<(u16, u16), (u8, u8, QoS)>,
    next_id: u16,
    /// Own QoS 1/2 publishes not yet complete.
    outgoing: std::collections::HashSet<u16>,
    /// Incoming QoS 2 messages whose PUBREL has not come yet.
    incoming: std::collections::HashSet<u16>,
    /// The SUBACK/UNSUBACK/CONNACK being waited for.
    reply: Option<Packet>,
    ops: u64,
    received: u64,
}

impl D77Client {
    fn packet_id(&mut self) -> u16 {
        self.next_id = self.next_id % u16::MAX + 1;
        self.next_id
    }

    fn connect_packet(&self, clean: bool, keep: bool) -> Packet {
        let mut properties = Properties::default();
        if self.version.is_v5() {
            properties.receive_maximum = Some(u16::MAX);
            properties.session_expiry_interval = keep.then_some(300);
        }
        Packet::Connect(Box::new(Connect {
            protocol: self.version,
            clean_start: clean,
            keep_alive: 60,
            properties,
            client_id: format!("d77-{}", self.index),
            will: None,
            username: None,
            password: None,
        }))
    }

    /// Reads one packet and deals with it; an unexpected one is an error.
    async fn pump(&mut self) -> Result<(), String> {
        let who = format!("client {} round {}", self.index, self.round);
        let packet = self
            .conn
            .recv(ANSWER)
            .await
            .map_err(|e| format!("{who}: {e}"))?;
        match packet {
            Packet::Publish(p) => {
                let key = (
                    u32::from_be_bytes(p.payload[..4].try_into().unwrap()),
                    u16::from_be_bytes(p.payload[4..6].try_into().unwrap()),
                    u16::from_be_bytes(p.payload[6..8].try_into().unwrap()),
                );
                if key.0 != self.round {
                    return Err(format!(
                        "{who}: a message of round {} arrived: {key:?}",
                        key.0
                    ));
                }
                let Some((a, b, qos)) = self.expected.remove(&(key.1, key.2)) else {
                    return Err(format!(
                        "{who}: unexpected or duplicate delivery {key:?} on {} (QoS {:?})",
                        p.topic, p.qos
                    ));
                };
                if p.topic != format!("d77/{a}/{b}") || p.qos != qos {
                    return Err(format!(
                        "{who}: {key:?} came on {} at {:?}, expected d77/{a}/{b} at {qos:?}",
                        p.topic, p.qos
                    ));
                }
                self.received += 1;
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => self.conn.feed(puback(id)).await?,
                    (QoS::ExactlyOnce, Some(id)) => {
                        if !self.incoming.insert(id) {
                            return Err(format!("{who}: QoS 2 packet id {id} reused"));
                        }
                        self.conn.feed(ack(Packet::PubRec, id)).await?
                    }
                    _ => {}
                }
            }
            Packet::PubRel(a) => {
                if !self.incoming.remove(&a.packet_id) {
                    return Err(format!("{who}: PUBREL for unknown id {}", a.packet_id));
                }
                self.conn.feed(ack(Packet::PubComp, a.packet_id)).await?;
            }
            Packet::PubAck(a) | Packet::PubComp(a) => {
                if !self.outgoing.remove(&a.packet_id) || !publish_ok(a.reason) {
                    return Err(format!("{who}: unexpected ack {a:?}"));
                }
            }
            Packet::PubRec(a) => {
                if !self.outgoing.contains(&a.packet_id) || !publish_ok(a.reason) {
                    return Err(format!("{who}: unexpected PUBREC {a:?}"));
                }
                self.conn.feed(ack(Packet::PubRel, a.packet_id)).await?;
            }
            reply @ (Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::ConnAck(_))
                if self.reply.is_none() =>
            {
                self.reply = Some(reply);
            }
            other => return Err(format!("{who}: unexpected {other:?}")),
        }
        if self.conn.framed.read_buffer().is_empty() {
            self.conn.flush().await?;
        }
        Ok(())
    }

    async fn await_reply(&mut self) -> Result<Packet, String> {
        self.conn.flush().await?;
        while self.reply.is_none() {
            self.pump().await?;
        }
        Ok(self.reply.take().unwrap())
    }

    async fn change(&mut self, change: D77Change) -> Result<(), String> {
        let who = format!("client {} round {}", self.index, self.round);
        match change {
            D77Change::Nothing => {}
            D77Change::Subscribe(filters) => {
                self.ops += 1;
                let id = self.packet_id();
                self.conn
                    .feed(Packet::Subscribe(Subscribe {
                        packet_id: id,
                        properties: Properties::default(),
                        filters: filters
                            .iter()
                            .map(|(f, qos)| {
                                (
                                    f.text(),
                                    SubscriptionOptions {
                                        qos: *qos,
                                        ..SubscriptionOptions::default()
                                    },
                                )
                            })
                            .collect(),
                    }))
                    .await?;
                let want: Vec<_> = filters
                    .iter()
                    .map(|(_, q)| ReasonCode::from_qos(*q))
                    .collect();
                match self.await_reply().await? {
                    Packet::SubAck(a) if a.packet_id == id && a.reasons == want => {}
                    other => return Err(format!("{who}: expected SUBACK {want:?}, got {other:?}")),
                }
            }
            D77Change::Unsubscribe(filters) => {
                self.ops += 1;
                let id = self.packet_id();
                self.conn
                    .feed(Packet::Unsubscribe(Unsubscribe {
                        packet_id: id,
                        properties: Properties::default(),
                        filters: filters.iter().map(|(f, _)| f.text()).collect(),
                    }))
                    .await?;
                let want: Vec<_> = if self.version.is_v5() {
                    filters
                        .iter()
                        .map(|(_, held)| {
                            if *held {
                                ReasonCode::Success
                            } else {
                                ReasonCode::NoSubscriptionExisted
                            }
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                match self.await_reply().await? {
                    Packet::UnsubAck(a) if a.packet_id == id && a.reasons == want => {}
                    other => {
                        return Err(format!("{who}: expected UNSUBACK {want:?}, got {other:?}"));
                    }
                }
            }
            D77Change::Reconnect {
                clean,
                keep,
                session_present,
            } => {
                self.ops += 2;
                self.conn
                    .send(Packet::Disconnect(Disconnect::default()))
                    .await?;
                let stream = tcp(self.addr, self.index as usize, None)
                    .await
                    .map_err(|e| format!("{who}: TCP connect: {e}"))?;
                self.conn = Conn::over(stream, self.version);
                self.conn.feed(self.connect_packet(clean, keep)).await?;
                match self.await_reply().await? {
                    Packet::ConnAck(a)
                        if a.reason == ReasonCode::Success
                            && a.session_present == session_present => {}
                    other => {
                        return Err(format!(
                            "{who}: expected CONNACK 0x00 with session present \
                             {session_present}, got {other:?}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    async fn publish_and_drain(&mut self, publishes: &[(u8, u8, QoS)]) -> Result<(), String> {
        for (seq, &(a, b, qos)) in publishes.iter().enumerate() {
            self.ops += 1;
            let id = self.packet_id();
            if qos != QoS::AtMostOnce {
                self.outgoing.insert(id);
            }
            let mut payload = Vec::with_capacity(8);
            payload.extend_from_slice(&self.round.to_be_bytes());
            payload.extend_from_slice(&self.index.to_be_bytes());
            payload.extend_from_slice(&(seq as u16).to_be_bytes());
            self.conn
                .feed(publish(
                    &format!("d77/{a}/{b}"),
                    qos,
                    id,
                    false,
                    payload.into(),
                ))
                .await?;
        }
        self.conn.flush().await?;
        while !(self.expected.is_empty() && self.outgoing.is_empty() && self.incoming.is_empty()) {
            self.pump().await?;
        }
        Ok(())
    }
}

fn ack(make: fn(Ack) -> Packet, packet_id: u16) -> Packet {
    make(Ack {
        packet_id,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    })
}

fn publish_ok(reason: ReasonCode) -> bool {
    matches!(
        reason,
        ReasonCode::Success | ReasonCode::NoMatchingSubscribers
    )
}

/// The coordinator: draws each round's plan from the seed, applies it to the reference model,
/// and works out who must receive which message at which QoS.
struct D77Schedule {
    rng: Rng,
    models: Vec<D77Model>,
    versions: Vec<ProtocolVersion>,
}

impl D77Schedule {
    fn round(&mut self, round: u32) -> Vec<D77Plan> {
        let n = self.models.len();
        let mut plans: Vec<D77Plan> = Vec::with_capacity(n);
        for c in 0..n {
            let rng = &mut self.rng;
            let model = &mut self.models[c];
            let change = match rng.below(100) {
                // Subscribe more while holding few filters, otherwise unsubscribe.
                0..=39 if model.subs.len() < 3 || (model.subs.len() < 6 && rng.below(2) == 0) => {
                    let filters: Vec<_> = (0..1 + rng.below(3))
                        .map(|_| (D77Filter::random(rng), rng.qos()))
                        .collect();
                    for &(f, q) in &filters {
                        model.subs.insert(f, q);
                    }
                    D77Change::Subscribe(filters)
                }
                0..=39 => {
                    let mut held: Vec<_> = model.subs.keys().copied().collect();
                    held.sort_by_key(|f| f.text());
                    let mut filters = Vec::new();
                    for _ in 0..1 + rng.below(2) {
                        // Now and then a filter the client does not hold.
                        let f = if held.is_empty() || rng.below(5) == 0 {
                            D77Filter::random(rng)
                        } else {
                            held[rng.below(held.len() as u64) as usize]
                        };
                        filters.push((f, model.subs.remove(&f).is_some()));
                    }
                    D77Change::Unsubscribe(filters)
                }
                40..=44 => {
                    let clean = rng.below(2) == 0;
                    let keep = if self.versions[c].is_v5() {
                        rng.below(3) == 0
                    } else {
                        !clean
                    };
                    let session_present = !clean && model.persistent;
                    if !session_present {
                        model.subs.clear();
                    }
                    model.persistent = keep;
                    D77Change::Reconnect {
                        clean,
                        keep,
                        session_present,
                    }
                }
                _ => D77Change::Nothing,
            };
            let publishes = (0..2 + rng.below(6))
                .map(|_| {
                    (
                        rng.below(D77_SIDE) as u8,
                        rng.below(D77_SIDE) as u8,
                        rng.qos(),
                    )
                })
                .collect();
            plans.push(D77Plan {
                round,
                change,
                publishes,
                expected: Default::default(),
            });
        }
        // Who receives what: one delivery per matching client, at the lower of the message's
        // QoS and the highest QoS among the client's matching filters.
        for p in 0..n {
            for s in 0..plans[p].publishes.len() {
                let (a, b, qos) = plans[p].publishes[s];
                for (r, model) in self.models.iter().enumerate() {
                    let granted = model
                        .subs
                        .iter()
                        .filter(|(f, _)| f.matches(a, b))
                        .map(|(_, q)| *q)
                        .max();
                    if let Some(granted) = granted {
                        plans[r]
                            .expected
                            .insert((p as u16, s as u16), (a, b, qos.min(granted)));
                    }
                }
            }
        }
        plans
    }

    fn ops(plans: &[D77Plan]) -> u64 {
        plans
            .iter()
            .map(|p| {
                p.publishes.len() as u64
                    + match p.change {
                        D77Change::Nothing => 0,
                        D77Change::Reconnect { .. } => 2,
                        _ => 1,
                    }
            })
            .sum()
    }
}

/// Waits for every client's report on a round; panics on the first failure or after 30 s.
async fn d77_wait_all(
    done_rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<(u64, u64), String>>,
    clients: usize,
    seed: u64,
) -> (u64, u64) {
    let mut totals = (0, 0);
    for _ in 0..clients {
        match timeout(Duration::from_secs(30), done_rx.recv()).await {
            Ok(Some(Ok((ops, received)))) => {
                totals.0 += ops;
                totals.1 += received;
            }
            Ok(Some(Err(e))) => panic!("D77 seed {seed}: {e}"),
            Ok(None) => panic!("D77 seed {seed}: a client task ended"),
            Err(_) => panic!("D77 seed {seed}: a round hung for 30 s"),
        }
    }
    totals
}

/// D77 at scale: 200 clients over TCP (a quarter MQTT 3.1.1), 10^6 operations (`D77_OPS`
/// overrides) in rounds. In each round every client makes one random change at the same time
/// as the others (SUBSCRIBE 1-3 filters, exact or with `+`/`#`, at QoS 0-2; UNSUBSCRIBE 1-2,
/// some not held; DISCONNECT and CONNECT again, clean or resuming a persistent session; or
/// nothing) and waits for its SUBACK/UNSUBACK/CONNACK; then all publish 2-7 messages at random
/// QoS on random topics `d77/<a>/<b>` (32 x 32), concurrently. Every delivery is checked
/// against the reference model: each client gets exactly the messages of the round whose topic
/// one of its filters matches, once, at min(message QoS, highest matching subscription QoS),
/// with SUBACK/UNSUBACK reason codes and Session Present as the model says. The seed is printed
/// (`D77_SEED` replays it).
#[test]
#[ignore = "load test: run with --release -- --ignored (docs/abuse-load.md)"]
fn d77_random_operations_from_200_clients_match_a_reference_model() {
    const CLIENTS: usize = 200;
    let total: u64 = std::env::var("D77_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = std::env::var("D77_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("D77 seed {seed} (replay: D77_SEED={seed}), {total} operations");
    // Reconnecting clients would otherwise be refused as flapping (15 connects a minute).
    let s = setup("max_connects_per_client_id_per_minute = 0");
    let addr = s.broker.addr;
    let summary = client_runtime().block_on(async move {
        let versions: Vec<_> = (0..CLIENTS)
            .map(|c| if c % 4 == 3 { V311 } else { V5 })
            .collect();
        let mut schedule = D77Schedule {
            rng: Rng(seed),
            models: (0..CLIENTS).map(|_| D77Model::default()).collect(),
            versions: versions.clone(),
        };
        let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut plan_txs = Vec::new();
        for (c, &version) in versions.iter().enumerate() {
            let (plan_tx, mut plan_rx) = tokio::sync::mpsc::unbounded_channel::<D77Plan>();
            plan_txs.push(plan_tx);
            let (barrier, done_tx) = (barrier.clone(), done_tx.clone());
            tokio::spawn(async move {
                let stream = tcp(addr, c, None).await.unwrap();
                let mut client = D77Client {
                    index: c as u16,
                    version,
                    addr,
                    conn: Conn::over(stream, version),
                    round: 0,
                    expected: Default::default(),
                    next_id: 0,
                    outgoing: Default::default(),
                    incoming: Default::default(),
                    reply: None,
                    ops: 1,
                    received: 0,
                };
                let first = client.connect_packet(true, false);
                client.conn.send(first).await.unwrap();
                assert!(matches!(
                    client.conn.recv(ANSWER).await,
                    Ok(Packet::ConnAck(a)) if a.reason == ReasonCode::Success
                ));
                let _ = done_tx.send(Ok((0, 0)));
                while let Some(plan) = plan_rx.recv().await {
                    client.round = plan.round;
                    client.expected = plan.expected;
                    let result = async {
                        client.change(plan.change).await?;
                        barrier.wait().await;
                        client.publish_and_drain(&plan.publishes).await
                    }
                    .await;
                    let failed = result.is_err();
                    let _ = done_tx.send(result.map(|()| (client.ops, client.received)));
                    if failed {
                        return;
                    }
                }
                // Anything arriving now would be an extra delivery.
                let extra = timeout(Duration::from_millis(300), client.pump()).await;
                let _ = done_tx.send(match extra {
                    Err(_) => Ok((client.ops, client.received)),
                    Ok(Ok(())) => Err(format!("client {c}: a packet after the last round")),
                    Ok(Err(e)) => Err(e),
                });
                client.conn.disconnect().await;
            });
        }
        d77_wait_all(&mut done_rx, CLIENTS, seed).await;
        let started = Instant::now();
        let (mut ops, mut expected_deliveries, mut rounds) = (CLIENTS as u64, 0u64, 0u32);
        // SUBSCRIBE, UNSUBSCRIBE, reconnects, of which resumed sessions, PUBLISH.
        let mut kinds = [0u64; 5];
        while ops < total {
            rounds += 1;
            let plans = schedule.round(rounds);
            ops += D77Schedule::ops(&plans);
            expected_deliveries += plans.iter().map(|p| p.expected.len() as u64).sum::<u64>();
            for p in &plans {
                match p.change {
                    D77Change::Nothing => {}
                    D77Change::Subscribe(_) => kinds[0] += 1,
                    D77Change::Unsubscribe(_) => kinds[1] += 1,
                    D77Change::Reconnect {
                        session_present, ..
                    } => {
                        kinds[2] += 1;
                        kinds[3] += u64::from(session_present);
                    }
                }
                kinds[4] += p.publishes.len() as u64;
            }
            for (tx, plan) in plan_txs.iter().zip(plans) {
                tx.send(plan).unwrap();
            }
            let totals = d77_wait_all(&mut done_rx, CLIENTS, seed).await;
            if rounds % 100 == 0 {
                eprintln!(
                    "round {rounds}: {} operations, {} deliveries, {:.1} s",
                    totals.0,
                    totals.1,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        let took = started.elapsed();
        drop(plan_txs);
        // The clients' last check: nothing more arrives.
        let totals = d77_wait_all(&mut done_rx, CLIENTS, seed).await;
        let subscriptions: usize = schedule.models.iter().map(|m| m.subs.len()).sum();
        eprintln!(
            "D77 seed {seed}: {rounds} rounds, {} operations ({ops} planned), {} deliveries \
             checked ({expected_deliveries} expected) in {took:?} ({:.0} operations/s); \
             {subscriptions} subscriptions held at the end",
            totals.0,
            totals.1,
            totals.0 as f64 / took.as_secs_f64()
        );
        assert_eq!(totals.0, ops);
        assert_eq!(totals.1, expected_deliveries);
        format!(
            "seed {seed}: {CLIENTS} clients (50 on 3.1.1), {} operations ({} SUBSCRIBE, {} \
             UNSUBSCRIBE, {} DISCONNECT + CONNECT of which {} resumed a session, {} PUBLISH) \
             in {rounds} rounds in {:.1} s ({:.0}/s); {} deliveries, each as the reference \
             model says",
            totals.0,
            kinds[0],
            kinds[1],
            kinds[2],
            kinds[3],
            kinds[4],
            took.as_secs_f64(),
            totals.0 as f64 / took.as_secs_f64(),
            totals.1
        )
    });
    s.settle("D77 10^6 random operations", summary);
}
