//! MQTT 5 properties (§2.2.2): identifiers, their wire types, and the packets each may appear in.
//!
//! One `Properties` struct serves every packet; the decoder rejects a property that is not
//! allowed in the packet being decoded, and a duplicate of any property other than User Property
//! and Subscription Identifier (PUBLISH only).

use bytes::Bytes;

/// Every property of MQTT 5.0. `None`/empty means "absent on the wire".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// 0x01 Byte: PUBLISH, Will.
    pub payload_format_indicator: Option<u8>,
    /// 0x02 Four Byte Integer: PUBLISH, Will.
    pub message_expiry_interval: Option<u32>,
    /// 0x03 UTF-8 string: PUBLISH, Will.
    pub content_type: Option<String>,
    /// 0x08 UTF-8 string: PUBLISH, Will.
    pub response_topic: Option<String>,
    /// 0x09 Binary Data: PUBLISH, Will.
    pub correlation_data: Option<Bytes>,
    /// 0x0B Variable Byte Integer (1..=268,435,455): PUBLISH (several allowed), SUBSCRIBE (one).
    pub subscription_identifiers: Vec<u32>,
    /// 0x11 Four Byte Integer: CONNECT, CONNACK, DISCONNECT.
    pub session_expiry_interval: Option<u32>,
    /// 0x12 UTF-8 string: CONNACK.
    pub assigned_client_identifier: Option<String>,
    /// 0x13 Two Byte Integer: CONNACK.
    pub server_keep_alive: Option<u16>,
    /// 0x15 UTF-8 string: CONNECT, CONNACK, AUTH.
    pub authentication_method: Option<String>,
    /// 0x16 Binary Data: CONNECT, CONNACK, AUTH.
    pub authentication_data: Option<Bytes>,
    /// 0x17 Byte (0 or 1): CONNECT.
    pub request_problem_information: Option<u8>,
    /// 0x18 Four Byte Integer: Will.
    pub will_delay_interval: Option<u32>,
    /// 0x19 Byte (0 or 1): CONNECT.
    pub request_response_information: Option<u8>,
    /// 0x1A UTF-8 string: CONNACK.
    pub response_information: Option<String>,
    /// 0x1C UTF-8 string: CONNACK, DISCONNECT.
    pub server_reference: Option<String>,
    /// 0x1F UTF-8 string: CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK,
    /// DISCONNECT, AUTH.
    pub reason_string: Option<String>,
    /// 0x21 Two Byte Integer (non-zero): CONNECT, CONNACK.
    pub receive_maximum: Option<u16>,
    /// 0x22 Two Byte Integer: CONNECT, CONNACK.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 Two Byte Integer (non-zero): PUBLISH.
    pub topic_alias: Option<u16>,
    /// 0x24 Byte (0 or 1): CONNACK.
    pub maximum_qos: Option<u8>,
    /// 0x25 Byte (0 or 1): CONNACK.
    pub retain_available: Option<u8>,
    /// 0x26 UTF-8 string pair: every packet that has properties; may repeat, order kept.
    pub user_properties: Vec<(String, String)>,
    /// 0x27 Four Byte Integer (non-zero): CONNECT, CONNACK.
    pub maximum_packet_size: Option<u32>,
    /// 0x28 Byte (0 or 1): CONNACK.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29 Byte (0 or 1): CONNACK.
    pub subscription_identifiers_available: Option<u8>,
    /// 0x2A Byte (0 or 1): CONNACK.
    pub shared_subscription_available: Option<u8>,
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }
}
