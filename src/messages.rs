//! Every message that actors send each other, grouped by the actor that handles it.
//!
//! To add one: declare it here under its recipient, then `impl Handler<YourMessage>` in the
//! recipient's file. Sending a message to an actor that lacks the handler does not compile, so
//! nothing else has to be registered.

use actix::prelude::*;
use bytes::Bytes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use serde::Serialize;
use tokio::sync::oneshot;

use crate::acl::AclRule;
use crate::db::DbError;
use crate::message::{AppMessage, Delivery};
use crate::mqtt::ReasonCode;
use crate::persist::{StoreOp, StoredState, StoredWill};
use crate::registry::router::{InRegistry, Outlet};
use crate::registry::subscriptions::{Route, Subscription};
use crate::session::{Abort, Session};

// ---- handled by Session ----------------------------------------------------------------------

/// Registry -> Session: close this connection with a server DISCONNECT carrying `reason`
/// (0x8E when another connection took the client id over [MQTT-3.1.4-3], 0x8B on shutdown,
/// 0x98 when kicked through the admin API).
/// Reply: once the DISCONNECT is queued and the socket is closing.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Close {
    pub reason: ReasonCode,
}

/// Registry -> Session (for `ReloadAcl`): load this connection's ACL rules again (`LoadAcl`)
/// and check everything from now on against them; the session keeps serving meanwhile. If the
/// database fails, the session keeps its previous rules (bad-inputs.md H112).
/// Reply: once the new rules are in force, or the reload failed.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "AclRefreshed")]
pub struct RefreshAcl;

/// The answer to `RefreshAcl`.
#[derive(MessageResponse, Debug, Clone, PartialEq, Eq)]
pub enum AclRefreshed {
    /// The new rules are in force.
    Reloaded,
    /// The database failed (why): the previous rules stay.
    Failed(String),
    /// Not past CONNACK, or closing: nothing to reload (a connection still being accepted
    /// reads the rules as they are now).
    NotConnected,
}

// ---- handled by Registry ---------------------------------------------------------------------

/// Session -> Registry: this connection now owns `client_id`, unless `client_id_binding`
/// refuses it (the id is held by another user). An older connection with the same
/// id is sent `Close { reason: SessionTakenOver }` first. A persistent session (Session Expiry
/// Interval > 0) is resumed unless `clean_start` discards it [MQTT-3.1.2-4]. Reply: once the
/// old connection's end and this connection's start are recorded, what the new connection
/// resumes with.
#[derive(Message)]
#[rtype(result = "Registered")]
pub struct Register {
    pub client_id: Arc<str>,
    pub conn_id: u64,
    /// Told to `Close`, and to `RefreshAcl` for `ReloadAcl`; one address rather than a
    /// `Recipient` per message, as the Registry keeps it for every connection.
    pub session: Addr<Session>,
    /// The session's bounded delivery queue; the Registry only ever `try_send`s into it.
    /// `None` for a new clean session, which gets its queue with its first SUBSCRIBE: most
    /// idle connections never subscribe, and the queue is the largest thing they would hold.
    pub deliveries: Option<Outlet>,
    /// Ends the connection when it does not answer `Close` (paused on a full socket).
    pub abort: Arc<Abort>,
    pub clean_start: bool,
    /// The granted Session Expiry Interval; 0 = the session ends with this connection.
    pub expiry_interval: u32,
    /// Stored with a persistent session, to be published after a crash.
    pub will: Option<StoredWill>,
    /// What the admin API shows about this connection.
    pub info: ConnectionInfo,
    /// Sent on to the ConnectionLog by the Registry once the connection is registered, so
    /// that a take-over's end is recorded before its successor's start.
    pub record: RecordConnect,
}

/// What a connection told at CONNECT, kept with its Registry entry for the admin API.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub username: Option<String>,
    pub address: SocketAddr,
    /// The CONNECT protocol level: 3 (3.1), 4 (3.1.1) or 5.
    pub protocol_version: u8,
    /// The keep-alive in force, seconds.
    pub keep_alive: u16,
    /// Milliseconds since the Unix epoch.
    pub connected_at_ms: i64,
    /// The connection's outbound QoS 1/2 messages awaiting acknowledgement; the session keeps
    /// it up to date (a relaxed gauge, read only by the admin API).
    pub inflight: Arc<AtomicUsize>,
}

/// The answer to `Register`.
#[derive(Default)]
pub struct Registered {
    /// CONNACK's Session Present [MQTT-3.2.2-2] [MQTT-3.2.2-3].
    pub session_present: bool,
    /// Packet ids owed a PUBREL, then the messages to (re-)send, before anything new
    /// [MQTT-4.4.0-1].
    pub release: Vec<u16>,
    pub resend: Vec<Delivery>,
    /// Inbound QoS 2 packet ids still awaiting PUBREL.
    pub inbound_qos2: Vec<u16>,
    /// The ConnectionLog's answer to the connection's `clients` row (`Register::record`),
    /// sent once the session's state is committed: the ACL rules. `Register` is answered only
    /// once the row is committed, so that the session is woken once, not twice. `None` if the
    /// connection was refused.
    pub recorded: Option<Result<Result<Vec<AclRule>, DbError>, MailboxError>>,
    /// The session's state could not be committed: the connection gets CONNACK 0x80 and is
    /// not recorded.
    pub storage_failed: bool,
    /// Refused (`client_id_binding`): the id is held by another user. Nothing was changed;
    /// the connection gets CONNACK 0x87.
    pub bound_to_another_user: bool,
}

/// Session -> Registry: add or replace subscriptions (already validated and authorised), up to
/// `max_subscriptions` per client. Reply: one outcome per filter, in order, and the retained
/// messages to send per each filter's Retain Handling.
#[derive(Message, Debug)]
#[rtype(result = "SubscribeReply")]
pub struct Subscribe {
    pub client_id: Arc<str>,
    /// Ignored unless this connection still owns the client id (a connection being taken
    /// over must not add to its successor's subscriptions).
    pub conn_id: u64,
    pub filters: Vec<(String, Subscription)>,
    pub max_subscriptions: usize,
    /// The session's delivery queue, with its first SUBSCRIBE if it had none (see `Register`).
    pub deliveries: Option<Outlet>,
}

/// The answer to `Subscribe`.
#[derive(Debug)]
pub struct SubscribeReply {
    pub outcomes: Vec<SubscribeOutcome>,
    /// Retained messages for the new subscriptions. They bypass the bounded delivery queue
    /// (they are `Arc`s, not copies), so a `#` subscription gets every retained message
    /// however many there are.
    pub retained: Vec<Delivery>,
    /// Persistent sessions: fires once the subscriptions are committed; SUBACK waits for it.
    pub committed: Option<oneshot::Receiver<bool>>,
}

/// What became of one filter of a `Subscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeOutcome {
    Added,
    /// The client had this filter; its options were replaced [MQTT-3.8.4-3].
    Replaced,
    /// The client already holds `max_subscriptions` (SUBACK 0x97).
    QuotaExceeded,
}

/// Session -> Registry: remove subscriptions. Reply: for each filter, whether it existed, and
/// for a persistent session the commit UNSUBACK waits for.
#[derive(Message, Debug)]
#[rtype(result = "(Vec<bool>, Option<oneshot::Receiver<bool>>)")]
pub struct Unsubscribe {
    pub client_id: Arc<str>,
    /// As in `Subscribe`.
    pub conn_id: u64,
    pub filters: Vec<String>,
}

/// Session -> Registry: route a message to its subscribers and, if RETAIN is set, update the
/// retained store (the session has already committed it to the database). Sessions `try_send`
/// this and wait for mailbox room when it is full, which stops them reading their socket.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Publish {
    pub message: Arc<AppMessage>,
    /// Completed (or dropped) once every delivery of the message is in its subscriber's queue
    /// and stored for every persistent subscriber: the publisher's PUBACK/PUBREC waits for it.
    /// `false`: storing failed. `None` when nobody waits (QoS 0, Wills).
    pub ack: Option<oneshot::Sender<bool>>,
    /// The packet id of a QoS 2 PUBLISH, stored with the publisher's persistent session so a
    /// re-sent PUBLISH is known as a duplicate even after a crash [MQTT-4.3.3-10].
    pub inbound_qos2: Option<u16>,
    /// The deliveries the session could not make itself (see `registry::router`); `None`:
    /// the Registry routes the message (and keeps it if RETAIN is set).
    pub routes: Option<Vec<Route>>,
    /// The publishing session's count of messages waiting here, counted down once routed.
    pub sender: Option<Arc<InRegistry>>,
}

/// Session -> Registry: this connection has ended. Ignored unless `conn_id` still owns the id
/// (a taken-over session must not remove its successor). A persistent session now starts to
/// expire; its Will, if it has a delay, waits in the Registry (§3.1.2.5).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Unregister {
    pub client_id: Arc<str>,
    pub conn_id: u64,
    /// The Session Expiry Interval in force at the end (DISCONNECT may change it).
    pub expiry_interval: u32,
    /// A Will to publish after its Will Delay Interval, unless the session resumes first
    /// [MQTT-3.1.3-9] (or when the session expires, if that is earlier).
    pub delayed_will: Option<StoredWill>,
}

/// Session -> Registry: the client acknowledged an outbound message of its persistent session.
/// Reply (`Released` only): once the new state is committed; PUBREL waits for it.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Acknowledged {
    pub client_id: Arc<str>,
    pub packet_id: u16,
    pub step: AckStep,
}

#[derive(Debug)]
pub enum AckStep {
    /// PUBACK, PUBCOMP, a failing PUBREC, or the message was skipped: forget it.
    Completed,
    /// PUBREC: only PUBREL is owed from now on [MQTT-4.3.3-6].
    Released(oneshot::Sender<bool>),
    /// PUBREL for an inbound QoS 2 id: the id is free again. PUBCOMP waits for the commit, so
    /// a reused id is never taken for a duplicate after a crash (bad-inputs.md 3.3).
    InboundReleased(oneshot::Sender<bool>),
}

/// Broker -> Registry: reply once everything journalled so far is committed (shutdown).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Flush;

/// Broker -> Registry: close every session with DISCONNECT 0x8B. Reply: when all of them have
/// unregistered (the broker bounds the wait).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Broker -> Registry (SIGHUP, `Broker::reload_acl`): tell every connected session to reload
/// its ACL rules, one `RefreshAcl` each (bounded by the connections). Reply: how that went, once
/// every session has answered or `ACL_RELOAD_WAIT` has passed.
#[derive(Message, Debug)]
#[rtype(result = "AclReload")]
pub struct ReloadAcl;

/// The answer to `ReloadAcl`.
#[derive(MessageResponse, Debug, Clone, Default, PartialEq, Eq)]
pub struct AclReload {
    /// Sessions now checking against the new rules.
    pub reloaded: usize,
    /// Sessions whose reload failed (database error): they keep their previous rules.
    pub failed: usize,
    /// Why the first failed reload failed.
    pub error: Option<String>,
    /// Sessions that did not answer in time (paused on a client that does not read): they
    /// reload when they take the message.
    pub pending: usize,
}

/// Anyone -> Registry: how many clients are connected and registered now.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct ActiveClients;

/// HTTP `/metrics` -> Registry: the sizes of what the Registry holds, once per scrape.
#[derive(Message, Debug)]
#[rtype(result = "RegistryGauges")]
pub struct Gauges;

/// The answer to `Gauges`.
#[derive(MessageResponse, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryGauges {
    /// Clients connected and registered (past authentication).
    pub clients: usize,
    /// Subscriptions of every client, persistent sessions' included.
    pub subscriptions: usize,
    pub retained_messages: usize,
    /// Persistent sessions, connected or not.
    pub persistent_sessions: usize,
    /// QoS 1/2 messages stored for persistent sessions and not yet acknowledged by their
    /// clients (in flight included): the sum of the sessions' `queued_messages`.
    pub queued_messages: usize,
}

/// HTTP admin API -> Registry: one page of the connected clients, ordered by client id.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Page<ClientSummary>")]
pub struct ListClients {
    pub offset: usize,
    pub limit: usize,
}

/// HTTP admin API -> Registry: one connected client, if it is connected.
#[derive(Message, Debug)]
#[rtype(result = "Option<ClientSummary>")]
pub struct GetClient {
    pub client_id: String,
}

/// HTTP admin API -> Registry: one page of the persistent sessions (connected or not),
/// ordered by client id.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Page<SessionSummary>")]
pub struct ListSessions {
    pub offset: usize,
    pub limit: usize,
}

/// HTTP admin API -> Registry: one page of the retained messages, ordered by topic.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Page<RetainedSummary>")]
pub struct ListRetained {
    pub offset: usize,
    pub limit: usize,
}

/// HTTP admin API -> Registry: close this client's connection with DISCONNECT 0x98
/// (Administrative action); a persistent session stays. Reply: once it has closed, or when it
/// does not answer within a second.
#[derive(Message, Debug)]
#[rtype(result = "Kicked")]
pub struct Kick {
    pub client_id: String,
}

/// The answer to `Kick`.
#[derive(MessageResponse, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kicked {
    NotConnected,
    /// The DISCONNECT is queued and the connection closing.
    Closed,
    /// The session did not answer in time (paused on a client that does not read): it closes
    /// once it takes the message, or at its send timeout.
    Pending,
}

/// A bounded slice of a listing, and how many items there are in all.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub total: usize,
    pub items: Vec<T>,
}

/// A connected client, as the admin API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClientSummary {
    pub client_id: String,
    pub username: Option<String>,
    /// `IP:port` of the peer.
    pub address: String,
    /// The CONNECT protocol level: 3 (3.1), 4 (3.1.1) or 5.
    pub protocol_version: u8,
    /// Milliseconds since the Unix epoch.
    pub connected_at_ms: i64,
    /// Seconds, as granted.
    pub keep_alive: u16,
    /// The session outlives the connection (Session Expiry Interval > 0).
    pub persistent: bool,
    /// Seconds (0: the session ends with the connection).
    pub session_expiry_interval: u32,
    /// Outbound QoS 1/2 messages awaiting the client's acknowledgement.
    pub inflight: usize,
    pub subscriptions: usize,
}

/// A persistent session, as the admin API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionSummary {
    pub client_id: String,
    pub connected: bool,
    /// Seconds.
    pub expiry_interval: u32,
    /// When it expires (ms since the Unix epoch); `None` while connected, or never.
    pub expires_at_ms: Option<i64>,
    /// Stored QoS 1/2 messages the client has not acknowledged yet (in flight included).
    pub queued_messages: usize,
    /// Their payload bytes.
    pub queued_bytes: usize,
    /// Of those, sent on the current connection and awaiting acknowledgement (0 offline).
    pub inflight: usize,
    pub subscriptions: usize,
}

/// A retained message, as the admin API shows it (never its payload).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RetainedSummary {
    pub topic: String,
    pub payload_bytes: usize,
    /// QoS as published.
    pub qos: u8,
    /// Client id of the publisher (`$SYS` for the broker's own topics).
    pub publisher: String,
    /// When it expires (ms since the Unix epoch); `None`: never.
    pub expires_at_ms: Option<i64>,
}

// ---- handled by DbActor (SyncArbiter, SQLite) ------------------------------------------------

/// Session -> DbActor: check a username and password against the `users` table.
/// Reply: `Ok(true)` only if the user exists and the password matches its hash.
#[derive(Message)]
#[rtype(result = "Result<bool, DbError>")]
pub struct Authenticate {
    pub username: String,
    pub password: Option<Bytes>,
}

impl std::fmt::Debug for Authenticate {
    // Never log a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticate")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// ConnectionLog -> DbActor: apply `events` to the `clients` table in order, in one
/// transaction. Reply: what each event did (with a connect's ACL rules), in the same order.
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<crate::db::queries::Applied>, DbError>")]
pub struct RecordConnections {
    pub events: Vec<ConnectionEvent>,
}

/// One write to the `clients` table, as queued by the ConnectionLog.
#[derive(Debug)]
pub enum ConnectionEvent {
    Connect(RecordConnect),
    Disconnect(RecordDisconnect),
    CloseOpen(CloseOpenConnections),
}

/// Session -> DbActor: the ACL rules that apply to a connection: those for its username, for
/// its client id, and for everyone. Reply: the rules, in id order.
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<AclRule>, DbError>")]
pub struct LoadAcl {
    pub username: Option<String>,
    pub client_id: String,
}

/// Session -> DbActor (`retained_recheck_publisher`): what it takes to check the retained
/// messages sent on a SUBSCRIBE against their publishers' current rules, in one round trip.
/// Reply: every ACL rule, and the username each publisher last connected with.
#[derive(Message, Debug)]
#[rtype(result = "Result<PublisherRules, DbError>")]
pub struct LoadPublisherRules {
    /// Client identifiers of the publishers, without duplicates.
    pub publishers: Vec<Arc<str>>,
}

/// The answer to `LoadPublisherRules`.
#[derive(Debug, Default)]
pub struct PublisherRules {
    /// Every rule; `Acl::new` keeps those that apply to each publisher.
    pub rules: Vec<AclRule>,
    /// The username of each publisher's last connection (the `clients` table); a publisher
    /// without a row, or without a username, is absent.
    pub usernames: std::collections::HashMap<String, String>,
}

/// Session -> DbActor: store the retained message of `message.topic`, replacing the old one;
/// an empty payload deletes it instead [MQTT-3.3.1-6] [MQTT-3.3.1-7]. Reply: once committed;
/// `Ok(false)` when it was a new topic and `max_messages` topics are retained already.
#[derive(Message, Debug)]
#[rtype(result = "Result<bool, DbError>")]
pub struct StoreRetained {
    pub message: Arc<AppMessage>,
    /// Most retained topics (`limits.max_retained_messages`); 0 = no limit.
    pub max_messages: usize,
}

/// Broker -> DbActor: every retained message that has not expired, at start-up.
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<AppMessage>, DbError>")]
pub struct LoadRetained;

/// Broker -> DbActor: checkpoint the WAL into the database file (`wal_checkpoint(TRUNCATE)`),
/// the last step of a clean shutdown.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), DbError>")]
pub struct Checkpoint;

/// Registry -> DbActor: apply `ops` in order in one IMMEDIATE transaction (group commit: the
/// Registry sends the next batch only once this one has answered), and note that the broker
/// was alive at `alive_at_ms`. Reply: once committed; the acknowledgements waiting on these
/// operations are released only then.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), DbError>")]
pub struct Commit {
    pub ops: Vec<StoreOp>,
    pub alive_at_ms: i64,
}

/// Broker -> DbActor: the persistent sessions at start-up. Sessions that expired by `now_ms`
/// (counting the time the broker was down) are deleted, with the messages only they held.
#[derive(Message, Debug)]
#[rtype(result = "Result<StoredState, DbError>")]
pub struct LoadState {
    pub now_ms: i64,
}

/// HTTP `/healthz` -> DbActor: run `SELECT 1`. Reply: whether the database answered.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), DbError>")]
pub struct Ping;

// ---- handled by ConnectionLog (group commit of the `clients` table) --------------------------

/// Registry -> ConnectionLog (for a session, see `Register`): `client_id` connected. Reply:
/// once the row is committed, the ACL rules that apply to the connection (as `LoadAcl`),
/// read in the same transaction.
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<AclRule>, DbError>")]
pub struct RecordConnect {
    pub client_id: String,
    /// Unique per connection, so that a late disconnect of a taken-over connection does not
    /// overwrite its successor's row.
    pub connection_id: i64,
    pub username: Option<String>,
    pub address: String,
    /// 3, 4 or 5 (the CONNECT protocol level).
    pub protocol_version: i32,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// Session -> ConnectionLog: the connection `connection_id` of `client_id` ended. A no-op if
/// a newer connection has since been recorded for that client id. Reply: once committed.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), DbError>")]
pub struct RecordDisconnect {
    pub client_id: String,
    pub connection_id: i64,
    pub at_ms: i64,
    /// Why it ended, e.g. "client disconnect", "keep-alive timeout", "taken over".
    pub reason: String,
}

/// Broker -> ConnectionLog: mark every connection still recorded as open as disconnected at
/// `at_ms` (at shutdown, and at start-up for rows left open by a crash), after the records
/// queued before it. Reply: rows updated.
#[derive(Message, Debug)]
#[rtype(result = "Result<usize, DbError>")]
pub struct CloseOpenConnections {
    pub at_ms: i64,
    pub reason: String,
}

// ---- handled by Listener ---------------------------------------------------------------------

/// Broker -> Listener: stop accepting and close the listening socket (first step of shutdown).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StopAccepting;
