//! Bad input gets the spec's reaction and never harms the broker (bad-inputs.md, section 6).
//! Each case ends with a canary: a fresh client must still be served.

use std::net::SocketAddr;

use mqttd::mqtt::{Disconnect, Packet, Properties, ProtocolVersion, ReasonCode};

use crate::common::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// CONNECT v5, clean start, keep-alive 60, client id "m".
const CONNECT_V5: [u8; 16] = [
    0x10, 0x0E, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 1, b'm',
];

fn disconnect(reason: ReasonCode) -> Packet {
    Packet::Disconnect(Disconnect {
        reason,
        properties: Properties::default(),
    })
}

/// Connects as v5, sends `bytes`, and expects DISCONNECT `reason` then close; then the canary.
async fn after_connect_expect_disconnect(addr: SocketAddr, bytes: &[u8], reason: ReasonCode) {
    let mut client = Client::connected(addr, V5, "bad").await;
    client.send_raw(bytes).await;
    client.expect(disconnect(reason)).await;
    client.expect_closed().await;
    assert_canary(addr).await;
}

#[tokio::test]
async fn a1_remaining_length_of_five_bytes_closes_before_connack() {
    let broker = start_broker();
    assert_eq!(
        exchange_raw(broker.addr, &[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).await,
        b""
    );
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn a2_mqtt_1_5_5_1_non_minimal_remaining_length_is_malformed() {
    let broker = start_broker();
    assert_eq!(exchange_raw(broker.addr, &[0x10, 0x80, 0x00]).await, b"");
    // After CONNACK: PINGREQ with RL encoded as 80 00.
    after_connect_expect_disconnect(
        broker.addr,
        &[0xC0, 0x80, 0x00],
        ReasonCode::MalformedPacket,
    )
    .await;
}

#[tokio::test]
async fn a3_mqtt_3_1_0_1_huge_non_connect_first_packet_closes_at_once() {
    let broker = start_broker();
    // A PUBLISH header declaring ~243 MB, followed by a megabyte of garbage.
    let mut bytes = vec![0x30, 0x80, 0x80, 0x80, 0x74];
    bytes.extend(std::iter::repeat_n(0xAB, 1 << 20));
    let mut client = Client::open(broker.addr, V5).await;
    // The broker may close while we are still writing; either way nothing comes back.
    use tokio::io::AsyncWriteExt;
    let _ = client.framed.get_mut().write_all(&bytes).await;
    assert_eq!(client.read_to_close().await, b"");
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn a5_mqtt_3_2_2_15_packet_over_the_maximum_size_gets_0x95() {
    let broker = start_broker_with(|c| c.limits.max_packet_size = 100);
    // PUBLISH QoS 0 to "t" declaring 200 bytes: refused from the header alone.
    after_connect_expect_disconnect(
        broker.addr,
        &[0x30, 0xC8, 0x01, 0x00, 0x01, b't'],
        ReasonCode::PacketTooLarge,
    )
    .await;
}

#[tokio::test]
async fn a6_field_longer_than_the_packet_is_malformed() {
    let broker = start_broker();
    // CONNECT whose client-id length (0x0B) runs past Remaining Length: CONNACK 0x81.
    let bytes = [
        0x10, 0x0E, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 0x0B, b'm',
    ];
    assert_eq!(
        exchange_raw(broker.addr, &bytes).await,
        [0x20, 0x03, 0x00, 0x81, 0x00]
    );
    // SUBSCRIBE whose filter length runs past Remaining Length.
    after_connect_expect_disconnect(
        broker.addr,
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x09, b'a'],
        ReasonCode::MalformedPacket,
    )
    .await;
}

#[tokio::test]
async fn a8_mqtt_4_2_1_byte_at_a_time_and_coalesced_packets_work() {
    let broker = start_broker();
    let mut client = Client::open(broker.addr, V5).await;
    for byte in CONNECT_V5 {
        client.send_raw(&[byte]).await;
    }
    assert!(matches!(client.recv().await, Some(Ok(Packet::ConnAck(_)))));
    client.send_raw(&[0xC0, 0x00].repeat(50)).await;
    for _ in 0..50 {
        client.expect(Packet::PingResp).await;
    }
}

#[tokio::test]
async fn a9_packet_type_0_is_malformed() {
    let broker = start_broker();
    assert_eq!(exchange_raw(broker.addr, &[0x00, 0x00]).await, b"");
    after_connect_expect_disconnect(broker.addr, &[0x00, 0x00], ReasonCode::MalformedPacket).await;
}

#[tokio::test]
async fn a10_mqtt_2_1_3_1_reserved_flag_bits_are_malformed() {
    let broker = start_broker();
    for bytes in [
        &[0xC1u8, 0x00][..],
        &[0xE1, 0x00],
        &[0x60, 0x02, 0x00, 0x01],
        &[0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'],
    ] {
        after_connect_expect_disconnect(broker.addr, bytes, ReasonCode::MalformedPacket).await;
    }
}

#[tokio::test]
async fn a11_mqtt_4_13_1_1_server_only_packets_from_a_client_are_protocol_errors() {
    let broker = start_broker();
    for bytes in [
        &[0x20u8, 0x03, 0x00, 0x00, 0x00][..],
        &[0xD0, 0x00],
        &[0x90, 0x04, 0x00, 0x01, 0x00, 0x00],
        &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x00],
    ] {
        after_connect_expect_disconnect(broker.addr, bytes, ReasonCode::ProtocolError).await;
    }
}

#[tokio::test]
async fn a12_trailing_bytes_are_malformed() {
    let broker = start_broker();
    after_connect_expect_disconnect(
        broker.addr,
        &[0xC0, 0x01, 0x00],
        ReasonCode::MalformedPacket,
    )
    .await;
}

#[tokio::test]
async fn b13_mqtt_3_1_0_1_first_packet_not_connect_closes_without_reply() {
    let broker = start_broker();
    for bytes in [
        &[0xC0u8, 0x00][..],
        &[0x40, 0x02, 0x00, 0x01],
        &[0x30, 0x03, 0x00, 0x01, b't'],
        &[0xF0, 0x00],
    ] {
        assert_eq!(exchange_raw(broker.addr, bytes).await, b"", "{bytes:02x?}");
    }
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b18_mqtt_3_1_2_11_will_qos_without_will_flag_is_malformed() {
    let broker = start_broker();
    // Flags 0x0A: clean start + Will QoS 1, Will Flag 0.
    let bytes = [
        0x10, 0x0E, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x0A, 0, 60, 0, 0, 1, b'm',
    ];
    assert_eq!(
        exchange_raw(broker.addr, &bytes).await,
        [0x20, 0x03, 0x00, 0x81, 0x00]
    );
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b23_mqtt_1_5_4_invalid_utf8_client_id_is_malformed() {
    let broker = start_broker();
    for id in [&[0xC0u8, 0xAF][..], &[0xED, 0xA0, 0x80], &[b'a', 0x00]] {
        let mut bytes = vec![
            0x10,
            13 + id.len() as u8,
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            5,
            0x02,
            0,
            60,
            0,
        ];
        bytes.extend_from_slice(&[0, id.len() as u8]);
        bytes.extend_from_slice(id);
        assert_eq!(
            exchange_raw(broker.addr, &bytes).await,
            [0x20, 0x03, 0x00, 0x81, 0x00],
            "{id:02x?}"
        );
    }
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b27_duplicate_connect_property_is_a_protocol_error() {
    let broker = start_broker();
    // Properties: Session Expiry Interval twice (11 00 00 00 0A, twice).
    let mut bytes = vec![0x10, 0x18, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 10];
    bytes.extend_from_slice(&[0x11, 0, 0, 0, 10, 0x11, 0, 0, 0, 10]);
    bytes.extend_from_slice(&[0, 1, b'm']);
    assert_eq!(
        exchange_raw(broker.addr, &bytes).await,
        [0x20, 0x03, 0x00, 0x82, 0x00]
    );
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b28_receive_maximum_zero_is_a_protocol_error() {
    let broker = start_broker();
    let mut bytes = vec![0x10, 0x11, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 3];
    bytes.extend_from_slice(&[0x21, 0, 0]);
    bytes.extend_from_slice(&[0, 1, b'm']);
    assert_eq!(
        exchange_raw(broker.addr, &bytes).await,
        [0x20, 0x03, 0x00, 0x82, 0x00]
    );
}

#[tokio::test]
async fn b35_mqtt_4_12_0_7_auth_without_authentication_method_is_a_protocol_error() {
    let broker = start_broker();
    after_connect_expect_disconnect(broker.addr, &[0xF0, 0x00], ReasonCode::ProtocolError).await;
}

#[tokio::test]
async fn c43_c44_c45_bad_publish_headers() {
    let broker = start_broker();
    // QoS 3 [MQTT-3.3.1-4], DUP on QoS 0 [MQTT-3.3.1-2]: malformed.
    after_connect_expect_disconnect(
        broker.addr,
        &[0x36, 0x06, 0x00, 0x01, b't', 0x00, 0x01, 0x00],
        ReasonCode::MalformedPacket,
    )
    .await;
    after_connect_expect_disconnect(
        broker.addr,
        &[0x38, 0x04, 0x00, 0x01, b't', 0x00],
        ReasonCode::MalformedPacket,
    )
    .await;
    // QoS 1 with packet id 0 [MQTT-2.2.1-3]: protocol error.
    after_connect_expect_disconnect(
        broker.addr,
        &[0x32, 0x06, 0x00, 0x01, b't', 0x00, 0x00, 0x00],
        ReasonCode::ProtocolError,
    )
    .await;
    // QoS 1 ending right after the topic: malformed.
    after_connect_expect_disconnect(
        broker.addr,
        &[0x32, 0x03, 0x00, 0x01, b't'],
        ReasonCode::MalformedPacket,
    )
    .await;
}

#[tokio::test]
async fn c47_mqtt_3_3_2_2_wildcard_in_topic_name_gets_0x90() {
    let broker = start_broker();
    for topic in [b"a/#".as_slice(), b"+", b"a/+/b"] {
        let mut bytes = vec![0x30, 3 + topic.len() as u8, 0x00, topic.len() as u8];
        bytes.extend_from_slice(topic);
        bytes.push(0x00);
        after_connect_expect_disconnect(broker.addr, &bytes, ReasonCode::TopicNameInvalid).await;
    }
}

#[tokio::test]
async fn c49_c51_c52_empty_topic_and_topic_aliases() {
    let broker = start_broker();
    // Empty topic, no alias: protocol error (§3.3.4).
    after_connect_expect_disconnect(
        broker.addr,
        &[0x30, 0x03, 0x00, 0x00, 0x00],
        ReasonCode::ProtocolError,
    )
    .await;
    // Topic Alias 0 [MQTT-3.3.2-8], and 11 above the Topic Alias Maximum of 10 [MQTT-3.3.2-12]: 0x94.
    after_connect_expect_disconnect(
        broker.addr,
        &[0x30, 0x07, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x00],
        ReasonCode::TopicAliasInvalid,
    )
    .await;
    after_connect_expect_disconnect(
        broker.addr,
        &[0x30, 0x07, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x0B],
        ReasonCode::TopicAliasInvalid,
    )
    .await;
    // Empty topic with alias 1, which was never set on this connection: protocol error.
    after_connect_expect_disconnect(
        broker.addr,
        &[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01],
        ReasonCode::ProtocolError,
    )
    .await;
}

#[tokio::test]
async fn c56_mqtt_3_3_2_14_response_topic_with_a_wildcard_is_a_protocol_error() {
    let broker = start_broker();
    // Response Topic (0x08) "r/#".
    after_connect_expect_disconnect(
        broker.addr,
        &[
            0x30, 0x0A, 0x00, 0x01, b't', 0x06, 0x08, 0x00, 0x03, b'r', b'/', b'#',
        ],
        ReasonCode::ProtocolError,
    )
    .await;
}

#[tokio::test]
async fn c55_mqtt_3_3_4_6_subscription_identifier_in_publish_is_a_protocol_error() {
    let broker = start_broker();
    after_connect_expect_disconnect(
        broker.addr,
        &[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x0B, 0x01],
        ReasonCode::ProtocolError,
    )
    .await;
}

#[tokio::test]
async fn c60_clients_may_not_publish_to_sys_topics() {
    let broker = start_broker();
    let mut client = Client::connected(broker.addr, V5, "sys").await;
    // QoS 1 PUBLISH to "$SYS/x", packet id 1: PUBACK 0x87, and the connection stays.
    client
        .send_raw(
            &[
                0x32, 0x0C, 0x00, 0x06, b'$', b'S', b'Y', b'S', b'/', b'x', 0x00, 0x01, 0x00, b'!',
            ][..],
        )
        .await;
    client
        .expect(Packet::PubAck(mqttd::mqtt::Ack {
            packet_id: 1,
            reason: ReasonCode::NotAuthorized,
            properties: Properties::default(),
        }))
        .await;
    client.send(Packet::PingReq).await;
    client.expect(Packet::PingResp).await;
}

#[tokio::test]
async fn d65_mqtt_3_8_3_2_subscribe_without_filters_is_a_protocol_error() {
    let broker = start_broker();
    after_connect_expect_disconnect(
        broker.addr,
        &[0x82, 0x03, 0x12, 0x34, 0x00],
        ReasonCode::ProtocolError,
    )
    .await;
}

#[tokio::test]
async fn d69_d70_bad_subscription_options() {
    let broker = start_broker();
    // Options byte missing after the filter.
    after_connect_expect_disconnect(
        broker.addr,
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'],
        ReasonCode::MalformedPacket,
    )
    .await;
    // Reserved bits 6-7 set [MQTT-3.8.3-5].
    after_connect_expect_disconnect(
        broker.addr,
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0xC0],
        ReasonCode::MalformedPacket,
    )
    .await;
    // QoS 3 and Retain Handling 3: protocol errors.
    after_connect_expect_disconnect(
        broker.addr,
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x03],
        ReasonCode::ProtocolError,
    )
    .await;
    after_connect_expect_disconnect(
        broker.addr,
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30],
        ReasonCode::ProtocolError,
    )
    .await;
}

#[tokio::test]
async fn d71_subscribe_with_packet_id_0_is_a_protocol_error() {
    let broker = start_broker();
    after_connect_expect_disconnect(
        broker.addr,
        &[0x82, 0x07, 0x00, 0x00, 0x00, 0x00, 0x01, b'a', 0x00],
        ReasonCode::ProtocolError,
    )
    .await;
}

#[tokio::test]
async fn d79_unsubscribe_without_filters_is_a_protocol_error() {
    let broker = start_broker();
    after_connect_expect_disconnect(
        broker.addr,
        &[0xA2, 0x03, 0x00, 0x01, 0x00],
        ReasonCode::ProtocolError,
    )
    .await;
}
