//! Why a session ends or refuses a connection, and the reason code each gets.
//!
//! `Session::fail` is the one place that turns these into CONNACK or DISCONNECT packets.

use crate::mqtt::{DecodeError, ReasonCode};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("[MQTT-3.1.0-2] second CONNECT on one connection")]
    SecondConnect,
    #[error("[MQTT-4.13.1-1] a client sent {0}, which only a server may send")]
    ServerOnlyPacket(&'static str),
    #[error("[MQTT-3.1.3-8] client identifier not accepted")]
    ClientIdNotValid,
    #[error("[MQTT-3.1.2-22] keep alive {0}s is over the server maximum (3.1.1 cannot be told)")]
    KeepAliveTooLong(u16),
    #[error("[MQTT-4.12.0-1] authentication method {0:?} is not supported")]
    BadAuthenticationMethod(String),
    #[error("[MQTT-4.12.0-7] AUTH without an Authentication Method in CONNECT")]
    UnexpectedAuth,
    #[error("[MQTT-3.1.4-2] bad user name or password")]
    BadCredentials,
    #[error("[MQTT-3.1.4-2] anonymous clients are not allowed")]
    AnonymousNotAllowed,
    #[error("§5.4.8 address banned after repeated authentication failures")]
    Banned,
    #[error("§5.4.8 username banned after repeated authentication failures")]
    UserBanned,
    #[error("§5.4.8 client id banned for connecting too often (flapping)")]
    Flapping,
    #[error("§5.4.2 the client id is held by another user (client_id_binding)")]
    ClientIdBound,
    #[error("server unavailable: {0}")]
    ServerUnavailable(String),
    #[error("[MQTT-3.3.2-2] topic name {0:?} is not valid")]
    TopicNameInvalid(String),
    #[error("[MQTT-3.3.2-12] Topic Alias {0} is above the Topic Alias Maximum")]
    TopicAliasInvalid(u16),
    #[error("§3.3.4 zero-length topic with Topic Alias {0}, which was never set")]
    UnknownTopicAlias(u16),
    #[error("[MQTT-3.3.2-14] Response Topic {0:?} is not a valid topic name")]
    InvalidResponseTopic(String),
    #[error("[MQTT-3.8.3-4] No Local on a shared subscription")]
    NoLocalOnShared,
    #[error("§3.3.4 zero-length topic without a Topic Alias")]
    EmptyTopic,
    #[error("[MQTT-3.3.4-6] a client PUBLISH carries a Subscription Identifier")]
    SubscriptionIdentifierInPublish,
    #[error("§3.3.4 more than Receive Maximum ({0}) QoS 1/2 publications unacknowledged")]
    ReceiveMaximumExceeded(u16),
    #[error("§3.14.2.2.2 DISCONNECT sets a Session Expiry after CONNECT set 0")]
    SessionExpiryAfterZero,
    #[error("{0} User Properties in one packet, over the limit of {1}")]
    TooManyUserProperties(usize, usize),
    #[error("[MQTT-3.1.2-22] nothing received for 1.5 x the keep alive of {0}s")]
    KeepAliveTimeout(u16),
    /// Session Present is only promised for a committed session (bad-inputs.md 3.3).
    #[error("the persistent session could not be stored")]
    StorageFailed,
}

impl SessionError {
    /// The reason code for CONNACK (before the session is established) or DISCONNECT (after).
    pub fn reason_code(&self) -> ReasonCode {
        use SessionError::*;
        match self {
            Decode(e) => e.reason_code(),
            // 3.1.1 has no Banned return code: those connections are closed without CONNACK.
            Banned | UserBanned | Flapping => ReasonCode::Banned,
            ClientIdBound => ReasonCode::NotAuthorized,
            SecondConnect
            | ServerOnlyPacket(_)
            | UnexpectedAuth
            | EmptyTopic
            | UnknownTopicAlias(_)
            | InvalidResponseTopic(_)
            | NoLocalOnShared
            | SubscriptionIdentifierInPublish
            | SessionExpiryAfterZero => ReasonCode::ProtocolError,
            ClientIdNotValid | KeepAliveTooLong(_) => ReasonCode::ClientIdentifierNotValid,
            BadAuthenticationMethod(_) => ReasonCode::BadAuthenticationMethod,
            BadCredentials => ReasonCode::BadUserNameOrPassword,
            AnonymousNotAllowed => ReasonCode::NotAuthorized,
            ServerUnavailable(_) | StorageFailed => ReasonCode::ServerUnavailable,
            TopicNameInvalid(_) => ReasonCode::TopicNameInvalid,
            TopicAliasInvalid(_) => ReasonCode::TopicAliasInvalid,
            ReceiveMaximumExceeded(_) => ReasonCode::ReceiveMaximumExceeded,
            KeepAliveTimeout(_) => ReasonCode::KeepAliveTimeout,
            // bad-inputs.md B36: an oversized property block is treated as a packet too large.
            TooManyUserProperties(..) => ReasonCode::PacketTooLarge,
        }
    }
}
