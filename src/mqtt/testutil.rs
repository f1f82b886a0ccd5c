//! Test helpers for the codec: one-shot decode/encode through `MqttCodec`, and the proptest
//! strategies that generate valid packets for a protocol version (only fields that version can
//! carry, values the decoder accepts).

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use tokio_util::codec::{Decoder, Encoder};

use super::codec::MqttCodec;
use super::error::{DecodeError, EncodeError};
use super::packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, ProtocolVersion, Publish, QoS, RetainHandling,
    SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
use super::primitives::MAX_VARIABLE_BYTE_INTEGER;
use super::properties::{Properties, PropertyContext, PropertyValues, id, is_allowed};
use super::reason::ReasonCode;

fn decode_one(mut codec: MqttCodec, bytes: &[u8]) -> Result<Packet, DecodeError> {
    let mut src = BytesMut::from(bytes);
    match codec.decode(&mut src)? {
        Some(packet) => {
            assert!(src.is_empty(), "{} bytes left after one packet", src.len());
            Ok(packet)
        }
        None => panic!("incomplete packet: {bytes:02X?}"),
    }
}

/// Decodes exactly one packet with a fresh server codec (version unknown).
pub fn decode_server(bytes: &[u8]) -> Result<Packet, DecodeError> {
    decode_one(MqttCodec::server(u32::MAX), bytes)
}

/// Decodes exactly one packet with a codec fixed to `version`.
pub fn decode_with(bytes: &[u8], version: ProtocolVersion) -> Result<Packet, DecodeError> {
    decode_one(MqttCodec::new(version, u32::MAX), bytes)
}

pub fn try_encode_with(packet: &Packet, version: ProtocolVersion) -> Result<Vec<u8>, EncodeError> {
    let mut dst = BytesMut::new();
    MqttCodec::new(version, u32::MAX).encode(packet.clone(), &mut dst)?;
    assert_eq!(
        dst.len(),
        MqttCodec::encoded_len(packet, version),
        "encoded_len disagrees"
    );
    Ok(dst.to_vec())
}

pub fn encode_with(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    match try_encode_with(packet, version) {
        Ok(bytes) => bytes,
        Err(e) => panic!("encoding {packet:?} failed: {e}"),
    }
}

// ---- strategies ----------------------------------------------------------------------------

/// Any valid MQTT string: any chars but U+0000, short to keep cases fast.
pub fn string() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,8}"
}

pub fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}

fn flag() -> impl Strategy<Value = u8> {
    0u8..=1
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn reason(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    select(codes).prop_map(|c| ReasonCode::from_u8(c).unwrap_or_else(|| panic!("bad table {c:#x}")))
}

// The reason codes each packet may carry (§3.2.2.2, §3.4.2.1-§3.7.2.1, §3.9.3, §3.11.3,
// §3.14.2.1, §3.15.2.1), written out independently of the decoder's checks.
const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const V3_CONNACK_CODES: &[u8] = &[0x00, 0x84, 0x85, 0x88, 0x86, 0x87];
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const V3_SUBACK_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

/// Every property with a random valid value, each present about half the time.
fn all_properties() -> impl Strategy<Value = Properties> {
    let a = (
        option::of(flag()),
        option::of(any::<u32>()),
        option::of(string()),
        option::of(string()),
        option::of(bytes()),
        vec(1..=MAX_VARIABLE_BYTE_INTEGER, 0..3),
        option::of(any::<u32>()),
        option::of(string()),
        option::of(any::<u16>()),
    );
    let b = (
        option::of(string()),
        option::of(bytes()),
        option::of(flag()),
        option::of(any::<u32>()),
        option::of(flag()),
        option::of(string()),
        option::of(string()),
        option::of(string()),
        option::of(1..=u16::MAX),
    );
    let c = (
        option::of(any::<u16>()),
        option::of(1..=u16::MAX),
        option::of(flag()),
        option::of(flag()),
        vec((string(), string()), 0..3),
        option::of(1..=u32::MAX),
        option::of(flag()),
        option::of(flag()),
        option::of(flag()),
    );
    (a, b, c).prop_map(|(a, b, c)| {
        Properties::from(PropertyValues {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            subscription_identifiers: a.5,
            session_expiry_interval: a.6,
            assigned_client_identifier: a.7,
            server_keep_alive: a.8,
            authentication_method: b.0,
            authentication_data: b.1,
            request_problem_information: b.2,
            will_delay_interval: b.3,
            request_response_information: b.4,
            response_information: b.5,
            server_reference: b.6,
            reason_string: b.7,
            receive_maximum: b.8,
            topic_alias_maximum: c.0,
            topic_alias: c.1,
            maximum_qos: c.2,
            retain_available: c.3,
            user_properties: c.4,
            maximum_packet_size: c.5,
            wildcard_subscription_available: c.6,
            subscription_identifiers_available: c.7,
            shared_subscription_available: c.8,
        })
    })
}

/// Properties valid in `ctx`; empty for 3.1.1.
pub fn properties(ctx: PropertyContext, version: ProtocolVersion) -> BoxedStrategy<Properties> {
    if !version.is_v5() {
        return Just(Properties::default()).boxed();
    }
    all_properties()
        .prop_map(move |mut p| {
            macro_rules! keep_if_allowed {
                ($($field:ident: $id:expr),* $(,)?) => {
                    $(if !is_allowed($id, ctx) { p.$field = Default::default(); })*
                };
            }
            keep_if_allowed!(
                payload_format_indicator: id::PAYLOAD_FORMAT_INDICATOR,
                message_expiry_interval: id::MESSAGE_EXPIRY_INTERVAL,
                content_type: id::CONTENT_TYPE,
                response_topic: id::RESPONSE_TOPIC,
                correlation_data: id::CORRELATION_DATA,
                subscription_identifiers: id::SUBSCRIPTION_IDENTIFIER,
                session_expiry_interval: id::SESSION_EXPIRY_INTERVAL,
                assigned_client_identifier: id::ASSIGNED_CLIENT_IDENTIFIER,
                server_keep_alive: id::SERVER_KEEP_ALIVE,
                authentication_method: id::AUTHENTICATION_METHOD,
                authentication_data: id::AUTHENTICATION_DATA,
                request_problem_information: id::REQUEST_PROBLEM_INFORMATION,
                will_delay_interval: id::WILL_DELAY_INTERVAL,
                request_response_information: id::REQUEST_RESPONSE_INFORMATION,
                response_information: id::RESPONSE_INFORMATION,
                server_reference: id::SERVER_REFERENCE,
                reason_string: id::REASON_STRING,
                receive_maximum: id::RECEIVE_MAXIMUM,
                topic_alias_maximum: id::TOPIC_ALIAS_MAXIMUM,
                topic_alias: id::TOPIC_ALIAS,
                maximum_qos: id::MAXIMUM_QOS,
                retain_available: id::RETAIN_AVAILABLE,
                user_properties: id::USER_PROPERTY,
                maximum_packet_size: id::MAXIMUM_PACKET_SIZE,
                wildcard_subscription_available: id::WILDCARD_SUBSCRIPTION_AVAILABLE,
                subscription_identifiers_available: id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
                shared_subscription_available: id::SHARED_SUBSCRIPTION_AVAILABLE,
            );
            // Only PUBLISH may repeat the Subscription Identifier.
            if ctx != PropertyContext::Publish {
                p.subscription_identifiers.truncate(1);
            }
            if p.authentication_method.is_none() {
                p.authentication_data = None;
            }
            p
        })
        .boxed()
}

fn will(version: ProtocolVersion) -> impl Strategy<Value = Will> {
    (
        qos(),
        any::<bool>(),
        properties(PropertyContext::Will, version),
        string(),
        bytes(),
    )
        .prop_map(|(qos, retain, properties, topic, payload)| Will {
            qos,
            retain,
            properties,
            topic,
            payload,
        })
}

pub fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        properties(PropertyContext::Connect, version),
        string(),
        option::of(will(version)),
        option::of(string()),
        option::of(bytes()),
    )
        .prop_map(
            move |(
                clean_start,
                keep_alive,
                properties,
                client_id,
                will,
                username,
                mut password,
            )| {
                // 3.1.x needs a user name for a password [MQTT-3.1.2-22].
                if !version.is_v5() && username.is_none() {
                    password = None;
                }
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                }))
            },
        )
}

pub fn connack(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = if version.is_v5() {
        CONNACK_CODES
    } else {
        V3_CONNACK_CODES
    };
    (
        any::<bool>(),
        reason(codes),
        properties(PropertyContext::ConnAck, version),
    )
        .prop_map(|(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck {
                session_present,
                reason,
                properties,
            })
        })
}

pub fn publish(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        string(),
        1..=u16::MAX,
        properties(PropertyContext::Publish, version),
        bytes(),
    )
        .prop_map(|(qos, dup, retain, topic, id, properties, payload)| {
            let at_most_once = qos == QoS::AtMostOnce;
            Packet::Publish(Box::new(Publish {
                dup: dup && !at_most_once,
                qos,
                retain,
                topic,
                packet_id: (!at_most_once).then_some(id),
                properties,
                payload,
            }))
        })
}

fn ack(
    version: ProtocolVersion,
    ctx: PropertyContext,
    codes: &'static [u8],
) -> impl Strategy<Value = Ack> {
    let reason = if version.is_v5() {
        reason(codes).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    (any::<u16>(), reason, properties(ctx, version)).prop_map(|(packet_id, reason, properties)| {
        Ack {
            packet_id,
            reason,
            properties,
        }
    })
}

pub fn puback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    ack(version, PropertyContext::PubAck, PUBACK_CODES).prop_map(Packet::PubAck)
}

pub fn pubrec(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    ack(version, PropertyContext::PubRec, PUBACK_CODES).prop_map(Packet::PubRec)
}

pub fn pubrel(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    ack(version, PropertyContext::PubRel, PUBREL_CODES).prop_map(Packet::PubRel)
}

pub fn pubcomp(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    ack(version, PropertyContext::PubComp, PUBREL_CODES).prop_map(Packet::PubComp)
}

fn subscription_options(version: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    let handling = select(vec![
        RetainHandling::SendAtSubscribe,
        RetainHandling::SendIfNew,
        RetainHandling::DoNotSend,
    ]);
    (qos(), any::<bool>(), any::<bool>(), handling).prop_map(move |(qos, nl, rap, rh)| {
        if version.is_v5() {
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh,
            }
        } else {
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            }
        }
    })
}

pub fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        1..=u16::MAX,
        properties(PropertyContext::Subscribe, version),
        vec((string(), subscription_options(version)), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

pub fn suback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = if version.is_v5() {
        SUBACK_CODES
    } else {
        V3_SUBACK_CODES
    };
    (
        any::<u16>(),
        properties(PropertyContext::SubAck, version),
        vec(reason(codes), 1..4),
    )
        .prop_map(|(packet_id, properties, reasons)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reasons,
            })
        })
}

pub fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        1..=u16::MAX,
        properties(PropertyContext::Unsubscribe, version),
        vec(string(), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

pub fn unsuback(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    // 3.1.1 UNSUBACK has no payload.
    let count = if version.is_v5() { 1..4 } else { 0..1 };
    (
        any::<u16>(),
        properties(PropertyContext::UnsubAck, version),
        vec(reason(UNSUBACK_CODES), count),
    )
        .prop_map(|(packet_id, properties, reasons)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reasons,
            })
        })
}

pub fn disconnect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let reason = if version.is_v5() {
        reason(DISCONNECT_CODES).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    (reason, properties(PropertyContext::Disconnect, version))
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
}

/// AUTH exists in MQTT 5 only.
pub fn auth() -> impl Strategy<Value = Packet> {
    (
        reason(AUTH_CODES),
        properties(PropertyContext::Auth, ProtocolVersion::V5),
    )
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
}

/// Any packet valid in `version`, in either direction.
pub fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(version),
        connack(version),
        publish(version),
        puback(version),
        pubrec(version),
        pubrel(version),
        pubcomp(version),
        subscribe(version),
        suback(version),
        unsubscribe(version),
        unsuback(version),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(version),
    ];
    if version.is_v5() {
        prop_oneof![14 => common, 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}
