//! Durability across a crash (bad-inputs.md §3.3 "How to test it", cases I120-I126): the
//! `mqttd` binary is killed with SIGKILL while QoS 1/2 traffic flows, restarted on the same
//! database file, and every client comes back with Clean Start 0.
//!
//! The promise checked is the `process` level of §3.3: whatever the broker acknowledged
//! (PUBACK, PUBREC, SUBACK, PUBCOMP) was committed first, so a kill -9 loses none of it.
//!
//! The subscribers here behave like a real client that keeps its own session state: a QoS 2
//! message is handed to the application when its PUBLISH first arrives ("method A" of
//! §4.3.3), and a PUBLISH whose packet id still awaits PUBREL is a duplicate, answered with
//! PUBREC and not delivered again [MQTT-4.3.3-10]. That state survives reconnects, as the
//! client's side of the session does.
//!
//! The kill points of `kill_9_loses_no_acknowledged_message` come from a seed printed at the
//! start; `MQTTD_DURABILITY_SEED=<seed>` replays them.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use mqttd::mqtt::{Ack, Packet, ProtocolVersion, Publish, QoS, ReasonCode};

use crate::cli::spawn_daemon_with;
use crate::common::*;
use crate::retained::{V5, disconnect, msg, publish_expect, publish_ok, recv_publish, subscribe};

/// Session Expiry Interval of every persistent client here (below the default cap of 86400).
const EXPIRY: u32 = 3600;
/// QoS 1/2 messages one load publisher leaves unacknowledged (the broker allows 100).
const WINDOW: usize = 8;
/// Once a subscriber holds every acknowledged message, how long it keeps reading for late
/// duplicates (no event says "nothing more will be re-sent").
const QUIET: Duration = Duration::from_millis(300);

// ---- the broker process ----------------------------------------------------------------------

/// The `mqttd` binary, started with `--config` (so anonymous clients are allowed) on a database
/// file that outlives it.
struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let (child, addr) = spawn_daemon_with(
            Command::new(env!("CARGO_BIN_EXE_mqttd"))
                .arg("--config")
                .arg(config),
        );
        Daemon { child, addr }
    }

    /// SIGKILL (what `Child::kill` sends on unix), and reaps the process.
    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = tokio::task::block_in_place(|| self.child.wait());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A configuration for `dir`: anonymous access, no `$SYS`, an ephemeral port, and queue limits
/// high enough that no message is dropped by policy (a drop would look like a loss).
fn write_config(dir: &Path) -> PathBuf {
    let config = dir.join("mqttd.toml");
    let db = dir.join("durable.db");
    std::fs::write(
        &config,
        format!(
            "db_path = {:?}\nallow_anonymous = true\nsys_interval = 0\n\
             [limits]\nmax_queued_messages = 32768\n\
             [[listener]]\nbind = \"127.0.0.1:0\"\n",
            db.to_str().unwrap()
        ),
    )
    .unwrap();
    config
}

// ---- clients -----------------------------------------------------------------------------------

/// Connects a v5 client with Session Expiry `EXPIRY`; returns it with Session Present.
async fn open_session(addr: SocketAddr, client_id: &str, clean_start: bool) -> (Client, bool) {
    let Packet::Connect(mut c) = connect(V5, client_id) else {
        unreachable!()
    };
    c.clean_start = clean_start;
    c.properties.session_expiry_interval = Some(EXPIRY);
    let mut client = Client::open(addr, ProtocolVersion::V5).await;
    client.send(Packet::Connect(c)).await;
    match client.recv().await {
        Some(Ok(Packet::ConnAck(ack))) if ack.reason == ReasonCode::Success => {
            (client, ack.session_present)
        }
        other => panic!("{client_id}: expected a successful CONNACK, got {other:?}"),
    }
}

fn ack(packet_id: u16) -> Ack {
    Ack {
        packet_id,
        reason: ReasonCode::Success,
        ..Ack::default()
    }
}

/// A QoS 1/2 PUBLISH with its packet id and DUP flag.
fn publish(topic: &str, payload: &str, qos: QoS, packet_id: u16, dup: bool) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup,
        packet_id: Some(packet_id),
        ..msg(topic, payload, qos, false)
    }))
}

/// A subscriber's side of its session and everything it delivered to its application.
struct Receiver {
    name: &'static str,
    /// Payload -> how many times it was delivered as a new message.
    deliveries: HashMap<String, u32>,
    /// QoS 2 packet ids answered with PUBREC and not yet released, with their payload.
    awaiting_pubrel: HashMap<u16, Bytes>,
    /// What the broker did that a correct broker does not, in words.
    anomalies: Vec<String>,
    /// Connections so far; the history says on which one each packet came.
    connection: u32,
    /// Per QoS 2 packet id, what happened to it (evidence for the anomalies).
    history: HashMap<u16, Vec<String>>,
}

impl Receiver {
    fn new(name: &'static str) -> Receiver {
        Receiver {
            name,
            deliveries: HashMap::new(),
            awaiting_pubrel: HashMap::new(),
            anomalies: Vec::new(),
            connection: 0,
            history: HashMap::new(),
        }
    }

    fn note(&mut self, packet_id: u16, event: String) {
        let event = format!("connection {}: {event}", self.connection);
        self.history.entry(packet_id).or_default().push(event);
    }

    fn count(&self, payload: &str) -> u32 {
        self.deliveries.get(payload).copied().unwrap_or(0)
    }

    /// Handles one packet from the broker: the replies it needs, and the payload it delivered
    /// to the application (if it was a new message).
    fn on_packet(&mut self, packet: Packet) -> (Vec<Packet>, Option<String>) {
        match packet {
            Packet::Publish(p) => self.on_publish(*p),
            Packet::PubRel(rel) => {
                // Unknown ids are answered too: a PUBREL re-sent after a lost PUBCOMP is allowed.
                self.awaiting_pubrel.remove(&rel.packet_id);
                self.note(rel.packet_id, "PUBREL -> PUBCOMP".into());
                (vec![Packet::PubComp(ack(rel.packet_id))], None)
            }
            Packet::PingResp | Packet::Disconnect(_) => (Vec::new(), None),
            other => {
                self.anomalies
                    .push(format!("{}: unexpected {other:?}", self.name));
                (Vec::new(), None)
            }
        }
    }

    fn on_publish(&mut self, p: Publish) -> (Vec<Packet>, Option<String>) {
        let payload = String::from_utf8_lossy(&p.payload).into_owned();
        match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, _) => (Vec::new(), Some(self.deliver(payload))),
            (QoS::AtLeastOnce, Some(id)) => {
                (vec![Packet::PubAck(ack(id))], Some(self.deliver(payload)))
            }
            (QoS::ExactlyOnce, Some(id)) => {
                let reply = vec![Packet::PubRec(ack(id))];
                self.note(id, format!("PUBLISH {payload:?} dup {} -> PUBREC", p.dup));
                if let Some(held) = self.awaiting_pubrel.get(&id) {
                    // A duplicate [MQTT-4.3.3-10]; it must say so [MQTT-3.3.1-1] and must be
                    // the same message: a different one under a held id is lost to us.
                    if held != &p.payload {
                        self.anomalies.push(format!(
                            "{}: PUBLISH id {id} carries {payload:?} while id {id} still awaits \
                             PUBREL for {:?}: the new message is taken for a duplicate and lost; \
                             id {id}: {:?}",
                            self.name,
                            String::from_utf8_lossy(held),
                            self.history[&id]
                        ));
                    } else if !p.dup {
                        self.anomalies.push(format!(
                            "{}: re-sent PUBLISH id {id} ({payload:?}) has DUP 0 [MQTT-3.3.1-1]",
                            self.name
                        ));
                    }
                    return (reply, None);
                }
                self.awaiting_pubrel.insert(id, p.payload.clone());
                (reply, Some(self.deliver(payload)))
            }
            (_, None) => {
                self.anomalies
                    .push(format!("{}: QoS > 0 PUBLISH without id", self.name));
                (Vec::new(), None)
            }
        }
    }

    fn deliver(&mut self, payload: String) -> String {
        *self.deliveries.entry(payload.clone()).or_default() += 1;
        payload
    }
}

/// How `serve` ended.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    /// Nothing arrived for the quiet period.
    Quiet,
    /// The payload waited for was delivered.
    Found,
    /// The connection ended (the broker went away).
    Closed,
}

/// Reads and answers packets until `until` is delivered, nothing arrives for `quiet`, or the
/// connection ends.
async fn serve(
    client: &mut Client,
    receiver: &mut Receiver,
    quiet: Duration,
    until: Option<&str>,
) -> Served {
    loop {
        let packet = match tokio::time::timeout(quiet, client.framed.next()).await {
            Err(_) => return Served::Quiet,
            Ok(Some(Ok(packet))) => packet,
            Ok(_) => return Served::Closed,
        };
        let (replies, delivered) = receiver.on_packet(packet);
        for reply in replies {
            if client.framed.send(reply).await.is_err() {
                return Served::Closed;
            }
        }
        if until.is_some() && delivered.as_deref() == until {
            return Served::Found;
        }
    }
}

/// Serves a resumed subscriber until it holds every acknowledged message (or TIMEOUT passes),
/// then for a quiet period more, so that duplicates re-sent late are seen too.
async fn drain(client: &mut Client, receiver: &mut Receiver, acked: &[String]) -> Served {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline && acked.iter().any(|p| receiver.count(p) == 0) {
        match serve(client, receiver, QUIET, None).await {
            Served::Closed => return Served::Closed,
            Served::Quiet | Served::Found => {}
        }
    }
    serve(client, receiver, QUIET, None).await
}

// ---- load publishers -------------------------------------------------------------------------

/// What one load publisher saw before its connection ended.
#[derive(Default)]
struct PublisherLog {
    /// Every payload sent, with its QoS.
    sent: Vec<(String, QoS)>,
    /// Payloads the broker acknowledged: PUBACK 0x00, or PUBREC 0x00 (the message is stored
    /// from then on).
    acked: Vec<String>,
    /// PUBCOMPs received.
    completed: usize,
    /// Negative acknowledgements, which are not losses.
    refused: Vec<(String, ReasonCode)>,
    /// The first seq not sent.
    next_seq: u64,
}

/// Even seqs go at QoS 1, odd ones at QoS 2.
fn qos_of(seq: u64) -> QoS {
    if seq.is_multiple_of(2) {
        QoS::AtLeastOnce
    } else {
        QoS::ExactlyOnce
    }
}

/// A clean-session publisher `pub-{publisher}` sending "p{publisher}-{seq}" on
/// `load/{publisher}` from `first_seq` on, `WINDOW` at a time, until its connection ends.
async fn publish_load(addr: SocketAddr, publisher: usize, first_seq: u64) -> PublisherLog {
    let mut log = PublisherLog {
        next_seq: first_seq,
        ..PublisherLog::default()
    };
    let mut client = Client::connected(addr, V5, &format!("pub-{publisher}")).await;
    let topic = format!("load/{publisher}");
    // packet id -> payload
    let mut in_flight: HashMap<u16, String> = HashMap::new();
    let mut next_id: u16 = 1;
    loop {
        while in_flight.len() < WINDOW {
            while in_flight.contains_key(&next_id) {
                next_id = next_id.checked_add(1).unwrap_or(1);
            }
            let seq = log.next_seq;
            let payload = format!("p{publisher}-{seq}");
            let qos = qos_of(seq);
            if client
                .framed
                .send(publish(&topic, &payload, qos, next_id, false))
                .await
                .is_err()
            {
                return log;
            }
            log.next_seq += 1;
            log.sent.push((payload.clone(), qos));
            in_flight.insert(next_id, payload);
        }
        let packet = match tokio::time::timeout(TIMEOUT, client.framed.next()).await {
            Ok(Some(Ok(packet))) => packet,
            Ok(_) => return log,
            Err(_) => panic!("pub-{publisher}: no acknowledgement within {TIMEOUT:?}"),
        };
        match packet {
            Packet::PubAck(a) => {
                let payload = in_flight
                    .remove(&a.packet_id)
                    .expect("PUBACK of an id sent");
                if a.reason.is_failure() {
                    log.refused.push((payload, a.reason));
                } else {
                    log.acked.push(payload);
                }
            }
            Packet::PubRec(a) => {
                if a.reason.is_failure() {
                    let payload = in_flight
                        .remove(&a.packet_id)
                        .expect("PUBREC of an id sent");
                    log.refused.push((payload, a.reason));
                } else {
                    log.acked.push(in_flight[&a.packet_id].clone());
                    if client
                        .framed
                        .send(Packet::PubRel(ack(a.packet_id)))
                        .await
                        .is_err()
                    {
                        return log;
                    }
                }
            }
            Packet::PubComp(a) => {
                in_flight
                    .remove(&a.packet_id)
                    .expect("PUBCOMP of an id sent");
                log.completed += 1;
            }
            Packet::Disconnect(_) => return log,
            other => panic!("pub-{publisher}: unexpected {other:?}"),
        }
    }
}

// ---- seeds -------------------------------------------------------------------------------------

/// `MQTTD_DURABILITY_SEED`, or one from the clock.
fn seed() -> u64 {
    match std::env::var("MQTTD_DURABILITY_SEED") {
        Ok(s) => s.parse().expect("MQTTD_DURABILITY_SEED is a u64"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// SplitMix64: enough randomness for a kill point, and replayable from the seed.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---- the tests ---------------------------------------------------------------------------------

/// The subscribers of the kill -9 test: client id and the QoS of their `load/#` subscription.
const SUBSCRIBERS: [(&str, QoS); 3] = [
    ("sub-0", QoS::ExactlyOnce),
    ("sub-1", QoS::ExactlyOnce),
    ("sub-2", QoS::AtLeastOnce),
];
const PUBLISHERS: usize = 3;
const CYCLES: u64 = 3;

/// I120, I121, I124, I126 (bad-inputs.md §6) with the oracle of §3.3: three publishers send
/// QoS 1 and QoS 2 messages while two persistent QoS 2 subscribers read and a persistent QoS 1
/// subscriber is offline; the broker is killed with SIGKILL at a random point, restarted on the
/// same database, and every subscriber resumes with Clean Start 0. Three times over.
///
/// - Every message the broker acknowledged (PUBACK, or PUBREC for QoS 2) reaches every
///   subscriber at least once, before or after the kill [MQTT-3.1.2-23] [MQTT-4.4.0-1].
/// - A QoS 2 message reaches a QoS 2 subscriber at most once as a new message; re-sent
///   PUBLISHes of an id awaiting PUBREL carry DUP 1 and the same message [MQTT-4.3.3-10]
///   [MQTT-3.3.1-1].
/// - Subscriptions acknowledged by SUBACK before the first kill survive every restart: each
///   cycle's messages reach all three, and so does one published after the last restart (I124).
/// - Session Present is 1 for each resumed session and 0 for a client id never seen
///   [MQTT-3.2.2-3] (I126).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_message() {
    let started = Instant::now();
    let seed = seed();
    println!("durability seed {seed} (MQTTD_DURABILITY_SEED={seed} replays the kill points)");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut daemon = Daemon::start(&config);

    let mut receivers: Vec<Receiver> = SUBSCRIBERS.iter().map(|s| Receiver::new(s.0)).collect();
    let mut online: Vec<Client> = Vec::new();
    for (id, qos) in SUBSCRIBERS {
        let (mut client, present) = open_session(daemon.addr, id, true).await;
        assert!(!present, "{id}: Clean Start 1 never resumes [MQTT-3.2.2-2]");
        subscribe(&mut client, "load/#", qos).await;
        if qos == QoS::ExactlyOnce {
            online.push(client);
        } else {
            disconnect(client).await;
        }
    }

    let mut sent: HashMap<String, QoS> = HashMap::new();
    let mut acked: Vec<String> = Vec::new();
    let mut next_seq = [0u64; PUBLISHERS];
    for cycle in 0..CYCLES {
        // Traffic: the online subscribers read, the publishers publish, and the broker dies.
        let readers: Vec<_> = online
            .drain(..)
            .zip(receivers.drain(..2))
            .map(|(mut client, mut receiver)| {
                tokio::spawn(async move {
                    // Ends when the broker is killed (TIMEOUT only if it hangs instead).
                    let end = serve(&mut client, &mut receiver, TIMEOUT, None).await;
                    (end, receiver)
                })
            })
            .collect();
        let addr = daemon.addr;
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| tokio::spawn(publish_load(addr, p, next_seq[p])))
            .collect();
        let kill_after = Duration::from_millis(50 + splitmix64(seed ^ cycle) % 351);
        tokio::time::sleep(kill_after).await;
        daemon.kill_9();

        let mut line = format!("cycle {cycle}: SIGKILL after {kill_after:?};");
        for (p, task) in publishers.into_iter().enumerate() {
            let log = task.await.unwrap();
            assert!(log.refused.is_empty(), "pub-{p} refused: {:?}", log.refused);
            line += &format!(
                " pub-{p} sent {} acked {} completed {};",
                log.sent.len(),
                log.acked.len(),
                log.completed
            );
            next_seq[p] = log.next_seq;
            sent.extend(log.sent);
            acked.extend(log.acked);
        }
        let mut restored = Vec::new();
        for task in readers {
            let (end, receiver) = task.await.unwrap();
            assert_eq!(end, Served::Closed, "{} outlived the broker", receiver.name);
            restored.push(receiver);
        }
        restored.append(&mut receivers);
        receivers = restored;
        println!("{line}");

        // Restart on the same file; everyone resumes and drains what the broker kept.
        daemon = Daemon::start(&config);
        let drains: Vec<_> = receivers
            .drain(..)
            .map(|mut receiver| {
                let addr = daemon.addr;
                let acked = acked.clone();
                tokio::spawn(async move {
                    let (mut client, present) = open_session(addr, receiver.name, false).await;
                    receiver.connection += 1;
                    let end = drain(&mut client, &mut receiver, &acked).await;
                    (client, receiver, present, end)
                })
            })
            .collect();
        for task in drains {
            let (client, receiver, present, end) = task.await.unwrap();
            assert!(
                present,
                "{} resumed after a kill -9 with Session Present 0 [MQTT-3.2.2-3] (seed {seed})",
                receiver.name
            );
            assert_eq!(end, Served::Quiet, "{} lost its connection", receiver.name);
            online.push(client);
            receivers.push(receiver);
        }

        check_oracle(&receivers, &sent, &acked, seed);
        println!(
            "cycle {cycle}: after restart every subscriber has all {} acknowledged messages \
             ({:?} elapsed)",
            acked.len(),
            started.elapsed()
        );
        // The QoS 1 subscriber goes offline again for the next cycle's traffic.
        if cycle + 1 < CYCLES {
            disconnect(online.pop().unwrap()).await;
        }
    }

    // I126: a client id that never existed has no session to resume.
    let (stranger, present) = open_session(daemon.addr, "never-seen", false).await;
    assert!(!present, "never-seen got Session Present 1 [MQTT-3.2.2-3]");
    disconnect(stranger).await;

    // I124: the subscriptions survived three kills; a new message reaches all three.
    let mut publisher = Client::connected(daemon.addr, V5, "after-restart").await;
    publish_ok(
        &mut publisher,
        1,
        msg("load/x", "after-restart", QoS::AtLeastOnce, false),
    )
    .await;
    for (client, receiver) in online.iter_mut().zip(receivers.iter_mut()) {
        let end = serve(client, receiver, TIMEOUT, Some("after-restart")).await;
        assert_eq!(
            end,
            Served::Found,
            "{} did not get a message published after the restart",
            receiver.name
        );
    }
    println!(
        "kill_9_loses_no_acknowledged_message: {} messages sent, {} acknowledged, {:?}",
        sent.len(),
        acked.len(),
        started.elapsed()
    );
}

/// The oracle of bad-inputs.md §3.3 over everything so far; panics with the evidence.
fn check_oracle(receivers: &[Receiver], sent: &HashMap<String, QoS>, acked: &[String], seed: u64) {
    let mut failures = Vec::new();
    for (receiver, (_, sub_qos)) in receivers.iter().zip(SUBSCRIBERS) {
        failures.extend(receiver.anomalies.iter().cloned());
        let missing: Vec<&String> = acked.iter().filter(|p| receiver.count(p) == 0).collect();
        if !missing.is_empty() {
            failures.push(format!(
                "{}: {} acknowledged messages never arrived, e.g. {:?}",
                receiver.name,
                missing.len(),
                &missing[..missing.len().min(10)]
            ));
        }
        if sub_qos == QoS::ExactlyOnce {
            let twice: BTreeMap<&String, u32> = receiver
                .deliveries
                .iter()
                .filter(|(p, n)| **n > 1 && sent.get(*p) == Some(&QoS::ExactlyOnce))
                .map(|(p, n)| (p, *n))
                .collect();
            if !twice.is_empty() {
                failures.push(format!(
                    "{}: {} QoS 2 messages delivered more than once [MQTT-4.3.3-10], e.g. {:?}",
                    receiver.name,
                    twice.len(),
                    twice.iter().take(10).collect::<Vec<_>>()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "seed {seed}:\n{}", failures.join("\n"));
}

/// Leaves `resender` with a QoS 1 PUBLISH it never acknowledged and a QoS 2 one it answered
/// with PUBREC only (the broker's PUBREL came back, so the PUBREC is committed). Returns the
/// connection and the two packet ids.
async fn leave_unacknowledged(addr: SocketAddr) -> (Client, u16, u16) {
    let (mut subscriber, _) = open_session(addr, "resender", true).await;
    subscribe(&mut subscriber, "resend/#", QoS::ExactlyOnce).await;
    let mut publisher = Client::connected(addr, V5, "feeder").await;
    publish_ok(
        &mut publisher,
        1,
        msg("resend/1", "one", QoS::AtLeastOnce, false),
    )
    .await;
    publish_ok(
        &mut publisher,
        2,
        msg("resend/2", "two", QoS::ExactlyOnce, false),
    )
    .await;
    let mut next = async || match subscriber.recv().await {
        Some(Ok(Packet::Publish(p))) => *p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    let one = next().await;
    assert_eq!(
        (&one.payload[..], one.qos, one.dup),
        (&b"one"[..], QoS::AtLeastOnce, false)
    );
    let two = next().await;
    assert_eq!(
        (&two.payload[..], two.qos, two.dup),
        (&b"two"[..], QoS::ExactlyOnce, false)
    );
    let (one_id, two_id) = (one.packet_id.unwrap(), two.packet_id.unwrap());
    subscriber.send(Packet::PubRec(ack(two_id))).await;
    subscriber.expect(Packet::PubRel(ack(two_id))).await;
    (subscriber, one_id, two_id)
}

/// Resumes `resender` and checks what [MQTT-4.4.0-1] requires: PUBREL for the QoS 2 id in
/// PUBREC state (never its PUBLISH again [MQTT-4.3.3-6]), then the QoS 1 PUBLISH with its
/// original id and DUP 1 [MQTT-3.3.1-1]; once both are acknowledged, nothing more.
async fn expect_resumed(addr: SocketAddr, one_id: u16, two_id: u16, how: &str) {
    let (mut client, present) = open_session(addr, "resender", false).await;
    assert!(present, "{how}: Session Present 1 [MQTT-3.2.2-3]");
    client.expect(Packet::PubRel(ack(two_id))).await;
    client
        .expect(Packet::Publish(Box::new(Publish {
            dup: true,
            packet_id: Some(one_id),
            ..msg("resend/1", "one", QoS::AtLeastOnce, false)
        })))
        .await;
    client.send(Packet::PubAck(ack(one_id))).await;
    client.send(Packet::PubComp(ack(two_id))).await;
    client.send(Packet::PingReq).await;
    client.expect(Packet::PingResp).await;
    disconnect(client).await;

    // Both exchanges are over: a further resume re-sends nothing ("and at no other time").
    let (mut client, present) = open_session(addr, "resender", false).await;
    assert!(present, "{how}: the session is still there");
    client.send(Packet::PingReq).await;
    client.expect(Packet::PingResp).await;
    disconnect(client).await;
}

/// I123: unacknowledged outbound QoS 1 and QoS 2 (PUBREC received) messages are re-sent on
/// resume with their original packet ids, PUBREL first, the PUBLISH with DUP 1
/// [MQTT-4.4.0-1] [MQTT-3.3.1-1] [MQTT-4.3.3-6]: after a plain reconnect, after a clean
/// restart, and after kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i123_resume_resends_with_original_ids_and_dup() {
    // A plain reconnect.
    let broker = start_broker();
    let (subscriber, one_id, two_id) = leave_unacknowledged(broker.addr).await;
    disconnect(subscriber).await;
    expect_resumed(broker.addr, one_id, two_id, "reconnect").await;
    drop(broker);

    // A clean restart (as on SIGTERM) on the same database.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("restart.db");
    let mut broker = start_broker_on(db.clone(), |_| {});
    let (subscriber, one_id, two_id) = leave_unacknowledged(broker.addr).await;
    broker.shutdown();
    drop(subscriber);
    let broker = start_broker_on(db, |_| {});
    expect_resumed(broker.addr, one_id, two_id, "clean restart").await;
    drop(broker);

    // kill -9 of the daemon.
    let config = write_config(dir.path());
    let mut daemon = Daemon::start(&config);
    let (subscriber, one_id, two_id) = leave_unacknowledged(daemon.addr).await;
    daemon.kill_9();
    drop(subscriber);
    let daemon = Daemon::start(&config);
    expect_resumed(daemon.addr, one_id, two_id, "kill -9").await;
}

/// I122: a persistent publisher's QoS 2 exchange across kill -9. Killed between PUBREC and
/// PUBREL: the re-sent PUBLISH (DUP 1, same id) gets PUBREC and is not delivered again, and
/// PUBREL gets PUBCOMP 0x00 [MQTT-4.3.3-10] [MQTT-4.3.3-11] [MQTT-4.3.3-12]. Killed right after
/// that PUBCOMP: the client reuses the id for a new message, which is delivered, not taken for
/// a duplicate (bad-inputs.md §3.3, PUBCOMP row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i122_pubrel_after_restart_and_reused_id() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut daemon = Daemon::start(&config);
    let mut watched = Receiver::new("watcher");

    let (mut watcher, _) = open_session(daemon.addr, "watcher", true).await;
    subscribe(&mut watcher, "reuse/#", QoS::ExactlyOnce).await;
    let (mut publisher, _) = open_session(daemon.addr, "reuser", true).await;
    publisher
        .send(publish("reuse/a", "first", QoS::ExactlyOnce, 7, false))
        .await;
    publisher.expect(Packet::PubRec(ack(7))).await;
    let first = recv_publish(&mut watcher).await;
    assert_eq!(&first.payload[..], b"first");
    watched.deliver("first".into());

    // Killed between PUBREC and PUBREL.
    daemon.kill_9();
    drop((watcher, publisher));
    daemon = Daemon::start(&config);
    let (mut publisher, present) = open_session(daemon.addr, "reuser", false).await;
    assert!(present, "reuser resumes [MQTT-3.2.2-3]");
    publisher
        .send(publish("reuse/a", "first", QoS::ExactlyOnce, 7, true))
        .await;
    publisher.expect(Packet::PubRec(ack(7))).await;
    publisher.send(Packet::PubRel(ack(7))).await;
    publisher.expect(Packet::PubComp(ack(7))).await;

    // Killed right after PUBCOMP: id 7 is free, a new message may use it.
    daemon.kill_9();
    drop(publisher);
    daemon = Daemon::start(&config);
    let (mut publisher, present) = open_session(daemon.addr, "reuser", false).await;
    assert!(present, "reuser resumes again");
    publisher
        .send(publish("reuse/a", "second", QoS::ExactlyOnce, 7, false))
        .await;
    publisher.expect(Packet::PubRec(ack(7))).await;
    publisher.send(Packet::PubRel(ack(7))).await;
    publisher.expect(Packet::PubComp(ack(7))).await;
    publish_ok(
        &mut publisher,
        8,
        msg("reuse/marker", "marker", QoS::AtLeastOnce, false),
    )
    .await;

    // The watcher gets "second" and the marker, and "first" never again.
    let (mut watcher, present) = open_session(daemon.addr, "watcher", false).await;
    assert!(present, "watcher resumes");
    let end = serve(&mut watcher, &mut watched, TIMEOUT, Some("marker")).await;
    assert_eq!(end, Served::Found, "the marker never arrived");
    assert!(watched.anomalies.is_empty(), "{:?}", watched.anomalies);
    assert_eq!(
        (
            watched.count("first"),
            watched.count("second"),
            watched.count("marker")
        ),
        (1, 1, 1),
        "deliveries (first, second, marker) to the watcher: a re-sent DUP PUBLISH must not be \
         delivered again [MQTT-4.3.3-10], a reused id is a new message"
    );
}

/// I128: the Will of a persistent session that was connected when the broker was killed is
/// published after the restart (the README's choice; §3.1.2.5 lets the server do so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i128_wills_of_sessions_connected_at_a_crash_are_published_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut daemon = Daemon::start(&config);
    let (mut listener, _) = open_session(daemon.addr, "will-listener", true).await;
    subscribe(&mut listener, "wills/#", QoS::AtLeastOnce).await;
    disconnect(listener).await;
    let Packet::Connect(mut c) = connect(V5, "doomed") else {
        unreachable!()
    };
    c.clean_start = true;
    c.properties.session_expiry_interval = Some(EXPIRY);
    c.will = Some(mqttd::mqtt::Will {
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        topic: "wills/doomed".into(),
        payload: Bytes::from_static(b"the broker died"),
    });
    let mut doomed = Client::open(daemon.addr, ProtocolVersion::V5).await;
    doomed.send(Packet::Connect(c)).await;
    assert!(matches!(doomed.recv().await, Some(Ok(Packet::ConnAck(a))) if !a.reason.is_failure()));
    daemon.kill_9();
    drop(doomed);

    let daemon = Daemon::start(&config);
    let (mut listener, present) = open_session(daemon.addr, "will-listener", false).await;
    assert!(present);
    let will = recv_publish(&mut listener).await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("wills/doomed", &b"the broker died"[..])
    );
}

/// I131: when the disk is full (here: the file-size limit of the broker process, lowered with
/// `prlimit`), a message for a persistent session cannot be committed and its PUBACK carries
/// 0x80 instead of success; once space returns, the broker stores and acknowledges again
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i131_a_full_disk_gets_puback_0x80_and_service_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let daemon = Daemon::start(&config);
    let (mut subscriber, _) = open_session(daemon.addr, "stored", true).await;
    subscribe(&mut subscriber, "big/#", QoS::AtLeastOnce).await;
    disconnect(subscriber).await;

    // Only the soft limit changes ("N:"), so raising it again needs no privilege.
    let prlimit = |limit: &str| {
        let status = Command::new("prlimit")
            .arg("--pid")
            .arg(daemon.child.id().to_string())
            .arg(format!("--fsize={limit}:"))
            .status()
            .expect("prlimit (util-linux)");
        assert!(status.success(), "prlimit --fsize={limit}");
    };
    // Far below what a 600 KB message needs in the WAL and the database file.
    prlimit("65536");
    let payload = "x".repeat(600 * 1024);
    let mut publisher = Client::connected(daemon.addr, V5, "big-publisher").await;
    publish_expect(
        &mut publisher,
        1,
        msg("big/a", &payload, QoS::AtLeastOnce, false),
        ReasonCode::UnspecifiedError,
    )
    .await;
    prlimit("unlimited");
    publish_ok(
        &mut publisher,
        2,
        msg("big/a", "stored", QoS::AtLeastOnce, false),
    )
    .await;
    let (mut subscriber, _) = open_session(daemon.addr, "stored", false).await;
    // The refused message may still be delivered (it was never promised); the stored one is.
    loop {
        let got = recv_publish(&mut subscriber).await;
        if &got.payload[..] == b"stored" {
            break;
        }
    }
}
