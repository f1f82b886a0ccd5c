//! Direct delivery (src/session/bypass.rs): a QoS 0 message to an idle subscriber is written to
//! its socket by the publisher's thread. The pauses below are the scenario itself (a subscriber
//! whose session thread has been asleep for a while), not a wait for an event.

use std::time::Duration;

use bytes::Bytes;
use mqttd::mqtt::{
    Ack, MqttCodec, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, SubAck,
};
use tokio::net::TcpSocket;
use tokio_util::codec::Framed;

use crate::common::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// Longer than a session thread must sleep before deliveries to it go direct (300 µs).
const PAUSE: Duration = Duration::from_millis(3);

fn publish(qos: QoS, packet_id: u16, topic: &str, payload: Bytes) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
        properties: Properties::default(),
        payload,
    }))
}

/// Connects a subscriber to `topic` at `qos`, with a receive buffer of `receive_buffer` bytes
/// if given. It connects first, so that with the test broker's two session Arbiters it lives
/// on another thread than the publisher after it.
async fn subscriber(
    broker: &TestBroker,
    topic: &str,
    qos: QoS,
    receive_buffer: Option<u32>,
) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let stream = socket.connect(broker.addr).await.expect("connect");
    let mut client = Client {
        framed: Framed::new(stream, MqttCodec::new(V5, 268_435_460)),
    };
    client.send(connect(V5, "direct-sub")).await;
    match client.recv().await {
        Some(Ok(Packet::ConnAck(ack))) if ack.reason == ReasonCode::Success => {}
        other => panic!("expected a successful CONNACK, got {other:?}"),
    }
    let Packet::Subscribe(mut subscribe) = subscribe_packet(1, topic) else {
        unreachable!()
    };
    subscribe.filters[0].1.qos = qos;
    client.send(Packet::Subscribe(subscribe)).await;
    let granted = match qos {
        QoS::AtMostOnce => ReasonCode::Success,
        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
    };
    client
        .expect(Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            reasons: vec![granted],
        }))
        .await;
    client
}

fn assert_some_went_direct(broker: &TestBroker) {
    let direct = broker.counters.messages_direct.get();
    assert!(direct > 0, "no delivery was written directly");
}

async fn next_publish(client: &mut Client) -> Publish {
    match client.recv().await {
        Some(Ok(Packet::Publish(p))) => *p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// [MQTT-4.6.0-6]: deliveries written directly and deliveries queued (once the direct budget
/// or the lent packet ids run out) keep the publisher's order.
#[tokio::test]
async fn direct_and_queued_deliveries_keep_the_publishers_order() {
    let broker = start_broker();
    let mut sub = subscriber(&broker, "d/t", QoS::AtLeastOnce, None).await;
    let mut publisher = Client::connected(broker.addr, V5, "direct-pub").await;
    // Per group of three after a pause: QoS 0, QoS 1, QoS 0, back to back. The subscriber
    // acknowledges only once all are sent, so after 4 QoS 1 messages the packet ids lent to
    // the bypass run out: from then on QoS 1 queues, between QoS 0 messages that go direct.
    for i in 0..60u16 {
        let qos = if i % 3 == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        if i % 3 == 0 {
            tokio::time::sleep(PAUSE).await;
        }
        let payload = Bytes::copy_from_slice(&i.to_be_bytes());
        publisher.send(publish(qos, i + 1, "d/t", payload)).await;
    }
    for i in 0..60u16 {
        let p = next_publish(&mut sub).await;
        assert_eq!(p.payload[..], i.to_be_bytes(), "message {i} out of order");
        if let Some(id) = p.packet_id {
            sub.send(puback_packet(id)).await;
        }
    }
    assert_some_went_direct(&broker);
}

/// [MQTT-4.3.3]: a QoS 2 delivery written with a packet id lent to the bypass goes through
/// PUBREC, PUBREL and PUBCOMP like any other; the ids come back and are lent again, so a long
/// paced stream never runs the subscriber's window dry.
#[tokio::test]
async fn direct_qos2_deliveries_complete_their_exchange() {
    let broker = start_broker();
    let mut sub = subscriber(&broker, "d/q2", QoS::ExactlyOnce, None).await;
    let mut publisher = Client::connected(broker.addr, V5, "direct-pub").await;
    for i in 0..30u16 {
        tokio::time::sleep(PAUSE).await;
        let payload = Bytes::copy_from_slice(&i.to_be_bytes());
        publisher
            .send(publish(QoS::ExactlyOnce, i + 1, "d/q2", payload))
            .await;
        // The publisher's side of QoS 2: PUBREC, then PUBREL and PUBCOMP.
        match publisher.recv().await {
            Some(Ok(Packet::PubRec(rec))) => assert_eq!(rec.packet_id, i + 1),
            other => panic!("expected PUBREC, got {other:?}"),
        }
        publisher.send(pubrel(i + 1)).await;
        match publisher.recv().await {
            Some(Ok(Packet::PubComp(comp))) => assert_eq!(comp.packet_id, i + 1),
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
        let p = next_publish(&mut sub).await;
        assert_eq!(p.payload[..], i.to_be_bytes());
        let id = p.packet_id.expect("a QoS 2 PUBLISH has a packet id");
        sub.send(Packet::PubRec(ack(id))).await;
        match sub.recv().await {
            Some(Ok(Packet::PubRel(rel))) => assert_eq!(rel.packet_id, id),
            other => panic!("expected PUBREL for {id}, got {other:?}"),
        }
        sub.send(Packet::PubComp(ack(id))).await;
    }
    assert_some_went_direct(&broker);
}

fn ack(packet_id: u16) -> Ack {
    Ack {
        packet_id,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    }
}

fn pubrel(packet_id: u16) -> Packet {
    Packet::PubRel(ack(packet_id))
}

/// A subscriber that stops reading fills its socket: direct writes then stop at the first that
/// does not fit whole, its unsent end is written by the session before anything else, and the
/// rest queues. Every packet arrives whole and in order once the client reads again.
#[tokio::test]
async fn a_subscriber_that_stops_reading_gets_every_packet_whole() {
    const MESSAGES: u8 = 200;
    const SIZE: usize = 64 * 1024;
    let broker = start_broker();
    // A small receive window: the broker's socket fills after a few messages.
    let mut sub = subscriber(&broker, "d/big", QoS::AtMostOnce, Some(16 * 1024)).await;
    let mut publisher = Client::connected(broker.addr, V5, "direct-pub").await;
    for i in 0..MESSAGES {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let payload = Bytes::from(vec![i; SIZE]);
        publisher
            .send(publish(QoS::AtMostOnce, 0, "d/big", payload))
            .await;
    }
    for i in 0..MESSAGES {
        let p = next_publish(&mut sub).await;
        assert!(
            p.payload.len() == SIZE && p.payload.iter().all(|&b| b == i),
            "message {i} damaged or out of order"
        );
    }
    assert_some_went_direct(&broker);
}
