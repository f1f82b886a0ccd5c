//! Retained messages (§3.3.1.3): stored, replaced, cleared, sent on subscribe according to
//! Retain Handling, forwarded according to Retain As Published, matched by wildcards, kept
//! across a restart, and expired.
//!
//! The first part of this file holds the packet helpers that `acl.rs` and `will.rs` use too.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use mqttd::mqtt::{
    Ack, Disconnect, Packet, Properties, PropertyValues, ProtocolVersion, Publish, QoS, ReasonCode,
    RetainHandling, Subscribe, SubscriptionOptions,
};

use crate::common::*;

pub(crate) const V5: ProtocolVersion = ProtocolVersion::V5;
pub(crate) const V311: ProtocolVersion = ProtocolVersion::V311;

// ---- helpers shared with acl.rs and will.rs ----------------------------------------------------

/// An application message as sent or as received, without packet id.
pub(crate) fn msg(topic: &str, payload: &str, qos: QoS, retain: bool) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

pub(crate) fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..Default::default()
    }
}

/// Sends one SUBSCRIBE and returns the SUBACK's reason codes.
pub(crate) async fn subscribe_with(
    client: &mut Client,
    packet_id: u16,
    filters: &[(&str, SubscriptionOptions)],
) -> Vec<ReasonCode> {
    client
        .send(Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            filters: filters.iter().map(|(f, o)| (f.to_string(), *o)).collect(),
        }))
        .await;
    match client.recv().await {
        Some(Ok(Packet::SubAck(ack))) => {
            assert_eq!(ack.packet_id, packet_id);
            ack.reasons
        }
        other => panic!("expected SUBACK {packet_id}, got {other:?}"),
    }
}

/// Subscribes to one filter and checks that the QoS asked for was granted.
pub(crate) async fn subscribe(client: &mut Client, filter: &str, qos: QoS) {
    let granted = match qos {
        QoS::AtMostOnce => ReasonCode::Success,
        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
    };
    assert_eq!(
        subscribe_with(client, 1, &[(filter, options(qos))]).await,
        [granted],
        "SUBSCRIBE {filter:?}"
    );
}

/// Publishes `message` and completes its QoS exchange, expecting `reason` in the PUBACK or
/// PUBREC (QoS 0 has no answer).
pub(crate) async fn publish_expect(
    client: &mut Client,
    packet_id: u16,
    mut message: Publish,
    reason: ReasonCode,
) {
    let qos = message.qos;
    if qos != QoS::AtMostOnce {
        message.packet_id = Some(packet_id);
    }
    client.send(Packet::Publish(Box::new(message))).await;
    let ack = |reason| Ack {
        packet_id,
        reason,
        properties: Properties::default(),
    };
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => client.expect(Packet::PubAck(ack(reason))).await,
        QoS::ExactlyOnce => {
            client.expect(Packet::PubRec(ack(reason))).await;
            if !reason.is_failure() {
                client.send(Packet::PubRel(ack(ReasonCode::Success))).await;
                client
                    .expect(Packet::PubComp(ack(ReasonCode::Success)))
                    .await;
            }
        }
    }
}

/// Publishes `message` and completes its QoS exchange successfully.
pub(crate) async fn publish_ok(client: &mut Client, packet_id: u16, message: Publish) {
    publish_expect(client, packet_id, message, ReasonCode::Success).await;
}

/// The next packet must be a PUBLISH; it is acknowledged (QoS 2 up to PUBCOMP, so only one QoS 2
/// delivery may be under way) and returned without its packet id.
pub(crate) async fn recv_publish(client: &mut Client) -> Publish {
    let mut publish = match client.recv().await {
        Some(Ok(Packet::Publish(p))) => *p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    let ack = |packet_id| Ack {
        packet_id,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    };
    match publish.qos {
        QoS::AtMostOnce => assert_eq!(publish.packet_id, None),
        QoS::AtLeastOnce => {
            let id = publish.packet_id.expect("QoS 1 has a packet id");
            client.send(Packet::PubAck(ack(id))).await;
        }
        QoS::ExactlyOnce => {
            let id = publish.packet_id.expect("QoS 2 has a packet id");
            client.send(Packet::PubRec(ack(id))).await;
            client.expect(Packet::PubRel(ack(id))).await;
            client.send(Packet::PubComp(ack(id))).await;
        }
    }
    publish.packet_id = None;
    publish
}

/// The marker technique: `publisher` sends a QoS 0 message on `topic`, and it must be the next
/// thing `subscriber` receives; so nothing published earlier is still on its way to it.
pub(crate) async fn assert_next_is_marker(
    subscriber: &mut Client,
    publisher: &mut Client,
    topic: &str,
) {
    publish_ok(publisher, 1, msg(topic, "marker", QoS::AtMostOnce, false)).await;
    let got = recv_publish(subscriber).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..], got.retain),
        (topic, &b"marker"[..], false),
        "something arrived before the marker: {got:?}"
    );
}

/// DISCONNECT 0x00, then the broker closes the connection.
pub(crate) async fn disconnect(mut client: Client) {
    client
        .send(Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }))
        .await;
    client.expect_closed().await;
}

// ---- the tests ---------------------------------------------------------------------------------

#[tokio::test]
async fn mqtt_3_3_1_9_retained_message_is_sent_on_subscribe_with_retain_1() {
    let broker = start_broker();
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    publish_ok(
        &mut publisher,
        1,
        msg("r/a", "kept", QoS::AtLeastOnce, true),
    )
    .await;

    let mut subscriber = Client::connected(broker.addr, V5, "sub").await;
    subscribe(&mut subscriber, "r/a", QoS::AtLeastOnce).await;
    assert_eq!(
        recv_publish(&mut subscriber).await,
        msg("r/a", "kept", QoS::AtLeastOnce, true)
    );
    // QoS is min(published, granted).
    let mut low = Client::connected(broker.addr, V5, "low").await;
    subscribe(&mut low, "r/a", QoS::AtMostOnce).await;
    assert_eq!(
        recv_publish(&mut low).await,
        msg("r/a", "kept", QoS::AtMostOnce, true)
    );
    for c in [publisher, subscriber, low] {
        disconnect(c).await;
    }
}

#[tokio::test]
async fn mqtt_3_3_1_5_a_newer_retained_message_replaces_the_old_one() {
    let broker = start_broker();
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    publish_ok(&mut publisher, 1, msg("r/b", "old", QoS::AtLeastOnce, true)).await;
    publish_ok(&mut publisher, 2, msg("r/b", "new", QoS::AtMostOnce, true)).await;
    // A non-retained message does not replace it.
    publish_ok(
        &mut publisher,
        3,
        msg("r/b", "live", QoS::AtLeastOnce, false),
    )
    .await;

    let mut subscriber = Client::connected(broker.addr, V5, "sub").await;
    subscribe(&mut subscriber, "r/b", QoS::ExactlyOnce).await;
    assert_eq!(
        recv_publish(&mut subscriber).await,
        msg("r/b", "new", QoS::AtMostOnce, true)
    );
    assert_next_is_marker(&mut subscriber, &mut publisher, "r/b").await;
    disconnect(publisher).await;
    disconnect(subscriber).await;
}

#[tokio::test]
async fn mqtt_3_3_1_6_empty_retained_payload_clears_and_mqtt_3_3_1_7_is_not_stored() {
    let broker = start_broker();
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    publish_ok(
        &mut publisher,
        1,
        msg("r/c", "doomed", QoS::AtLeastOnce, true),
    )
    .await;
    publish_ok(&mut publisher, 2, msg("r/c", "", QoS::AtLeastOnce, true)).await;
    // An empty retained message on a topic with none is not stored either.
    publish_ok(&mut publisher, 3, msg("r/d", "", QoS::AtLeastOnce, true)).await;

    let mut subscriber = Client::connected(broker.addr, V5, "sub").await;
    subscribe(&mut subscriber, "r/+", QoS::AtLeastOnce).await;
    assert_next_is_marker(&mut subscriber, &mut publisher, "r/c").await;

    let stored = mqttd::db::queries::load_retained(&mut broker.db(), 0).unwrap();
    assert!(
        stored.iter().all(|m| !m.topic.starts_with("r/")),
        "nothing left in the database: {stored:?}"
    );
    disconnect(publisher).await;
    disconnect(subscriber).await;
}

fn with_retain_handling(qos: QoS, retain_handling: RetainHandling) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        retain_handling,
        ..Default::default()
    }
}

#[tokio::test]
async fn section_3_8_3_1_retain_handling_0_sends_retained_on_every_subscribe() {
    let broker = start_broker();
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    publish_ok(&mut publisher, 1, msg("rh/0", "r", QoS::AtLeastOnce, true)).await;
    let mut subscriber = Client::connected(broker.addr, V5, "sub").await;
    let rh0 = with_retain_handling(QoS::AtLeastOnce, RetainHandling::SendAtSubscribe);
    for id in 1..=2 {
        assert_eq!(
            subscribe_with(&mut subscriber, id, &[("rh/0", rh0)]).await,
            [ReasonCode::GrantedQoS1]
        );
        assert_eq!(
            recv_publish(&mut subscriber).await,
            msg("rh/0", "r", QoS::AtLeastOnce, true),
            "subscribe #{id}"
        );
    }
    assert_next_is_marker(&mut subscriber, &mut publisher, "rh/0").await;
    disconnect(publisher).await;
    disconnect(subscriber).await;
}

#[tokio::test]
async fn mqtt_3_3_1_10_retain_handling_1_sends_retained_only_for_a_new_subscription() {
    let broker = start_broker();
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    publish_ok(&mut publisher, 1, msg("rh/1", "r", QoS::AtLeastOnce, true)).await;
    let mut subscriber = Client::connected(broker.addr, V5, "sub").await;
    let rh1 = with_retain_handling(QoS::AtLeastOnce, RetainHandling::SendIfNew);
    assert_eq!(
        subscribe_with(&mut subscriber, 1, &[("rh/1", rh1)]).await,
        [ReasonCode::GrantedQoS1]
    );
    assert_eq!(
        recv_publish(&mut subscriber).await,
        msg("rh/1", "r", QoS::AtLeastOnce, true)
    );
    // The same filter again: the subscription exists, so no retained message.
    assert_eq!(
        subscribe_with(&mut subscriber, 2, &[("rh/1", rh1)]).await,
        [ReasonCode::GrantedQoS1]
    );
    assert_next_is_marker(&mut subscriber, &mut publisher, "rh/1").await;
    disconnect(publisher).await;
    disconnect(subscriber).await;
}

#[tokio::test]
async fn mqtt_3_3_1_11_retain_handling_2_never_sends_retained() {
    let broker = start_broker();
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    publish_ok(&mut publisher, 1, msg("rh/2", "r", QoS::AtLeastOnce, true)).await;
    let mut subscriber = Client::connected(broker.addr, V5, "sub").await;
    let rh2 = with_retain_handling(QoS::AtLeastOnce, RetainHandling::DoNotSend);
    assert_eq!(
        subscribe_with(&mut subscriber, 1, &[("rh/2", rh2)]).await,
        [ReasonCode::GrantedQoS1]
    );
    assert_next_is_marker(&mut subscriber, &mut publisher, "rh/2").await;
    disconnect(publisher).await;
    disconnect(subscriber).await;
}

/// Subscribes with Retain As Published `rap`, then a retained message is published live.
async fn live_retained_with_retain_as_published(rap: bool) -> Publish {
    let broker = start_broker();
    let mut subscriber = Client::connected(broker.addr, V5, "sub").await;
    let opts = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        retain_as_published: rap,
        ..Default::default()
    };
    assert_eq!(
        subscribe_with(&mut subscriber, 1, &[("rap/t", opts)]).await,
        [ReasonCode::GrantedQoS1]
    );
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    publish_ok(
        &mut publisher,
        1,
        msg("rap/t", "live", QoS::AtLeastOnce, true),
    )
    .await;
    let got = recv_publish(&mut subscriber).await;
    disconnect(publisher).await;
    disconnect(subscriber).await;
    got
}

#[tokio::test]
async fn mqtt_3_3_1_12_retain_as_published_0_forwards_with_retain_0() {
    assert_eq!(
        live_retained_with_retain_as_published(false).await,
        msg("rap/t", "live", QoS::AtLeastOnce, false)
    );
}

#[tokio::test]
async fn mqtt_3_3_1_13_retain_as_published_1_forwards_with_retain_1() {
    assert_eq!(
        live_retained_with_retain_as_published(true).await,
        msg("rap/t", "live", QoS::AtLeastOnce, true)
    );
}

/// Receives `count` PUBLISHes and returns their (topic, payload, retain).
async fn collect(client: &mut Client, count: usize) -> BTreeSet<(String, String, bool)> {
    let mut got = BTreeSet::new();
    for _ in 0..count {
        let p = recv_publish(client).await;
        let payload = String::from_utf8(p.payload.to_vec()).unwrap();
        assert!(got.insert((p.topic, payload, p.retain)), "duplicate");
    }
    got
}

#[tokio::test]
async fn mqtt_4_7_2_1_wildcard_subscriptions_get_every_matching_retained_topic_but_no_dollar() {
    let broker = start_broker();
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    let mut abc = BTreeSet::new();
    for i in 0..50 {
        let topic = format!("a/{i}/c");
        publish_ok(
            &mut publisher,
            1,
            msg(&topic, &i.to_string(), QoS::AtLeastOnce, true),
        )
        .await;
        abc.insert((topic, i.to_string(), true));
    }
    let others = [("a/1/d", "x"), ("a/c", "y"), ("b", "z"), ("a/1/c/e", "w")];
    for (topic, payload) in others {
        publish_ok(
            &mut publisher,
            1,
            msg(topic, payload, QoS::AtLeastOnce, true),
        )
        .await;
    }
    publish_ok(
        &mut publisher,
        1,
        msg("$app/x", "hidden", QoS::AtLeastOnce, true),
    )
    .await;
    let mut everything = abc.clone();
    everything.extend(others.map(|(t, p)| (t.to_owned(), p.to_owned(), true)));

    let mut subscriber = Client::connected(broker.addr, V5, "sub").await;
    subscribe(&mut subscriber, "a/+/c", QoS::AtLeastOnce).await;
    assert_eq!(collect(&mut subscriber, 50).await, abc);
    assert_next_is_marker(&mut subscriber, &mut publisher, "a/marker/c").await;

    subscribe(&mut subscriber, "#", QoS::AtMostOnce).await;
    assert_eq!(
        collect(&mut subscriber, everything.len()).await,
        everything,
        "[MQTT-4.7.2-1] '#' does not match $app/x"
    );
    assert_next_is_marker(&mut subscriber, &mut publisher, "b").await;

    subscribe(&mut subscriber, "$app/#", QoS::AtMostOnce).await;
    assert_eq!(
        recv_publish(&mut subscriber).await,
        msg("$app/x", "hidden", QoS::AtMostOnce, true),
        "an explicit '$app' level matches"
    );
    disconnect(publisher).await;
    disconnect(subscriber).await;
}

#[tokio::test]
async fn retained_messages_and_their_properties_survive_a_restart() {
    let mut first = start_broker();
    let properties = Properties::from(PropertyValues {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain; charset=utf-8".into()),
        response_topic: Some("replies/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![
            ("k".into(), "v1".into()),
            ("k".into(), "v2".into()),
            ("other".into(), "".into()),
        ],
        ..PropertyValues::default()
    });
    let mut with_properties = msg("keep/props", "héllo", QoS::AtLeastOnce, true);
    with_properties.properties = properties.clone();
    let mut publisher = Client::connected(first.addr, V5, "pub").await;
    publish_ok(&mut publisher, 1, with_properties.clone()).await;
    publish_ok(
        &mut publisher,
        2,
        msg("keep/plain", "p", QoS::ExactlyOnce, true),
    )
    .await;
    publish_ok(
        &mut publisher,
        3,
        msg("keep/gone", "g", QoS::AtLeastOnce, true),
    )
    .await;
    publish_ok(
        &mut publisher,
        4,
        msg("keep/gone", "", QoS::AtLeastOnce, true),
    )
    .await;
    disconnect(publisher).await;
    first.shutdown();

    let second = start_broker_on(first.db_path.clone(), |_| {});
    let mut subscriber = Client::connected(second.addr, V5, "sub").await;
    subscribe(&mut subscriber, "keep/props", QoS::ExactlyOnce).await;
    assert_eq!(recv_publish(&mut subscriber).await, with_properties);
    subscribe(&mut subscriber, "keep/plain", QoS::ExactlyOnce).await;
    assert_eq!(
        recv_publish(&mut subscriber).await,
        msg("keep/plain", "p", QoS::ExactlyOnce, true)
    );
    subscribe(&mut subscriber, "keep/gone", QoS::AtLeastOnce).await;
    let mut marker = Client::connected(second.addr, V5, "marker").await;
    assert_next_is_marker(&mut subscriber, &mut marker, "keep/gone").await;
    disconnect(marker).await;
    disconnect(subscriber).await;
}

#[tokio::test]
async fn mqtt_3_3_2_5_an_expired_retained_message_is_not_sent() {
    let broker = start_broker();
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    let mut short = msg("exp/short", "soon gone", QoS::AtLeastOnce, true);
    short.properties.message_expiry_interval = Some(1);
    publish_ok(&mut publisher, 1, short).await;
    // Time is the subject here: wait until the message has expired.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut subscriber = Client::connected(broker.addr, V5, "sub").await;
    subscribe(&mut subscriber, "exp/short", QoS::AtLeastOnce).await;
    assert_next_is_marker(&mut subscriber, &mut publisher, "exp/short").await;
    disconnect(publisher).await;
    disconnect(subscriber).await;
}

#[tokio::test]
async fn mqtt_3_3_2_6_a_retained_message_carries_the_remaining_expiry() {
    let broker = start_broker();
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    let mut long = msg("exp/long", "still here", QoS::AtLeastOnce, true);
    long.properties.message_expiry_interval = Some(60);
    publish_ok(&mut publisher, 1, long).await;
    let mut subscriber = Client::connected(broker.addr, V5, "sub").await;
    subscribe(&mut subscriber, "exp/long", QoS::AtLeastOnce).await;
    let mut got = recv_publish(&mut subscriber).await;
    let expiry = got
        .properties
        .message_expiry_interval
        .take()
        .expect("Message Expiry Interval");
    assert!((55..=60).contains(&expiry), "{expiry}");
    assert_eq!(got, msg("exp/long", "still here", QoS::AtLeastOnce, true));
    disconnect(publisher).await;
    disconnect(subscriber).await;
}

#[tokio::test]
async fn a_v311_subscriber_receives_a_retained_message_published_by_a_v5_client() {
    let broker = start_broker();
    let mut publisher = Client::connected(broker.addr, V5, "pub5").await;
    let mut message = msg("mixed/t", "from v5", QoS::ExactlyOnce, true);
    message.properties.user_properties = vec![("dropped".into(), "for 3.1.1".into())];
    message.properties.content_type = Some("text/plain".into());
    publish_ok(&mut publisher, 1, message).await;

    let mut subscriber = Client::connected(broker.addr, V311, "sub3").await;
    subscribe(&mut subscriber, "mixed/#", QoS::ExactlyOnce).await;
    assert_eq!(
        recv_publish(&mut subscriber).await,
        msg("mixed/t", "from v5", QoS::ExactlyOnce, true),
        "3.1.1 has no properties"
    );
    assert_next_is_marker(&mut subscriber, &mut publisher, "mixed/t").await;
    disconnect(publisher).await;
    disconnect(subscriber).await;
}

#[tokio::test]
async fn a_v5_subscriber_receives_a_retained_message_published_by_a_v311_client() {
    let broker = start_broker();
    let mut publisher = Client::connected(broker.addr, V311, "pub3").await;
    publish_ok(
        &mut publisher,
        1,
        msg("mixed/u", "from 3.1.1", QoS::AtLeastOnce, true),
    )
    .await;
    let mut subscriber = Client::connected(broker.addr, V5, "sub5").await;
    subscribe(&mut subscriber, "mixed/u", QoS::AtLeastOnce).await;
    assert_eq!(
        recv_publish(&mut subscriber).await,
        msg("mixed/u", "from 3.1.1", QoS::AtLeastOnce, true)
    );
    disconnect(publisher).await;
    disconnect(subscriber).await;
}

#[tokio::test]
async fn section_4_8_2_retained_messages_are_not_sent_for_shared_subscriptions() {
    let broker = start_broker();
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    publish_ok(
        &mut publisher,
        1,
        msg("jobs/1", "old", QoS::AtLeastOnce, true),
    )
    .await;
    let mut worker = Client::connected(broker.addr, V5, "worker").await;
    subscribe(&mut worker, "$share/g/jobs/+", QoS::AtLeastOnce).await;
    assert_next_is_marker(&mut worker, &mut publisher, "jobs/2").await;
    disconnect(publisher).await;
    disconnect(worker).await;
}

#[tokio::test]
async fn the_message_expiry_of_a_retained_message_survives_a_restart() {
    let mut first = start_broker();
    let mut publisher = Client::connected(first.addr, V5, "pub").await;
    let mut expiring = msg("exp/kept", "x", QoS::AtLeastOnce, true);
    expiring.properties.message_expiry_interval = Some(120);
    publish_ok(&mut publisher, 1, expiring).await;
    disconnect(publisher).await;
    first.shutdown();

    let second = start_broker_on(first.db_path.clone(), |_| {});
    let mut subscriber = Client::connected(second.addr, V5, "sub").await;
    subscribe(&mut subscriber, "exp/kept", QoS::AtLeastOnce).await;
    let mut got = recv_publish(&mut subscriber).await;
    let expiry = got.properties.message_expiry_interval.take();
    assert!(
        expiry.is_some_and(|e| (110..=120).contains(&e)),
        "{expiry:?}"
    );
    assert_eq!(got, msg("exp/kept", "x", QoS::AtLeastOnce, true));
    disconnect(subscriber).await;
}
