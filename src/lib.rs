//! mqttd: an MQTT 5.0 / 3.1.1 broker built from actix actors, with SQLite (through Diesel) for
//! what must outlive a connection.
//!
//! # Layout
//!
//! - [`mqtt`]: the wire format. `MqttCodec` turns bytes into [`mqtt::Packet`]s and back
//!   (tokio-util `Decoder`/`Encoder`); it knows nothing of actors, sockets or SQL. This is the
//!   only place where bytes become packets.
//! - [`listener::Listener`] (actor, one per listening address): accepts TCP connections and
//!   starts one `Session` per socket on one of N session Arbiters (threads, with a short
//!   scheduler time slice: [`sched`]), round-robin. On a TLS listener the handshake ([`tls`])
//!   runs first, on that Arbiter; on a WebSocket listener the HTTP upgrade ([`websocket`])
//!   comes next. The Session only gets the split byte stream (and the client certificate's
//!   username, if the listener maps one).
//! - [`session::Session`] (actor, one per connection): reads packets from a `FramedRead`
//!   (wrapped in a stream that also reports the connect timeout and keep-alive silence),
//!   handles them in one dispatch `match`, writes replies through a `FramedWrite`. All errors go through one function that picks the
//!   CONNACK/DISCONNECT reason code. While a plain-TCP subscriber's session is idle on a
//!   sleeping thread, a publisher's thread writes messages to its socket itself (the session's
//!   bypass; QoS 1/2 with packet ids the session lends it), which saves waking that thread.
//! - [`registry::Registry`] (actor, one per broker): the active clients by client identifier
//!   (take-over), every subscription (a topic trie), the retained messages, the persistent
//!   sessions, and routing: it shares the trie and the subscribers' bounded delivery queues
//!   with the sessions ([`registry::router`]), which route most messages themselves, and
//!   delivers the rest with `try_send` (or a bounded backlog). Its journal group-commits every change to a persistent
//!   session ([`persist::StoreOp`]) and releases the acknowledgements that wait for it.
//! - [`db::DbActor`] (actor on a `SyncArbiter`, one SQLite connection per thread): users and
//!   passwords, ACL rules, retained messages, the client connect/disconnect record; one more
//!   single-thread `DbActor` is the journal's writer. The only place that blocks.
//! - [`db::ConnectionLog`] (actor, one per broker): group-commits the connect/disconnect
//!   records, one transaction for all those that arrived while the previous one committed.
//! - [`http`] (optional, `[http]`): an actix-web server for operations, `GET /metrics`
//!   (Prometheus), `GET /healthz`, a status page on `/`, and the admin API under `/api/v1/`
//!   (clients, sessions, kick); it asks the Registry for its gauges once per scrape, and for a
//!   page of clients or sessions per API call.
//!
//! # Messages
//!
//! All of them are in [`messages`], grouped by recipient:
//!
//! - Session -> DbActor: `Authenticate` (CONNECT), `LoadAcl` (a CONNECT with a stored Will,
//!   and `RefreshAcl`),
//!   `StoreRetained` (a RETAIN publish, before its PUBACK), `LoadPublisherRules` (a SUBSCRIBE
//!   that matched retained messages, to re-check their publishers).
//! - Registry -> ConnectionLog: `RecordConnect` (sent on by `Register`; its answer, awaited
//!   before CONNACK, carries the connection's ACL rules); Session -> ConnectionLog:
//!   `RecordDisconnect`; ConnectionLog -> DbActor: `RecordConnections` (one batch).
//! - Session -> Registry: `Register` (after authentication; refused if the id is bound to
//!   another user; may close an older connection with the same id; resumes a stored
//!   session), `Subscribe`, `Unsubscribe`, `Publish`,
//!   `Acknowledged` (a persistent session's outbound PUBACK/PUBREC/PUBCOMP, inbound PUBREL),
//!   `Unregister`.
//! - Registry -> DbActor (writer): `Commit` (one batch of [`persist::StoreOp`]s).
//! - Registry -> Session: `Close` (DISCONNECT 0x8E on take-over, 0x8B on shutdown, 0x98 on
//!   an admin kick), `RefreshAcl` (one per session on `ReloadAcl`), and
//!   [`message::Delivery`] items through the session's bounded `tokio::sync::mpsc` queue.
//! - Broker -> Listener: `StopAccepting`; Broker -> Registry: `Shutdown`, `Flush`,
//!   `ReloadAcl` (SIGHUP); Broker ->
//!   DbActor: `LoadRetained`, `LoadState`, `Checkpoint`; Broker -> ConnectionLog:
//!   `CloseOpenConnections`.
//! - HTTP -> Registry: `Gauges` (`/metrics`, `/`), `ActiveClients` (`/healthz`), `ListClients`,
//!   `GetClient`, `ListSessions`, `Kick` (admin API); HTTP -> DbActor: `Ping` (`/healthz`).
//!
//! # Life of a connection
//!
//! accept (Listener) -> [TLS handshake, on the Arbiter] -> [WebSocket upgrade] -> Session
//! started on an Arbiter ->
//! CONNECT decoded -> validated -> bans (address, username, flapping client id; before any
//! password is hashed) -> `Authenticate` (skipped for a certificate identity) ->
//! [`LoadAcl`, only to check a Will stored with the session] -> `Register` -> (the Registry)
//! `RecordConnect`, which answers with the ACL rules -> CONNACK -> packets ... -> DISCONNECT,
//! keep-alive timeout, take-over or shutdown -> Will -> `Unregister` + `RecordDisconnect`.
//!
//! # Life of a message
//!
//! PUBLISH decoded by the publisher's Session -> checked (topic, alias, ACL) -> [`message::AppMessage`]
//! (`Arc`, payload shared as `Bytes`) -> the Session matches the shared trie and queues one
//! `Delivery` per subscriber that can take it now -> `Publish` to the Registry with the rest
//! (all of it if RETAIN, after `StoreRetained`), which queues them or holds them in a backlog;
//! for a persistent subscriber it journals the message first and queues it once committed ->
//! PUBACK/PUBREC once every delivery is queued (and committed) -> each subscriber's Session
//! writes it within that client's Receive Maximum.

// Production code must not panic on what a peer sends; tests may.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod acl;
pub mod admission;
pub mod bench;
pub mod broker;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod listener;
pub mod message;
pub mod messages;
pub mod mqtt;
pub mod persist;
pub mod registry;
pub mod sched;
pub mod session;
pub mod stats;
pub mod tls;
pub mod websocket;

pub use broker::{Broker, start};
pub use config::Config;
pub use error::BrokerError;
