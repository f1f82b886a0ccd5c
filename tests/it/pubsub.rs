//! Publish/subscribe through the broker: routing, QoS flows, flow control and MQTT 5 delivery
//! features (§3.3-§3.11, §4.3-§4.8).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use mqttd::mqtt::{
    Ack, Disconnect, Packet, Properties, PropertyValues, ProtocolVersion, Publish, QoS, ReasonCode,
    SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};

use crate::common::*;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

fn publish(topic: &str, qos: QoS, packet_id: Option<u16>, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    }
}

fn ack(packet_id: u16, reason: ReasonCode) -> Ack {
    Ack {
        packet_id,
        reason,
        properties: Properties::default(),
    }
}

fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..Default::default()
    }
}

/// Subscribes and checks the SUBACK grants every filter its requested QoS.
async fn subscribe(client: &mut Client, packet_id: u16, filters: &[(&str, SubscriptionOptions)]) {
    subscribe_with(client, packet_id, filters, Properties::default()).await;
}

async fn subscribe_with(
    client: &mut Client,
    packet_id: u16,
    filters: &[(&str, SubscriptionOptions)],
    properties: Properties,
) {
    client
        .send(Packet::Subscribe(Subscribe {
            packet_id,
            properties,
            filters: filters.iter().map(|(f, o)| (f.to_string(), *o)).collect(),
        }))
        .await;
    let granted = filters
        .iter()
        .map(|(_, o)| match o.qos {
            QoS::AtMostOnce => ReasonCode::Success,
            QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
            QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
        })
        .collect();
    client
        .expect(Packet::SubAck(SubAck {
            packet_id,
            properties: Properties::default(),
            reasons: granted,
        }))
        .await;
}

/// Unsubscribes and checks the UNSUBACK gives each filter its expected reason.
async fn unsubscribe(client: &mut Client, packet_id: u16, filters: &[(&str, ReasonCode)]) {
    client
        .send(Packet::Unsubscribe(Unsubscribe {
            packet_id,
            properties: Properties::default(),
            filters: filters.iter().map(|(f, _)| f.to_string()).collect(),
        }))
        .await;
    client
        .expect(Packet::UnsubAck(UnsubAck {
            packet_id,
            properties: Properties::default(),
            reasons: filters.iter().map(|(_, r)| *r).collect(),
        }))
        .await;
}

/// The next PUBLISH the client receives.
async fn next_publish(client: &mut Client) -> Publish {
    match client.recv().await {
        Some(Ok(Packet::Publish(p))) => *p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Publishes at QoS 1 and waits for the PUBACK, so the message has been routed.
async fn publish_qos1(client: &mut Client, topic: &str, packet_id: u16, payload: &'static [u8]) {
    client
        .send(Packet::Publish(Box::new(publish(
            topic,
            QoS::AtLeastOnce,
            Some(packet_id),
            payload,
        ))))
        .await;
    client
        .expect(Packet::PubAck(ack(packet_id, ReasonCode::Success)))
        .await;
}

#[tokio::test]
async fn qos_0_1_2_are_delivered_at_min_of_published_and_granted_qos() {
    let broker = start_broker();
    let mut sub = Client::connected(broker.addr, V5, "sub").await;
    subscribe(
        &mut sub,
        1,
        &[
            ("q/0", options(QoS::AtMostOnce)),
            ("q/1", options(QoS::AtLeastOnce)),
            ("q/2", options(QoS::ExactlyOnce)),
        ],
    )
    .await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    // QoS 2 to each topic: delivered at 0, 1 and 2 [MQTT-3.8.4-6].
    for (i, topic) in ["q/0", "q/1", "q/2"].iter().enumerate() {
        let id = i as u16 + 1;
        publisher
            .send(Packet::Publish(Box::new(publish(
                topic,
                QoS::ExactlyOnce,
                Some(id),
                b"x",
            ))))
            .await;
        publisher
            .expect(Packet::PubRec(ack(id, ReasonCode::Success)))
            .await;
        publisher
            .send(Packet::PubRel(ack(id, ReasonCode::Success)))
            .await;
        publisher
            .expect(Packet::PubComp(ack(id, ReasonCode::Success)))
            .await;
    }
    let p = next_publish(&mut sub).await;
    assert_eq!(
        (p.topic.as_str(), p.qos, p.packet_id),
        ("q/0", QoS::AtMostOnce, None)
    );
    let p = next_publish(&mut sub).await;
    assert_eq!((p.topic.as_str(), p.qos), ("q/1", QoS::AtLeastOnce));
    let id1 = p.packet_id.unwrap();
    sub.send(Packet::PubAck(ack(id1, ReasonCode::Success)))
        .await;
    let p = next_publish(&mut sub).await;
    assert_eq!(
        (p.topic.as_str(), p.qos, p.dup),
        ("q/2", QoS::ExactlyOnce, false)
    );
    let id2 = p.packet_id.unwrap();
    // The QoS 2 exchange towards the subscriber: PUBREC -> PUBREL -> PUBCOMP.
    sub.send(Packet::PubRec(ack(id2, ReasonCode::Success)))
        .await;
    sub.expect(Packet::PubRel(ack(id2, ReasonCode::Success)))
        .await;
    sub.send(Packet::PubComp(ack(id2, ReasonCode::Success)))
        .await;
    // QoS 0 published to a QoS 2 subscription arrives at QoS 0.
    publisher
        .send(Packet::Publish(Box::new(publish(
            "q/2",
            QoS::AtMostOnce,
            None,
            b"y",
        ))))
        .await;
    let p = next_publish(&mut sub).await;
    assert_eq!((p.qos, &p.payload[..]), (QoS::AtMostOnce, &b"y"[..]));
}

#[tokio::test]
async fn v5_and_v311_clients_exchange_messages() {
    let broker = start_broker();
    let mut v3 = Client::connected(broker.addr, V311, "v3").await;
    let mut v5 = Client::connected(broker.addr, V5, "v5").await;
    subscribe(&mut v3, 1, &[("to/v3", options(QoS::AtLeastOnce))]).await;
    subscribe(&mut v5, 1, &[("to/v5", options(QoS::ExactlyOnce))]).await;
    let mut with_props = publish("to/v3", QoS::AtLeastOnce, Some(5), b"hello v3");
    with_props.properties.user_properties = vec![("k".into(), "v".into())];
    v5.send(Packet::Publish(Box::new(with_props))).await;
    v5.expect(Packet::PubAck(ack(5, ReasonCode::Success))).await;
    let p = next_publish(&mut v3).await;
    assert_eq!(
        (&p.payload[..], p.qos),
        (&b"hello v3"[..], QoS::AtLeastOnce)
    );
    assert!(p.properties.is_empty(), "3.1.1 has no properties");
    v3.send(Packet::PubAck(ack(
        p.packet_id.unwrap(),
        ReasonCode::Success,
    )))
    .await;
    v3.send(Packet::Publish(Box::new(publish(
        "to/v5",
        QoS::ExactlyOnce,
        Some(7),
        b"hello v5",
    ))))
    .await;
    v3.expect(Packet::PubRec(ack(7, ReasonCode::Success))).await;
    v3.send(Packet::PubRel(ack(7, ReasonCode::Success))).await;
    v3.expect(Packet::PubComp(ack(7, ReasonCode::Success)))
        .await;
    let p = next_publish(&mut v5).await;
    assert_eq!(
        (&p.payload[..], p.qos),
        (&b"hello v5"[..], QoS::ExactlyOnce)
    );
}

#[tokio::test]
async fn mqtt_4_7_wildcards_and_dollar_topics() {
    let broker = start_broker();
    let mut sub = Client::connected(broker.addr, V5, "wild").await;
    subscribe(
        &mut sub,
        1,
        &[
            ("sport/+/player1", options(QoS::AtMostOnce)),
            ("#", options(QoS::AtMostOnce)),
            ("$SYS/+", options(QoS::AtMostOnce)),
        ],
    )
    .await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    // "$x/y" is matched by no wildcard-first filter [MQTT-4.7.2-1]; "$SYS/+" is not wildcard-first
    // but the broker refuses client writes to $SYS, so only the last two arrive.
    for topic in ["$x/y", "$SYS/z", "sport/tennis/player1", "marker"] {
        publisher
            .send(Packet::Publish(Box::new(publish(
                topic,
                QoS::AtMostOnce,
                None,
                b"m",
            ))))
            .await;
    }
    let p = next_publish(&mut sub).await;
    assert_eq!(
        p.topic, "sport/tennis/player1",
        "one delivery for two matching filters"
    );
    assert_eq!(next_publish(&mut sub).await.topic, "marker");
}

#[tokio::test]
async fn mqtt_3_3_4_3_overlapping_subscriptions_give_one_delivery_with_every_identifier() {
    let broker = start_broker();
    let mut sub = Client::connected(broker.addr, V5, "overlap").await;
    let with_id = |id| {
        Properties::from(PropertyValues {
            subscription_identifiers: vec![id],
            ..PropertyValues::default()
        })
    };
    subscribe_with(
        &mut sub,
        1,
        &[("a/+", options(QoS::AtMostOnce))],
        with_id(11),
    )
    .await;
    subscribe_with(
        &mut sub,
        2,
        &[("a/#", options(QoS::AtLeastOnce))],
        with_id(22),
    )
    .await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    publish_qos1(&mut publisher, "a/b", 1, b"once").await;
    let p = next_publish(&mut sub).await;
    assert_eq!(
        p.qos,
        QoS::AtLeastOnce,
        "the highest granted QoS [MQTT-3.3.4-2]"
    );
    let mut ids = p.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(
        ids,
        vec![11, 22],
        "[MQTT-3.3.4-3] every matching identifier"
    );
    sub.send(Packet::PubAck(ack(
        p.packet_id.unwrap(),
        ReasonCode::Success,
    )))
    .await;
    publisher
        .send(Packet::Publish(Box::new(publish(
            "marker",
            QoS::AtMostOnce,
            None,
            b"",
        ))))
        .await;
    subscribe(&mut sub, 3, &[("marker", options(QoS::AtMostOnce))]).await;
    publisher
        .send(Packet::Publish(Box::new(publish(
            "marker",
            QoS::AtMostOnce,
            None,
            b"",
        ))))
        .await;
    assert_eq!(
        next_publish(&mut sub).await.topic,
        "marker",
        "no second copy of a/b"
    );
}

#[tokio::test]
async fn mqtt_3_8_4_3_resubscribing_replaces_and_unsubscribe_stops_delivery() {
    let broker = start_broker();
    let mut sub = Client::connected(broker.addr, V5, "resub").await;
    subscribe(&mut sub, 1, &[("t", options(QoS::AtLeastOnce))]).await;
    subscribe(
        &mut sub,
        2,
        &[
            ("t", options(QoS::AtMostOnce)),
            ("end", options(QoS::AtMostOnce)),
        ],
    )
    .await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    publish_qos1(&mut publisher, "t", 1, b"one").await;
    let p = next_publish(&mut sub).await;
    assert_eq!(
        p.qos,
        QoS::AtMostOnce,
        "the second SUBSCRIBE replaced the first"
    );
    publish_qos1(&mut publisher, "end", 2, b"").await;
    assert_eq!(
        next_publish(&mut sub).await.topic,
        "end",
        "and did not add a copy"
    );
    unsubscribe(
        &mut sub,
        3,
        &[
            ("t", ReasonCode::Success),
            ("never", ReasonCode::NoSubscriptionExisted),
        ],
    )
    .await;
    publish_qos1(&mut publisher, "t", 4, b"gone").await;
    publish_qos1(&mut publisher, "end", 5, b"").await;
    assert_eq!(next_publish(&mut sub).await.topic, "end");
}

/// A session keeps the routes of the last topic it published to (`registry::router`); every
/// change to the subscriptions makes them stale, so the publisher's next message on the same
/// topic follows the change.
#[tokio::test]
async fn a_publishers_next_message_follows_subscriptions_changed_since_its_last_one() {
    let broker = start_broker();
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    let mut first = Client::connected(broker.addr, V5, "first").await;
    subscribe(
        &mut first,
        1,
        &[
            ("t", options(QoS::AtMostOnce)),
            ("end", options(QoS::AtMostOnce)),
        ],
    )
    .await;
    publish_qos1(&mut publisher, "t", 1, b"one").await;
    assert_eq!(&next_publish(&mut first).await.payload[..], b"one");

    let mut second = Client::connected(broker.addr, V5, "second").await;
    subscribe(&mut second, 1, &[("t", options(QoS::AtMostOnce))]).await;
    publish_qos1(&mut publisher, "t", 2, b"two").await;
    assert_eq!(&next_publish(&mut first).await.payload[..], b"two");
    assert_eq!(
        &next_publish(&mut second).await.payload[..],
        b"two",
        "a new subscriber gets the next message"
    );

    unsubscribe(&mut first, 2, &[("t", ReasonCode::Success)]).await;
    publish_qos1(&mut publisher, "t", 3, b"three").await;
    publish_qos1(&mut publisher, "end", 4, b"").await;
    assert_eq!(&next_publish(&mut second).await.payload[..], b"three");
    assert_eq!(
        next_publish(&mut first).await.topic,
        "end",
        "an unsubscribed client gets nothing more on the topic"
    );
}

#[tokio::test]
async fn mqtt_3_8_3_3_no_local_and_3_3_1_12_retain_as_published() {
    let broker = start_broker();
    let mut me = Client::connected(broker.addr, V5, "me").await;
    let no_local = SubscriptionOptions {
        no_local: true,
        ..options(QoS::AtMostOnce)
    };
    let rap = SubscriptionOptions {
        retain_as_published: true,
        ..options(QoS::AtMostOnce)
    };
    subscribe(
        &mut me,
        1,
        &[
            ("mine", no_local),
            ("rap", rap),
            ("norap", options(QoS::AtMostOnce)),
        ],
    )
    .await;
    me.send(Packet::Publish(Box::new(publish(
        "mine",
        QoS::AtMostOnce,
        None,
        b"echo",
    ))))
    .await;
    let mut retained = publish("rap", QoS::AtMostOnce, None, b"r");
    retained.retain = true;
    let mut retained2 = retained.clone();
    retained2.topic = "norap".into();
    me.send(Packet::Publish(Box::new(retained))).await;
    me.send(Packet::Publish(Box::new(retained2))).await;
    let p = next_publish(&mut me).await;
    assert_eq!(
        (p.topic.as_str(), p.retain),
        ("rap", true),
        "no echo of 'mine'; RETAIN kept"
    );
    let p = next_publish(&mut me).await;
    assert_eq!(
        (p.topic.as_str(), p.retain),
        ("norap", false),
        "[MQTT-3.3.1-12]"
    );
}

#[tokio::test]
async fn mqtt_3_3_2_17_properties_are_forwarded_unchanged_and_in_order() {
    let broker = start_broker();
    let mut sub = Client::connected(broker.addr, V5, "props").await;
    subscribe(&mut sub, 1, &[("p", options(QoS::AtMostOnce))]).await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    let mut p = publish("p", QoS::AtMostOnce, None, b"{}");
    p.properties = Properties::from(PropertyValues {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("replies/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        ..PropertyValues::default()
    });
    let sent = p.properties.clone();
    publisher.send(Packet::Publish(Box::new(p))).await;
    let got = next_publish(&mut sub).await;
    assert_eq!(got.properties, sent);
}

#[tokio::test]
async fn mqtt_3_3_2_6_message_expiry_is_reduced_by_the_time_in_the_broker() {
    let broker = start_broker();
    let mut sub = Client::connected(broker.addr, V5, "exp").await;
    subscribe(&mut sub, 1, &[("e", options(QoS::AtMostOnce))]).await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    let mut p = publish("e", QoS::AtMostOnce, None, b"x");
    p.properties.message_expiry_interval = Some(30);
    publisher.send(Packet::Publish(Box::new(p))).await;
    let got = next_publish(&mut sub).await;
    let left = got
        .properties
        .message_expiry_interval
        .expect("expiry forwarded");
    assert!((29..=30).contains(&left), "{left}");
}

#[tokio::test]
async fn topic_alias_from_the_client_sets_and_uses_aliases() {
    let broker = start_broker();
    let mut sub = Client::connected(broker.addr, V5, "sub").await;
    subscribe(
        &mut sub,
        1,
        &[("long/topic/name", options(QoS::AtMostOnce))],
    )
    .await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    let mut first = publish("long/topic/name", QoS::AtMostOnce, None, b"1");
    first.properties.topic_alias = Some(3);
    let mut second = publish("", QoS::AtMostOnce, None, b"2");
    second.properties.topic_alias = Some(3);
    publisher.send(Packet::Publish(Box::new(first))).await;
    publisher.send(Packet::Publish(Box::new(second))).await;
    for payload in [b"1", b"2"] {
        let p = next_publish(&mut sub).await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            ("long/topic/name", &payload[..])
        );
        assert_eq!(
            p.properties.topic_alias, None,
            "this subscriber allows no aliases"
        );
    }
}

#[tokio::test]
async fn topic_alias_towards_a_client_that_allows_them() {
    let broker = start_broker();
    let Packet::Connect(mut c) = connect(V5, "aliased") else {
        unreachable!()
    };
    c.properties.topic_alias_maximum = Some(1);
    let mut sub = Client::open(broker.addr, V5).await;
    sub.send(Packet::Connect(c)).await;
    assert!(matches!(sub.recv().await, Some(Ok(Packet::ConnAck(_)))));
    subscribe(
        &mut sub,
        1,
        &[
            ("a", options(QoS::AtMostOnce)),
            ("b", options(QoS::AtMostOnce)),
        ],
    )
    .await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    for topic in ["a", "a", "b"] {
        publisher
            .send(Packet::Publish(Box::new(publish(
                topic,
                QoS::AtMostOnce,
                None,
                b"x",
            ))))
            .await;
    }
    let p = next_publish(&mut sub).await;
    assert_eq!(
        (p.topic.as_str(), p.properties.topic_alias),
        ("a", Some(1)),
        "alias set"
    );
    let p = next_publish(&mut sub).await;
    assert_eq!(
        (p.topic.as_str(), p.properties.topic_alias),
        ("", Some(1)),
        "alias used"
    );
    let p = next_publish(&mut sub).await;
    assert_eq!(
        (p.topic.as_str(), p.properties.topic_alias),
        ("b", None),
        "maximum reached"
    );
}

#[tokio::test]
async fn mqtt_3_1_2_25_messages_over_the_clients_maximum_packet_size_are_dropped_for_it() {
    let broker = start_broker();
    let Packet::Connect(mut c) = connect(V5, "small") else {
        unreachable!()
    };
    c.properties.maximum_packet_size = Some(64);
    let mut small = Client::open(broker.addr, V5).await;
    small.send(Packet::Connect(c)).await;
    assert!(matches!(small.recv().await, Some(Ok(Packet::ConnAck(_)))));
    subscribe(&mut small, 1, &[("big", options(QoS::AtLeastOnce))]).await;
    let mut large = Client::connected(broker.addr, V5, "large").await;
    subscribe(&mut large, 1, &[("big", options(QoS::AtMostOnce))]).await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    publish_qos1(&mut publisher, "big", 1, &[b'x'; 100]).await;
    publish_qos1(&mut publisher, "big", 2, b"small").await;
    assert_eq!(
        next_publish(&mut large).await.payload.len(),
        100,
        "others still get it"
    );
    let p = next_publish(&mut small).await;
    assert_eq!(&p.payload[..], b"small", "the large one was skipped");
    assert_eq!(broker.counters.dropped_too_large.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn mqtt_3_3_4_9_never_more_unacknowledged_than_the_clients_receive_maximum() {
    let broker = start_broker();
    let Packet::Connect(mut c) = connect(V5, "slow") else {
        unreachable!()
    };
    c.properties.receive_maximum = Some(2);
    let mut sub = Client::open(broker.addr, V5).await;
    sub.send(Packet::Connect(c)).await;
    assert!(matches!(sub.recv().await, Some(Ok(Packet::ConnAck(_)))));
    subscribe(&mut sub, 1, &[("flow", options(QoS::AtLeastOnce))]).await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    for id in 1..=5 {
        publish_qos1(&mut publisher, "flow", id, b"m").await;
    }
    let first = next_publish(&mut sub).await;
    let second = next_publish(&mut sub).await;
    // A third PUBLISH must wait for an acknowledgement; a PINGREQ is still answered.
    sub.send(Packet::PingReq).await;
    sub.expect(Packet::PingResp).await;
    sub.send(Packet::PubAck(ack(
        first.packet_id.unwrap(),
        ReasonCode::Success,
    )))
    .await;
    let third = next_publish(&mut sub).await;
    sub.send(Packet::PubAck(ack(
        second.packet_id.unwrap(),
        ReasonCode::Success,
    )))
    .await;
    sub.send(Packet::PubAck(ack(
        third.packet_id.unwrap(),
        ReasonCode::Success,
    )))
    .await;
    for _ in 0..2 {
        let p = next_publish(&mut sub).await;
        sub.send(Packet::PubAck(ack(
            p.packet_id.unwrap(),
            ReasonCode::Success,
        )))
        .await;
    }
}

#[tokio::test]
async fn a_full_subscriber_queue_drops_new_messages_and_counts_them() {
    let broker = start_broker_with(|c| c.limits.max_queued_messages = 5);
    let Packet::Connect(mut c) = connect(V5, "stuck") else {
        unreachable!()
    };
    c.properties.receive_maximum = Some(1);
    let mut sub = Client::open(broker.addr, V5).await;
    sub.send(Packet::Connect(c)).await;
    assert!(matches!(sub.recv().await, Some(Ok(Packet::ConnAck(_)))));
    subscribe(&mut sub, 1, &[("q", options(QoS::AtLeastOnce))]).await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    for id in 1..=40 {
        publish_qos1(&mut publisher, "q", id, b"m").await;
    }
    // The Registry handles a session's messages in order: once this SUBSCRIBE is answered,
    // every PUBLISH before it has been routed and the counter is final.
    subscribe(&mut publisher, 99, &[("sync", options(QoS::AtMostOnce))]).await;
    // One message in flight, at most one pump batch pending, five queued and five in the
    // Registry's backlog: the rest dropped once the subscriber was found stuck.
    let dropped = broker.counters.dropped_queue_full.load(Ordering::Relaxed);
    assert!(dropped >= 40 - 1 - 16 - 5 - 5, "dropped {dropped}");
    // The subscriber is not harmed: it gets what was kept, in order.
    let mut received = 0;
    let mut last = Vec::new();
    while received < 40 - dropped {
        let p = next_publish(&mut sub).await;
        sub.send(Packet::PubAck(ack(
            p.packet_id.unwrap(),
            ReasonCode::Success,
        )))
        .await;
        last = p.payload.to_vec();
        received += 1;
    }
    assert_eq!(last, b"m");
}

#[tokio::test]
async fn mqtt_4_3_3_10_a_resent_qos2_publish_is_delivered_once() {
    let broker = start_broker();
    let mut sub = Client::connected(broker.addr, V5, "once").await;
    subscribe(&mut sub, 1, &[("x", options(QoS::AtMostOnce))]).await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    let first = publish("x", QoS::ExactlyOnce, Some(9), b"1");
    let mut again = first.clone();
    again.dup = true;
    publisher.send(Packet::Publish(Box::new(first))).await;
    publisher
        .expect(Packet::PubRec(ack(9, ReasonCode::Success)))
        .await;
    publisher.send(Packet::Publish(Box::new(again))).await;
    publisher
        .expect(Packet::PubRec(ack(9, ReasonCode::Success)))
        .await;
    publisher
        .send(Packet::PubRel(ack(9, ReasonCode::Success)))
        .await;
    publisher
        .expect(Packet::PubComp(ack(9, ReasonCode::Success)))
        .await;
    // [MQTT-4.3.3-11]: PUBREL for an id no longer known gets 0x92.
    publisher
        .send(Packet::PubRel(ack(9, ReasonCode::Success)))
        .await;
    publisher
        .expect(Packet::PubComp(ack(
            9,
            ReasonCode::PacketIdentifierNotFound,
        )))
        .await;
    publisher
        .send(Packet::Publish(Box::new(publish(
            "x",
            QoS::AtMostOnce,
            None,
            b"end",
        ))))
        .await;
    let p = next_publish(&mut sub).await;
    assert_eq!(
        (&p.payload[..], p.dup),
        (&b"1"[..], false),
        "[MQTT-3.3.1-3] DUP not forwarded"
    );
    assert_eq!(
        &next_publish(&mut sub).await.payload[..],
        b"end",
        "delivered once"
    );
}

#[tokio::test]
async fn more_qos2_awaiting_pubrel_than_receive_maximum_gets_0x93() {
    let broker = start_broker_with(|c| c.limits.receive_maximum = 2);
    let mut client = Client::connected(broker.addr, V5, "flood").await;
    for id in 1..=2 {
        client
            .send(Packet::Publish(Box::new(publish(
                "f",
                QoS::ExactlyOnce,
                Some(id),
                b"",
            ))))
            .await;
        client
            .expect(Packet::PubRec(ack(id, ReasonCode::Success)))
            .await;
    }
    client
        .send(Packet::Publish(Box::new(publish(
            "f",
            QoS::ExactlyOnce,
            Some(3),
            b"",
        ))))
        .await;
    client
        .expect(Packet::Disconnect(Disconnect {
            reason: ReasonCode::ReceiveMaximumExceeded,
            properties: Properties::default(),
        }))
        .await;
    client.expect_closed().await;
}

#[tokio::test]
async fn subscribe_reason_codes_per_filter_in_order() {
    let broker = start_broker();
    let mut client = Client::connected(broker.addr, V5, "codes").await;
    let filters = ["a/b", "a/#/b", "$share/g/a", "sport+"];
    client
        .send(Packet::Subscribe(Subscribe {
            packet_id: 5,
            properties: Properties::default(),
            filters: filters
                .iter()
                .map(|f| (f.to_string(), options(QoS::AtLeastOnce)))
                .collect(),
        }))
        .await;
    client
        .expect(Packet::SubAck(SubAck {
            packet_id: 5,
            properties: Properties::default(),
            reasons: vec![
                ReasonCode::GrantedQoS1,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::GrantedQoS1,
                ReasonCode::TopicFilterInvalid,
            ],
        }))
        .await;
}

#[tokio::test]
async fn mqtt_3_8_3_4_no_local_on_a_shared_subscription_is_a_protocol_error() {
    let broker = start_broker();
    let mut client = Client::connected(broker.addr, V5, "nl").await;
    let no_local = SubscriptionOptions {
        no_local: true,
        ..options(QoS::AtMostOnce)
    };
    client
        .send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![("$share/g/t".into(), no_local)],
        }))
        .await;
    client
        .expect(Packet::Disconnect(Disconnect {
            reason: ReasonCode::ProtocolError,
            properties: Properties::default(),
        }))
        .await;
}

#[tokio::test]
async fn shared_subscriptions_send_each_message_to_one_member_in_turn() {
    let broker = start_broker();
    let mut a = Client::connected(broker.addr, V5, "member-a").await;
    let mut b = Client::connected(broker.addr, V5, "member-b").await;
    subscribe(
        &mut a,
        1,
        &[("$share/workers/jobs", options(QoS::AtLeastOnce))],
    )
    .await;
    subscribe(
        &mut b,
        1,
        &[("$share/workers/jobs", options(QoS::AtLeastOnce))],
    )
    .await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    let payloads: [&'static [u8]; 4] = [b"1", b"2", b"3", b"4"];
    for (i, payload) in payloads.iter().enumerate() {
        publish_qos1(&mut publisher, "jobs", i as u16 + 1, payload).await;
    }
    let mut got = Vec::new();
    for client in [&mut a, &mut b] {
        for _ in 0..2 {
            let p = next_publish(client).await;
            client
                .send(Packet::PubAck(ack(
                    p.packet_id.unwrap(),
                    ReasonCode::Success,
                )))
                .await;
            got.push(p.payload.to_vec());
        }
    }
    got.sort();
    assert_eq!(got, payloads.iter().map(|p| p.to_vec()).collect::<Vec<_>>());
}

/// A burst through several subscribers at QoS 1 and 2 arrives complete, in order, without
/// duplicates [MQTT-4.6.0-5].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_6_0_5_a_burst_arrives_complete_in_order_without_duplicates() {
    const N: u32 = 500;
    let broker = start_broker();
    let mut readers = Vec::new();
    for (i, qos) in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let mut sub = Client::connected(
            broker.addr,
            if i == 0 { V311 } else { V5 },
            &format!("burst-{i}"),
        )
        .await;
        subscribe(&mut sub, 1, &[("burst/#", options(qos))]).await;
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < N as usize {
                // The broker may send the next PUBLISH before the PUBREL of the last one.
                match sub.recv().await {
                    Some(Ok(Packet::Publish(p))) => {
                        assert_eq!(p.qos, qos);
                        let id = p.packet_id.unwrap();
                        let reply = ack(id, ReasonCode::Success);
                        sub.send(if qos == QoS::AtLeastOnce {
                            Packet::PubAck(reply)
                        } else {
                            Packet::PubRec(reply)
                        })
                        .await;
                        seen.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
                    }
                    Some(Ok(Packet::PubRel(rel))) => {
                        sub.send(Packet::PubComp(ack(rel.packet_id, ReasonCode::Success)))
                            .await;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            seen
        }));
    }
    let mut publisher = Client::connected(broker.addr, V5, "burster").await;
    // Each QoS 2 exchange completes before the next message, so the order is the publisher's.
    for seq in 0..N {
        let id = (seq % 60_000) as u16 + 1;
        let mut p = publish("burst/seq", QoS::ExactlyOnce, Some(id), b"");
        p.payload = Bytes::copy_from_slice(&seq.to_be_bytes());
        publisher.send(Packet::Publish(Box::new(p))).await;
        publisher
            .expect(Packet::PubRec(ack(id, ReasonCode::Success)))
            .await;
        publisher
            .send(Packet::PubRel(ack(id, ReasonCode::Success)))
            .await;
        publisher
            .expect(Packet::PubComp(ack(id, ReasonCode::Success)))
            .await;
    }
    for reader in readers {
        assert_eq!(reader.await.unwrap(), (0..N).collect::<Vec<_>>());
    }
}

/// Retained messages for a new subscription do not go through the bounded delivery queue:
/// a `#` subscription gets all of them, far more than `max_queued_messages`.
#[tokio::test]
async fn a_wildcard_subscription_gets_every_retained_message_beyond_the_queue_limit() {
    const TOPICS: u16 = 2000;
    let broker = start_broker_with(|c| c.limits.max_queued_messages = 10);
    let mut publisher = Client::connected(broker.addr, V5, "retainer").await;
    for i in 1..=TOPICS {
        let mut p = publish(&format!("r/{i}"), QoS::AtLeastOnce, Some(i), b"kept");
        p.retain = true;
        publisher.send(Packet::Publish(Box::new(p))).await;
        publisher
            .expect(Packet::PubAck(ack(i, ReasonCode::Success)))
            .await;
    }
    let mut sub = Client::connected(broker.addr, V5, "all").await;
    subscribe(&mut sub, 1, &[("#", options(QoS::AtMostOnce))]).await;
    let mut topics = std::collections::HashSet::new();
    for _ in 0..TOPICS {
        let p = next_publish(&mut sub).await;
        assert!(p.retain);
        topics.insert(p.topic);
    }
    assert_eq!(topics.len(), usize::from(TOPICS));
    assert_eq!(broker.counters.dropped_qos0.load(Ordering::Relaxed), 0);
}

/// A subscriber that is only slower than its publisher (it reads, but one message at a time)
/// slows the publisher down instead of losing messages the broker acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_slows_its_publisher_instead_of_losing_acknowledged_messages() {
    const N: u16 = 300;
    let broker = start_broker_with(|c| c.limits.max_queued_messages = 4);
    let Packet::Connect(mut c) = connect(V5, "slowpoke") else {
        unreachable!()
    };
    c.properties.receive_maximum = Some(1);
    let mut sub = Client::open(broker.addr, V5).await;
    sub.send(Packet::Connect(c)).await;
    assert!(matches!(sub.recv().await, Some(Ok(Packet::ConnAck(_)))));
    subscribe(&mut sub, 1, &[("slow", options(QoS::AtLeastOnce))]).await;
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < usize::from(N) {
            let p = next_publish(&mut sub).await;
            sub.send(Packet::PubAck(ack(
                p.packet_id.unwrap(),
                ReasonCode::Success,
            )))
            .await;
            seen.push(u16::from_be_bytes(p.payload[..2].try_into().unwrap()));
        }
        seen
    });
    let mut publisher = Client::connected(broker.addr, V5, "fast").await;
    // All sent before any PUBACK is read: the broker's Receive Maximum (100) is the window.
    let (mut sent, mut acked) = (0u16, 0u16);
    while acked < N {
        while sent < N && sent - acked < 50 {
            sent += 1;
            let mut p = publish("slow", QoS::AtLeastOnce, Some(sent), b"");
            p.payload = Bytes::copy_from_slice(&sent.to_be_bytes());
            publisher.send(Packet::Publish(Box::new(p))).await;
        }
        match publisher.recv().await {
            Some(Ok(Packet::PubAck(a))) => {
                acked += 1;
                assert_eq!(a.packet_id, acked, "[MQTT-4.6.0-2] PUBACKs in order");
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    assert_eq!(reader.await.unwrap(), (1..=N).collect::<Vec<_>>());
    assert_eq!(
        broker.counters.dropped_queue_full.load(Ordering::Relaxed),
        0
    );
}

/// QoS 0 has no acknowledgement to hold back: a publisher whose subscriber's queue is full
/// waits for room (reading nothing meanwhile) instead of the broker dropping the messages, as
/// long as the subscriber keeps reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_slows_a_qos0_publisher_instead_of_losing_messages() {
    const N: u16 = 2000;
    let broker = start_broker_with(|c| c.limits.max_queued_messages = 4);
    let mut sub = Client::connected(broker.addr, V5, "slow0").await;
    subscribe(&mut sub, 1, &[("slow0", options(QoS::AtMostOnce))]).await;
    let mut publisher = Client::connected(broker.addr, V5, "fast0").await;
    for seq in 1..=N {
        let mut p = publish("slow0", QoS::AtMostOnce, None, b"");
        p.payload = Bytes::copy_from_slice(&seq.to_be_bytes());
        publisher.send(Packet::Publish(Box::new(p))).await;
    }
    for seq in 1..=N {
        let p = next_publish(&mut sub).await;
        assert_eq!(p.payload[..], seq.to_be_bytes(), "[MQTT-4.6.0-6] in order");
        if seq % 100 == 0 {
            // Slower than the publisher: the queue of 4 fills meanwhile.
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(broker.counters.dropped_qos0.load(Ordering::Relaxed), 0);
}

/// Two clients flooding each other with QoS 0 through tiny queues: a session waiting for room
/// in the other's queue still delivers its own, so neither waits on the other for good and
/// nothing is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishers_waiting_on_each_other_lose_nothing() {
    const N: u16 = 2000;
    let broker = start_broker_with(|c| c.limits.max_queued_messages = 4);
    let mut clients = Vec::new();
    for name in ["ping", "pong"] {
        let mut c = Client::connected(broker.addr, V5, name).await;
        subscribe(&mut c, 1, &[(name, options(QoS::AtMostOnce))]).await;
        clients.push(c);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(["pong", "ping"])
        .map(|(mut c, peer)| {
            tokio::spawn(async move {
                for seq in 1..=N {
                    let mut p = publish(peer, QoS::AtMostOnce, None, b"");
                    p.payload = Bytes::copy_from_slice(&seq.to_be_bytes());
                    c.send(Packet::Publish(Box::new(p))).await;
                }
                for seq in 1..=N {
                    let p = next_publish(&mut c).await;
                    assert_eq!(p.payload[..], seq.to_be_bytes());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(broker.counters.dropped_qos0.load(Ordering::Relaxed), 0);
}

/// One publisher, two subscribers: one far behind, one that keeps up, both with queues so
/// small (2) that their deliveries keep moving between the two paths (the publisher's session,
/// and the Registry's backlog). Each gets the messages in the publisher's order
/// [MQTT-4.6.0-6] and every QoS 1 message; QoS 0 ones beyond a backlog's limit may be dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_stay_in_order_when_one_subscriber_falls_behind() {
    const N: u16 = 400;
    let broker = start_broker_with(|c| c.limits.max_queued_messages = 2);
    let mut readers = Vec::new();
    for (name, receive_maximum) in [("behind", 1), ("keeping-up", 100)] {
        let Packet::Connect(mut c) = connect(V5, name) else {
            unreachable!()
        };
        c.properties.receive_maximum = Some(receive_maximum);
        let mut sub = Client::open(broker.addr, V5).await;
        sub.send(Packet::Connect(c)).await;
        assert!(matches!(sub.recv().await, Some(Ok(Packet::ConnAck(_)))));
        subscribe(&mut sub, 1, &[("mixed/#", options(QoS::AtLeastOnce))]).await;
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            // The last message is QoS 1.
            while seen.last() != Some(&N) {
                let p = next_publish(&mut sub).await;
                if let Some(id) = p.packet_id {
                    sub.send(Packet::PubAck(ack(id, ReasonCode::Success))).await;
                }
                seen.push(u16::from_be_bytes(p.payload[..2].try_into().unwrap()));
            }
            seen
        }));
    }
    let mut publisher = Client::connected(broker.addr, V5, "mixer").await;
    let (mut sent, mut acked) = (0u16, 0u16);
    while acked < N {
        while sent < N && sent - acked < 20 {
            sent += 1;
            // QoS 0 and QoS 1 on two topics: the order holds per topic and QoS, and this
            // broker keeps it across them too.
            let (topic, qos, id) = if sent % 3 == 0 {
                ("mixed/a", QoS::AtMostOnce, None)
            } else {
                ("mixed/b", QoS::AtLeastOnce, Some(sent))
            };
            let mut p = publish(topic, qos, id, b"");
            p.payload = Bytes::copy_from_slice(&sent.to_be_bytes());
            publisher.send(Packet::Publish(Box::new(p))).await;
            if qos == QoS::AtMostOnce {
                acked += 1;
            }
        }
        if acked == N {
            break;
        }
        match publisher.recv().await {
            Some(Ok(Packet::PubAck(_))) => acked += 1,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    let qos1: Vec<u16> = (1..=N).filter(|seq| seq % 3 != 0).collect();
    for reader in readers {
        let seen = reader.await.unwrap();
        assert!(seen.is_sorted_by(|a, b| a < b), "{seen:?}");
        let seen_qos1: Vec<u16> = seen.into_iter().filter(|seq| seq % 3 != 0).collect();
        assert_eq!(seen_qos1, qos1);
    }
}

/// `$SYS/broker/...` with Mosquitto's names, retained, updated every `sys_interval` seconds.
#[tokio::test]
async fn sys_topics_report_the_broker_state() {
    let broker = start_broker_with(|c| c.sys_interval = 1);
    let mut publisher = Client::connected(broker.addr, V5, "counted").await;
    publish_qos1(&mut publisher, "some/topic", 1, b"x").await;
    let mut watcher = Client::connected(broker.addr, V5, "watcher").await;
    subscribe(
        &mut watcher,
        1,
        &[("$SYS/broker/#", options(QoS::AtMostOnce))],
    )
    .await;
    let mut seen = std::collections::HashMap::new();
    // The retained values arrive at once; the next update (within a second) brings the
    // counters up to date.
    while !(seen.contains_key("$SYS/broker/version")
        && seen
            .get("$SYS/broker/clients/connected")
            .is_some_and(|v| v == "2")
        // No persistent session is offline, so the total is the connected clients.
        && seen
            .get("$SYS/broker/clients/total")
            .is_some_and(|v| v == "2")
        && seen
            .get("$SYS/broker/messages/received")
            .is_some_and(|v| v != "0"))
    {
        let p = next_publish(&mut watcher).await;
        seen.insert(p.topic, String::from_utf8_lossy(&p.payload).into_owned());
    }
    assert!(seen["$SYS/broker/version"].starts_with("mqttd "));
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"));
    // `#` does not match `$SYS` [MQTT-4.7.2-1].
    let mut everything = Client::connected(broker.addr, V5, "everything").await;
    subscribe(&mut everything, 1, &[("#", options(QoS::AtMostOnce))]).await;
    publish_qos1(&mut publisher, "marker", 2, b"m").await;
    assert_eq!(next_publish(&mut everything).await.topic, "marker");
}

/// `$SYS/broker/load/...`: Mosquitto's load averages (per minute, two decimals), 0.00 at start,
/// moving at each `sys_interval` after traffic.
#[tokio::test]
async fn sys_load_averages_follow_the_traffic() {
    let broker = start_broker_with(|c| c.sys_interval = 1);
    let mut watcher = Client::connected(broker.addr, V5, "load-watcher").await;
    subscribe(
        &mut watcher,
        1,
        &[("$SYS/broker/load/#", options(QoS::AtMostOnce))],
    )
    .await;
    let mut publisher = Client::connected(broker.addr, V5, "load-publisher").await;
    for id in 1..=10 {
        publish_qos1(&mut publisher, "load/topic", id, b"x").await;
    }
    let mut seen = std::collections::HashMap::new();
    let positive = |seen: &std::collections::HashMap<String, String>, topic: &str| {
        seen.get(topic)
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0)
    };
    while !(seen.len() == 9
        && positive(&seen, "$SYS/broker/load/messages/received/1min")
        && positive(&seen, "$SYS/broker/load/messages/received/15min")
        && positive(&seen, "$SYS/broker/load/connections/1min"))
    {
        let p = next_publish(&mut watcher).await;
        seen.insert(p.topic, String::from_utf8_lossy(&p.payload).into_owned());
    }
    for kind in ["messages/received", "messages/sent", "connections"] {
        for window in ["1min", "5min", "15min"] {
            let value = &seen[&format!("$SYS/broker/load/{kind}/{window}")];
            let (_, decimals) = value.split_once('.').expect("a decimal point");
            assert_eq!(decimals.len(), 2, "{value}");
        }
    }
    // The shorter the window, the faster it follows a burst.
    let value = |t: &str| {
        seen[&format!("$SYS/broker/load/messages/received/{t}")]
            .parse::<f64>()
            .unwrap()
    };
    assert!(value("1min") > value("15min"), "{seen:?}");
}
