//! The MQTT 5.0 / 3.1.1 wire format. Knows nothing of actors, sockets or SQL: only bytes, the
//! packet model and tokio-util's `Decoder`/`Encoder`.

pub mod codec;
pub mod error;
pub mod outbound;
pub mod packet;
pub mod primitives;
pub mod properties;
pub mod reason;
#[cfg(test)]
mod testutil;
pub mod topic;

pub use codec::MqttCodec;
pub use error::{DecodeError, EncodeError};
pub use outbound::{Frame, OutPublish, SharedPublish};
pub use packet::*;
pub use properties::{Properties, PropertyValues};
pub use reason::ReasonCode;
