//! Codec errors. Every decode error knows the reason code the spec gives it, so the session has
//! one place that turns an error into CONNACK/DISCONNECT (see `session::fail`).

use std::io;

use super::packet::ProtocolVersion;
use super::reason::ReasonCode;

/// Why a byte stream could not be turned into a packet. Each message quotes the normative
/// statement (or section) it enforces.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("[MQTT-3.1.0-1] the first packet on a connection must be CONNECT")]
    FirstPacketNotConnect,
    #[error("[MQTT-1.5.5-1] Variable Byte Integer longer than 4 bytes or not minimally encoded")]
    MalformedVariableByteInteger,
    #[error("[MQTT-3.2.2-15] packet of {size} bytes exceeds the Maximum Packet Size {max}")]
    PacketTooLarge { size: usize, max: u32 },
    #[error("§2.1.2 reserved or unknown packet type {0}")]
    ReservedPacketType(u8),
    #[error("[MQTT-2.1.3-1] invalid fixed header flags {flags:#06b} for packet type {packet_type}")]
    InvalidHeaderFlags { packet_type: u8, flags: u8 },
    #[error("§1.5 a field runs past the end of the packet")]
    Truncated,
    #[error("§2 bytes left over after the last field of {0}")]
    TrailingBytes(&'static str),
    #[error("[MQTT-1.5.4-1] ill-formed UTF-8 string")]
    InvalidUtf8,
    #[error("[MQTT-1.5.4-2] UTF-8 string contains U+0000")]
    NullCharacter,
    #[error("[MQTT-3.1.2-1] protocol name is not \"MQTT\" (or \"MQIsdp\" for level 3)")]
    InvalidProtocolName,
    #[error("[MQTT-3.1.2-2] unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    #[error("[MQTT-3.1.2-3] CONNECT reserved flag is set")]
    ConnectReservedFlag,
    #[error("[MQTT-3.1.2-11] [MQTT-3.1.2-13] Will QoS/Retain set without the Will Flag")]
    WillFlagsWithoutWill,
    #[error("[MQTT-3.1.2-12] [MQTT-3.3.1-4] QoS 3 is not a valid QoS")]
    InvalidQoS,
    #[error("§3.8.3.1 Maximum QoS 3 in subscription options")]
    InvalidSubscriptionQoS,
    #[error("[MQTT-3.1.2-22] (3.1.1) Password Flag set without User Name Flag")]
    PasswordWithoutUsername,
    #[error("[MQTT-3.3.1-2] DUP set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    #[error("[MQTT-2.2.1-3] packet identifier 0")]
    ZeroPacketIdentifier,
    #[error("§2.2.2.2 unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    #[error("§2.2.2.2 property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed { id: u8, packet: &'static str },
    #[error("§2.2.2.2 property {0:#04x} included more than once")]
    DuplicateProperty(u8),
    #[error("§3 property {id:#04x} has the invalid value {value}")]
    InvalidPropertyValue { id: u8, value: u32 },
    #[error("[MQTT-3.3.2-8] Topic Alias 0")]
    TopicAliasZero,
    #[error("§3.1.2.11.10 Authentication Data without Authentication Method")]
    AuthDataWithoutMethod,
    #[error("§2.4 reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode { code: u8, packet: &'static str },
    #[error("[MQTT-3.8.3-2] [MQTT-3.10.3-2] no topic filter in {0}")]
    NoTopicFilters(&'static str),
    #[error("[MQTT-3.8.3-5] reserved bits set in subscription options")]
    SubscriptionOptionsReservedBits,
    #[error("§3.8.3.1 Retain Handling 3 is not valid")]
    InvalidRetainHandling,
    #[error("§2.1.2 {0} does not exist in this protocol version")]
    PacketNotInVersion(&'static str),
    #[error("[MQTT-3.2.2-1] CONNACK acknowledge flags bits 7-1 are reserved and must be 0")]
    ConnAckReservedFlags,
    /// An error inside a CONNECT whose protocol level the decoder had read; `version` is the
    /// format a CONNACK reply must use (V5 also for unsupported levels, as Mosquitto does).
    #[error("in CONNECT: {source}")]
    InConnect {
        version: ProtocolVersion,
        source: Box<DecodeError>,
    },
}

impl DecodeError {
    /// The reason code the spec gives this error, for CONNACK (before the session is
    /// established) or DISCONNECT (after).
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            Io(_) | FirstPacketNotConnect => ReasonCode::UnspecifiedError,
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            InvalidProtocolName | UnsupportedProtocolVersion(_) => {
                ReasonCode::UnsupportedProtocolVersion
            }
            ZeroPacketIdentifier
            | DuplicateProperty(_)
            | InvalidPropertyValue { .. }
            | AuthDataWithoutMethod
            | NoTopicFilters(_)
            | InvalidSubscriptionQoS
            | InvalidRetainHandling => ReasonCode::ProtocolError,
            TopicAliasZero => ReasonCode::TopicAliasInvalid,
            InConnect { source, .. } => source.reason_code(),
            MalformedVariableByteInteger
            | ReservedPacketType(_)
            | InvalidHeaderFlags { .. }
            | Truncated
            | TrailingBytes(_)
            | InvalidUtf8
            | NullCharacter
            | ConnectReservedFlag
            | WillFlagsWithoutWill
            | PasswordWithoutUsername
            | InvalidQoS
            | DupOnQoS0
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | InvalidReasonCode { .. }
            | SubscriptionOptionsReservedBits
            | PacketNotInVersion(_)
            | ConnAckReservedFlags => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("[MQTT-1.5.4-1] string of {0} bytes is longer than 65,535")]
    StringTooLong(usize),
    #[error("§1.5.6 binary data of {0} bytes is longer than 65,535")]
    BinaryTooLong(usize),
    #[error("§1.5.5 {0} does not fit a Variable Byte Integer (max 268,435,455)")]
    VariableByteIntegerTooLarge(u32),
    #[error("§2.2.1 a QoS {0} PUBLISH needs a packet identifier")]
    MissingPacketId(u8),
    #[error("no CONNECT seen yet, so the protocol version is unknown")]
    UnknownVersion,
    #[error("packet of {size} bytes exceeds the limit of {max}")]
    PacketTooLarge { size: usize, max: u32 },
    #[error("{0} cannot be sent in this protocol version")]
    PacketNotInVersion(&'static str),
}
