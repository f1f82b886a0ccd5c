//! What PUBLISH, SUBSCRIBE and UNSUBSCRIBE get while routing is not built: honest answers that
//! complete every QoS exchange (§3.3-§3.11).

use bytes::Bytes;
use mqttd::mqtt::{
    Ack, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe,
};

use crate::common::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

fn publish(qos: QoS, packet_id: Option<u16>) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        qos,
        retain: false,
        topic: "sensors/1".into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(b"21.5"),
    }))
}

fn ack(packet_id: u16, reason: ReasonCode) -> Ack {
    Ack {
        packet_id,
        reason,
        properties: Properties::default(),
    }
}

#[tokio::test]
async fn qos1_gets_puback_no_matching_subscribers() {
    let broker = start_broker();
    let mut client = Client::connected(broker.addr, V5, "pub1").await;
    client.send(publish(QoS::AtMostOnce, None)).await;
    client.send(publish(QoS::AtLeastOnce, Some(7))).await;
    client
        .expect(Packet::PubAck(ack(7, ReasonCode::NoMatchingSubscribers)))
        .await;
}

#[tokio::test]
async fn qos2_exchange_completes_and_mqtt_4_3_3_11_unknown_pubrel_gets_0x92() {
    let broker = start_broker();
    let mut client = Client::connected(broker.addr, V5, "pub2").await;
    client.send(publish(QoS::ExactlyOnce, Some(9))).await;
    client
        .expect(Packet::PubRec(ack(9, ReasonCode::NoMatchingSubscribers)))
        .await;
    // A re-sent PUBLISH before PUBREL is acknowledged again [MQTT-4.3.3-10].
    client.send(publish(QoS::ExactlyOnce, Some(9))).await;
    client
        .expect(Packet::PubRec(ack(9, ReasonCode::NoMatchingSubscribers)))
        .await;
    client
        .send(Packet::PubRel(ack(9, ReasonCode::Success)))
        .await;
    client
        .expect(Packet::PubComp(ack(9, ReasonCode::Success)))
        .await;
    client
        .send(Packet::PubRel(ack(9, ReasonCode::Success)))
        .await;
    client
        .expect(Packet::PubComp(ack(
            9,
            ReasonCode::PacketIdentifierNotFound,
        )))
        .await;
}

#[tokio::test]
async fn more_qos2_awaiting_pubrel_than_receive_maximum_gets_0x93() {
    let broker = start_broker_with(|c| c.limits.receive_maximum = 2);
    let mut client = Client::connected(broker.addr, V5, "flood").await;
    for id in 1..=2 {
        client.send(publish(QoS::ExactlyOnce, Some(id))).await;
        client
            .expect(Packet::PubRec(ack(id, ReasonCode::NoMatchingSubscribers)))
            .await;
    }
    client.send(publish(QoS::ExactlyOnce, Some(3))).await;
    client
        .expect(Packet::Disconnect(mqttd::mqtt::Disconnect {
            reason: ReasonCode::ReceiveMaximumExceeded,
            properties: Properties::default(),
        }))
        .await;
    client.expect_closed().await;
}

#[tokio::test]
async fn subscribe_gets_one_failure_code_per_filter_in_order() {
    let broker = start_broker();
    let mut client = Client::connected(broker.addr, V5, "sub").await;
    let options = SubscriptionOptions::default();
    let filters = ["a/b", "a/+", "$share/g/a", "a/#/b"];
    client
        .send(Packet::Subscribe(Subscribe {
            packet_id: 5,
            properties: Properties::default(),
            filters: filters.iter().map(|f| (f.to_string(), options)).collect(),
        }))
        .await;
    client
        .expect(Packet::SubAck(SubAck {
            packet_id: 5,
            properties: Properties::default(),
            reasons: vec![
                ReasonCode::ImplementationSpecificError,
                ReasonCode::WildcardSubscriptionsNotSupported,
                ReasonCode::SharedSubscriptionsNotSupported,
                ReasonCode::TopicFilterInvalid,
            ],
        }))
        .await;
    client
        .send(Packet::Unsubscribe(Unsubscribe {
            packet_id: 6,
            properties: Properties::default(),
            filters: vec!["a/b".into()],
        }))
        .await;
    client
        .expect(Packet::UnsubAck(UnsubAck {
            packet_id: 6,
            properties: Properties::default(),
            reasons: vec![ReasonCode::NoSubscriptionExisted],
        }))
        .await;
}

#[tokio::test]
async fn v311_subscribe_failures_are_0x80() {
    let broker = start_broker();
    let mut client = Client::connected(broker.addr, ProtocolVersion::V311, "sub3").await;
    client
        .send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                "x".into(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
        }))
        .await;
    match client.recv().await {
        Some(Ok(Packet::SubAck(ack))) => {
            assert_eq!(ack.packet_id, 1);
            assert_eq!(ack.reasons.len(), 1);
            assert_eq!(ack.reasons[0] as u8 & 0x80, 0x80, "a failure code");
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}
