//! mqttd: an MQTT 5.0 / 3.1.1 broker built from actix actors, with SQLite (through Diesel) for
//! what must outlive a connection.
//!
//! # Layout
//!
//! - [`mqtt`]: the wire format. `MqttCodec` turns bytes into [`mqtt::Packet`]s and back
//!   (tokio-util `Decoder`/`Encoder`); it knows nothing of actors, sockets or SQL. This is the
//!   only place where bytes become packets.
//! - [`listener::Listener`] (actor, one per listening address): accepts TCP connections and
//!   starts one `Session` per socket on one of N session Arbiters (threads), round-robin.
//! - [`session::Session`] (actor, one per connection): reads packets from a `FramedRead`,
//!   handles them in one dispatch `match`, writes replies through a `FramedWrite`, runs the
//!   connect and keep-alive timers. All errors go through one function that picks the
//!   CONNACK/DISCONNECT reason code.
//! - [`registry::Registry`] (actor, one per broker): the active clients by client identifier;
//!   decides take-overs.
//! - [`db::DbActor`] (actor on a `SyncArbiter`, one SQLite connection per thread): users and
//!   passwords, the client connect/disconnect record. The only place that blocks.
//!
//! # Messages
//!
//! All of them are in [`messages`], grouped by recipient:
//!
//! - Session -> DbActor: `Authenticate` (CONNECT with a username), `RecordConnect` (before
//!   CONNACK), `RecordDisconnect` (when the connection ends).
//! - Session -> Registry: `Register` (after authentication; may close an older connection with
//!   the same id), `Unregister` (when the connection ends).
//! - Registry -> Session: `Close` (DISCONNECT 0x8E on take-over, 0x8B on shutdown).
//! - Broker -> Listener: `StopAccepting`; Broker -> Registry: `Shutdown`; Broker -> DbActor:
//!   `CloseOpenConnections`, `Checkpoint`.
//!
//! # Life of a connection
//!
//! accept (Listener) -> Session started on an Arbiter -> CONNECT decoded -> validated ->
//! `Authenticate` -> `Register` -> `RecordConnect` -> CONNACK -> packets ... -> DISCONNECT,
//! keep-alive timeout, take-over or shutdown -> `Unregister` + `RecordDisconnect`.

pub mod acl;
pub mod broker;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod listener;
pub mod message;
pub mod messages;
pub mod mqtt;
pub mod registry;
pub mod session;
pub mod stats;

pub use broker::{Broker, start};
pub use config::Config;
pub use error::BrokerError;
