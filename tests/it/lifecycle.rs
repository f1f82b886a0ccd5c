//! Keep-alive, timeouts, DISCONNECT both ways, shutdown, connection limits, and the client
//! record in the database.

use std::time::{Duration, Instant};

use mqttd::db::queries;
use mqttd::mqtt::{Disconnect, Packet, Properties, PropertyValues, ProtocolVersion, ReasonCode};

use crate::common::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

fn disconnect(reason: ReasonCode) -> Packet {
    Packet::Disconnect(Disconnect {
        reason,
        properties: Properties::default(),
    })
}

fn connect_with_keep_alive(client_id: &str, keep_alive: u16) -> Packet {
    let Packet::Connect(mut c) = connect(V5, client_id) else {
        unreachable!()
    };
    c.keep_alive = keep_alive;
    Packet::Connect(c)
}

#[tokio::test]
async fn mqtt_3_1_2_22_silent_client_is_disconnected_after_one_and_a_half_keep_alives() {
    let broker = start_broker();
    let mut client = Client::open(broker.addr, V5).await;
    client.send(connect_with_keep_alive("sleepy", 1)).await;
    assert!(matches!(client.recv().await, Some(Ok(Packet::ConnAck(_)))));
    let start = Instant::now();
    client
        .expect(disconnect(ReasonCode::KeepAliveTimeout))
        .await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "closed too early, after {waited:?}"
    );
    client.expect_closed().await;
}

#[tokio::test]
async fn mqtt_3_1_2_22_pings_keep_a_client_alive() {
    let broker = start_broker();
    let mut client = Client::open(broker.addr, V5).await;
    client.send(connect_with_keep_alive("pinger", 1)).await;
    assert!(matches!(client.recv().await, Some(Ok(Packet::ConnAck(_)))));
    // Four pings 0.8 s apart span 3.2 s, more than twice the 1.5 s window.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        client.send(Packet::PingReq).await;
        client.expect(Packet::PingResp).await;
    }
}

#[tokio::test]
async fn connect_timeout_closes_silent_and_half_sent_connections() {
    let broker = start_broker_with(|c| c.limits.connect_timeout = 1);
    let silent = Client::open(broker.addr, V5).await;
    let mut half = Client::open(broker.addr, V5).await;
    half.send_raw(&[0x10]).await;
    let mut declared = Client::open(broker.addr, V5).await;
    // A CONNECT declaring 268,435,455 bytes, then nothing (bad-inputs A4).
    declared.send_raw(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    assert_eq!(silent.read_to_close().await, b"");
    assert_eq!(half.read_to_close().await, b"");
    assert_eq!(declared.read_to_close().await, b"");
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn client_disconnect_closes_the_connection_and_is_recorded() {
    let broker = start_broker();
    let mut client = Client::connected(broker.addr, V5, "leaver").await;
    client.send(disconnect(ReasonCode::Success)).await;
    client.expect_closed().await;
    let record = wait_for_disconnect_record(&broker, "leaver").await;
    assert_eq!(record.protocol_version, 5);
    assert!(
        record
            .disconnect_reason
            .unwrap()
            .starts_with("client disconnect")
    );
}

#[tokio::test]
async fn section_3_14_2_2_2_session_expiry_set_on_disconnect_after_zero_is_a_protocol_error() {
    let broker = start_broker();
    let mut client = Client::connected(broker.addr, V5, "expiry").await;
    let properties = Properties::from(PropertyValues {
        session_expiry_interval: Some(60),
        ..PropertyValues::default()
    });
    client
        .send(Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties,
        }))
        .await;
    client.expect(disconnect(ReasonCode::ProtocolError)).await;
    client.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_0x8b_to_every_client_and_records_the_disconnects() {
    let mut broker = start_broker();
    let mut v5 = Client::connected(broker.addr, V5, "stay5").await;
    let mut v3 = Client::connected(broker.addr, ProtocolVersion::V311, "stay3").await;
    // Both are recorded as connected before CONNACK.
    for id in ["stay5", "stay3"] {
        let record = queries::get_client(&mut broker.db(), id).unwrap().unwrap();
        assert_eq!(record.disconnected_at_ms, None);
    }
    // Shutdown waits for the sessions, so the clients read concurrently.
    let readers = tokio::spawn(async move {
        v5.expect(disconnect(ReasonCode::ServerShuttingDown)).await;
        v5.expect_closed().await;
        // 3.1.1 has no server DISCONNECT: the connection is just closed.
        v3.expect_closed().await;
    });
    tokio::task::block_in_place(|| broker.shutdown());
    readers.await.unwrap();
    let mut db = broker.db();
    for id in ["stay5", "stay3"] {
        let record = queries::get_client(&mut db, id).unwrap().unwrap();
        assert!(
            record.disconnected_at_ms.is_some(),
            "{id} has a disconnect time"
        );
        assert_eq!(record.disconnect_reason.as_deref(), Some("server shutdown"));
    }
    let wal = broker.db_path.with_extension("db-wal");
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "the WAL was checkpointed"
    );
}

#[tokio::test]
async fn take_over_keeps_the_new_connection_recorded_as_connected() {
    let broker = start_broker();
    let mut first = Client::connected(broker.addr, V5, "dup").await;
    // Take-over completes (old connection closed and its end recorded) before the new
    // connection is recorded and gets its CONNACK.
    let _second = Client::connected(broker.addr, V5, "dup").await;
    first.expect(disconnect(ReasonCode::SessionTakenOver)).await;
    first.expect_closed().await;
    let record = queries::get_client(&mut broker.db(), "dup")
        .unwrap()
        .unwrap();
    assert_eq!(
        record.disconnected_at_ms, None,
        "the live connection is recorded as open"
    );
}

#[tokio::test]
async fn max_connections_closes_the_extra_connection_at_accept() {
    let broker = start_broker_with(|c| c.limits.max_connections = 1);
    let mut first = Client::connected(broker.addr, V5, "only").await;
    let mut extra = Client::open(broker.addr, V5).await;
    extra.send(connect(V5, "extra")).await;
    extra.expect_closed().await;
    first.send(Packet::PingReq).await;
    first.expect(Packet::PingResp).await;
    // Once the first leaves, its slot is free again.
    first.send(disconnect(ReasonCode::Success)).await;
    first.expect_closed().await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut c = Client::open(broker.addr, V5).await;
        c.send(connect(V5, "later")).await;
        if let Some(Ok(Packet::ConnAck(_))) = c.recv().await {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_database_records_who_connected_from_where() {
    let broker = start_broker();
    let client = Client::connected(broker.addr, ProtocolVersion::V311, "recorded").await;
    let local = client.framed.get_ref().local_addr().unwrap();
    let record = queries::get_client(&mut broker.db(), "recorded")
        .unwrap()
        .unwrap();
    assert_eq!(record.address, local.to_string());
    assert_eq!(record.protocol_version, 4);
    assert_eq!(record.username, None);
    assert!(record.connected_at_ms > 1_700_000_000_000);
    assert_eq!(record.disconnected_at_ms, None);
    drop(client);
    let record = wait_for_disconnect_record(&broker, "recorded").await;
    assert!(record.disconnected_at_ms.unwrap() >= record.connected_at_ms);
}

/// Polls the database until the client's disconnect is recorded (it is written after the
/// connection closed, so there is no packet to wait for).
async fn wait_for_disconnect_record(
    broker: &TestBroker,
    client_id: &str,
) -> mqttd::db::models::ClientRecord {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let record = queries::get_client(&mut broker.db(), client_id).unwrap();
        if let Some(r) = record.filter(|r| r.disconnected_at_ms.is_some()) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no disconnect recorded for {client_id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_send_timeout() {
    use mqttd::mqtt::{Publish, QoS, Subscribe, SubscriptionOptions};
    let broker = start_broker_with(|c| c.limits.send_timeout = 1);
    // A subscriber with a small receive buffer that never reads after SUBACK.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(broker.addr).await.unwrap();
    let mut stuck = Client {
        framed: tokio_util::codec::Framed::new(
            stream,
            mqttd::mqtt::MqttCodec::new(V5, 268_435_460),
        ),
    };
    stuck.send(connect(V5, "stuck")).await;
    assert!(matches!(stuck.recv().await, Some(Ok(Packet::ConnAck(_)))));
    stuck
        .send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![("flood".into(), SubscriptionOptions::default())],
        }))
        .await;
    assert!(matches!(stuck.recv().await, Some(Ok(Packet::SubAck(_)))));
    let mut publisher = Client::connected(broker.addr, V5, "flooder").await;
    let payload = bytes::Bytes::from(vec![0u8; 64 * 1024]);
    for _ in 0..200 {
        publisher
            .send(Packet::Publish(Box::new(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "flood".into(),
                packet_id: None,
                properties: Properties::default(),
                payload: payload.clone(),
            })))
            .await;
    }
    let record = wait_for_disconnect_record(&broker, "stuck").await;
    assert!(record.disconnect_reason.unwrap().contains("read nothing"));
    // The publisher was not held back.
    publisher.send(Packet::PingReq).await;
    publisher.expect(Packet::PingResp).await;
}

#[test]
fn session_threads_run_with_the_configured_time_slice() {
    let slice = Duration::from_micros(4321);
    let on_the_slice = || {
        std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .filter_map(|task| task.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&tid| mqttd::sched::slice_of(tid).ok().flatten() == Some(slice))
            .count()
    };
    if !matches!(mqttd::sched::slice_of(0), Ok(Some(_))) {
        eprintln!("skipped: this kernel does not report time slices (Linux 6.12+ does)");
        return;
    }
    assert_eq!(on_the_slice(), 0);
    let mut broker = start_broker_with(|c| c.worker_slice_us = 4321);
    // One per session Arbiter (the test broker has two), and no other thread.
    assert_eq!(on_the_slice(), 2);
    broker.shutdown();
}
