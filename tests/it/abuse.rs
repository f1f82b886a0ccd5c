//! The rest of bad-inputs.md section 6 (A-H): every applicable case that `malformed.rs`,
//! `limits.rs`, `connect.rs`, `lifecycle.rs`, `pubsub.rs`, `retained.rs`, `acl.rs` and
//! `will.rs` do not already check. Test names start with the case numbers; the map from case
//! to test is docs/bad-inputs-coverage.md. Cases about surviving end with the canary.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttd::config::AclDefault;
use mqttd::mqtt::{
    Ack, Disconnect, Packet, Properties, PropertyValues, ProtocolVersion, Publish, QoS, ReasonCode,
    SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};

use crate::common::*;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

// ---- raw packet builders -------------------------------------------------------------------

/// A Variable Byte Integer (§1.5.5).
fn vbi(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// A whole packet: first byte, Remaining Length, body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(vbi(body.len()));
    out.extend_from_slice(body);
    out
}

/// A length-prefixed UTF-8 string or Binary Data field (§1.5.4, §1.5.6).
fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A property block: Property Length, then the identifier/value pairs in `pairs`.
fn props(pairs: &[u8]) -> Vec<u8> {
    let mut out = vbi(pairs.len());
    out.extend_from_slice(pairs);
    out
}

/// A v5 CONNECT: "MQTT" level 5, `flags`, keep-alive 60, the property block holding
/// `properties`, then `payload` (client id and whatever the flags announce).
fn connect_v5(flags: u8, properties: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 60];
    body.extend(props(properties));
    body.extend_from_slice(payload);
    packet(0x10, &body)
}

/// A 3.1.1 CONNECT with `flags`, keep-alive 60, then `payload`.
fn connect_v311(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
    body.extend_from_slice(payload);
    packet(0x10, &body)
}

/// A v5 CONNECT with only a client id and `flags`.
fn connect_id(flags: u8, properties: &[u8], client_id: &[u8]) -> Vec<u8> {
    connect_v5(flags, properties, &field(client_id))
}

/// A refusing v5 CONNACK with `code` and no properties.
fn connack(code: u8) -> [u8; 5] {
    [0x20, 0x03, 0x00, code, 0x00]
}

/// A v5 QoS 0 PUBLISH with `properties` (pairs) and `payload`.
fn publish_v5(topic: &[u8], properties: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = field(topic);
    body.extend(props(properties));
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

// ---- packet helpers ------------------------------------------------------------------------

fn disconnect(reason: ReasonCode) -> Packet {
    Packet::Disconnect(Disconnect {
        reason,
        properties: Properties::default(),
    })
}

fn ack(packet_id: u16, reason: ReasonCode) -> Ack {
    Ack {
        packet_id,
        reason,
        properties: Properties::default(),
    }
}

fn publish(topic: &str, qos: QoS, packet_id: Option<u16>, payload: &[u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..Default::default()
    }
}

fn granted(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::Success,
        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
    }
}

/// Sends one SUBSCRIBE and returns the SUBACK's reason codes.
async fn subscribe(
    client: &mut Client,
    packet_id: u16,
    filters: &[(&str, QoS)],
) -> Vec<ReasonCode> {
    client
        .send(Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            filters: filters
                .iter()
                .map(|(f, q)| (f.to_string(), options(*q)))
                .collect(),
        }))
        .await;
    match client.recv().await {
        Some(Ok(Packet::SubAck(SubAck {
            packet_id: id,
            reasons,
            ..
        }))) if id == packet_id => reasons,
        other => panic!("expected SUBACK {packet_id}, got {other:?}"),
    }
}

/// Subscribes to `filter` and checks it was granted.
async fn subscribe_ok(client: &mut Client, filter: &str, qos: QoS) {
    assert_eq!(
        subscribe(client, 1, &[(filter, qos)]).await,
        [granted(qos)],
        "SUBSCRIBE {filter:?}"
    );
}

/// The next packet must be a PUBLISH.
async fn next_publish(client: &mut Client) -> Publish {
    match client.recv().await {
        Some(Ok(Packet::Publish(p))) => *p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// `publisher` sends a QoS 0 "marker" on `topic`; it must be the next thing `subscriber` gets,
/// so nothing published before it is still on its way.
async fn assert_next_is_marker(subscriber: &mut Client, publisher: &mut Client, topic: &str) {
    publisher
        .send(Packet::Publish(Box::new(publish(
            topic,
            QoS::AtMostOnce,
            None,
            b"marker",
        ))))
        .await;
    let got = next_publish(subscriber).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        (topic, &b"marker"[..]),
        "something arrived before the marker: {got:?}"
    );
}

/// Connects as v5, sends `bytes`, expects DISCONNECT `reason` then close; then the canary.
async fn after_connect_expect_disconnect(addr: SocketAddr, bytes: &[u8], reason: ReasonCode) {
    let mut client = Client::connected(addr, V5, "bad").await;
    client.send_raw(bytes).await;
    client.expect(disconnect(reason)).await;
    client.expect_closed().await;
    assert_canary(addr).await;
}

/// Sends `packet` as the first packet and returns the CONNACK's reason code.
async fn connack_reason(addr: SocketAddr, version: ProtocolVersion, packet: Packet) -> ReasonCode {
    let mut client = Client::open(addr, version).await;
    client.send(packet).await;
    match client.recv().await {
        Some(Ok(Packet::ConnAck(ack))) => ack.reason,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Opens a v5 connection with a CONNECT that `adjust` changed; panics unless accepted.
async fn connected_with(
    addr: SocketAddr,
    client_id: &str,
    adjust: impl FnOnce(&mut mqttd::mqtt::Connect),
) -> Client {
    let Packet::Connect(mut c) = connect(V5, client_id) else {
        unreachable!()
    };
    adjust(&mut c);
    let mut client = Client::open(addr, V5).await;
    client.send(Packet::Connect(c)).await;
    match client.recv().await {
        Some(Ok(Packet::ConnAck(ack))) if ack.reason == ReasonCode::Success => client,
        other => panic!("expected a successful CONNACK, got {other:?}"),
    }
}

/// A TCP client whose receive buffer is tiny, so the broker's writes to it stall early.
async fn open_with_small_receive_buffer(addr: SocketAddr) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    Client {
        framed: tokio_util::codec::Framed::new(
            stream,
            mqttd::mqtt::MqttCodec::new(V5, 268_435_460),
        ),
    }
}

/// Polls the database until `client_id`'s disconnect is recorded; returns its reason.
pub(crate) async fn wait_for_disconnect_reason(broker: &TestBroker, client_id: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let record = mqttd::db::queries::get_client(&mut broker.db(), client_id).unwrap();
        if let Some(r) = record.filter(|r| r.disconnected_at_ms.is_some()) {
            return r.disconnect_reason.unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "no disconnect recorded for {client_id}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- A. Framing and fixed header -----------------------------------------------------------

#[tokio::test]
async fn a7_g101_remaining_length_longer_than_sent_then_a_stall_is_closed_at_the_timeout() {
    let broker = start_broker_with(|c| c.limits.connect_timeout = 1);
    let addr = broker.addr;
    // Before CONNECT: a CONNECT declaring 14 bytes with 5 sent, and `10 FF` (G101): the
    // connect timeout closes both without a reply.
    let partial_connect = async {
        let start = Instant::now();
        let mut client = Client::open(addr, V5).await;
        client.send_raw(&[0x10, 0x0E, 0, 4, b'M', b'Q', b'T']).await;
        assert_eq!(client.read_to_close().await, b"");
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(900),
            "closed after {waited:?}"
        );
    };
    let half_length = async {
        let mut client = Client::open(addr, V5).await;
        client.send_raw(&[0x10, 0xFF]).await;
        assert_eq!(client.read_to_close().await, b"");
    };
    // After CONNACK: a PUBLISH declaring 10 bytes with 3 sent. An incomplete packet is no
    // Control Packet, so the keep-alive (1 s, closed after 1.5 s) ends the connection.
    let partial_publish = async {
        let mut client = connected_with(addr, "stall", |c| c.keep_alive = 1).await;
        let start = Instant::now();
        client.send_raw(&[0x30, 0x0A, 0x00, 0x01, b't']).await;
        client
            .expect(disconnect(ReasonCode::KeepAliveTimeout))
            .await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(1400),
            "closed after {waited:?}"
        );
        client.expect_closed().await;
    };
    tokio::join!(partial_connect, half_length, partial_publish);
    assert_canary(addr).await;
}

#[tokio::test]
async fn a10_a11_reserved_flag_bits_on_connect_subscribe_unsubscribe_pubrel_auth_connack() {
    let broker = start_broker();
    // CONNECT with a flag bit set, as the first packet: closed without a reply.
    let valid = connect_id(0x02, &[], b"m");
    for first in [0x11u8, 0x12, 0x14, 0x18] {
        let mut bytes = valid.clone();
        bytes[0] = first;
        assert_eq!(exchange_raw(broker.addr, &bytes).await, b"", "{first:#04x}");
    }
    assert_canary(broker.addr).await;
    for bytes in [
        // UNSUBSCRIBE 0xA3 and 0xA0 (must be 0xA2).
        &[0xA3u8, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'][..],
        &[0xA0, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'],
        // SUBSCRIBE 0x83 (must be 0x82).
        &[0x83, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00],
        // PUBREL 0x63 (must be 0x62).
        &[0x63, 0x02, 0x00, 0x01],
        // AUTH 0xF1.
        &[0xF1, 0x00],
        // A11: CONNACK with flag bits (0x29): malformed before it is even a server packet.
        &[0x29, 0x03, 0x00, 0x00, 0x00],
    ] {
        after_connect_expect_disconnect(broker.addr, bytes, ReasonCode::MalformedPacket).await;
    }
}

#[tokio::test]
async fn a12_trailing_bytes_in_v311_close_and_in_v5_get_0x81() {
    let broker = start_broker();
    // 3.1.1 has no server DISCONNECT: DISCONNECT `E0 01 00`, PUBACK with RL 3 and PINGREQ
    // with RL 1 close the connection.
    for bytes in [
        &[0xE0u8, 0x01, 0x00][..],
        &[0x40, 0x03, 0x00, 0x01, 0x00],
        &[0xC0, 0x01, 0x00],
    ] {
        let mut client = Client::connected(broker.addr, V311, "v3-trailing").await;
        client.send_raw(bytes).await;
        client.expect_closed().await;
    }
    // v5: a byte after the properties of DISCONNECT and of PUBACK.
    for bytes in [
        &[0xE0u8, 0x03, 0x00, 0x00, 0xFF][..],
        &[0x40, 0x05, 0x00, 0x01, 0x00, 0x00, 0xFF],
    ] {
        after_connect_expect_disconnect(broker.addr, bytes, ReasonCode::MalformedPacket).await;
    }
}

// ---- B. Connection establishment and CONNECT -----------------------------------------------

#[tokio::test]
async fn b15_protocol_name_mqisdp_with_level_5_mqt_or_empty_closes_without_connack() {
    let broker = start_broker();
    for name in [&b"MQIsdp"[..], b"MQT", b"", b"mqtt"] {
        let mut body = field(name);
        body.extend_from_slice(&[5, 0x02, 0, 60, 0]);
        body.extend(field(b"m"));
        assert_eq!(
            exchange_raw(broker.addr, &packet(0x10, &body)).await,
            b"",
            "{name:?}"
        );
    }
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b16_protocol_levels_0_255_and_mqisdp_6_get_connack_0x84_in_v5_format() {
    let broker = start_broker();
    for (name, level) in [(&b"MQTT"[..], 0u8), (b"MQTT", 255), (b"MQIsdp", 6)] {
        let mut body = field(name);
        body.extend_from_slice(&[level, 0x02, 0, 60, 0]);
        body.extend(field(b"m"));
        assert_eq!(
            exchange_raw(broker.addr, &packet(0x10, &body)).await,
            connack(0x84),
            "{level}"
        );
    }
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b18_b19_will_retain_without_will_and_will_qos_3_are_malformed() {
    let broker = start_broker();
    // Will Retain (0x20) without the Will Flag [MQTT-3.1.2-13].
    assert_eq!(
        exchange_raw(broker.addr, &connect_id(0x22, &[], b"m")).await,
        connack(0x81)
    );
    // Will Flag with Will QoS 3 (0x18) [MQTT-3.1.2-12], the Will complete.
    let mut payload = field(b"m");
    payload.extend(props(&[]));
    payload.extend(field(b"will/t"));
    payload.extend(field(b"bye"));
    assert_eq!(
        exchange_raw(broker.addr, &connect_v5(0x1E, &[], &payload)).await,
        connack(0x81)
    );
    // 3.1.1 has no return code for it: closed without CONNACK.
    let mut payload = field(b"m");
    payload.extend(field(b"will/t"));
    payload.extend(field(b"bye"));
    assert_eq!(
        exchange_raw(broker.addr, &connect_v311(0x1E, &payload)).await,
        b""
    );
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b20_will_flag_with_missing_will_fields_is_malformed() {
    let broker = start_broker();
    let id = field(b"m");
    let will_props = props(&[]);
    let topic = field(b"will/t");
    // Will Flag (0x04) and clean start, but the packet ends after the client id, after the
    // Will Properties, and after the Will Topic.
    for payload in [
        id.clone(),
        [id.clone(), will_props.clone()].concat(),
        [id.clone(), will_props.clone(), topic.clone()].concat(),
    ] {
        assert_eq!(
            exchange_raw(broker.addr, &connect_v5(0x06, &[], &payload)).await,
            connack(0x81),
            "{payload:02x?}"
        );
    }
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b21_username_and_password_flags_that_disagree_with_the_payload() {
    let broker = start_broker();
    let id = field(b"m");
    let user = field(b"user");
    let pass = field(b"pass");
    for (flags, payload) in [
        // User Name Flag without a user name, Password Flag without a password.
        (0x82u8, id.clone()),
        (0xC2, [id.clone(), user.clone()].concat()),
        // A user name, or a password, the flags do not announce: trailing bytes.
        (0x02, [id.clone(), user.clone()].concat()),
        (0x82, [id.clone(), user.clone(), pass.clone()].concat()),
    ] {
        assert_eq!(
            exchange_raw(broker.addr, &connect_v5(flags, &[], &payload)).await,
            connack(0x81),
            "flags {flags:#04x}"
        );
    }
    // 3.1.1: Password Flag without User Name Flag [MQTT-3.1.2-22]: closed without CONNACK.
    assert_eq!(
        exchange_raw(broker.addr, &connect_v311(0x42, &[id, pass].concat())).await,
        b""
    );
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b23_invalid_utf8_in_username_and_will_topic_and_truncated_sequences_are_malformed() {
    let broker = start_broker();
    let id = field(b"m");
    let payloads = [
        // Client id ending in a truncated 3-byte sequence.
        (0x02u8, field(&[b'a', 0xE2, 0x82])),
        // User name with an overlong '/' and with an encoded surrogate.
        (0x82, [id.clone(), field(&[0xC0, 0xAF])].concat()),
        (0x82, [id.clone(), field(&[0xED, 0xA0, 0x80])].concat()),
        // Will Topic with U+0000.
        (
            0x06,
            [id.clone(), props(&[]), field(b"w\0t"), field(b"x")].concat(),
        ),
    ];
    for (flags, payload) in payloads {
        assert_eq!(
            exchange_raw(broker.addr, &connect_v5(flags, &[], &payload)).await,
            connack(0x81),
            "{payload:02x?}"
        );
    }
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b24_b26_client_id_policy_control_characters_refused_others_accepted() {
    let broker = start_broker_with(|c| c.limits.max_client_id_len = 100);
    // C0 and C1 controls (U+007F-U+009F included) are refused with 0x85 (README policy).
    for id in ["\u{7f}", "a\u{85}b", "\u{9f}", "\u{1b}[31m"] {
        assert_eq!(
            connack_reason(broker.addr, V5, connect(V5, id)).await,
            ReasonCode::ClientIdentifierNotValid,
            "{id:?}"
        );
    }
    // 3.1.1 gets return code 2 for the same reason.
    assert_eq!(
        connack_reason(broker.addr, V311, connect(V311, "bell\u{7}")).await,
        ReasonCode::ClientIdentifierNotValid
    );
    // Noncharacters and format characters are not controls: accepted.
    for id in ["\u{FFFF}", "zero\u{200B}width", "\u{FEFF}bom"] {
        assert_eq!(
            connack_reason(broker.addr, V5, connect(V5, id)).await,
            ReasonCode::Success,
            "{id:?}"
        );
    }
    // B26: 65,535 bytes over a maximum of 100: 0x85.
    assert_eq!(
        connack_reason(broker.addr, V5, connect(V5, &"x".repeat(65_535))).await,
        ReasonCode::ClientIdentifierNotValid
    );
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b24_a_username_with_control_characters_is_only_looked_up_and_refused_0x86() {
    let broker = start_broker();
    // Anonymous clients are allowed, but a user name is always checked: this one does not
    // exist. It is not filtered beforehand.
    let packet = connect_with_credentials(V5, "ctl", "ro\u{1}ot\u{7f}", "pw");
    assert_eq!(
        connack_reason(broker.addr, V5, packet).await,
        ReasonCode::BadUserNameOrPassword
    );
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b25_client_ids_with_wildcards_or_slashes_gain_nothing_through_percent_c() {
    let broker = start_broker_with(|c| c.acl_default = AclDefault::Deny);
    for (action, topic) in [
        (mqttd::acl::AclAction::Subscribe, "clients/%c/#"),
        (mqttd::acl::AclAction::Publish, "clients/%c/#"),
    ] {
        mqttd::db::acl::add_rule(
            &broker.db_path.to_string_lossy(),
            &mqttd::acl::AclSubject::All,
            mqttd::acl::AclPermission::Allow,
            action,
            topic,
        )
        .unwrap();
    }
    for id in ["#", "+", "a/+", "a/b"] {
        let mut client = Client::connected(broker.addr, V5, id).await;
        let reasons = subscribe(
            &mut client,
            1,
            &[
                ("clients/#", QoS::AtMostOnce),
                ("clients/+/#", QoS::AtMostOnce),
                ("clients/a/+/#", QoS::AtMostOnce),
                ("clients/other/#", QoS::AtMostOnce),
            ],
        )
        .await;
        assert_eq!(reasons, [ReasonCode::NotAuthorized; 4], "client id {id:?}");
        client
            .send(Packet::Publish(Box::new(publish(
                "clients/a/b/x",
                QoS::AtLeastOnce,
                Some(2),
                b"p",
            ))))
            .await;
        client
            .expect(Packet::PubAck(ack(2, ReasonCode::NotAuthorized)))
            .await;
    }
    // The substitution itself works for an ordinary id.
    let mut plain = Client::connected(broker.addr, V5, "plain").await;
    assert_eq!(
        subscribe(&mut plain, 1, &[("clients/plain/#", QoS::AtMostOnce)]).await,
        [ReasonCode::Success]
    );
}

#[tokio::test]
async fn b29_request_response_or_problem_information_2_is_a_protocol_error() {
    let broker = start_broker();
    for property in [0x19u8, 0x17] {
        assert_eq!(
            exchange_raw(broker.addr, &connect_id(0x02, &[property, 0x02], b"m")).await,
            connack(0x82),
            "{property:#04x}"
        );
    }
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b30_properties_not_allowed_in_the_packet_are_malformed() {
    let broker = start_broker();
    // In CONNECT: Topic Alias, Subscription Identifier, Will Delay Interval.
    for property in [
        &[0x23u8, 0x00, 0x01][..],
        &[0x0B, 0x01],
        &[0x18, 0, 0, 0, 1],
    ] {
        assert_eq!(
            exchange_raw(broker.addr, &connect_id(0x02, property, b"m")).await,
            connack(0x81),
            "{property:02x?}"
        );
    }
    // Session Expiry Interval in PUBLISH.
    after_connect_expect_disconnect(
        broker.addr,
        &publish_v5(b"t", &[0x11, 0, 0, 0, 10], b""),
        ReasonCode::MalformedPacket,
    )
    .await;
    // PUBREL with a Topic Alias, and with a Content Type (only Reason String and User Property
    // are allowed).
    for property in [&[0x23u8, 0x00, 0x01][..], &[0x03, 0x00, 0x01, b'x']] {
        let mut body = vec![0x00, 0x01, 0x00];
        body.extend(props(property));
        after_connect_expect_disconnect(
            broker.addr,
            &packet(0x62, &body),
            ReasonCode::MalformedPacket,
        )
        .await;
    }
}

#[tokio::test]
async fn b31_unknown_property_identifiers_are_malformed() {
    let broker = start_broker();
    // 0x00, 0x04, 0x7F and the two-byte identifier 128 (`80 01`), each with a byte of value.
    let unknown: [&[u8]; 4] = [
        &[0x00, 0x00],
        &[0x04, 0x00],
        &[0x7F, 0x00],
        &[0x80, 0x01, 0x00],
    ];
    for property in unknown {
        assert_eq!(
            exchange_raw(broker.addr, &connect_id(0x02, property, b"m")).await,
            connack(0x81),
            "CONNECT {property:02x?}"
        );
        after_connect_expect_disconnect(
            broker.addr,
            &publish_v5(b"t", property, b""),
            ReasonCode::MalformedPacket,
        )
        .await;
    }
}

#[tokio::test]
async fn b32_property_length_past_the_end_or_a_truncated_value_is_malformed() {
    let broker = start_broker();
    // CONNECT whose Property Length (0x20) runs past the packet.
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0x20];
    body.extend(field(b"m"));
    assert_eq!(
        exchange_raw(broker.addr, &packet(0x10, &body)).await,
        connack(0x81)
    );
    // Session Expiry Interval cut after 2 of its 4 bytes (`11 00 01`).
    assert_eq!(
        exchange_raw(broker.addr, &connect_id(0x02, &[0x11, 0x00, 0x01], b"m")).await,
        connack(0x81)
    );
    // PUBLISH: Property Length 9 with 3 bytes left; a Message Expiry cut short.
    after_connect_expect_disconnect(
        broker.addr,
        &[0x30, 0x07, 0x00, 0x01, b't', 0x09, 0x02, 0x00, 0x00],
        ReasonCode::MalformedPacket,
    )
    .await;
    after_connect_expect_disconnect(
        broker.addr,
        &publish_v5(b"t", &[0x02, 0x00, 0x00], b""),
        ReasonCode::MalformedPacket,
    )
    .await;
}

#[tokio::test]
async fn b33_authentication_data_without_method_is_a_protocol_error() {
    let broker = start_broker();
    assert_eq!(
        exchange_raw(
            broker.addr,
            &connect_id(0x02, &[0x16, 0x00, 0x02, 0xAB, 0xCD], b"m")
        )
        .await,
        connack(0x82)
    );
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b36_ten_thousand_user_properties_get_0x95_with_the_default_cap() {
    let broker = start_broker();
    // 10,000 empty User Properties (`26 00 00 00 00`): 50 kB, under the packet size limit.
    let many: Vec<u8> = [0x26u8, 0, 0, 0, 0].repeat(10_000);
    assert_eq!(
        exchange_raw(broker.addr, &connect_id(0x02, &many, b"m")).await,
        connack(0x95)
    );
    // In a Will: counted with the CONNECT's.
    let mut payload = field(b"m");
    payload.extend(props(&many));
    payload.extend(field(b"will/t"));
    payload.extend(field(b"x"));
    assert_eq!(
        exchange_raw(broker.addr, &connect_v5(0x06, &[], &payload)).await,
        connack(0x95)
    );
    let start = Instant::now();
    after_connect_expect_disconnect(
        broker.addr,
        &publish_v5(b"t", &many, b""),
        ReasonCode::PacketTooLarge,
    )
    .await;
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn b36_a_megabyte_of_properties_is_delivered_and_one_byte_more_than_the_limit_is_not() {
    let broker = start_broker();
    let mut sub = Client::connected(broker.addr, V5, "sub").await;
    subscribe_ok(&mut sub, "big", QoS::AtMostOnce).await;
    // 15 User Properties of 65,000 bytes each: 975 kB of properties, under the 1 MiB limit.
    let value = "v".repeat(65_000);
    let mut p = publish("big", QoS::AtMostOnce, None, b"x");
    p.properties.user_properties = (0..15).map(|i| (format!("k{i}"), value.clone())).collect();
    let sent = p.properties.clone();
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    publisher.send(Packet::Publish(Box::new(p))).await;
    let got = next_publish(&mut sub).await;
    assert_eq!(got.properties, sent);
    // 17 of them are over the limit: refused from the fixed header (A5). Only the start of
    // the packet is sent, so the broker has read everything when it closes.
    let mut p = publish("big", QoS::AtMostOnce, None, b"x");
    p.properties.user_properties = (0..17).map(|i| (format!("k{i}"), value.clone())).collect();
    let mut encoded = bytes::BytesMut::new();
    let mut codec = mqttd::mqtt::MqttCodec::new(V5, 268_435_460);
    tokio_util::codec::Encoder::encode(&mut codec, Packet::Publish(Box::new(p)), &mut encoded)
        .unwrap();
    assert!(encoded.len() > 1024 * 1024);
    publisher.send_raw(&encoded[..1000]).await;
    publisher
        .expect(disconnect(ReasonCode::PacketTooLarge))
        .await;
    publisher.expect_closed().await;
    sub.send(Packet::PingReq).await;
    sub.expect(Packet::PingResp).await;
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b37_invalid_will_properties_are_refused_and_a_leading_content_type_is_fine() {
    let broker = start_broker();
    // Request Problem Information (0x17) and Topic Alias (0x23) are not Will properties; a
    // Payload Format Indicator of 2 is an invalid value.
    for (will_props, code) in [
        (&[0x17u8, 0x01][..], 0x81),
        (&[0x23, 0x00, 0x01], 0x81),
        (&[0x01, 0x02], 0x82),
        (&[0x08, 0x00, 0x03, b'r', b'/', b'#'], 0x82),
    ] {
        let mut payload = field(b"m");
        payload.extend(props(will_props));
        payload.extend(field(b"will/t"));
        payload.extend(field(b"x"));
        assert_eq!(
            exchange_raw(broker.addr, &connect_v5(0x06, &[], &payload)).await,
            connack(code),
            "{will_props:02x?}"
        );
    }
    // Content Type as the first (and only) Will property: accepted, and the Will carries it.
    let mut listener = Client::connected(broker.addr, V5, "listener").await;
    subscribe_ok(&mut listener, "will/#", QoS::AtMostOnce).await;
    let mut payload = field(b"ct");
    payload.extend(props(&[[0x03u8, 0x00, 0x04].as_slice(), b"text"].concat()));
    payload.extend(field(b"will/ct"));
    payload.extend(field(b"gone"));
    let mut willer = Client::open(broker.addr, V5).await;
    willer.send_raw(&connect_v5(0x06, &[], &payload)).await;
    assert!(matches!(
        willer.recv().await,
        Some(Ok(Packet::ConnAck(a))) if a.reason == ReasonCode::Success
    ));
    drop(willer);
    let got = next_publish(&mut listener).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("will/ct", &b"gone"[..])
    );
    assert_eq!(got.properties.content_type.as_deref(), Some("text"));
    assert_canary(broker.addr).await;
}

fn will(topic: &str, payload: &[u8]) -> Will {
    Will {
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
    }
}

#[tokio::test]
async fn b38_will_delay_longer_than_session_expiry_publishes_the_will_once_at_session_end() {
    let broker = start_broker();
    let mut listener = Client::connected(broker.addr, V5, "listener").await;
    subscribe_ok(&mut listener, "will/#", QoS::AtMostOnce).await;
    let willer = connected_with(broker.addr, "delayed", |c| {
        c.properties.session_expiry_interval = Some(1);
        let mut w = will("will/delayed", b"bye");
        w.properties.will_delay_interval = Some(3600);
        c.will = Some(w);
    })
    .await;
    drop(willer);
    // §3.1.2.5: the Will goes at the earlier of the Will Delay and the session's end (1 s).
    let got = next_publish(&mut listener).await;
    assert_eq!(got.topic, "will/delayed");
    let mut marker = Client::connected(broker.addr, V5, "marker").await;
    assert_next_is_marker(&mut listener, &mut marker, "will/marker").await;
}

#[tokio::test]
async fn b40_will_topic_with_wildcards_gets_0x90_and_an_oversized_will_is_closed() {
    let broker = start_broker_with(|c| c.limits.max_packet_size = 200);
    for topic in ["will/#", "+", "a/+/b"] {
        let Packet::Connect(mut c) = connect(V5, "wild") else {
            unreachable!()
        };
        c.will = Some(will(topic, b"x"));
        assert_eq!(
            connack_reason(broker.addr, V5, Packet::Connect(c)).await,
            ReasonCode::TopicNameInvalid,
            "{topic:?}"
        );
    }
    // A Will payload that makes CONNECT larger than Maximum Packet Size: the CONNECT is
    // refused from its fixed header, before its version is known, so there is no CONNACK.
    let Packet::Connect(mut c) = connect(V5, "fat") else {
        unreachable!()
    };
    c.will = Some(will("will/fat", &[0u8; 300]));
    let mut client = Client::open(broker.addr, V5).await;
    client.send(Packet::Connect(c)).await;
    assert_eq!(client.read_to_close().await, b"");
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn b40_a_will_to_sys_is_accepted_but_never_published() {
    let broker = start_broker();
    let mut listener = Client::connected(broker.addr, V5, "listener").await;
    subscribe_ok(&mut listener, "$SYS/#", QoS::AtMostOnce).await;
    subscribe_ok(&mut listener, "marker", QoS::AtMostOnce).await;
    let willer = connected_with(broker.addr, "sys-will", |c| {
        c.will = Some(will("$SYS/broker/forged", b"x"));
    })
    .await;
    drop(willer);
    wait_for_disconnect_reason(&broker, "sys-will").await;
    let mut marker = Client::connected(broker.addr, V5, "marker").await;
    assert_next_is_marker(&mut listener, &mut marker, "marker").await;
}

#[tokio::test]
async fn b42_keep_alive_0_with_a_cap_is_capped_and_enforced() {
    let broker = start_broker_with(|c| c.limits.max_keep_alive = 1);
    let Packet::Connect(mut c) = connect(V5, "ka0") else {
        unreachable!()
    };
    c.keep_alive = 0;
    let mut client = Client::open(broker.addr, V5).await;
    client.send(Packet::Connect(c)).await;
    match client.recv().await {
        Some(Ok(Packet::ConnAck(ack))) => {
            assert_eq!(ack.reason, ReasonCode::Success);
            assert_eq!(ack.properties.server_keep_alive, Some(1));
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let start = Instant::now();
    client
        .expect(disconnect(ReasonCode::KeepAliveTimeout))
        .await;
    let waited = start.elapsed();
    assert!(
        (Duration::from_millis(1400)..Duration::from_millis(3000)).contains(&waited),
        "closed after {waited:?}"
    );
    // 3.1.1 with Keep Alive 0 (and 65,535) cannot be told: return code 2.
    for keep_alive in [0, u16::MAX] {
        let Packet::Connect(mut c) = connect(V311, "ka3") else {
            unreachable!()
        };
        c.keep_alive = keep_alive;
        assert_eq!(
            connack_reason(broker.addr, V311, Packet::Connect(c)).await,
            ReasonCode::ClientIdentifierNotValid
        );
    }
}

// ---- C. PUBLISH ----------------------------------------------------------------------------

#[tokio::test]
async fn c46_qos_2_publish_ending_inside_the_packet_id_is_malformed() {
    let broker = start_broker();
    for bytes in [
        &[0x34u8, 0x03, 0x00, 0x01, b't'][..],
        &[0x34, 0x04, 0x00, 0x01, b't', 0x00],
        &[0x32, 0x04, 0x00, 0x01, b't', 0x00],
    ] {
        after_connect_expect_disconnect(broker.addr, bytes, ReasonCode::MalformedPacket).await;
    }
}

#[tokio::test]
async fn c48_topics_with_nul_or_ill_formed_utf8_are_malformed_and_never_forwarded() {
    let broker = start_broker();
    let mut listener = Client::connected(broker.addr, V5, "listener").await;
    subscribe_ok(&mut listener, "#", QoS::AtMostOnce).await;
    for topic in [
        &b"a\0b"[..],
        &[b'a', 0xFF],
        &[0xC0, 0xAF],
        &[0xED, 0xA0, 0x80],
        &[b'a', 0xE2, 0x82],
    ] {
        after_connect_expect_disconnect(
            broker.addr,
            &publish_v5(topic, &[], b"evil"),
            ReasonCode::MalformedPacket,
        )
        .await;
    }
    let mut marker = Client::connected(broker.addr, V5, "marker").await;
    assert_next_is_marker(&mut listener, &mut marker, "marker").await;
}

#[tokio::test]
async fn c53_mqtt_3_3_2_7_a_topic_alias_does_not_carry_over_to_another_connection() {
    let broker = start_broker();
    let mut first = Client::connected(broker.addr, V5, "first").await;
    // "t" with Topic Alias 1, then alias 1 alone: fine on this connection.
    first
        .send_raw(&publish_v5(b"t", &[0x23, 0x00, 0x01], b"1"))
        .await;
    first
        .send_raw(&publish_v5(b"", &[0x23, 0x00, 0x01], b"2"))
        .await;
    first.send(Packet::PingReq).await;
    first.expect(Packet::PingResp).await;
    // Alias 1 alone on a second connection (same client id, and another): never set there.
    for id in ["first", "second"] {
        let mut other = Client::connected(broker.addr, V5, id).await;
        other
            .send_raw(&publish_v5(b"", &[0x23, 0x00, 0x01], b"3"))
            .await;
        other.expect(disconnect(ReasonCode::ProtocolError)).await;
        other.expect_closed().await;
    }
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn c54_a_duplicated_publish_property_is_a_protocol_error() {
    let broker = start_broker();
    let twice = |one: &[u8]| [one, one].concat();
    for property in [
        twice(&[0x23, 0x00, 0x01]),
        twice(&[0x02, 0x00, 0x00, 0x00, 0x0A]),
        twice(&[0x01, 0x01]),
        twice(&[0x08, 0x00, 0x01, b'r']),
        twice(&[0x09, 0x00, 0x01, 0xAA]),
        twice(&[0x03, 0x00, 0x01, b'c']),
    ] {
        after_connect_expect_disconnect(
            broker.addr,
            &publish_v5(b"t", &property, b""),
            ReasonCode::ProtocolError,
        )
        .await;
    }
}

#[tokio::test]
async fn c56_response_topic_with_invalid_utf8_is_malformed() {
    let broker = start_broker();
    after_connect_expect_disconnect(
        broker.addr,
        &publish_v5(b"t", &[0x08, 0x00, 0x02, b'r', 0xFF], b""),
        ReasonCode::MalformedPacket,
    )
    .await;
    // And one with '+': a protocol error like '#' (malformed.rs c56).
    after_connect_expect_disconnect(
        broker.addr,
        &publish_v5(b"t", &[0x08, 0x00, 0x03, b'r', b'/', b'+'], b""),
        ReasonCode::ProtocolError,
    )
    .await;
}

#[tokio::test]
async fn c57_payload_format_indicator_2_is_a_protocol_error_and_1_is_forwarded_unchecked() {
    let broker = start_broker();
    after_connect_expect_disconnect(
        broker.addr,
        &publish_v5(b"t", &[0x01, 0x02], b"x"),
        ReasonCode::ProtocolError,
    )
    .await;
    // PFI 1 with a payload that is not UTF-8: forwarded unaltered (README policy).
    let mut sub = Client::connected(broker.addr, V5, "sub").await;
    subscribe_ok(&mut sub, "pfi", QoS::AtMostOnce).await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    let mut p = publish("pfi", QoS::AtLeastOnce, Some(1), &[0xFF, 0xFE, 0x00, 0xC0]);
    p.properties.payload_format_indicator = Some(1);
    publisher.send(Packet::Publish(Box::new(p))).await;
    publisher
        .expect(Packet::PubAck(ack(1, ReasonCode::Success)))
        .await;
    let got = next_publish(&mut sub).await;
    assert_eq!(&got.payload[..], &[0xFF, 0xFE, 0x00, 0xC0]);
    assert_eq!(got.properties.payload_format_indicator, Some(1));
}

#[tokio::test]
async fn c62_packets_at_the_maximum_size_and_one_below_pass_one_above_gets_0x95() {
    const MAX: usize = 1000;
    let broker = start_broker_with(|c| c.limits.max_packet_size = MAX as u32);
    let mut sub = Client::connected(broker.addr, V5, "sub").await;
    subscribe_ok(&mut sub, "t", QoS::AtMostOnce).await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    // Fixed header (3 bytes for RL >= 128) + topic (3) + Property Length (1) + payload.
    let payload_for = |total: usize| total - 3 - 3 - 1;
    for total in [MAX - 1, MAX] {
        let bytes = publish_v5(b"t", &[], &vec![b'p'; payload_for(total)]);
        assert_eq!(bytes.len(), total);
        publisher.send_raw(&bytes).await;
        let got = next_publish(&mut sub).await;
        assert_eq!(got.payload.len(), payload_for(total));
    }
    let bytes = publish_v5(b"t", &[], &vec![b'p'; payload_for(MAX + 1)]);
    assert_eq!(bytes.len(), MAX + 1);
    publisher.send_raw(&bytes).await;
    publisher
        .expect(disconnect(ReasonCode::PacketTooLarge))
        .await;
    publisher.expect_closed().await;
    let mut marker = Client::connected(broker.addr, V5, "marker").await;
    assert_next_is_marker(&mut sub, &mut marker, "t").await;
}

#[tokio::test]
async fn c64_mqtt_3_3_1_3_an_incoming_dup_1_goes_out_with_dup_0() {
    let broker = start_broker();
    let mut sub = Client::connected(broker.addr, V5, "sub").await;
    subscribe_ok(&mut sub, "dup", QoS::AtLeastOnce).await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    // A first arrival already marked DUP (the publisher's earlier attempt was lost), QoS 1 and
    // QoS 2.
    for (qos, id) in [(QoS::AtLeastOnce, 1), (QoS::ExactlyOnce, 2)] {
        let mut p = publish("dup", qos, Some(id), b"again");
        p.dup = true;
        publisher.send(Packet::Publish(Box::new(p))).await;
        let reply = ack(id, ReasonCode::Success);
        if qos == QoS::AtLeastOnce {
            publisher.expect(Packet::PubAck(reply)).await;
        } else {
            publisher.expect(Packet::PubRec(reply.clone())).await;
            publisher.send(Packet::PubRel(reply.clone())).await;
            publisher.expect(Packet::PubComp(reply)).await;
        }
        let got = next_publish(&mut sub).await;
        assert!(!got.dup, "[MQTT-3.3.1-3] DUP is set per hop: {got:?}");
        sub.send(Packet::PubAck(ack(
            got.packet_id.unwrap(),
            ReasonCode::Success,
        )))
        .await;
    }
}

// ---- D. SUBSCRIBE and UNSUBSCRIBE ----------------------------------------------------------

#[tokio::test]
async fn d66_a_zero_length_filter_gets_suback_0x8f_and_unsuback_0x11() {
    let broker = start_broker();
    let mut client = Client::connected(broker.addr, V5, "empty").await;
    assert_eq!(
        subscribe(
            &mut client,
            1,
            &[("", QoS::AtMostOnce), ("ok", QoS::AtMostOnce)]
        )
        .await,
        [ReasonCode::TopicFilterInvalid, ReasonCode::Success]
    );
    client
        .send(Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            properties: Properties::default(),
            filters: vec!["".into(), "ok".into()],
        }))
        .await;
    client
        .expect(Packet::UnsubAck(UnsubAck {
            packet_id: 2,
            properties: Properties::default(),
            reasons: vec![ReasonCode::NoSubscriptionExisted, ReasonCode::Success],
        }))
        .await;
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn d67_d68_invalid_filters_mixed_with_valid_ones_get_one_reason_code_each_in_order() {
    let broker = start_broker();
    let mut client = Client::connected(broker.addr, V5, "mixed").await;
    let invalid = ReasonCode::TopicFilterInvalid;
    let reasons = subscribe(
        &mut client,
        7,
        &[
            ("a#", QoS::AtMostOnce),
            ("ok/1", QoS::AtLeastOnce),
            ("#/", QoS::AtMostOnce),
            ("a+", QoS::AtMostOnce),
            ("ok/+/2", QoS::ExactlyOnce),
            ("+b/c", QoS::AtMostOnce),
            ("sport+", QoS::AtMostOnce),
            ("a/#/b", QoS::AtMostOnce),
            ("#", QoS::AtMostOnce),
        ],
    )
    .await;
    assert_eq!(
        reasons,
        [
            invalid,
            ReasonCode::GrantedQoS1,
            invalid,
            invalid,
            ReasonCode::GrantedQoS2,
            invalid,
            invalid,
            invalid,
            ReasonCode::Success,
        ]
    );
}

#[tokio::test]
async fn d71_unsubscribe_with_packet_id_0_is_a_protocol_error() {
    let broker = start_broker();
    after_connect_expect_disconnect(
        broker.addr,
        &[0xA2, 0x06, 0x00, 0x00, 0x00, 0x00, 0x01, b'a'],
        ReasonCode::ProtocolError,
    )
    .await;
}

#[tokio::test]
async fn d72_mqtt_4_8_2_bad_shared_subscription_filters_get_0x8f() {
    let broker = start_broker();
    let mut client = Client::connected(broker.addr, V5, "share").await;
    let invalid = ReasonCode::TopicFilterInvalid;
    let reasons = subscribe(
        &mut client,
        1,
        &[
            ("$share//t", QoS::AtMostOnce),
            ("$share/a+b/t", QoS::AtMostOnce),
            ("$share/a#/t", QoS::AtMostOnce),
            ("$share/p", QoS::AtMostOnce),
            ("$share/p/", QoS::AtMostOnce),
            ("$share/g/a/#/b", QoS::AtMostOnce),
            ("$share/g/ok", QoS::AtLeastOnce),
        ],
    )
    .await;
    assert_eq!(
        reasons,
        [
            invalid,
            invalid,
            invalid,
            invalid,
            invalid,
            invalid,
            ReasonCode::GrantedQoS1
        ]
    );
}

#[tokio::test]
async fn d74_subscription_identifier_0_or_twice_is_a_protocol_error() {
    let broker = start_broker();
    for properties in [&[0x0Bu8, 0x00][..], &[0x0B, 0x01, 0x0B, 0x02]] {
        let mut body = vec![0x00, 0x01];
        body.extend(props(properties));
        body.extend(field(b"a"));
        body.push(0x00);
        after_connect_expect_disconnect(
            broker.addr,
            &packet(0x82, &body),
            ReasonCode::ProtocolError,
        )
        .await;
    }
}

#[tokio::test]
async fn d76_cve_2024_8376_shared_then_plain_subscribe_unsubscribe_a_thousand_times() {
    const ROUNDS: u16 = 1000;
    let broker = start_broker();
    let mut sub = Client::connected(broker.addr, V5, "churn").await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    let start = Instant::now();
    for round in 0..ROUNDS {
        // SUB $share/g/test QoS 1, SUB test, UNSUB test: pipelined, then the three answers.
        let id = round.wrapping_mul(3) % 60_000 + 1;
        sub.send(Packet::Subscribe(Subscribe {
            packet_id: id,
            properties: Properties::default(),
            filters: vec![("$share/g/test".into(), options(QoS::AtLeastOnce))],
        }))
        .await;
        sub.send(Packet::Subscribe(Subscribe {
            packet_id: id + 1,
            properties: Properties::default(),
            filters: vec![("test".into(), options(QoS::AtMostOnce))],
        }))
        .await;
        sub.send(Packet::Unsubscribe(Unsubscribe {
            packet_id: id + 2,
            properties: Properties::default(),
            filters: vec!["test".into()],
        }))
        .await;
        for (packet_id, reason) in [(id, ReasonCode::GrantedQoS1), (id + 1, ReasonCode::Success)] {
            sub.expect(Packet::SubAck(SubAck {
                packet_id,
                properties: Properties::default(),
                reasons: vec![reason],
            }))
            .await;
        }
        sub.expect(Packet::UnsubAck(UnsubAck {
            packet_id: id + 2,
            properties: Properties::default(),
            reasons: vec![ReasonCode::Success],
        }))
        .await;
        // Another client publishes "test": exactly one copy, through the shared subscription.
        publisher
            .send(Packet::Publish(Box::new(publish(
                "test",
                QoS::AtMostOnce,
                None,
                &round.to_be_bytes(),
            ))))
            .await;
        let got = next_publish(&mut sub).await;
        assert_eq!(&got.payload[..], &round.to_be_bytes());
    }
    subscribe_ok(&mut sub, "marker", QoS::AtMostOnce).await;
    assert_next_is_marker(&mut sub, &mut publisher, "marker").await;
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn d77_subscribe_three_unsubscribe_one_subscribe_again_routes_correctly() {
    let broker = start_broker();
    let mut sub = Client::connected(broker.addr, V5, "three").await;
    let filters = [
        ("x/+", QoS::AtMostOnce),
        ("x/#", QoS::AtMostOnce),
        ("x/y", QoS::AtMostOnce),
    ];
    assert_eq!(
        subscribe(&mut sub, 1, &filters).await,
        [ReasonCode::Success; 3]
    );
    sub.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        properties: Properties::default(),
        filters: vec!["x/#".into()],
    }))
    .await;
    sub.expect(Packet::UnsubAck(UnsubAck {
        packet_id: 2,
        properties: Properties::default(),
        reasons: vec![ReasonCode::Success],
    }))
    .await;
    assert_eq!(
        subscribe(&mut sub, 3, &filters).await,
        [ReasonCode::Success; 3]
    );
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    for topic in ["x/y", "x/z/w", "x"] {
        publisher
            .send(Packet::Publish(Box::new(publish(
                topic,
                QoS::AtMostOnce,
                None,
                b"m",
            ))))
            .await;
        // One delivery per message however many filters match.
        assert_eq!(next_publish(&mut sub).await.topic, topic);
    }
    subscribe_ok(&mut sub, "end", QoS::AtMostOnce).await;
    assert_next_is_marker(&mut sub, &mut publisher, "end").await;
}

#[tokio::test]
async fn d80_ten_thousand_and_one_filters_in_one_subscribe_hit_the_cap() {
    let broker = start_broker();
    let mut client = Client::connected(broker.addr, V5, "greedy").await;
    let names: Vec<String> = (0..10_001).map(|i| format!("f/{i}")).collect();
    let filters: Vec<(&str, QoS)> = names
        .iter()
        .map(|f| (f.as_str(), QoS::AtMostOnce))
        .collect();
    let start = Instant::now();
    let reasons = subscribe(&mut client, 1, &filters).await;
    assert_eq!(reasons.len(), 10_001);
    assert!(reasons[..10_000].iter().all(|&r| r == ReasonCode::Success));
    assert_eq!(reasons[10_000], ReasonCode::QuotaExceeded);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_canary(broker.addr).await;
}

// ---- E. QoS flows and acknowledgements -----------------------------------------------------

#[tokio::test]
async fn e82_one_qos2_id_sent_fifty_times_gets_fifty_pubrecs_and_one_delivery() {
    let broker = start_broker();
    let mut sub = Client::connected(broker.addr, V5, "sub").await;
    subscribe_ok(&mut sub, "q2", QoS::AtMostOnce).await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    for i in 0..50 {
        let mut p = publish("q2", QoS::ExactlyOnce, Some(77), b"once");
        p.dup = i > 0;
        publisher.send(Packet::Publish(Box::new(p))).await;
        publisher
            .expect(Packet::PubRec(ack(77, ReasonCode::Success)))
            .await;
    }
    assert_eq!(&next_publish(&mut sub).await.payload[..], b"once");
    assert_next_is_marker(&mut sub, &mut publisher, "q2").await;
    publisher
        .send(Packet::PubRel(ack(77, ReasonCode::Success)))
        .await;
    publisher
        .expect(Packet::PubComp(ack(77, ReasonCode::Success)))
        .await;
}

#[tokio::test]
async fn e84_e85_acknowledgements_for_unknown_ids_are_ignored() {
    let broker = start_broker();
    let mut client = Client::connected(broker.addr, V5, "acks").await;
    // PUBACK, PUBREC and PUBCOMP for ids never used (0, 65535, and others): no answer at all.
    client
        .send_raw(
            &[
                [0x40u8, 0x02, 0x00, 0x00].as_slice(),
                &[0x40, 0x02, 0xFF, 0xFF],
                &[0x50, 0x02, 0x00, 0x07],
                &[0x50, 0x02, 0x00, 0x00],
                &[0x70, 0x02, 0x00, 0x09],
                &[0x70, 0x02, 0xFF, 0xFF],
                // With failure reason codes too.
                &[0x40, 0x03, 0x12, 0x34, 0x80],
                &[0x50, 0x03, 0x12, 0x34, 0x87],
            ]
            .concat(),
        )
        .await;
    client.send(Packet::PingReq).await;
    client.expect(Packet::PingResp).await;
    // E84: PUBREL for ids never seen: PUBCOMP 0x92, and the connection stays.
    for id in [1u16, 0xFFFF] {
        client
            .send(Packet::PubRel(ack(id, ReasonCode::Success)))
            .await;
        client
            .expect(Packet::PubComp(ack(
                id,
                ReasonCode::PacketIdentifierNotFound,
            )))
            .await;
    }
    client.send(Packet::PingReq).await;
    client.expect(Packet::PingResp).await;
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn e86_pubrec_for_a_qos1_delivery_and_puback_for_a_qos2_delivery_are_ignored() {
    let broker = start_broker();
    // Receive Maximum 1: an ignored acknowledgement must not free the slot either.
    let mut sub = connected_with(broker.addr, "sub", |c| {
        c.properties.receive_maximum = Some(1)
    })
    .await;
    subscribe_ok(&mut sub, "w", QoS::ExactlyOnce).await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    // A QoS 1 message, a QoS 2 message, and a last QoS 1 message, all routed before the
    // subscriber acknowledges anything.
    for (qos, id, payload) in [
        (QoS::AtLeastOnce, 1, b"q1"),
        (QoS::ExactlyOnce, 2, b"q2"),
        (QoS::AtLeastOnce, 3, b"q3"),
    ] {
        publisher
            .send(Packet::Publish(Box::new(publish(
                "w",
                qos,
                Some(id),
                payload,
            ))))
            .await;
        if qos == QoS::AtLeastOnce {
            publisher
                .expect(Packet::PubAck(ack(id, ReasonCode::Success)))
                .await;
        } else {
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
    }
    // QoS 1 delivery answered with PUBREC: no PUBREL comes, and the window stays full (the
    // PINGRESP is next, not the QoS 2 message).
    let q1 = next_publish(&mut sub).await;
    assert_eq!((q1.qos, &q1.payload[..]), (QoS::AtLeastOnce, &b"q1"[..]));
    let id = q1.packet_id.unwrap();
    sub.send(Packet::PubRec(ack(id, ReasonCode::Success))).await;
    sub.send(Packet::PingReq).await;
    sub.expect(Packet::PingResp).await;
    sub.send(Packet::PubAck(ack(id, ReasonCode::Success))).await;
    // QoS 2 delivery answered with PUBACK: ignored the same way.
    let q2 = next_publish(&mut sub).await;
    assert_eq!((q2.qos, &q2.payload[..]), (QoS::ExactlyOnce, &b"q2"[..]));
    let id = q2.packet_id.unwrap();
    sub.send(Packet::PubAck(ack(id, ReasonCode::Success))).await;
    sub.send(Packet::PingReq).await;
    sub.expect(Packet::PingResp).await;
    // The right acknowledgements still complete it, and then the last message comes.
    sub.send(Packet::PubRec(ack(id, ReasonCode::Success))).await;
    sub.expect(Packet::PubRel(ack(id, ReasonCode::Success)))
        .await;
    sub.send(Packet::PubComp(ack(id, ReasonCode::Success)))
        .await;
    let q3 = next_publish(&mut sub).await;
    assert_eq!(&q3.payload[..], b"q3");
    sub.send(Packet::PubAck(ack(
        q3.packet_id.unwrap(),
        ReasonCode::Success,
    )))
    .await;
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn e87_a_publisher_that_never_reads_is_closed() {
    let broker = start_broker_with(|c| c.limits.send_timeout = 1);
    let mut greedy = open_with_small_receive_buffer(broker.addr).await;
    greedy.send(connect(V5, "greedy")).await;
    assert!(matches!(greedy.recv().await, Some(Ok(Packet::ConnAck(_)))));
    // It also receives what it publishes, so the unread data (PUBACKs and its own messages)
    // fills the socket quickly; PUBACKs alone take seconds to fill the kernel's buffers.
    subscribe_ok(&mut greedy, "greedy", QoS::AtMostOnce).await;
    let one = packet(
        0x32,
        &[
            &[0x00, 0x06][..],
            b"greedy",
            &[0x00, 0x01, 0x00],
            &[0xAB; 16 * 1024],
        ]
        .concat(),
    );
    let batch: Vec<u8> = one.repeat(16);
    let (_read, mut write) = greedy.framed.into_inner().into_split();
    // QoS 1 PUBLISH after QoS 1 PUBLISH, never reading, until the broker gives up on it.
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let start = Instant::now();
        while start.elapsed() < TIMEOUT {
            match tokio::time::timeout(Duration::from_millis(200), write.write_all(&batch)).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(_)) => break,
            }
        }
        write
    });
    let start = Instant::now();
    let reason = wait_for_disconnect_reason(&broker, "greedy").await;
    // Closed by the send timeout, or sooner for sending more unacknowledged QoS 1 messages
    // than the Receive Maximum (its PUBACKs wait until its own messages reach its full queue).
    assert!(
        reason.contains("read nothing") || reason.contains("Receive Maximum"),
        "{reason}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    writer.abort();
    assert_canary(broker.addr).await;
}

/// bad-inputs E87/G108: "its outbound buffer is bounded". The session writes through actix's
/// `FramedWrite`, whose high-water mark only pauses the actor when the socket returns
/// `WouldBlock`; tokio sockets return `Pending` instead, so nothing ever pauses. QoS 0
/// deliveries (and PUBACKs) to a client that reads nothing pile up in the session's write
/// buffer until `send_timeout` (30 s by default), instead of staying in the bounded delivery
/// queue where they would be dropped and counted.
#[tokio::test]

async fn e87_g108_a_stalled_subscriber_holds_no_more_than_its_queue_and_the_kernel_buffers() {
    const SENT: usize = 1500;
    let broker = start_broker_with(|c| c.limits.max_queued_messages = 10);
    let mut stuck = open_with_small_receive_buffer(broker.addr).await;
    stuck.send(connect(V5, "stuck")).await;
    assert!(matches!(stuck.recv().await, Some(Ok(Packet::ConnAck(_)))));
    subscribe_ok(&mut stuck, "flood", QoS::AtMostOnce).await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    let payload = vec![7u8; 64 * 1024];
    for _ in 0..SENT {
        publisher
            .send(Packet::Publish(Box::new(publish(
                "flood",
                QoS::AtMostOnce,
                None,
                &payload,
            ))))
            .await;
        publisher.send(Packet::PingReq).await;
        publisher.expect(Packet::PingResp).await;
    }
    // Accepted for the stuck client: its queue (10), one pump batch (16), what the kernel
    // buffers on both sides (tcp_wmem max 4 MiB = 64 messages, plus the client's 4 KiB) and
    // the 16 KiB high-water mark: well under 150 of 64 KiB.
    let dropped = mqttd::stats::Counters::get(&broker.counters.dropped_qos0) as usize;
    let accepted = SENT - dropped;
    assert!(
        accepted <= 150,
        "{accepted} messages of 64 KiB accepted for a client that read nothing"
    );
}

#[tokio::test]
async fn e88_pingreq_is_answered_while_receive_maximum_5_is_used_up() {
    let broker = start_broker();
    let mut sub = connected_with(broker.addr, "five", |c| {
        c.properties.receive_maximum = Some(5)
    })
    .await;
    subscribe_ok(&mut sub, "rm", QoS::AtLeastOnce).await;
    let mut publisher = Client::connected(broker.addr, V5, "pub").await;
    for id in 1..=10 {
        publisher
            .send(Packet::Publish(Box::new(publish(
                "rm",
                QoS::AtLeastOnce,
                Some(id),
                b"m",
            ))))
            .await;
        publisher
            .expect(Packet::PubAck(ack(id, ReasonCode::Success)))
            .await;
    }
    let mut unacked = Vec::new();
    for _ in 0..5 {
        unacked.push(next_publish(&mut sub).await.packet_id.unwrap());
    }
    // Quota 0: the PINGRESP comes, no sixth PUBLISH before it.
    sub.send(Packet::PingReq).await;
    sub.expect(Packet::PingResp).await;
    for id in unacked {
        sub.send(Packet::PubAck(ack(id, ReasonCode::Success))).await;
    }
    for _ in 0..5 {
        let p = next_publish(&mut sub).await;
        sub.send(Packet::PubAck(ack(
            p.packet_id.unwrap(),
            ReasonCode::Success,
        )))
        .await;
    }
}

// ---- F. Sessions, Wills, keep-alive --------------------------------------------------------

#[tokio::test]
async fn f93_two_hundred_take_overs_leave_the_broker_serving() {
    // The storm itself, without the flapping ban that would end it after 15 (policies.rs).
    let broker = start_broker_with(|c| c.limits.max_connects_per_client_id_per_minute = 0);
    let mut previous = Client::connected(broker.addr, V5, "flap").await;
    let start = Instant::now();
    for _ in 0..200 {
        let next = Client::connected(broker.addr, V5, "flap").await;
        previous
            .expect(disconnect(ReasonCode::SessionTakenOver))
            .await;
        previous.expect_closed().await;
        previous = next;
    }
    previous.send(Packet::PingReq).await;
    previous.expect(Packet::PingResp).await;
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_canary(broker.addr).await;
}

#[tokio::test]
async fn f95_session_expiry_set_on_disconnect_is_a_protocol_error_and_the_will_is_published() {
    let broker = start_broker();
    let mut listener = Client::connected(broker.addr, V5, "listener").await;
    subscribe_ok(&mut listener, "will/#", QoS::AtMostOnce).await;
    let mut willer = connected_with(broker.addr, "sei", |c| {
        c.will = Some(will("will/sei", b"abnormal"));
    })
    .await;
    willer
        .send(Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::from(PropertyValues {
                session_expiry_interval: Some(60),
                ..PropertyValues::default()
            }),
        }))
        .await;
    willer.expect(disconnect(ReasonCode::ProtocolError)).await;
    willer.expect_closed().await;
    let got = next_publish(&mut listener).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("will/sei", &b"abnormal"[..])
    );
}
