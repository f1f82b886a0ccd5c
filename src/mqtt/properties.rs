//! MQTT 5 properties (§2.2.2): identifiers, their wire types, and the packets each may appear in.
//!
//! One `Properties` struct serves every packet; the decoder rejects a property that is not
//! allowed in the packet being decoded, and a duplicate of any property other than User Property
//! and Subscription Identifier (PUBLISH only).
//!
//! `Properties` is a pointer to its values, allocated only when a property is present: most
//! packets have none, and a packet is moved several times between the socket and its handler
//! (the values take over 300 bytes).

use std::fmt;
use std::ops::{Deref, DerefMut};

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::primitives::{
    binary_len, read_binary, read_bytes, read_string, read_string_pair, read_u8, read_u16,
    read_u32, read_vbi, string_len, vbi_len, write_binary, write_string, write_vbi,
};

/// The properties of a packet: `PropertyValues`, reached through `Deref`/`DerefMut` (the
/// first change allocates them).
#[derive(Clone, Default)]
pub struct Properties(Option<Box<PropertyValues>>);

/// Every property of MQTT 5.0. `None`/empty means "absent on the wire".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PropertyValues {
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

/// What an absent `Properties` reads as.
static NONE: PropertyValues = PropertyValues {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: Vec::new(),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifiers_available: None,
    shared_subscription_available: None,
};

impl Properties {
    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(|values| *values == NONE)
    }

    /// The values, owned.
    pub fn into_values(self) -> PropertyValues {
        self.0.map(|values| *values).unwrap_or_default()
    }
}

impl From<PropertyValues> for Properties {
    fn from(values: PropertyValues) -> Properties {
        if values == NONE {
            Properties(None)
        } else {
            Properties(Some(Box::new(values)))
        }
    }
}

impl Deref for Properties {
    type Target = PropertyValues;

    fn deref(&self) -> &PropertyValues {
        self.0.as_deref().unwrap_or(&NONE)
    }
}

impl DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut PropertyValues {
        self.0.get_or_insert_with(Box::default)
    }
}

/// Equal when the values are: an allocated block of absent values equals none.
impl PartialEq for Properties {
    fn eq(&self, other: &Properties) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        PropertyValues::fmt(self, f)
    }
}

/// Property identifiers (§2.2.2.2).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Where a property block sits: a packet, or the Will Properties inside CONNECT's payload.
/// It decides which properties are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    /// The name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            PropertyContext::Connect => "CONNECT",
            PropertyContext::Will => "Will Properties",
            PropertyContext::ConnAck => "CONNACK",
            PropertyContext::Publish => "PUBLISH",
            PropertyContext::PubAck => "PUBACK",
            PropertyContext::PubRec => "PUBREC",
            PropertyContext::PubRel => "PUBREL",
            PropertyContext::PubComp => "PUBCOMP",
            PropertyContext::Subscribe => "SUBSCRIBE",
            PropertyContext::SubAck => "SUBACK",
            PropertyContext::Unsubscribe => "UNSUBSCRIBE",
            PropertyContext::UnsubAck => "UNSUBACK",
            PropertyContext::Disconnect => "DISCONNECT",
            PropertyContext::Auth => "AUTH",
        }
    }
}

/// The table of §2.2.2.2: where each property may appear. `None` for an unknown identifier.
fn contexts(property: u8) -> Option<&'static [PropertyContext]> {
    use PropertyContext::*;
    use id::*;
    const MESSAGE: &[PropertyContext] = &[Publish, Will];
    const SESSION: &[PropertyContext] = &[Connect, ConnAck];
    const AUTH: &[PropertyContext] = &[Connect, ConnAck, Auth];
    const EVERYWHERE: &[PropertyContext] = &[
        Connect,
        Will,
        ConnAck,
        Publish,
        PubAck,
        PubRec,
        PubRel,
        PubComp,
        Subscribe,
        SubAck,
        Unsubscribe,
        UnsubAck,
        Disconnect,
        Auth,
    ];
    Some(match property {
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA => MESSAGE,
        SUBSCRIPTION_IDENTIFIER => &[Publish, Subscribe],
        SESSION_EXPIRY_INTERVAL => &[Connect, ConnAck, Disconnect],
        ASSIGNED_CLIENT_IDENTIFIER
        | SERVER_KEEP_ALIVE
        | RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => &[ConnAck],
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => AUTH,
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => &[Connect],
        WILL_DELAY_INTERVAL => &[Will],
        SERVER_REFERENCE => &[ConnAck, Disconnect],
        REASON_STRING => &[
            ConnAck, PubAck, PubRec, PubRel, PubComp, SubAck, UnsubAck, Disconnect, Auth,
        ],
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => SESSION,
        TOPIC_ALIAS => &[Publish],
        USER_PROPERTY => EVERYWHERE,
        _ => return None,
    })
}

/// Whether `property` may appear in `ctx` (§2.2.2.2). Unknown identifiers are never allowed.
pub fn is_allowed(property: u8, ctx: PropertyContext) -> bool {
    contexts(property).is_some_and(|allowed| allowed.contains(&ctx))
}

/// Stores a single-occurrence property, refusing a second one.
fn set_once<T>(slot: &mut Option<T>, property: u8, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(property));
    }
    *slot = Some(value);
    Ok(())
}

/// A Byte property whose only valid values are 0 and 1.
fn read_bool_byte(buf: &mut Bytes, property: u8) -> Result<u8, DecodeError> {
    match read_u8(buf)? {
        v @ (0 | 1) => Ok(v),
        v => Err(DecodeError::InvalidPropertyValue {
            id: property,
            value: u32::from(v),
        }),
    }
}

fn nonzero<T: Into<u32> + Copy>(property: u8, value: T) -> Result<T, DecodeError> {
    if value.into() == 0 {
        return Err(DecodeError::InvalidPropertyValue {
            id: property,
            value: 0,
        });
    }
    Ok(value)
}

impl Properties {
    /// Reads a property block (Property Length, then identifier/value pairs) for `ctx`.
    /// The block is split off first, so no property can read past the declared length, and a
    /// length that runs past the packet is `Truncated`.
    pub fn decode(buf: &mut Bytes, ctx: PropertyContext) -> Result<Properties, DecodeError> {
        use id::*;
        let len = read_vbi(buf)?;
        let mut block = read_bytes(buf, len as usize)?;
        if block.is_empty() {
            return Ok(Properties::default());
        }
        let mut p = PropertyValues::default();
        while !block.is_empty() {
            // Identifiers are Variable Byte Integers, though every defined one fits in a byte.
            let raw = read_vbi(&mut block)?;
            let property = u8::try_from(raw)
                .ok()
                .filter(|&b| contexts(b).is_some())
                .ok_or(DecodeError::UnknownProperty(raw))?;
            if !is_allowed(property, ctx) {
                return Err(DecodeError::PropertyNotAllowed {
                    id: property,
                    packet: ctx.name(),
                });
            }
            let b = &mut block;
            match property {
                PAYLOAD_FORMAT_INDICATOR => set_once(
                    &mut p.payload_format_indicator,
                    property,
                    read_bool_byte(b, property)?,
                )?,
                MESSAGE_EXPIRY_INTERVAL => {
                    set_once(&mut p.message_expiry_interval, property, read_u32(b)?)?
                }
                CONTENT_TYPE => set_once(&mut p.content_type, property, read_string(b)?)?,
                RESPONSE_TOPIC => set_once(&mut p.response_topic, property, read_string(b)?)?,
                CORRELATION_DATA => set_once(&mut p.correlation_data, property, read_binary(b)?)?,
                SUBSCRIPTION_IDENTIFIER => {
                    let value = nonzero(property, read_vbi(b)?)?;
                    // PUBLISH carries one per matching subscription; SUBSCRIBE at most one.
                    if ctx != PropertyContext::Publish && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::DuplicateProperty(property));
                    }
                    p.subscription_identifiers.push(value);
                }
                SESSION_EXPIRY_INTERVAL => {
                    set_once(&mut p.session_expiry_interval, property, read_u32(b)?)?
                }
                ASSIGNED_CLIENT_IDENTIFIER => {
                    set_once(&mut p.assigned_client_identifier, property, read_string(b)?)?
                }
                SERVER_KEEP_ALIVE => set_once(&mut p.server_keep_alive, property, read_u16(b)?)?,
                AUTHENTICATION_METHOD => {
                    set_once(&mut p.authentication_method, property, read_string(b)?)?
                }
                AUTHENTICATION_DATA => {
                    set_once(&mut p.authentication_data, property, read_binary(b)?)?
                }
                REQUEST_PROBLEM_INFORMATION => set_once(
                    &mut p.request_problem_information,
                    property,
                    read_bool_byte(b, property)?,
                )?,
                WILL_DELAY_INTERVAL => {
                    set_once(&mut p.will_delay_interval, property, read_u32(b)?)?
                }
                REQUEST_RESPONSE_INFORMATION => set_once(
                    &mut p.request_response_information,
                    property,
                    read_bool_byte(b, property)?,
                )?,
                RESPONSE_INFORMATION => {
                    set_once(&mut p.response_information, property, read_string(b)?)?
                }
                SERVER_REFERENCE => set_once(&mut p.server_reference, property, read_string(b)?)?,
                REASON_STRING => set_once(&mut p.reason_string, property, read_string(b)?)?,
                RECEIVE_MAXIMUM => set_once(
                    &mut p.receive_maximum,
                    property,
                    nonzero(property, read_u16(b)?)?,
                )?,
                TOPIC_ALIAS_MAXIMUM => {
                    set_once(&mut p.topic_alias_maximum, property, read_u16(b)?)?
                }
                TOPIC_ALIAS => {
                    let alias = read_u16(b)?;
                    if alias == 0 {
                        return Err(DecodeError::TopicAliasZero);
                    }
                    set_once(&mut p.topic_alias, property, alias)?
                }
                MAXIMUM_QOS => {
                    set_once(&mut p.maximum_qos, property, read_bool_byte(b, property)?)?
                }
                RETAIN_AVAILABLE => set_once(
                    &mut p.retain_available,
                    property,
                    read_bool_byte(b, property)?,
                )?,
                USER_PROPERTY => p.user_properties.push(read_string_pair(b)?),
                MAXIMUM_PACKET_SIZE => set_once(
                    &mut p.maximum_packet_size,
                    property,
                    nonzero(property, read_u32(b)?)?,
                )?,
                WILDCARD_SUBSCRIPTION_AVAILABLE => set_once(
                    &mut p.wildcard_subscription_available,
                    property,
                    read_bool_byte(b, property)?,
                )?,
                SUBSCRIPTION_IDENTIFIER_AVAILABLE => set_once(
                    &mut p.subscription_identifiers_available,
                    property,
                    read_bool_byte(b, property)?,
                )?,
                SHARED_SUBSCRIPTION_AVAILABLE => set_once(
                    &mut p.shared_subscription_available,
                    property,
                    read_bool_byte(b, property)?,
                )?,
                // `contexts` above knows exactly the identifiers matched here.
                _ => return Err(DecodeError::UnknownProperty(raw)),
            }
        }
        // §3.1.2.11.10, §3.2.2.3.18, §3.15.2.2.3.
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(DecodeError::AuthDataWithoutMethod);
        }
        Ok(p.into())
    }

    /// Bytes of the identifier/value pairs, without the Property Length in front.
    pub(crate) fn body_len(&self) -> usize {
        self.0.as_deref().map_or(0, PropertyValues::body_len)
    }

    /// Bytes the whole block takes on the wire, Property Length included.
    pub fn encoded_len(&self) -> usize {
        let body = self.body_len();
        vbi_len(u32::try_from(body).unwrap_or(u32::MAX)) + body
    }

    /// Writes Property Length and then every property present, in ascending identifier order
    /// (User Properties in their own order). The encoder does not check that a property is
    /// allowed in the packet: building valid packets is the caller's job.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_vbi(dst, u32::try_from(self.body_len()).unwrap_or(u32::MAX))?;
        self.encode_body(dst)
    }

    /// Writes every property present, without the Property Length in front.
    pub(crate) fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self.0.as_deref() {
            Some(values) => values.encode_body(dst),
            None => Ok(()),
        }
    }
}

impl PropertyValues {
    fn body_len(&self) -> usize {
        // Identifier (1 byte) + value, for each property present.
        fn opt<T>(v: &Option<T>, len: impl Fn(&T) -> usize) -> usize {
            v.as_ref().map_or(0, |v| 1 + len(v))
        }
        opt(&self.payload_format_indicator, |_| 1)
            + opt(&self.message_expiry_interval, |_| 4)
            + opt(&self.content_type, |s| string_len(s))
            + opt(&self.response_topic, |s| string_len(s))
            + opt(&self.correlation_data, |b| binary_len(b))
            + self
                .subscription_identifiers
                .iter()
                .map(|&v| 1 + vbi_len(v))
                .sum::<usize>()
            + opt(&self.session_expiry_interval, |_| 4)
            + opt(&self.assigned_client_identifier, |s| string_len(s))
            + opt(&self.server_keep_alive, |_| 2)
            + opt(&self.authentication_method, |s| string_len(s))
            + opt(&self.authentication_data, |b| binary_len(b))
            + opt(&self.request_problem_information, |_| 1)
            + opt(&self.will_delay_interval, |_| 4)
            + opt(&self.request_response_information, |_| 1)
            + opt(&self.response_information, |s| string_len(s))
            + opt(&self.server_reference, |s| string_len(s))
            + opt(&self.reason_string, |s| string_len(s))
            + opt(&self.receive_maximum, |_| 2)
            + opt(&self.topic_alias_maximum, |_| 2)
            + opt(&self.topic_alias, |_| 2)
            + opt(&self.maximum_qos, |_| 1)
            + opt(&self.retain_available, |_| 1)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 1 + string_len(k) + string_len(v))
                .sum::<usize>()
            + opt(&self.maximum_packet_size, |_| 4)
            + opt(&self.wildcard_subscription_available, |_| 1)
            + opt(&self.subscription_identifiers_available, |_| 1)
            + opt(&self.shared_subscription_available, |_| 1)
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        use id::*;
        fn u8_prop(dst: &mut BytesMut, property: u8, v: Option<u8>) {
            if let Some(v) = v {
                dst.put_u8(property);
                dst.put_u8(v);
            }
        }
        fn u16_prop(dst: &mut BytesMut, property: u8, v: Option<u16>) {
            if let Some(v) = v {
                dst.put_u8(property);
                dst.put_u16(v);
            }
        }
        fn u32_prop(dst: &mut BytesMut, property: u8, v: Option<u32>) {
            if let Some(v) = v {
                dst.put_u8(property);
                dst.put_u32(v);
            }
        }
        fn str_prop(
            dst: &mut BytesMut,
            property: u8,
            v: &Option<String>,
        ) -> Result<(), EncodeError> {
            if let Some(v) = v {
                dst.put_u8(property);
                write_string(dst, v)?;
            }
            Ok(())
        }
        fn bin_prop(
            dst: &mut BytesMut,
            property: u8,
            v: &Option<Bytes>,
        ) -> Result<(), EncodeError> {
            if let Some(v) = v {
                dst.put_u8(property);
                write_binary(dst, v)?;
            }
            Ok(())
        }

        u8_prop(dst, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        u32_prop(dst, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        str_prop(dst, CONTENT_TYPE, &self.content_type)?;
        str_prop(dst, RESPONSE_TOPIC, &self.response_topic)?;
        bin_prop(dst, CORRELATION_DATA, &self.correlation_data)?;
        for &v in &self.subscription_identifiers {
            dst.put_u8(SUBSCRIPTION_IDENTIFIER);
            write_vbi(dst, v)?;
        }
        u32_prop(dst, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        str_prop(
            dst,
            ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        )?;
        u16_prop(dst, SERVER_KEEP_ALIVE, self.server_keep_alive);
        str_prop(dst, AUTHENTICATION_METHOD, &self.authentication_method)?;
        bin_prop(dst, AUTHENTICATION_DATA, &self.authentication_data)?;
        u8_prop(
            dst,
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        u32_prop(dst, WILL_DELAY_INTERVAL, self.will_delay_interval);
        u8_prop(
            dst,
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        str_prop(dst, RESPONSE_INFORMATION, &self.response_information)?;
        str_prop(dst, SERVER_REFERENCE, &self.server_reference)?;
        str_prop(dst, REASON_STRING, &self.reason_string)?;
        u16_prop(dst, RECEIVE_MAXIMUM, self.receive_maximum);
        u16_prop(dst, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        u16_prop(dst, TOPIC_ALIAS, self.topic_alias);
        u8_prop(dst, MAXIMUM_QOS, self.maximum_qos);
        u8_prop(dst, RETAIN_AVAILABLE, self.retain_available);
        for (k, v) in &self.user_properties {
            dst.put_u8(USER_PROPERTY);
            write_string(dst, k)?;
            write_string(dst, v)?;
        }
        u32_prop(dst, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        u8_prop(
            dst,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        u8_prop(
            dst,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        u8_prop(
            dst,
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PropertyContext::*;

    /// A property block: Property Length, then `props`.
    fn block(props: &[u8]) -> Bytes {
        let mut v = vec![u8::try_from(props.len()).unwrap()];
        v.extend_from_slice(props);
        Bytes::from(v)
    }

    fn decode(props: &[u8], ctx: PropertyContext) -> Result<Properties, DecodeError> {
        let mut buf = block(props);
        let p = Properties::decode(&mut buf, ctx)?;
        assert!(buf.is_empty());
        Ok(p)
    }

    /// A valid encoding of one occurrence of each property.
    fn sample_value(property: u8) -> &'static [u8] {
        match property {
            id::PAYLOAD_FORMAT_INDICATOR
            | id::REQUEST_PROBLEM_INFORMATION
            | id::REQUEST_RESPONSE_INFORMATION
            | id::MAXIMUM_QOS
            | id::RETAIN_AVAILABLE
            | id::WILDCARD_SUBSCRIPTION_AVAILABLE
            | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
            | id::SHARED_SUBSCRIPTION_AVAILABLE => &[0x01],
            id::MESSAGE_EXPIRY_INTERVAL
            | id::SESSION_EXPIRY_INTERVAL
            | id::WILL_DELAY_INTERVAL
            | id::MAXIMUM_PACKET_SIZE => &[0x00, 0x00, 0x01, 0x00],
            id::SERVER_KEEP_ALIVE
            | id::RECEIVE_MAXIMUM
            | id::TOPIC_ALIAS_MAXIMUM
            | id::TOPIC_ALIAS => &[0x00, 0x05],
            id::SUBSCRIPTION_IDENTIFIER => &[0x80, 0x01],
            id::USER_PROPERTY => &[0x00, 0x01, b'k', 0x00, 0x01, b'v'],
            _ => &[0x00, 0x01, b'x'],
        }
    }

    const ALL_CONTEXTS: [PropertyContext; 14] = [
        Connect,
        Will,
        ConnAck,
        Publish,
        PubAck,
        PubRec,
        PubRel,
        PubComp,
        Subscribe,
        SubAck,
        Unsubscribe,
        UnsubAck,
        Disconnect,
        Auth,
    ];

    #[test]
    fn table_matches_the_spec() {
        let allowed = |ctx| {
            (1..=0x2Au8)
                .filter(|&p| is_allowed(p, ctx))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            allowed(Connect),
            [0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27]
        );
        assert_eq!(allowed(Will), [0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26]);
        assert_eq!(
            allowed(ConnAck),
            [
                0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27,
                0x28, 0x29, 0x2A
            ]
        );
        assert_eq!(
            allowed(Publish),
            [0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26]
        );
        for ctx in [PubAck, PubRec, PubRel, PubComp, SubAck, UnsubAck] {
            assert_eq!(allowed(ctx), [0x1F, 0x26], "{ctx:?}");
        }
        assert_eq!(allowed(Subscribe), [0x0B, 0x26]);
        assert_eq!(allowed(Unsubscribe), [0x26]);
        assert_eq!(allowed(Disconnect), [0x11, 0x1C, 0x1F, 0x26]);
        assert_eq!(allowed(Auth), [0x15, 0x16, 0x1F, 0x26]);
    }

    #[test]
    fn unknown_identifiers() {
        for raw in 0..=0x7Fu8 {
            if contexts(raw).is_none() {
                assert!(
                    matches!(decode(&[raw, 0x00], Publish), Err(DecodeError::UnknownProperty(r)) if r == u32::from(raw)),
                    "{raw:#04x}"
                );
            }
        }
        // Multi-byte identifier 128.
        assert!(matches!(
            decode(&[0x80, 0x01, 0x00], Publish),
            Err(DecodeError::UnknownProperty(128))
        ));
    }

    #[test]
    fn every_property_decodes_once_and_is_refused_twice_or_out_of_place() {
        for property in (1..=0x2Au8).filter(|&p| contexts(p).is_some()) {
            let mut one = vec![property];
            one.extend_from_slice(sample_value(property));
            let twice = [one.clone(), one.clone()].concat();
            for ctx in ALL_CONTEXTS {
                if !is_allowed(property, ctx) {
                    assert!(
                        matches!(decode(&one, ctx), Err(DecodeError::PropertyNotAllowed { id, .. }) if id == property),
                        "{property:#04x} in {ctx:?}"
                    );
                    continue;
                }
                if property == id::AUTHENTICATION_DATA {
                    continue; // needs a method; covered below
                }
                let p = decode(&one, ctx).unwrap();
                let mut dst = BytesMut::new();
                p.encode(&mut dst).unwrap();
                assert_eq!(&dst[..], &block(&one)[..], "{property:#04x} re-encodes");
                assert_eq!(p.encoded_len(), dst.len());
                let repeatable = property == id::USER_PROPERTY
                    || (property == id::SUBSCRIPTION_IDENTIFIER && ctx == Publish);
                match decode(&twice, ctx) {
                    Ok(_) => assert!(repeatable, "{property:#04x} twice in {ctx:?}"),
                    Err(DecodeError::DuplicateProperty(d)) => {
                        assert!(!repeatable && d == property, "{property:#04x} in {ctx:?}")
                    }
                    Err(e) => panic!("{property:#04x} twice in {ctx:?}: {e}"),
                }
            }
        }
    }

    #[test]
    fn value_checks() {
        let invalid = |props: &[u8], ctx, id_: u8, value: u32| {
            assert!(
                matches!(decode(props, ctx), Err(DecodeError::InvalidPropertyValue { id, value: v }) if id == id_ && v == value),
                "{props:02X?}"
            );
        };
        invalid(&[0x21, 0x00, 0x00], Connect, 0x21, 0);
        invalid(&[0x21, 0x00, 0x00], ConnAck, 0x21, 0);
        invalid(&[0x27, 0x00, 0x00, 0x00, 0x00], Connect, 0x27, 0);
        invalid(&[0x17, 0x02], Connect, 0x17, 2);
        invalid(&[0x19, 0x02], Connect, 0x19, 2);
        invalid(&[0x01, 0x02], Will, 0x01, 2);
        invalid(&[0x24, 0x02], ConnAck, 0x24, 2);
        invalid(&[0x25, 0x02], ConnAck, 0x25, 2);
        invalid(&[0x28, 0xFF], ConnAck, 0x28, 255);
        invalid(&[0x29, 0x02], ConnAck, 0x29, 2);
        invalid(&[0x2A, 0x02], ConnAck, 0x2A, 2);
        invalid(&[0x0B, 0x00], Subscribe, 0x0B, 0);
        assert!(matches!(
            decode(&[0x23, 0x00, 0x00], Publish),
            Err(DecodeError::TopicAliasZero)
        ));
        // Zero is fine where the spec allows it.
        assert_eq!(
            decode(&[0x22, 0x00, 0x00], Connect)
                .unwrap()
                .topic_alias_maximum,
            Some(0)
        );
        assert_eq!(
            decode(&[0x13, 0x00, 0x00], ConnAck)
                .unwrap()
                .server_keep_alive,
            Some(0)
        );
    }

    #[test]
    fn authentication_data_needs_a_method() {
        for ctx in [Connect, ConnAck, Auth] {
            assert!(matches!(
                decode(&[0x16, 0x00, 0x01, 0xAA], ctx),
                Err(DecodeError::AuthDataWithoutMethod)
            ));
            let p = decode(&[0x16, 0x00, 0x01, 0xAA, 0x15, 0x00, 0x01, b'm'], ctx).unwrap();
            assert_eq!(p.authentication_method.as_deref(), Some("m"));
        }
    }

    #[test]
    fn truncation() {
        // Property Length past the end of the packet.
        assert!(matches!(
            Properties::decode(&mut Bytes::from_static(&[0x05, 0x01]), Publish),
            Err(DecodeError::Truncated)
        ));
        // A value cut by the Property Length, though the packet has more bytes after it.
        assert!(matches!(
            Properties::decode(
                &mut Bytes::from_static(&[0x02, 0x02, 0x00, 0x00, 0x00]),
                Publish
            ),
            Err(DecodeError::Truncated)
        ));
        // Missing Property Length entirely.
        assert!(matches!(
            Properties::decode(&mut Bytes::new(), Publish),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            Properties::decode(&mut Bytes::from_static(&[0x80, 0x00]), Publish),
            Err(DecodeError::MalformedVariableByteInteger)
        ));
    }

    #[test]
    fn encoding_is_in_identifier_order_with_user_properties_in_order() {
        let p = Properties::from(PropertyValues {
            shared_subscription_available: Some(1),
            user_properties: vec![("b".into(), "1".into()), ("a".into(), "2".into())],
            reason_string: Some("r".into()),
            session_expiry_interval: Some(1),
            ..PropertyValues::default()
        });
        let mut dst = BytesMut::new();
        p.encode(&mut dst).unwrap();
        let expected: &[u8] = &[
            0x19, 0x11, 0x00, 0x00, 0x00, 0x01, 0x1F, 0x00, 0x01, b'r', 0x26, 0x00, 0x01, b'b',
            0x00, 0x01, b'1', 0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'2', 0x2A, 0x01,
        ];
        assert_eq!(&dst[..], expected);
        assert_eq!(p.encoded_len(), expected.len());
        assert_eq!(decode(&expected[1..], ConnAck).unwrap(), p);
        let mut empty = BytesMut::new();
        Properties::default().encode(&mut empty).unwrap();
        assert_eq!(&empty[..], &[0x00]);
    }
}
