//! Persistent sessions (§4.1): Clean Start and Session Expiry, Session Present, what a session
//! keeps while its client is away, expiry (also across a restart), the Will Delay, and the
//! per-session queue limits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mqttd::mqtt::{
    Ack, ConnAck, Connect, Disconnect, Packet, Properties, PropertyValues, Publish, QoS,
    ReasonCode, Will,
};
use mqttd::stats::Counters;

use crate::common::*;
use crate::retained::{V5, V311, assert_next_is_marker, msg, publish_ok, recv_publish, subscribe};

/// A CONNECT of `version` with Clean Start and (v5) Session Expiry Interval.
fn session_connect(
    version: mqttd::mqtt::ProtocolVersion,
    client_id: &str,
    clean_start: bool,
    expiry: Option<u32>,
) -> Box<Connect> {
    let Packet::Connect(mut c) = connect(version, client_id) else {
        unreachable!()
    };
    c.clean_start = clean_start;
    c.properties.session_expiry_interval = expiry;
    c
}

/// Connects and returns the client with its (successful) CONNACK.
async fn open_session(addr: SocketAddr, connect: Box<Connect>) -> (Client, ConnAck) {
    let mut client = Client::open(addr, connect.protocol).await;
    client.send(Packet::Connect(connect)).await;
    match client.recv().await {
        Some(Ok(Packet::ConnAck(ack))) if ack.reason == ReasonCode::Success => (client, ack),
        other => panic!("expected a successful CONNACK, got {other:?}"),
    }
}

/// A v5 session with Session Expiry `expiry`; returns the client and Session Present.
async fn session(addr: SocketAddr, id: &str, clean: bool, expiry: u32) -> (Client, bool) {
    let (client, ack) = open_session(addr, session_connect(V5, id, clean, Some(expiry))).await;
    (client, ack.session_present)
}

async fn disconnect_with(mut client: Client, properties: Properties) {
    client
        .send(Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties,
        }))
        .await;
    client.expect_closed().await;
}

async fn disconnect(client: Client) {
    disconnect_with(client, Properties::default()).await;
}

fn text(publish: &Publish) -> (&str, &str) {
    (
        publish.topic.as_str(),
        std::str::from_utf8(&publish.payload).unwrap(),
    )
}

/// Waits until `counter` reaches `at_least` (the broker's own event), or fails after TIMEOUT.
async fn until(counter: &std::sync::atomic::AtomicU64, at_least: u64) {
    let deadline = Instant::now() + TIMEOUT;
    while Counters::get(counter) < at_least {
        assert!(Instant::now() < deadline, "counter stayed below {at_least}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn mqtt_3_2_2_3_a_persistent_session_resumes_with_its_subscriptions_and_queue() {
    let broker = start_broker();
    let (mut sub, present) = session(broker.addr, "keeper", true, 60).await;
    assert!(!present, "[MQTT-3.2.2-2] Clean Start 1: no session present");
    subscribe(&mut sub, "news/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;

    let mut publisher = Client::connected(broker.addr, V5, "publisher").await;
    // QoS 0 is not kept for an offline session. Sent first: the PUBACKs below then mean it
    // was routed before the session comes back (nothing acknowledges a QoS 0 message).
    publish_ok(
        &mut publisher,
        3,
        msg("news/a", "zero", QoS::AtMostOnce, false),
    )
    .await;
    for (id, payload) in [(1, "one"), (2, "two")] {
        publish_ok(
            &mut publisher,
            id,
            msg("news/a", payload, QoS::AtLeastOnce, false),
        )
        .await;
    }

    let (mut sub, present) = session(broker.addr, "keeper", false, 60).await;
    assert!(present, "[MQTT-3.2.2-3] the stored session is resumed");
    for payload in ["one", "two"] {
        let got = recv_publish(&mut sub).await;
        assert_eq!(text(&got), ("news/a", payload));
        assert!(!got.dup, "never sent before");
    }
    // The subscription is still there for live messages.
    assert_next_is_marker(&mut sub, &mut publisher, "news/marker").await;
}

#[tokio::test]
async fn mqtt_3_1_2_4_clean_start_discards_the_stored_session() {
    let broker = start_broker();
    let (mut sub, _) = session(broker.addr, "fresh", true, 60).await;
    subscribe(&mut sub, "old/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    let mut publisher = Client::connected(broker.addr, V5, "publisher").await;
    publish_ok(
        &mut publisher,
        1,
        msg("old/a", "queued", QoS::AtLeastOnce, false),
    )
    .await;

    let (mut sub, present) = session(broker.addr, "fresh", true, 60).await;
    assert!(!present, "[MQTT-3.2.2-2]");
    subscribe(&mut sub, "marker", QoS::AtMostOnce).await;
    publish_ok(
        &mut publisher,
        2,
        msg("old/a", "live", QoS::AtLeastOnce, false),
    )
    .await;
    // Neither the queued message nor the old subscription survived.
    assert_next_is_marker(&mut sub, &mut publisher, "marker").await;
}

#[tokio::test]
async fn v311_clean_session_0_keeps_the_session() {
    let broker = start_broker();
    let connect = || session_connect(V311, "v3-keeper", false, None);
    let (mut sub, ack) = open_session(broker.addr, connect()).await;
    assert!(!ack.session_present);
    subscribe(&mut sub, "v3/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    let mut publisher = Client::connected(broker.addr, V5, "publisher").await;
    publish_ok(
        &mut publisher,
        1,
        msg("v3/a", "kept", QoS::AtLeastOnce, false),
    )
    .await;
    let (mut sub, ack) = open_session(broker.addr, connect()).await;
    assert!(
        ack.session_present,
        "[MQTT-3.2.2-3] (3.1.1: [MQTT-3.2.2-2])"
    );
    assert_eq!(text(&recv_publish(&mut sub).await), ("v3/a", "kept"));
}

#[tokio::test]
async fn mqtt_4_1_0_2_a_session_is_gone_once_its_expiry_has_passed() {
    let broker = start_broker();
    let (sub, _) = session(broker.addr, "short", true, 1).await;
    let left = Instant::now();
    disconnect(sub).await;
    until(&broker.counters.sessions_expired, 1).await;
    assert!(
        left.elapsed() >= Duration::from_millis(900),
        "not before 1 s"
    );
    let (_sub, present) = session(broker.addr, "short", false, 1).await;
    assert!(!present, "[MQTT-4.1.0-2] the session expired");
}

#[tokio::test]
async fn section_3_14_2_2_2_disconnect_can_end_the_session_by_setting_expiry_0() {
    let broker = start_broker();
    let (sub, _) = session(broker.addr, "ender", true, 60).await;
    let properties = Properties::from(PropertyValues {
        session_expiry_interval: Some(0),
        ..PropertyValues::default()
    });
    disconnect_with(sub, properties).await;
    let (_sub, present) = session(broker.addr, "ender", false, 60).await;
    assert!(!present, "the session ended with its connection");
}

#[tokio::test]
async fn mqtt_3_1_4_3_take_over_of_a_persistent_session_keeps_it() {
    let broker = start_broker();
    let (mut first, _) = session(broker.addr, "twin", true, 60).await;
    subscribe(&mut first, "twin/#", QoS::AtLeastOnce).await;
    let (mut second, present) = session(broker.addr, "twin", false, 60).await;
    assert!(present, "the session moved to the new connection");
    first
        .expect(Packet::Disconnect(Disconnect {
            reason: ReasonCode::SessionTakenOver,
            ..Default::default()
        }))
        .await;
    let mut publisher = Client::connected(broker.addr, V5, "publisher").await;
    assert_next_is_marker(&mut second, &mut publisher, "twin/marker").await;
}

fn will_with_delay(delay: u32) -> Will {
    Will {
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::from(PropertyValues {
            will_delay_interval: Some(delay),
            ..PropertyValues::default()
        }),
        topic: "wills/delayed".into(),
        payload: bytes::Bytes::from_static(b"gone"),
    }
}

#[tokio::test]
async fn section_3_1_2_5_the_will_goes_out_after_its_delay() {
    let broker = start_broker();
    let mut listener = Client::connected(broker.addr, V5, "listener").await;
    subscribe(&mut listener, "wills/#", QoS::AtMostOnce).await;
    let mut connect = session_connect(V5, "mortal", true, Some(60));
    connect.will = Some(will_with_delay(1));
    let (willer, _) = open_session(broker.addr, connect).await;
    let dropped = Instant::now();
    drop(willer);
    let got = recv_publish(&mut listener).await;
    assert_eq!(text(&got), ("wills/delayed", "gone"));
    assert!(
        dropped.elapsed() >= Duration::from_millis(900),
        "§3.1.3.2.2: not before the Will Delay Interval"
    );
}

#[tokio::test]
async fn mqtt_3_1_3_9_no_will_when_the_session_resumes_within_the_delay() {
    let broker = start_broker();
    let mut listener = Client::connected(broker.addr, V5, "listener").await;
    subscribe(&mut listener, "wills/#", QoS::AtMostOnce).await;
    let mut connect = session_connect(V5, "phoenix", true, Some(60));
    connect.will = Some(will_with_delay(1));
    let (willer, _) = open_session(broker.addr, connect).await;
    drop(willer);
    let (_back, present) = session(broker.addr, "phoenix", false, 60).await;
    assert!(present);
    // Proving that nothing comes needs the delay to pass; the broker checks every second.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut publisher = Client::connected(broker.addr, V5, "publisher").await;
    assert_next_is_marker(&mut listener, &mut publisher, "wills/marker").await;
}

#[tokio::test]
async fn limits_an_offline_session_keeps_at_most_max_queued_messages() {
    let broker = start_broker_with(|c| c.limits.max_queued_messages = 3);
    let (mut sub, _) = session(broker.addr, "small", true, 60).await;
    subscribe(&mut sub, "q/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    let mut publisher = Client::connected(broker.addr, V5, "publisher").await;
    for id in 1..=5u16 {
        let payload = format!("m{id}");
        publish_ok(
            &mut publisher,
            id,
            msg("q/a", &payload, QoS::AtLeastOnce, false),
        )
        .await;
    }
    assert_eq!(Counters::get(&broker.counters.dropped_session_full), 2);
    let (mut sub, _) = session(broker.addr, "small", false, 60).await;
    for payload in ["m1", "m2", "m3"] {
        assert_eq!(
            text(&recv_publish(&mut sub).await),
            ("q/a", payload),
            "drop-new"
        );
    }
    assert_next_is_marker(&mut sub, &mut publisher, "q/marker").await;
}

#[tokio::test]
async fn mqtt_3_3_2_5_messages_that_expire_while_the_session_is_offline_are_dropped() {
    let broker = start_broker();
    let (mut sub, _) = session(broker.addr, "away", true, 60).await;
    subscribe(&mut sub, "exp/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    let mut publisher = Client::connected(broker.addr, V5, "publisher").await;
    let mut short = msg("exp/a", "short", QoS::AtLeastOnce, false);
    short.properties.message_expiry_interval = Some(1);
    publish_ok(&mut publisher, 1, short).await;
    let mut long = msg("exp/a", "long", QoS::AtLeastOnce, false);
    long.properties.message_expiry_interval = Some(600);
    publish_ok(&mut publisher, 2, long).await;
    // The expiry is wall-clock time; nothing to wait on but the clock.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (mut sub, _) = session(broker.addr, "away", false, 60).await;
    let got = recv_publish(&mut sub).await;
    assert_eq!(text(&got), ("exp/a", "long"));
    let left = got.properties.message_expiry_interval.unwrap();
    assert!(
        (598..=600).contains(&left),
        "[MQTT-3.3.2-6] the time waited is subtracted: {left}"
    );
    assert_next_is_marker(&mut sub, &mut publisher, "exp/marker").await;
}

#[tokio::test]
async fn mqtt_3_3_4_9_resumed_messages_respect_the_clients_receive_maximum() {
    let broker = start_broker();
    let (mut sub, _) = session(broker.addr, "narrow", true, 60).await;
    subscribe(&mut sub, "rm/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    let mut publisher = Client::connected(broker.addr, V5, "publisher").await;
    for id in 1..=4u16 {
        publish_ok(
            &mut publisher,
            id,
            msg("rm/a", "x", QoS::AtLeastOnce, false),
        )
        .await;
    }
    let mut connect = session_connect(V5, "narrow", false, Some(60));
    connect.properties.receive_maximum = Some(2);
    let (mut sub, _) = open_session(broker.addr, connect).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        match sub.recv().await {
            Some(Ok(Packet::Publish(p))) => ids.push(p.packet_id.unwrap()),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    // Quota used up: a PING is answered before any third PUBLISH [MQTT-3.3.4-9].
    sub.send(Packet::PingReq).await;
    sub.expect(Packet::PingResp).await;
    sub.send(Packet::PubAck(Ack {
        packet_id: ids[0],
        ..Ack::default()
    }))
    .await;
    assert!(matches!(sub.recv().await, Some(Ok(Packet::Publish(_)))));
}

#[tokio::test]
async fn sessions_survive_a_restart_and_expiry_counts_the_downtime() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("broker.db");
    let mut broker = start_broker_on(db.clone(), |_| {});
    let (mut long, _) = session(broker.addr, "long", true, 3600).await;
    subscribe(&mut long, "r/#", QoS::ExactlyOnce).await;
    disconnect(long).await;
    let (short, _) = session(broker.addr, "short", true, 1).await;
    disconnect(short).await;
    let mut publisher = Client::connected(broker.addr, V5, "publisher").await;
    publish_ok(
        &mut publisher,
        1,
        msg("r/a", "kept", QoS::ExactlyOnce, false),
    )
    .await;
    drop(publisher);
    broker.shutdown();
    // Down for longer than "short"'s expiry [MQTT-4.1.0-2]: only the clock to wait on.
    std::thread::sleep(Duration::from_millis(1100));

    let broker = start_broker_on(db, |_| {});
    let (_short, present) = session(broker.addr, "short", false, 1).await;
    assert!(!present, "expired while the broker was down");
    let (mut long, present) = session(broker.addr, "long", false, 3600).await;
    assert!(present, "[MQTT-3.2.2-3] restored from the database");
    let got = recv_publish(&mut long).await;
    assert_eq!((text(&got), got.qos), (("r/a", "kept"), QoS::ExactlyOnce));
    let mut publisher = Client::connected(broker.addr, V5, "publisher").await;
    assert_next_is_marker(&mut long, &mut publisher, "r/marker").await;
}

#[tokio::test]
async fn mqtt_3_1_3_9_a_will_due_while_the_broker_was_down_is_published_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("broker.db");
    let mut broker = start_broker_on(db.clone(), |_| {});
    let (mut listener, _) = session(broker.addr, "heir", true, 3600).await;
    subscribe(&mut listener, "wills/#", QoS::AtLeastOnce).await;
    disconnect(listener).await;
    // The session ends 1 s after its connection, before its Will Delay: the Will is due then.
    let mut connect = session_connect(V5, "short-lived", true, Some(1));
    let mut will = will_with_delay(3600);
    will.qos = QoS::AtLeastOnce;
    connect.will = Some(will);
    let (_willer, _) = open_session(broker.addr, connect).await;
    broker.shutdown();
    // Down past the session's end [MQTT-4.1.0-2]; only the clock to wait on.
    std::thread::sleep(Duration::from_millis(1100));

    let broker = start_broker_on(db, |_| {});
    let (mut listener, present) = session(broker.addr, "heir", false, 3600).await;
    assert!(present);
    assert_eq!(
        text(&recv_publish(&mut listener).await),
        ("wills/delayed", "gone")
    );
    let (_back, present) = session(broker.addr, "short-lived", false, 1).await;
    assert!(!present, "the session itself expired");
}

#[tokio::test]
async fn limits_an_offline_session_keeps_at_most_max_queued_bytes() {
    let broker = start_broker_with(|c| c.limits.max_queued_bytes = 10);
    let (mut sub, _) = session(broker.addr, "bytes", true, 60).await;
    subscribe(&mut sub, "b/#", QoS::AtLeastOnce).await;
    disconnect(sub).await;
    let mut publisher = Client::connected(broker.addr, V5, "publisher").await;
    // 6 + 6 bytes: the second still goes in (under 10 before it), the third does not.
    for (id, payload) in [(1, "first!"), (2, "second"), (3, "third!")] {
        publish_ok(
            &mut publisher,
            id,
            msg("b/a", payload, QoS::AtLeastOnce, false),
        )
        .await;
    }
    assert_eq!(Counters::get(&broker.counters.dropped_session_full), 1);
    let (mut sub, _) = session(broker.addr, "bytes", false, 60).await;
    for payload in ["first!", "second"] {
        assert_eq!(text(&recv_publish(&mut sub).await), ("b/a", payload));
    }
    assert_next_is_marker(&mut sub, &mut publisher, "b/marker").await;
}
