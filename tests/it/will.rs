//! The Will Message (§3.1.2.5, §3.1.3.2): published when the connection ends without
//! DISCONNECT 0x00, with its QoS, payload, properties and Will Retain.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttd::db::queries;
use mqttd::mqtt::{
    Disconnect, Packet, Properties, PropertyValues, ProtocolVersion, Publish, QoS, ReasonCode,
    SubscriptionOptions, Will,
};
use mqttd::stats::Counters;

use crate::common::*;
use crate::retained::{
    V5, V311, assert_next_is_marker, disconnect, msg, publish_ok, recv_publish, subscribe,
    subscribe_with,
};

fn will(topic: &str, payload: &str, qos: QoS, retain: bool) -> Will {
    Will {
        qos,
        retain,
        properties: Properties::default(),
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

fn connect_with_will(version: ProtocolVersion, client_id: &str, will: Will) -> Packet {
    let Packet::Connect(mut c) = connect(version, client_id) else {
        unreachable!()
    };
    c.will = Some(will);
    Packet::Connect(c)
}

/// Connects with a Will; panics unless the CONNACK is a success.
async fn connected_with_will(
    addr: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
    will: Will,
) -> Client {
    let mut client = Client::open(addr, version).await;
    client
        .send(connect_with_will(version, client_id, will))
        .await;
    match client.recv().await {
        Some(Ok(Packet::ConnAck(ack))) if ack.reason == ReasonCode::Success => client,
        other => panic!("expected a successful CONNACK, got {other:?}"),
    }
}

/// The message a subscriber receives for `will` at `qos`, RETAIN 0.
fn will_message(will: &Will, qos: QoS) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: will.topic.clone(),
        packet_id: None,
        properties: will.properties.clone(),
        payload: will.payload.clone(),
    }
}

/// Waits until the end of `client_id`'s connection is in the database. The session publishes
/// its Will before it asks for that record, so once it is there any Will is already queued at
/// the Registry, ahead of whatever is published after this returns.
pub(crate) async fn wait_until_disconnected(broker: &TestBroker, client_id: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let record = queries::get_client(&mut broker.db(), client_id).unwrap();
        if record.is_some_and(|r| r.disconnected_at_ms.is_some()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no disconnect recorded for {client_id}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn listener(broker: &TestBroker, filter: &str) -> Client {
    let mut client = Client::connected(broker.addr, V5, "listener").await;
    subscribe(&mut client, filter, QoS::ExactlyOnce).await;
    client
}

#[tokio::test]
async fn mqtt_3_1_2_8_will_is_published_when_the_socket_closes_without_disconnect() {
    let broker = start_broker();
    let mut listener = listener(&broker, "wills/#").await;
    let mut last_words = will("wills/w1", "", QoS::AtLeastOnce, false);
    last_words.payload = Bytes::from_static(b"\x00\xffbinary");
    last_words.properties = Properties::from(PropertyValues {
        content_type: Some("application/octet-stream".into()),
        response_topic: Some("wills/replies".into()),
        correlation_data: Some(Bytes::from_static(b"corr-1")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        message_expiry_interval: Some(30),
        ..PropertyValues::default()
    });
    let willer = connected_with_will(broker.addr, V5, "w1", last_words.clone()).await;
    drop(willer);

    let mut got = recv_publish(&mut listener).await;
    let expiry = got.properties.message_expiry_interval.take();
    assert!(expiry.is_some_and(|e| (25..=30).contains(&e)), "{expiry:?}");
    last_words.properties.message_expiry_interval = None;
    assert_eq!(got, will_message(&last_words, QoS::AtLeastOnce));
    disconnect(listener).await;
}

#[tokio::test]
async fn mqtt_3_1_2_10_no_will_after_disconnect_0x00() {
    let broker = start_broker();
    let mut listener = listener(&broker, "wills/#").await;
    let willer = connected_with_will(
        broker.addr,
        V5,
        "polite",
        will("wills/polite", "unexpected", QoS::AtLeastOnce, true),
    )
    .await;
    disconnect(willer).await;
    wait_until_disconnected(&broker, "polite").await;
    let mut marker = Client::connected(broker.addr, V5, "marker").await;
    assert_next_is_marker(&mut listener, &mut marker, "wills/marker").await;
    // Nor was it retained.
    subscribe(&mut marker, "wills/polite", QoS::AtMostOnce).await;
    assert_next_is_marker(&mut marker, &mut listener, "wills/polite").await;
    assert_eq!(
        recv_publish(&mut listener).await.payload,
        "marker",
        "its own copy"
    );
    disconnect(marker).await;
    disconnect(listener).await;
}

#[tokio::test]
async fn mqtt_3_1_2_10_v311_no_will_after_disconnect() {
    let broker = start_broker();
    let mut listener = listener(&broker, "wills/#").await;
    let willer = connected_with_will(
        broker.addr,
        V311,
        "polite3",
        will("wills/polite3", "unexpected", QoS::AtLeastOnce, false),
    )
    .await;
    disconnect(willer).await;
    wait_until_disconnected(&broker, "polite3").await;
    let mut marker = Client::connected(broker.addr, V5, "marker").await;
    assert_next_is_marker(&mut listener, &mut marker, "wills/marker").await;
    disconnect(marker).await;
    disconnect(listener).await;
}

#[tokio::test]
async fn mqtt_3_14_4_3_will_is_published_after_disconnect_0x04() {
    let broker = start_broker();
    let mut listener = listener(&broker, "wills/#").await;
    let last_words = will("wills/w4", "with will", QoS::ExactlyOnce, false);
    let mut willer = connected_with_will(broker.addr, V5, "w4", last_words.clone()).await;
    willer
        .send(Packet::Disconnect(Disconnect {
            reason: ReasonCode::DisconnectWithWillMessage,
            properties: Properties::default(),
        }))
        .await;
    willer.expect_closed().await;
    assert_eq!(
        recv_publish(&mut listener).await,
        will_message(&last_words, QoS::ExactlyOnce)
    );
    disconnect(listener).await;
}

#[tokio::test]
async fn mqtt_3_1_2_8_will_is_published_on_a_keep_alive_timeout() {
    let broker = start_broker();
    let mut listener = listener(&broker, "wills/#").await;
    let last_words = will("wills/sleepy", "timed out", QoS::AtMostOnce, false);
    let Packet::Connect(mut c) = connect_with_will(V5, "sleepy", last_words.clone()) else {
        unreachable!()
    };
    c.keep_alive = 1;
    let mut willer = Client::open(broker.addr, V5).await;
    willer.send(Packet::Connect(c)).await;
    assert!(matches!(willer.recv().await, Some(Ok(Packet::ConnAck(_)))));
    // Time is the subject: 1.5 keep-alives of silence.
    willer
        .expect(Packet::Disconnect(Disconnect {
            reason: ReasonCode::KeepAliveTimeout,
            properties: Properties::default(),
        }))
        .await;
    willer.expect_closed().await;
    assert_eq!(
        recv_publish(&mut listener).await,
        will_message(&last_words, QoS::AtMostOnce)
    );
    disconnect(listener).await;
}

#[tokio::test]
async fn mqtt_3_1_2_8_will_is_published_when_the_server_closes_for_a_protocol_error() {
    let broker = start_broker();
    let mut listener = listener(&broker, "wills/#").await;
    let last_words = will("wills/bad", "protocol error", QoS::AtLeastOnce, false);
    let mut willer = connected_with_will(broker.addr, V5, "bad", last_words.clone()).await;
    // A second CONNECT is a Protocol Error [MQTT-3.1.0-2].
    willer.send(connect(V5, "bad")).await;
    willer
        .expect(Packet::Disconnect(Disconnect {
            reason: ReasonCode::ProtocolError,
            properties: Properties::default(),
        }))
        .await;
    willer.expect_closed().await;
    assert_eq!(
        recv_publish(&mut listener).await,
        will_message(&last_words, QoS::AtLeastOnce)
    );
    disconnect(listener).await;
}

#[tokio::test]
async fn mqtt_3_1_4_3_will_of_the_old_connection_is_published_on_take_over() {
    let broker = start_broker();
    let mut listener = listener(&broker, "wills/#").await;
    let last_words = will("wills/twin", "taken over", QoS::ExactlyOnce, false);
    let mut old = connected_with_will(broker.addr, V5, "twin", last_words.clone()).await;
    let new = Client::connected(broker.addr, V5, "twin").await;
    old.expect(Packet::Disconnect(Disconnect {
        reason: ReasonCode::SessionTakenOver,
        properties: Properties::default(),
    }))
    .await;
    old.expect_closed().await;
    assert_eq!(
        recv_publish(&mut listener).await,
        will_message(&last_words, QoS::ExactlyOnce)
    );
    // The new connection has no Will: ending it cleanly publishes nothing more.
    disconnect(new).await;
    wait_until_disconnected(&broker, "twin").await;
    let mut marker = Client::connected(broker.addr, V5, "marker").await;
    assert_next_is_marker(&mut listener, &mut marker, "wills/marker").await;
    disconnect(marker).await;
    disconnect(listener).await;
}

#[tokio::test]
async fn mqtt_3_1_2_17_will_retain_stores_the_will_as_retained() {
    let broker = start_broker();
    let mut listener = Client::connected(broker.addr, V5, "listener").await;
    let rap = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        retain_as_published: true,
        ..Default::default()
    };
    assert_eq!(
        subscribe_with(&mut listener, 1, &[("wills/#", rap)]).await,
        [ReasonCode::GrantedQoS1]
    );
    let mut last_words = will("wills/kept", "offline", QoS::AtLeastOnce, true);
    last_words.properties.user_properties = vec![("state".into(), "offline".into())];
    let willer = connected_with_will(broker.addr, V5, "kept", last_words.clone()).await;
    drop(willer);
    let mut live = will_message(&last_words, QoS::AtLeastOnce);
    live.retain = true;
    assert_eq!(
        recv_publish(&mut listener).await,
        live,
        "Retain As Published"
    );
    // A later subscriber gets it as a retained message.
    let mut later = Client::connected(broker.addr, V5, "later").await;
    subscribe(&mut later, "wills/kept", QoS::AtLeastOnce).await;
    assert_eq!(recv_publish(&mut later).await, live);
    disconnect(later).await;
    disconnect(listener).await;
}

#[tokio::test]
async fn a_v311_will_reaches_v5_and_v311_subscribers() {
    let broker = start_broker();
    let mut listener5 = listener(&broker, "wills/#").await;
    let mut listener3 = Client::connected(broker.addr, V311, "listener3").await;
    subscribe(&mut listener3, "wills/+", QoS::AtLeastOnce).await;
    let willer = connected_with_will(
        broker.addr,
        V311,
        "old-timer",
        will("wills/v3", "bye", QoS::AtLeastOnce, true),
    )
    .await;
    drop(willer);
    assert_eq!(
        recv_publish(&mut listener5).await,
        msg("wills/v3", "bye", QoS::AtLeastOnce, false)
    );
    assert_eq!(
        recv_publish(&mut listener3).await,
        msg("wills/v3", "bye", QoS::AtLeastOnce, false)
    );
    let mut later = Client::connected(broker.addr, V311, "later3").await;
    subscribe(&mut later, "wills/v3", QoS::AtLeastOnce).await;
    assert_eq!(
        recv_publish(&mut later).await,
        msg("wills/v3", "bye", QoS::AtLeastOnce, true)
    );
    for c in [listener5, listener3, later] {
        disconnect(c).await;
    }
}

#[tokio::test]
async fn a_retained_will_is_stored_in_the_database_and_survives_a_restart() {
    let mut first = start_broker();
    let mut last_words = will("wills/durable", "offline", QoS::AtLeastOnce, true);
    last_words.properties.content_type = Some("text/plain".into());
    let willer = connected_with_will(first.addr, V5, "durable", last_words.clone()).await;
    drop(willer);
    // The Will is stored without anyone waiting for it: poll the database.
    let deadline = Instant::now() + TIMEOUT;
    while !queries::load_retained(&mut first.db(), 0)
        .unwrap()
        .iter()
        .any(|m| &*m.topic == "wills/durable")
    {
        assert!(
            Instant::now() < deadline,
            "the retained Will was never stored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.shutdown();

    let second = start_broker_on(first.db_path.clone(), |_| {});
    let mut subscriber = Client::connected(second.addr, V5, "sub").await;
    subscribe(&mut subscriber, "wills/durable", QoS::AtLeastOnce).await;
    let mut expected = will_message(&last_words, QoS::AtLeastOnce);
    expected.retain = true;
    assert_eq!(recv_publish(&mut subscriber).await, expected);
    disconnect(subscriber).await;
}

/// A client that stopped reading: the broker cannot flush anything more to it, so closing its
/// connection takes until the flush gives up. Returns once the broker is dropping messages for
/// it (its delivery queue is full), which proves that its socket is stalled.
async fn stall(broker: &TestBroker, client: &mut Client) {
    subscribe(client, "flood", QoS::AtMostOnce).await;
    let mut publisher = Client::connected(broker.addr, V5, "flooder").await;
    let payload = "x".repeat(64 * 1024);
    let deadline = Instant::now() + TIMEOUT;
    while Counters::get(&broker.counters.dropped_qos0) == 0 {
        assert!(
            Instant::now() < deadline,
            "the client's socket never filled up"
        );
        let flood = msg("flood", &payload, QoS::AtMostOnce, false);
        publish_ok(&mut publisher, 0, flood).await;
        // Once the PINGRESP is back, the broker has routed the message.
        publisher.send(Packet::PingReq).await;
        publisher.expect(Packet::PingResp).await;
    }
    disconnect(publisher).await;
}

/// Birth and death messages: a device's Will sets its retained status to "offline", and on
/// connecting it publishes "online". When a new connection takes over, the old connection's
/// Will belongs before anything the new connection publishes, or the device is shown offline
/// while it is connected.
#[tokio::test]
async fn mqtt_3_1_4_3_on_take_over_the_old_will_is_published_before_the_new_connection_publishes() {
    let broker = start_broker_with(|c| c.limits.max_queued_messages = 10);
    let mut listener = listener(&broker, "status/#").await;
    let death = will("status/dev", "offline", QoS::AtLeastOnce, true);
    let mut old = connected_with_will(broker.addr, V5, "dev", death).await;
    stall(&broker, &mut old).await;

    let mut new = Client::connected(broker.addr, V5, "dev").await;
    let birth = msg("status/dev", "online", QoS::AtLeastOnce, true);
    publish_ok(&mut new, 1, birth).await;
    let first = recv_publish(&mut listener).await;
    let second = recv_publish(&mut listener).await;
    let order = [first, second].map(|p| String::from_utf8_lossy(&p.payload).into_owned());
    assert_eq!(
        order,
        ["offline", "online"],
        "the old connection's Will came after the new connection's first message"
    );
    let mut later = Client::connected(broker.addr, V5, "later").await;
    subscribe(&mut later, "status/dev", QoS::AtLeastOnce).await;
    assert_eq!(
        recv_publish(&mut later).await,
        msg("status/dev", "online", QoS::AtLeastOnce, true),
        "the device is connected, so its retained status is online"
    );
    drop(old);
    for c in [later, new, listener] {
        disconnect(c).await;
    }
}
