//! Configurable limits, each enforced with the spec's reason code (bad-inputs.md, section G).

use bytes::Bytes;
use mqttd::mqtt::{
    Ack, ConnAck, Disconnect, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
    SubAck, Subscribe, SubscriptionOptions,
};

use crate::common::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

fn publish(topic: &str, qos: QoS, packet_id: Option<u16>) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(b"x"),
    }))
}

fn subscribe(packet_id: u16, filters: &[&str], qos: QoS) -> Packet {
    let options = SubscriptionOptions {
        qos,
        ..Default::default()
    };
    Packet::Subscribe(Subscribe {
        packet_id,
        properties: Properties::default(),
        filters: filters.iter().map(|f| (f.to_string(), options)).collect(),
    })
}

fn suback(packet_id: u16, reasons: Vec<ReasonCode>) -> Packet {
    Packet::SubAck(SubAck {
        packet_id,
        properties: Properties::default(),
        reasons,
    })
}

fn disconnect(reason: ReasonCode) -> Packet {
    Packet::Disconnect(Disconnect {
        reason,
        properties: Properties::default(),
    })
}

#[tokio::test]
async fn g80_subscriptions_over_the_per_client_cap_get_0x97() {
    let broker = start_broker_with(|c| c.limits.max_subscriptions_per_client = 2);
    let mut client = Client::connected(broker.addr, V5, "many").await;
    client
        .send(subscribe(1, &["a", "b", "c"], QoS::AtMostOnce))
        .await;
    let granted = ReasonCode::Success;
    client
        .expect(suback(1, vec![granted, granted, ReasonCode::QuotaExceeded]))
        .await;
    // Replacing a subscription it holds is not a new one.
    client
        .send(subscribe(2, &["a", "d"], QoS::AtLeastOnce))
        .await;
    client
        .expect(suback(
            2,
            vec![ReasonCode::GrantedQoS1, ReasonCode::QuotaExceeded],
        ))
        .await;
}

#[tokio::test]
async fn g61_topics_over_the_level_cap_are_refused_without_recursion() {
    let broker = start_broker_with(|c| c.limits.max_topic_levels = 3);
    let mut client = Client::connected(broker.addr, V5, "levels").await;
    client
        .send(subscribe(1, &["a/b/c", "a/b/c/d"], QoS::AtMostOnce))
        .await;
    client
        .expect(suback(
            1,
            vec![ReasonCode::Success, ReasonCode::TopicFilterInvalid],
        ))
        .await;
    client.send(publish("a/b/c/d", QoS::AtMostOnce, None)).await;
    client
        .expect(disconnect(ReasonCode::TopicNameInvalid))
        .await;
    client.expect_closed().await;

    // With the default cap, 65,000 levels are refused, not matched recursively.
    let broker = start_broker();
    let deep = "/".repeat(65_000);
    let mut client = Client::connected(broker.addr, V5, "deep").await;
    client
        .send(subscribe(1, &[&format!("{deep}#")], QoS::AtMostOnce))
        .await;
    client
        .expect(suback(1, vec![ReasonCode::TopicFilterInvalid]))
        .await;
    client.send(publish(&deep, QoS::AtMostOnce, None)).await;
    client
        .expect(disconnect(ReasonCode::TopicNameInvalid))
        .await;
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b36_too_many_user_properties_get_0x95() {
    let broker = start_broker_with(|c| c.limits.max_user_properties = 2);
    let three: Vec<(String, String)> = (0..3).map(|i| (format!("k{i}"), "v".into())).collect();
    // In CONNECT: CONNACK 0x95.
    let Packet::Connect(mut c) = connect(V5, "props") else {
        unreachable!()
    };
    c.properties.user_properties = three.clone();
    let mut client = Client::open(broker.addr, V5).await;
    client.send(Packet::Connect(c)).await;
    client
        .expect(Packet::ConnAck(ConnAck {
            reason: ReasonCode::PacketTooLarge,
            ..Default::default()
        }))
        .await;
    client.expect_closed().await;
    // In PUBLISH: DISCONNECT 0x95.
    let mut client = Client::connected(broker.addr, V5, "props").await;
    let Packet::Publish(mut p) = publish("t", QoS::AtMostOnce, None) else {
        unreachable!()
    };
    p.properties.user_properties = three;
    client.send(Packet::Publish(p)).await;
    client.expect(disconnect(ReasonCode::PacketTooLarge)).await;
    client.expect_closed().await;
}

#[tokio::test]
async fn max_inflight_messages_caps_the_outbound_window_below_the_clients_receive_maximum() {
    let broker = start_broker_with(|c| c.limits.max_inflight_messages = 1);
    let mut sub = Client::connected(broker.addr, V5, "window").await;
    sub.send(subscribe(1, &["w"], QoS::AtLeastOnce)).await;
    sub.expect(suback(1, vec![ReasonCode::GrantedQoS1])).await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    for id in 1..=2 {
        publisher
            .send(publish("w", QoS::AtLeastOnce, Some(id)))
            .await;
        publisher
            .expect(Packet::PubAck(Ack {
                packet_id: id,
                reason: ReasonCode::Success,
                ..Ack::default()
            }))
            .await;
    }
    let Some(Ok(Packet::Publish(first))) = sub.recv().await else {
        panic!("PUBLISH")
    };
    // The second waits for the first's PUBACK: a PINGRESP comes first.
    sub.send(Packet::PingReq).await;
    sub.expect(Packet::PingResp).await;
    let id = first.packet_id.unwrap();
    sub.send(Packet::PubAck(Ack {
        packet_id: id,
        reason: ReasonCode::Success,
        ..Ack::default()
    }))
    .await;
    assert!(matches!(sub.recv().await, Some(Ok(Packet::Publish(_)))));
}

#[tokio::test]
async fn g102_connections_over_the_per_ip_cap_are_closed_at_accept() {
    let broker = start_broker_with(|c| c.limits.max_connections_per_ip = 1);
    let _first = Client::connected(broker.addr, V5, "first").await;
    let mut second = Client::open(broker.addr, V5).await;
    second.send(connect(V5, "second")).await;
    second.expect_closed().await;
}

#[tokio::test]
async fn g103_connections_over_the_per_ip_rate_are_closed_at_accept() {
    let broker = start_broker_with(|c| c.limits.max_connection_rate_per_ip = 2);
    // Three connections within the same second: the third is refused.
    let _a = Client::open(broker.addr, V5).await;
    let _b = Client::open(broker.addr, V5).await;
    let mut c = Client::open(broker.addr, V5).await;
    c.send(connect(V5, "third")).await;
    c.expect_closed().await;
}

#[tokio::test]
async fn g104_repeated_authentication_failures_ban_the_address() {
    let broker = start_broker_with(|c| {
        c.allow_anonymous = Some(false);
        c.limits.max_auth_failures_per_ip = 2;
    });
    mqttd::db::users::add_user(&broker.db_path.to_string_lossy(), "eve", "right").unwrap();
    for _ in 0..2 {
        let mut client = Client::open(broker.addr, V5).await;
        client
            .send(connect_with_credentials(V5, "guess", "eve", "wrong"))
            .await;
        client
            .expect(Packet::ConnAck(ConnAck {
                reason: ReasonCode::BadUserNameOrPassword,
                ..Default::default()
            }))
            .await;
        client.expect_closed().await;
    }
    // Banned: even the right password is not checked; the connection is closed at accept.
    let mut client = Client::open(broker.addr, V5).await;
    client
        .send(connect_with_credentials(V5, "guess", "eve", "right"))
        .await;
    client.expect_closed().await;
}

#[tokio::test]
async fn g105_retained_topics_over_the_cap_are_delivered_but_not_retained() {
    let broker = start_broker_with(|c| c.limits.max_retained_messages = 2);
    let mut live = Client::connected(broker.addr, V5, "live").await;
    live.send(subscribe(1, &["r/#"], QoS::AtMostOnce)).await;
    live.expect(suback(1, vec![ReasonCode::Success])).await;
    let mut publisher = Client::connected(broker.addr, V5, "retainer").await;
    for (id, topic) in [(1, "r/a"), (2, "r/b"), (3, "r/c"), (4, "r/a")] {
        let Packet::Publish(mut p) = publish(topic, QoS::AtLeastOnce, Some(id)) else {
            unreachable!()
        };
        p.retain = true;
        publisher.send(Packet::Publish(p)).await;
        publisher
            .expect(Packet::PubAck(Ack {
                packet_id: id,
                reason: ReasonCode::Success,
                ..Ack::default()
            }))
            .await;
    }
    // Live subscribers get all four, the third without RETAIN (it was not retained).
    for topic in ["r/a", "r/b", "r/c", "r/a"] {
        let Some(Ok(Packet::Publish(p))) = live.recv().await else {
            panic!("PUBLISH")
        };
        assert_eq!(p.topic, topic);
    }
    assert_eq!(
        broker
            .counters
            .retained_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // A new subscriber gets the two retained topics only.
    let mut late = Client::connected(broker.addr, V5, "late").await;
    late.send(subscribe(1, &["r/#"], QoS::AtMostOnce)).await;
    late.expect(suback(1, vec![ReasonCode::Success])).await;
    let mut topics = Vec::new();
    for _ in 0..2 {
        let Some(Ok(Packet::Publish(p))) = late.recv().await else {
            panic!("PUBLISH")
        };
        assert!(p.retain);
        topics.push(p.topic);
    }
    topics.sort();
    assert_eq!(topics, ["r/a", "r/b"]);
    late.send(Packet::PingReq).await;
    late.expect(Packet::PingResp).await;
}

#[tokio::test]
async fn c51_mqtt_3_2_2_18_any_topic_alias_is_refused_when_the_maximum_is_0() {
    let broker = start_broker_with(|c| c.limits.topic_alias_maximum = 0);
    let mut client = Client::open(broker.addr, V5).await;
    client.send(connect(V5, "noalias")).await;
    let Some(Ok(Packet::ConnAck(ack))) = client.recv().await else {
        panic!("CONNACK")
    };
    assert_eq!(ack.properties.topic_alias_maximum, Some(0));
    let Packet::Publish(mut p) = publish("t", QoS::AtMostOnce, None) else {
        unreachable!()
    };
    p.properties.topic_alias = Some(1);
    client.send(Packet::Publish(p)).await;
    client
        .expect(disconnect(ReasonCode::TopicAliasInvalid))
        .await;
    client.expect_closed().await;
}
