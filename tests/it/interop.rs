//! Clients nobody here wrote: the rumqttc crate (v5 and 3.1.1) and Mosquitto's command-line
//! clients (installed by .ci/run; skipped with a notice when absent on a developer machine).

use std::process::Command;
use std::time::Duration;

use crate::common::*;

#[tokio::test]
async fn rumqttc_v311_connects_pings_publishes_and_disconnects() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let broker = start_broker();
    let mut options = MqttOptions::new("rumqttc-v4", "127.0.0.1", broker.addr.port());
    options.set_keep_alive(Duration::from_secs(1));
    let (client, mut events) = AsyncClient::new(options, 10);
    let mut pings = 0;
    let mut published = false;
    loop {
        match tokio::time::timeout(TIMEOUT, events.poll())
            .await
            .expect("event")
            .expect("no error")
        {
            Event::Incoming(Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
                client
                    .publish("t/1", QoS::AtLeastOnce, false, "hello")
                    .await
                    .unwrap();
            }
            Event::Incoming(Packet::PubAck(_)) => published = true,
            Event::Incoming(Packet::PingResp) => {
                pings += 1;
                if pings == 2 {
                    client.disconnect().await.unwrap();
                }
            }
            Event::Outgoing(rumqttc::Outgoing::Disconnect) => break,
            _ => {}
        }
    }
    assert!(published);
}

#[tokio::test]
async fn rumqttc_v5_connects_and_is_taken_over() {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, DisconnectReasonCode, Packet};
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
    let broker = start_broker();
    let options = MqttOptions::new("rumqttc-v5", "127.0.0.1", broker.addr.port());
    let (_first, mut first_events) = AsyncClient::new(options.clone(), 10);
    loop {
        if let Event::Incoming(Packet::ConnAck(ack)) = first_events.poll().await.expect("connack") {
            assert_eq!(ack.code, ConnectReturnCode::Success);
            break;
        }
    }
    let (_second, mut second_events) = AsyncClient::new(options, 10);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = second_events.poll().await.expect("connack") {
            break;
        }
    }
    // rumqttc reports a server DISCONNECT as an error carrying its reason code.
    let reason = loop {
        match tokio::time::timeout(TIMEOUT, first_events.poll())
            .await
            .expect("event")
        {
            Ok(Event::Incoming(Packet::Disconnect(d))) => break d.reason_code,
            Ok(_) => {}
            Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                reason_code, ..
            })) => {
                break reason_code;
            }
            Err(e) => panic!("no DISCONNECT before the error: {e}"),
        }
    };
    assert_eq!(reason, DisconnectReasonCode::SessionTakenOver);
}

/// Whether Mosquitto's clients are installed. .ci/run installs them and sets
/// MQTTD_REQUIRE_INTEROP, so there a missing client fails instead of skipping.
pub(crate) fn mosquitto_pub_available() -> bool {
    let found = Command::new("mosquitto_pub").arg("--help").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("MQTTD_REQUIRE_INTEROP").is_none(),
            "mosquitto_pub is required here (apt-get install mosquitto-clients)"
        );
        eprintln!("mosquitto_pub not installed (apt-get install mosquitto-clients): skipped");
    }
    found
}

#[test]
fn mosquitto_pub_v5_and_v311_with_password() {
    if !mosquitto_pub_available() {
        return;
    }
    let broker = start_broker_with(|c| c.allow_anonymous = Some(false));
    mqttd::db::users::add_user(&broker.db_path.to_string_lossy(), "alice", "wonderland").unwrap();
    let port = broker.addr.port().to_string();
    for version in ["mqttv5", "mqttv311"] {
        let run = |password: &str| {
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", "1"])
                .args([
                    "-u", "alice", "-P", password, "-t", "t/x", "-m", "hi", "-i", "mosq-pub",
                ])
                .output()
                .expect("run mosquitto_pub")
        };
        let good = run("wonderland");
        assert!(
            good.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&good.stderr)
        );
        let bad = run("wrong");
        assert!(
            !bad.status.success(),
            "{version}: a wrong password must be refused"
        );
        let stderr = String::from_utf8_lossy(&bad.stderr).to_lowercase();
        assert!(
            stderr.contains("bad user name or password") || stderr.contains("not authori"),
            "{version}: {stderr}"
        );
    }
}

/// What a rumqttc event loop saw, in the terms the exchange test checks.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    SubAck,
    /// Topic, payload, QoS.
    Publish(String, String, u8),
    /// PUBACK or PUBCOMP received: one of the client's own QoS 1/2 messages is complete.
    Completed(u8),
    /// PUBCOMP sent: an inbound QoS 2 exchange is complete.
    SentPubComp,
}

async fn next_seen(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .expect("timed out waiting for a rumqttc event")
        .expect("the event loop ended")
}

/// Collects `count` events (SUBACKs excluded), sorted.
async fn collect_seen(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    count: usize,
) -> Vec<Seen> {
    let mut seen = Vec::new();
    while seen.len() < count {
        seen.push(next_seen(rx).await);
    }
    seen.sort();
    seen
}

#[tokio::test]
async fn rumqttc_v5_and_v311_clients_exchange_messages_both_ways_at_qos_0_1_2() {
    use tokio::sync::mpsc::unbounded_channel;
    let broker = start_broker();
    let port = broker.addr.port();

    // rumqttc v5.
    let (v5, mut v5_events) = {
        use rumqttc::v5::{AsyncClient, MqttOptions};
        AsyncClient::new(MqttOptions::new("rumqttc-v5-x", "127.0.0.1", port), 10)
    };
    let (v5_tx, mut v5_rx) = unbounded_channel();
    let v5_loop = tokio::spawn(async move {
        use rumqttc::Outgoing;
        use rumqttc::v5::Event;
        use rumqttc::v5::mqttbytes::v5::Packet;
        loop {
            let seen = match v5_events.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::SubAck(_)) => Seen::SubAck,
                Event::Incoming(Packet::Publish(p)) => Seen::Publish(
                    String::from_utf8(p.topic.to_vec()).unwrap(),
                    String::from_utf8(p.payload.to_vec()).unwrap(),
                    p.qos as u8,
                ),
                Event::Incoming(Packet::PubAck(_)) => Seen::Completed(1),
                Event::Incoming(Packet::PubComp(_)) => Seen::Completed(2),
                Event::Outgoing(Outgoing::PubComp(_)) => Seen::SentPubComp,
                Event::Outgoing(Outgoing::Disconnect) => return Ok::<(), String>(()),
                _ => continue,
            };
            let _ = v5_tx.send(seen);
        }
    });

    // rumqttc 3.1.1.
    let (v4, mut v4_events) = rumqttc::AsyncClient::new(
        rumqttc::MqttOptions::new("rumqttc-v4-x", "127.0.0.1", port),
        10,
    );
    let (v4_tx, mut v4_rx) = unbounded_channel();
    let v4_loop = tokio::spawn(async move {
        use rumqttc::{Event, Outgoing, Packet};
        loop {
            let seen = match v4_events.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::SubAck(_)) => Seen::SubAck,
                Event::Incoming(Packet::Publish(p)) => Seen::Publish(
                    p.topic,
                    String::from_utf8(p.payload.to_vec()).unwrap(),
                    p.qos as u8,
                ),
                Event::Incoming(Packet::PubAck(_)) => Seen::Completed(1),
                Event::Incoming(Packet::PubComp(_)) => Seen::Completed(2),
                Event::Outgoing(Outgoing::PubComp(_)) => Seen::SentPubComp,
                Event::Outgoing(Outgoing::Disconnect) => return Ok::<(), String>(()),
                _ => continue,
            };
            let _ = v4_tx.send(seen);
        }
    });

    v5.subscribe("to/v5", rumqttc::v5::mqttbytes::QoS::ExactlyOnce)
        .await
        .unwrap();
    assert_eq!(next_seen(&mut v5_rx).await, Seen::SubAck);
    v4.subscribe("to/v4", rumqttc::QoS::ExactlyOnce)
        .await
        .unwrap();
    assert_eq!(next_seen(&mut v4_rx).await, Seen::SubAck);

    for qos in 0..3u8 {
        let q5 = match qos {
            0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
        };
        let q4 = rumqttc::qos(qos).unwrap();
        v5.publish("to/v4", q5, false, format!("v5 says {qos}"))
            .await
            .unwrap();
        v4.publish("to/v5", q4, false, format!("v4 says {qos}"))
            .await
            .unwrap();
    }
    // Each side: the 3 messages from the other, its own QoS 1 and 2 completed, and the
    // inbound QoS 2 completed.
    let expected = |topic: &str, from: &str| {
        let mut e: Vec<Seen> = (0..3u8)
            .map(|q| Seen::Publish(topic.into(), format!("{from} says {q}"), q))
            .chain([Seen::Completed(1), Seen::Completed(2), Seen::SentPubComp])
            .collect();
        e.sort();
        e
    };
    assert_eq!(collect_seen(&mut v4_rx, 6).await, expected("to/v4", "v5"));
    assert_eq!(collect_seen(&mut v5_rx, 6).await, expected("to/v5", "v4"));

    v5.disconnect().await.unwrap();
    v4.disconnect().await.unwrap();
    for (name, task) in [("v5", v5_loop), ("3.1.1", v4_loop)] {
        tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("event loop ends after DISCONNECT")
            .unwrap()
            .unwrap_or_else(|e| panic!("rumqttc {name}: {e}"));
    }
}

/// Whether Python's paho-mqtt 2.x is installed (.ci/run installs it; skipped with a notice
/// elsewhere unless MQTTD_REQUIRE_INTEROP is set).
pub(crate) fn paho_available() -> bool {
    let found = Command::new("python3")
        .args([
            "-c",
            "import paho.mqtt.client as m; m.CallbackAPIVersion.VERSION2",
        ])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        assert!(
            std::env::var_os("MQTTD_REQUIRE_INTEROP").is_none(),
            "paho-mqtt 2.x is required here (python3 -m pip install 'paho-mqtt>=2,<3')"
        );
        eprintln!(
            "paho-mqtt 2.x not installed (python3 -m pip install 'paho-mqtt>=2,<3'): skipped"
        );
    }
    found
}

/// A paho-mqtt 2.x client on MQTT 5 and one on MQTT 3.1.1: each subscribes at QoS 2 to its own
/// topic, then each publishes to the other's topic at QoS 0, 1 and 2. Prints the SUBACKs, then
/// what each received, sorted; exits 1 on a timeout or a refused CONNECT.
const PAHO_SCRIPT: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt

port = int(sys.argv[1])
lock = threading.Condition()
received = []

def fail(why):
    print(why, file=sys.stderr, flush=True)
    sys.exit(1)

def start(name, protocol, topic):
    connected, subscribed = threading.Event(), threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-" + name, protocol=protocol)
    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            print(f"{name}: CONNACK {reason_code}", file=sys.stderr, flush=True)
        else:
            connected.set()
    def on_subscribe(client, userdata, mid, reason_codes, properties):
        print(f"{name} suback {[rc.value for rc in reason_codes]}", flush=True)
        subscribed.set()
    def on_message(client, userdata, message):
        with lock:
            received.append(f"{name} got {message.topic} qos={message.qos} "
                            f"retain={int(message.retain)} {message.payload.decode()}")
            lock.notify_all()
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    if not connected.wait(10):
        fail(f"{name}: not connected")
    c.subscribe(topic, qos=2)
    if not subscribed.wait(10):
        fail(f"{name}: no SUBACK")
    return c

v5 = start("v5", mqtt.MQTTv5, "paho/to-v5")
v311 = start("v311", mqtt.MQTTv311, "paho/to-v311")
for qos in (0, 1, 2):
    for client, name, topic in ((v5, "v5", "paho/to-v311"), (v311, "v311", "paho/to-v5")):
        info = client.publish(topic, f"from {name} at qos {qos}", qos=qos)
        info.wait_for_publish(10)
        if not info.is_published():
            fail(f"{name}: qos {qos} publish not completed")
with lock:
    if not lock.wait_for(lambda: len(received) >= 6, timeout=10):
        fail(f"only received {received}")
for c in (v5, v311):
    c.disconnect()
    c.loop_stop()
for line in sorted(received):
    print(line)
"#;

#[test]
fn paho_python_v5_and_v311_exchange_messages_at_qos_0_1_2() {
    if !paho_available() {
        return;
    }
    let broker = start_broker();
    let out = Command::new("python3")
        .args(["-c", PAHO_SCRIPT, &broker.addr.port().to_string()])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "v5 suback [2]\n\
         v311 suback [2]\n\
         v311 got paho/to-v311 qos=0 retain=0 from v5 at qos 0\n\
         v311 got paho/to-v311 qos=1 retain=0 from v5 at qos 1\n\
         v311 got paho/to-v311 qos=2 retain=0 from v5 at qos 2\n\
         v5 got paho/to-v5 qos=0 retain=0 from v311 at qos 0\n\
         v5 got paho/to-v5 qos=1 retain=0 from v311 at qos 1\n\
         v5 got paho/to-v5 qos=2 retain=0 from v311 at qos 2\n"
    );
}

#[test]
fn mosquitto_sub_v5_and_v311_receive_retained_and_live_messages_from_mosquitto_pub() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    if !mosquitto_pub_available() {
        return;
    }
    let broker = start_broker();
    let port = broker.addr.port().to_string();
    for version in ["mqttv5", "mqttv311"] {
        let topic = format!("mosq/{version}");
        let publish = |qos: &str, retain: bool, message: &str| {
            let mut command = Command::new("mosquitto_pub");
            command
                .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", qos])
                .args(["-t", &topic, "-m", message, "-i", "mosq-pub"]);
            if retain {
                command.arg("-r");
            }
            let out = command.output().expect("run mosquitto_pub");
            assert!(
                out.status.success(),
                "{version}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // The retained message arrives once the subscription exists, which tells when to send
        // the live one.
        publish("1", true, "retained hello");
        let mut sub = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", "2"])
            .args(["-t", &topic, "-C", "2", "-W", "10", "-i", "mosq-sub"])
            .args(["-F", "%t %q %r %p"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run mosquitto_sub");
        let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
        let mut next_line = || {
            lines
                .next()
                .expect("mosquitto_sub printed a line")
                .expect("read")
        };
        assert_eq!(next_line(), format!("{topic} 1 1 retained hello"));
        publish("2", false, "live hello");
        assert_eq!(next_line(), format!("{topic} 2 0 live hello"));
        let status = sub.wait().unwrap();
        assert!(
            status.success(),
            "{version}: mosquitto_sub exits 0: {status:?}"
        );
        publish("0", true, "");
    }
}

/// The foundation's acceptance path with Mosquitto's own client: `mosquitto_sub` logs in with a
/// password (v5 and 3.1.1), stays connected across keep-alive pings, and a second connection
/// with its client id takes it over: it sees DISCONNECT 0x8E (v5) or a closed connection.
#[test]
fn mosquitto_sub_with_password_pings_and_is_taken_over() {
    use std::io::{BufRead, BufReader};
    if !mosquitto_pub_available() {
        return;
    }
    let broker = start_broker_with(|c| c.allow_anonymous = Some(false));
    mqttd::db::users::add_user(&broker.db_path.to_string_lossy(), "alice", "wonderland").unwrap();
    let port = broker.addr.port().to_string();
    for version in ["mqttv5", "mqttv311"] {
        let wrong = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-t",
                "t",
                "-C",
                "1",
            ])
            .args(["-u", "alice", "-P", "nope", "-i", "sub-wrong", "-W", "5"])
            .output()
            .unwrap();
        assert!(
            !wrong.status.success(),
            "{version}: a wrong password is refused"
        );
        // -k 5 is mosquitto_sub's smallest keep-alive: the first ping comes after 5 s.
        // stdbuf: piped, mosquitto_sub's stdout would be block-buffered and arrive at exit.
        let mut sub = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-t",
                "t",
                "-k",
                "5",
                "-d",
            ])
            .args([
                "-u",
                "alice",
                "-P",
                "wonderland",
                "-i",
                "sub-same",
                "-W",
                "30",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(sub.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok);
        assert!(
            lines.any(|l| l.contains("received CONNACK (0)")),
            "{version}: CONNACK 0"
        );
        assert!(
            lines.any(|l| l.contains("received PINGRESP")),
            "{version}: pings answered"
        );
        let new = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-t",
                "t",
                "-m",
                "x",
            ])
            .args(["-u", "alice", "-P", "wonderland", "-i", "sub-same"])
            .status()
            .unwrap();
        assert!(new.success());
        // v5: the old connection is told why; 3.1.1: it is closed, and mosquitto_sub reconnects.
        let taken_over = if version == "mqttv5" {
            lines.any(|l| l.contains("DISCONNECT (142)"))
        } else {
            lines.any(|l| l.contains("sending CONNECT"))
        };
        assert!(taken_over, "{version}: the first connection was taken over");
        let _ = sub.kill();
        let _ = sub.wait();
    }
}
