//! CONNECT / CONNACK (§3.1, §3.2), authentication and take-over.

use bytes::Bytes;
use mqttd::mqtt::{ConnAck, Disconnect, Packet, Properties, ProtocolVersion, ReasonCode};

use crate::common::*;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

fn connack(reason: ReasonCode) -> Packet {
    Packet::ConnAck(ConnAck {
        reason,
        ..Default::default()
    })
}

async fn connack_for(
    addr: std::net::SocketAddr,
    version: ProtocolVersion,
    packet: Packet,
) -> ConnAck {
    let mut client = Client::open(addr, version).await;
    client.send(packet).await;
    match client.recv().await {
        Some(Ok(Packet::ConnAck(ack))) => ack,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn v5_connack_announces_the_server_capabilities() {
    let broker = start_broker();
    let ack = connack_for(broker.addr, V5, connect(V5, "caps")).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(!ack.session_present, "[MQTT-3.2.2-3] no session exists");
    let p = ack.properties;
    assert_eq!(p.receive_maximum, Some(100));
    assert_eq!(p.maximum_packet_size, Some(1024 * 1024));
    assert_eq!(p.topic_alias_maximum, Some(10));
    // Absent means available: retained messages, wildcard and shared subscriptions,
    // subscription identifiers, and QoS 2.
    assert_eq!(p.retain_available, None);
    assert_eq!(p.wildcard_subscription_available, None);
    assert_eq!(p.subscription_identifiers_available, None);
    assert_eq!(p.shared_subscription_available, None);
    assert_eq!(p.maximum_qos, None);
    assert_eq!(p.session_expiry_interval, None, "the client asked for none");
    assert_eq!(p.assigned_client_identifier, None);
    assert_eq!(p.server_keep_alive, None, "no keep-alive cap is configured");
}

#[tokio::test]
async fn v311_connack_is_a_plain_accept() {
    let broker = start_broker();
    let mut client = Client::open(broker.addr, V311).await;
    client.send(connect(V311, "plain")).await;
    client.expect(connack(ReasonCode::Success)).await;
    client.send(Packet::PingReq).await;
    client.expect(Packet::PingResp).await;
}

#[tokio::test]
async fn mqtt_3_1_mqisdp_is_accepted() {
    let broker = start_broker();
    let mut client = Client::open(broker.addr, ProtocolVersion::V31).await;
    client
        .send(connect(ProtocolVersion::V31, "old-client"))
        .await;
    client.expect(connack(ReasonCode::Success)).await;
}

#[tokio::test]
async fn mqtt_3_1_2_2_unsupported_level_gets_connack_0x84_then_close() {
    let broker = start_broker();
    for level in [2u8, 6] {
        // CONNECT "MQTT" level N, clean start, keep alive 60, no properties, client id "x".
        let bytes = [
            0x10, 0x0E, 0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 60, 0, 0, 1, b'x',
        ];
        assert_eq!(
            exchange_raw(broker.addr, &bytes).await,
            [0x20, 0x03, 0x00, 0x84, 0x00]
        );
    }
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn mqtt_3_1_2_1_wrong_protocol_name_closes_without_connack() {
    let broker = start_broker();
    let bytes = [
        0x10, 0x0E, 0, 4, b'M', b'Q', b'T', b'X', 5, 0x02, 0, 60, 0, 0, 1, b'x',
    ];
    assert_eq!(exchange_raw(broker.addr, &bytes).await, b"");
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn mqtt_3_1_2_3_reserved_connect_flag_is_refused() {
    let broker = start_broker();
    let bytes = [
        0x10, 0x0E, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x03, 0, 60, 0, 0, 1, b'x',
    ];
    // v5: CONNACK 0x81 (Malformed Packet), then close.
    assert_eq!(
        exchange_raw(broker.addr, &bytes).await,
        [0x20, 0x03, 0x00, 0x81, 0x00]
    );
    // 3.1.1 has no return code for a malformed CONNECT: just close.
    let bytes = [
        0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 60, 0, 1, b'x',
    ];
    assert_eq!(exchange_raw(broker.addr, &bytes).await, b"");
}

#[tokio::test]
async fn mqtt_3_1_0_2_second_connect_is_a_protocol_error() {
    let broker = start_broker();
    let mut client = Client::connected(broker.addr, V5, "twice").await;
    client.send(connect(V5, "twice")).await;
    client
        .expect(Packet::Disconnect(Disconnect {
            reason: ReasonCode::ProtocolError,
            ..Default::default()
        }))
        .await;
    client.expect_closed().await;
}

#[tokio::test]
async fn mqtt_3_1_3_7_empty_client_id_gets_an_assigned_identifier() {
    let broker = start_broker();
    let ack = connack_for(broker.addr, V5, connect(V5, "")).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    let id = ack
        .properties
        .assigned_client_identifier
        .clone()
        .expect("Assigned Client Identifier");
    assert!(id.starts_with("mqttd-"), "{id}");
    let other = connack_for(broker.addr, V5, connect(V5, "")).await;
    assert_ne!(
        other.properties.assigned_client_identifier,
        Some(id),
        "ids are unique"
    );
}

#[tokio::test]
async fn mqtt_3_1_3_8_v311_empty_client_id_needs_clean_session() {
    let broker = start_broker();
    let Packet::Connect(mut c) = connect(V311, "") else {
        unreachable!()
    };
    c.clean_start = false;
    let mut client = Client::open(broker.addr, V311).await;
    client.send(Packet::Connect(c)).await;
    client
        .expect(connack(ReasonCode::ClientIdentifierNotValid))
        .await;
    client.expect_closed().await;
    // With Clean Session 1 the server assigns an id silently.
    let mut client = Client::open(broker.addr, V311).await;
    client.send(connect(V311, "")).await;
    client.expect(connack(ReasonCode::Success)).await;
}

#[tokio::test]
async fn client_ids_with_control_characters_or_too_long_are_refused_0x85() {
    let broker = start_broker_with(|c| c.limits.max_client_id_len = 30);
    for id in ["bad\u{1}id", "tab\tid", &"x".repeat(31)] {
        let ack = connack_for(broker.addr, V5, connect(V5, id)).await;
        assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid, "{id:?}");
    }
    // [MQTT-3.1.3-5]: 1-23 alphanumerics are always accepted.
    let ack = connack_for(broker.addr, V5, connect(V5, "ABCDEFGHIJKLMNOPQRSTUVW")).await;
    assert_eq!(ack.reason, ReasonCode::Success);
}

#[tokio::test]
async fn mqtt_4_12_0_1_unsupported_authentication_method_gets_0x8c() {
    let broker = start_broker();
    let Packet::Connect(mut c) = connect(V5, "scram") else {
        unreachable!()
    };
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let mut client = Client::open(broker.addr, V5).await;
    client.send(Packet::Connect(c)).await;
    client
        .expect(connack(ReasonCode::BadAuthenticationMethod))
        .await;
    client.expect_closed().await;
}

fn add_user(broker: &TestBroker, name: &str, password: &str) {
    mqttd::db::users::add_user(&broker.db_path.to_string_lossy(), name, password).unwrap();
}

#[tokio::test]
async fn mqtt_3_1_4_2_good_and_bad_credentials() {
    let broker = start_broker_with(|c| c.allow_anonymous = Some(false));
    add_user(&broker, "alice", "wonderland");

    let ack = connack_for(
        broker.addr,
        V5,
        connect_with_credentials(V5, "a1", "alice", "wonderland"),
    )
    .await;
    assert_eq!(ack.reason, ReasonCode::Success);

    for (user, pass) in [("alice", "wrong"), ("nobody", "wonderland"), ("alice", "")] {
        let mut client = Client::open(broker.addr, V5).await;
        client
            .send(connect_with_credentials(V5, "a2", user, pass))
            .await;
        client
            .expect(connack(ReasonCode::BadUserNameOrPassword))
            .await;
        client.expect_closed().await;
    }
    // 3.1.1: return code 4.
    let mut client = Client::open(broker.addr, V311).await;
    client
        .send(connect_with_credentials(V311, "a3", "alice", "wrong"))
        .await;
    client
        .expect(connack(ReasonCode::BadUserNameOrPassword))
        .await;
    client.expect_closed().await;
}

#[tokio::test]
async fn mqtt_3_1_4_2_nothing_pipelined_after_a_refused_connect_is_processed() {
    let broker = start_broker_with(|c| c.allow_anonymous = Some(false));
    add_user(&broker, "alice", "wonderland");
    let mut client = Client::open(broker.addr, V5).await;
    // CONNECT with a wrong password, PINGREQ and SUBSCRIBE in the same segment.
    let mut bytes = bytes::BytesMut::new();
    let mut codec = mqttd::mqtt::MqttCodec::new(V5, 1 << 20);
    use tokio_util::codec::Encoder;
    codec
        .encode(
            connect_with_credentials(V5, "p", "alice", "nope"),
            &mut bytes,
        )
        .unwrap();
    bytes.extend_from_slice(&[0xC0, 0x00]);
    bytes.extend_from_slice(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a']);
    client.send_raw(&bytes).await;
    let reply = client.read_to_close().await;
    assert_eq!(
        reply,
        [0x20, 0x03, 0x00, 0x86, 0x00],
        "only the CONNACK, no PINGRESP or SUBACK"
    );
}

#[tokio::test]
async fn anonymous_clients_are_refused_when_not_allowed() {
    let broker = start_broker_with(|c| c.allow_anonymous = Some(false));
    let mut client = Client::open(broker.addr, V5).await;
    client.send(connect(V5, "anon")).await;
    client.expect(connack(ReasonCode::NotAuthorized)).await;
    client.expect_closed().await;
    let mut client = Client::open(broker.addr, V311).await;
    client.send(connect(V311, "anon")).await;
    client.expect(connack(ReasonCode::NotAuthorized)).await;
    client.expect_closed().await;
}

#[tokio::test]
async fn mqtt_3_2_2_21_server_keep_alive_caps_v5_and_refuses_v311() {
    let broker = start_broker_with(|c| c.limits.max_keep_alive = 10);
    let ack = connack_for(broker.addr, V5, connect(V5, "ka")).await;
    assert_eq!(ack.properties.server_keep_alive, Some(10));
    let Packet::Connect(mut zero) = connect(V5, "ka0") else {
        unreachable!()
    };
    zero.keep_alive = 0;
    let ack = connack_for(broker.addr, V5, Packet::Connect(zero)).await;
    assert_eq!(
        ack.properties.server_keep_alive,
        Some(10),
        "0 (no keep-alive) is capped too"
    );
    let mut client = Client::open(broker.addr, V311).await;
    client.send(connect(V311, "ka3")).await;
    client
        .expect(connack(ReasonCode::ClientIdentifierNotValid))
        .await;
    client.expect_closed().await;
}

#[tokio::test]
async fn mqtt_3_1_4_3_take_over_disconnects_the_old_connection_with_0x8e() {
    let broker = start_broker();
    let mut first = Client::connected(broker.addr, V5, "same-id").await;
    let mut second = Client::connected(broker.addr, V5, "same-id").await;
    first
        .expect(Packet::Disconnect(Disconnect {
            reason: ReasonCode::SessionTakenOver,
            properties: Properties::default(),
        }))
        .await;
    first.expect_closed().await;
    second.send(Packet::PingReq).await;
    second.expect(Packet::PingResp).await;
    // A 3.1.1 client has no server DISCONNECT: it is just closed.
    let mut old = Client::connected(broker.addr, V311, "v3-id").await;
    let _new = Client::connected(broker.addr, V311, "v3-id").await;
    old.expect_closed().await;
}

#[tokio::test]
async fn password_bytes_that_are_not_utf8_are_just_wrong() {
    let broker = start_broker_with(|c| c.allow_anonymous = Some(false));
    add_user(&broker, "bob", "builder");
    let Packet::Connect(mut c) = connect_with_credentials(V5, "b", "bob", "") else {
        unreachable!()
    };
    c.password = Some(Bytes::from_static(&[0xFF, 0xFE, 0x00]));
    let ack = connack_for(broker.addr, V5, Packet::Connect(c)).await;
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
}

/// §3.2.2.3.2: the server tells the client the Session Expiry it uses when it is not the one
/// asked for (here `max_session_expiry` caps it), and says nothing when it is.
#[tokio::test]
async fn section_3_2_2_3_2_session_expiry_over_the_maximum_is_answered_with_the_maximum() {
    let broker = start_broker_with(|c| c.limits.max_session_expiry = 600);
    for (asked, told) in [(3600, Some(600)), (60, None), (u32::MAX, Some(600))] {
        let Packet::Connect(mut c) = connect(V5, "sei") else {
            unreachable!()
        };
        c.properties.session_expiry_interval = Some(asked);
        let ack = connack_for(broker.addr, V5, Packet::Connect(c)).await;
        assert_eq!(
            ack.properties.session_expiry_interval, told,
            "asked {asked}"
        );
    }
}

#[tokio::test]
async fn section_3_1_2_11_6_response_information_when_requested_and_configured() {
    let broker = start_broker_with(|c| c.response_information = Some("replies/".into()));
    let Packet::Connect(mut c) = connect(V5, "rri") else {
        unreachable!()
    };
    c.properties.request_response_information = Some(1);
    let ack = connack_for(broker.addr, V5, Packet::Connect(c)).await;
    assert_eq!(
        ack.properties.response_information.as_deref(),
        Some("replies/")
    );
    let ack = connack_for(broker.addr, V5, connect(V5, "no-rri")).await;
    assert_eq!(
        ack.properties.response_information, None,
        "only when requested"
    );
}
