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
fn mosquitto_pub_available() -> bool {
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
