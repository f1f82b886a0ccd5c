//! Reason codes (§2.4) with the spec's numbers.

/// Every MQTT 5 reason code. 0x00 is Success, Normal disconnection and Granted QoS 0 at once,
/// as in the spec; which meaning applies depends on the packet that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum ReasonCode {
    #[default]
    Success = 0x00,
    GrantedQoS1 = 0x01,
    GrantedQoS2 = 0x02,
    DisconnectWithWillMessage = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8A,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9A,
    QoSNotSupported = 0x9B,
    UseAnotherServer = 0x9C,
    ServerMoved = 0x9D,
    SharedSubscriptionsNotSupported = 0x9E,
    ConnectionRateExceeded = 0x9F,
    MaximumConnectTime = 0xA0,
    SubscriptionIdentifiersNotSupported = 0xA1,
    WildcardSubscriptionsNotSupported = 0xA2,
}

impl ReasonCode {
    /// `None` for a number the spec does not define.
    pub fn from_u8(v: u8) -> Option<ReasonCode> {
        use ReasonCode::*;
        Some(match v {
            0x00 => Success,
            0x01 => GrantedQoS1,
            0x02 => GrantedQoS2,
            0x04 => DisconnectWithWillMessage,
            0x10 => NoMatchingSubscribers,
            0x11 => NoSubscriptionExisted,
            0x18 => ContinueAuthentication,
            0x19 => ReAuthenticate,
            0x80 => UnspecifiedError,
            0x81 => MalformedPacket,
            0x82 => ProtocolError,
            0x83 => ImplementationSpecificError,
            0x84 => UnsupportedProtocolVersion,
            0x85 => ClientIdentifierNotValid,
            0x86 => BadUserNameOrPassword,
            0x87 => NotAuthorized,
            0x88 => ServerUnavailable,
            0x89 => ServerBusy,
            0x8A => Banned,
            0x8B => ServerShuttingDown,
            0x8C => BadAuthenticationMethod,
            0x8D => KeepAliveTimeout,
            0x8E => SessionTakenOver,
            0x8F => TopicFilterInvalid,
            0x90 => TopicNameInvalid,
            0x91 => PacketIdentifierInUse,
            0x92 => PacketIdentifierNotFound,
            0x93 => ReceiveMaximumExceeded,
            0x94 => TopicAliasInvalid,
            0x95 => PacketTooLarge,
            0x96 => MessageRateTooHigh,
            0x97 => QuotaExceeded,
            0x98 => AdministrativeAction,
            0x99 => PayloadFormatInvalid,
            0x9A => RetainNotSupported,
            0x9B => QoSNotSupported,
            0x9C => UseAnotherServer,
            0x9D => ServerMoved,
            0x9E => SharedSubscriptionsNotSupported,
            0x9F => ConnectionRateExceeded,
            0xA0 => MaximumConnectTime,
            0xA1 => SubscriptionIdentifiersNotSupported,
            0xA2 => WildcardSubscriptionsNotSupported,
            _ => return None,
        })
    }

    /// Reason codes of 0x80 and above report a failure (§2.4).
    pub fn is_failure(self) -> bool {
        self as u8 >= 0x80
    }

    /// The 3.1.1 Connect Return Code (§3.2.2.3 of 3.1.1) closest to this reason code. 3.1.1 has
    /// no code for most v5 failures, so they become 3 "Server unavailable", as Mosquitto does.
    pub fn to_v3_connack(self) -> u8 {
        match self {
            ReasonCode::Success => 0,
            ReasonCode::UnsupportedProtocolVersion => 1,
            ReasonCode::ClientIdentifierNotValid => 2,
            ReasonCode::BadUserNameOrPassword => 4,
            ReasonCode::NotAuthorized => 5,
            _ => 3,
        }
    }

    /// The reason code for a 3.1.1 Connect Return Code; `None` for the reserved values 6-255.
    pub fn from_v3_connack(code: u8) -> Option<ReasonCode> {
        Some(match code {
            0 => ReasonCode::Success,
            1 => ReasonCode::UnsupportedProtocolVersion,
            2 => ReasonCode::ClientIdentifierNotValid,
            3 => ReasonCode::ServerUnavailable,
            4 => ReasonCode::BadUserNameOrPassword,
            5 => ReasonCode::NotAuthorized,
            _ => return None,
        })
    }

    /// The 3.1.1 SUBACK return code: the granted QoS, or 0x80 for every failure.
    pub fn to_v3_suback(self) -> u8 {
        match self {
            ReasonCode::Success | ReasonCode::GrantedQoS1 | ReasonCode::GrantedQoS2 => self as u8,
            _ => 0x80,
        }
    }

    /// The reason code for a 3.1.1 SUBACK return code (0, 1, 2 or 0x80), `None` otherwise.
    pub fn from_v3_suback(code: u8) -> Option<ReasonCode> {
        Some(match code {
            0 => ReasonCode::Success,
            1 => ReasonCode::GrantedQoS1,
            2 => ReasonCode::GrantedQoS2,
            0x80 => ReasonCode::UnspecifiedError,
            _ => return None,
        })
    }
}

impl TryFrom<u8> for ReasonCode {
    /// The undefined number.
    type Error = u8;

    fn try_from(v: u8) -> Result<Self, Self::Error> {
        ReasonCode::from_u8(v).ok_or(v)
    }
}

impl From<ReasonCode> for u8 {
    fn from(code: ReasonCode) -> u8 {
        code as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_u8_round_trips_every_defined_code() {
        let mut defined = 0;
        for v in 0..=255u8 {
            if let Some(code) = ReasonCode::from_u8(v) {
                assert_eq!(code as u8, v);
                assert_eq!(ReasonCode::try_from(v), Ok(code));
                defined += 1;
            } else {
                assert_eq!(ReasonCode::try_from(v), Err(v));
            }
        }
        assert_eq!(defined, 43);
    }

    #[test]
    fn v3_connack_mapping() {
        for code in 0..=5u8 {
            let rc = ReasonCode::from_v3_connack(code).unwrap();
            assert_eq!(rc.to_v3_connack(), code);
        }
        assert_eq!(ReasonCode::from_v3_connack(6), None);
        assert_eq!(ReasonCode::ServerBusy.to_v3_connack(), 3);
        assert_eq!(ReasonCode::Banned.to_v3_connack(), 3);
        assert_eq!(ReasonCode::MalformedPacket.to_v3_connack(), 3);
    }

    #[test]
    fn v3_suback_mapping() {
        assert_eq!(ReasonCode::GrantedQoS2.to_v3_suback(), 2);
        assert_eq!(ReasonCode::TopicFilterInvalid.to_v3_suback(), 0x80);
        assert_eq!(
            ReasonCode::from_v3_suback(0x80),
            Some(ReasonCode::UnspecifiedError)
        );
        assert_eq!(ReasonCode::from_v3_suback(3), None);
        assert_eq!(ReasonCode::from_v3_suback(0x8F), None);
    }
}
