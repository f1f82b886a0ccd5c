//! The packet model: one Rust type per MQTT control packet, shared by MQTT 5.0 and 3.1.1.
//!
//! Fields that exist only in MQTT 5 (properties, reason codes on acknowledgements) are simply
//! left at their defaults for 3.1.1; the encoder leaves them off the wire and the decoder fills
//! in the defaults. Each packet family has its own file with `decode`/`encode` and byte vectors.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::primitives::{expect_end, read_u8, read_u16};
use super::properties::{Properties, PropertyContext};
use super::reason::ReasonCode;

pub mod ack;
pub mod auth;
pub mod connect;
pub mod disconnect;
pub mod publish;
pub mod subscribe;

/// The protocol level byte of CONNECT (§3.1.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name "MQIsdp".
    V31 = 3,
    /// MQTT 3.1.1, protocol name "MQTT".
    V311 = 4,
    /// MQTT 5.0, protocol name "MQTT".
    V5 = 5,
}

impl ProtocolVersion {
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Quality of Service level (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// `None` for the invalid value 3 (and anything above).
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Every MQTT control packet. Large variants are boxed so that a `Packet` stays small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Box<Publish>),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// The packet's name as the spec writes it, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// CONNECT (§3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// Clean Start (v5) / Clean Session (v3.1.1).
    pub clean_start: bool,
    /// Seconds; 0 switches keep-alive off.
    pub keep_alive: u16,
    pub properties: Properties,
    /// May be empty: the server assigns one (v5), or requires Clean Session (v3.1.1).
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
}

/// The Will Message carried in CONNECT (§3.1.2.5, §3.1.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub qos: QoS,
    pub retain: bool,
    /// Will Properties (v5 only): Will Delay Interval, Payload Format Indicator, Message Expiry,
    /// Content Type, Response Topic, Correlation Data, User Property.
    pub properties: Properties,
    pub topic: String,
    pub payload: Bytes,
}

/// CONNACK (§3.2). In 3.1.1 the reason code is sent as the matching Connect Return Code
/// (see `ReasonCode::to_v3_connack`); properties are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// PUBLISH (§3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in v5 when a Topic Alias stands for it.
    pub topic: String,
    /// `Some` exactly when `qos` > 0 (the decoder rejects id 0 [MQTT-2.2.1-3]).
    pub packet_id: Option<u16>,
    pub properties: Properties,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one layout (§3.4-§3.7); the `Packet` variant says
/// which one it is. In 3.1.1 only the packet identifier is on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ack {
    pub packet_id: u16,
    pub reason: ReasonCode,
    /// Only Reason String and User Property are allowed here.
    pub properties: Properties,
}

/// Retain Handling subscription option (§3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send retained messages only if the subscription does not already exist.
    SendIfNew = 1,
    /// Do not send retained messages.
    DoNotSend = 2,
}

/// The options byte that follows each topic filter in SUBSCRIBE (§3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// SUBSCRIBE (§3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    /// Subscription Identifier and User Property.
    pub properties: Properties,
    /// Never empty [MQTT-3.8.3-2].
    pub filters: Vec<(String, SubscriptionOptions)>,
}

/// SUBACK (§3.9): one reason code per filter, in order. In 3.1.1 the codes are 0x00-0x02 and
/// 0x80; any v5 failure code is sent as 0x80.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: Properties,
    pub reasons: Vec<ReasonCode>,
}

/// UNSUBSCRIBE (§3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: Properties,
    /// Never empty [MQTT-3.10.3-2].
    pub filters: Vec<String>,
}

/// UNSUBACK (§3.11). In 3.1.1 the packet has no payload, so `reasons` is empty after decoding
/// and ignored when encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: Properties,
    pub reasons: Vec<ReasonCode>,
}

/// DISCONNECT (§3.14). In 3.1.1 it has no variable header: reason `Success`, no properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// AUTH (§3.15), MQTT 5 only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// Reads a Packet Identifier that must not be 0 (SUBSCRIBE, UNSUBSCRIBE, QoS>0 PUBLISH)
/// [MQTT-2.2.1-3].
fn read_nonzero_packet_id(buf: &mut Bytes) -> Result<u16, DecodeError> {
    match read_u16(buf)? {
        0 => Err(DecodeError::ZeroPacketIdentifier),
        id => Ok(id),
    }
}

/// Reads a v5 reason code and checks it is one the spec lists for `packet`.
fn read_reason(
    buf: &mut Bytes,
    packet: &'static str,
    allowed: fn(ReasonCode) -> bool,
) -> Result<ReasonCode, DecodeError> {
    let code = read_u8(buf)?;
    ReasonCode::from_u8(code)
        .filter(|&rc| allowed(rc))
        .ok_or(DecodeError::InvalidReasonCode { code, packet })
}

/// The v5 tail of PUBACK/PUBREC/PUBREL/PUBCOMP (after the packet id), DISCONNECT and AUTH:
/// nothing means Success without properties, one byte is a reason code without properties,
/// more is a reason code and a property block (§3.4.2.1, §3.14.2.1, §3.15.2.1).
fn decode_reason_tail(
    body: &mut Bytes,
    ctx: PropertyContext,
    allowed: fn(ReasonCode) -> bool,
) -> Result<(ReasonCode, Properties), DecodeError> {
    let mut reason = ReasonCode::Success;
    let mut properties = Properties::default();
    if !body.is_empty() {
        reason = read_reason(body, ctx.name(), allowed)?;
    }
    if !body.is_empty() {
        properties = Properties::decode(body, ctx)?;
    }
    expect_end(body, ctx.name())?;
    Ok((reason, properties))
}

/// Length of the tail that carries `reason` and `properties`: nothing for Success without
/// properties, else the reason code and the properties. The Property Length byte is written
/// even when it is 0: the spec lets it be omitted, but some clients (rumqttc 0.25's
/// DISCONNECT parser) cannot read the 1-byte form.
fn reason_tail_len(reason: ReasonCode, properties: &Properties) -> usize {
    if properties.is_empty() && reason == ReasonCode::Success {
        0
    } else {
        1 + properties.encoded_len()
    }
}

fn encode_reason_tail(
    dst: &mut BytesMut,
    reason: ReasonCode,
    properties: &Properties,
) -> Result<(), EncodeError> {
    if !properties.is_empty() || reason != ReasonCode::Success {
        dst.put_u8(reason as u8);
        properties.encode(dst)?;
    }
    Ok(())
}
