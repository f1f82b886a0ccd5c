//! Every message that actors send each other, grouped by the actor that handles it.
//!
//! To add one: declare it here under its recipient, then `impl Handler<YourMessage>` in the
//! recipient's file. Sending a message to an actor that lacks the handler does not compile, so
//! nothing else has to be registered.

use actix::prelude::*;
use bytes::Bytes;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::acl::AclRule;
use crate::db::DbError;
use crate::message::{AppMessage, Delivery};
use crate::mqtt::ReasonCode;
use crate::registry::subscriptions::Subscription;
use crate::session::Abort;

// ---- handled by Session ----------------------------------------------------------------------

/// Registry -> Session: close this connection with a server DISCONNECT carrying `reason`
/// (0x8E when another connection took the client id over [MQTT-3.1.4-3], 0x8B on shutdown).
/// Reply: once the DISCONNECT is queued and the socket is closing.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Close {
    pub reason: ReasonCode,
}

// ---- handled by Registry ---------------------------------------------------------------------

/// Session -> Registry: this connection now owns `client_id`. An older connection with the same
/// id is sent `Close { reason: SessionTakenOver }` first, and its subscriptions end with it
/// (sessions are not kept yet). Reply: once the old connection's end is recorded.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    pub client_id: Arc<str>,
    pub conn_id: u64,
    pub session: Recipient<Close>,
    /// The session's bounded delivery queue; the Registry only ever `try_send`s into it.
    pub deliveries: mpsc::Sender<Delivery>,
    /// Ends the connection when it does not answer `Close` (paused on a full socket).
    pub abort: Arc<Abort>,
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
}

/// The answer to `Subscribe`.
#[derive(Debug)]
pub struct SubscribeReply {
    pub outcomes: Vec<SubscribeOutcome>,
    /// Retained messages for the new subscriptions. They bypass the bounded delivery queue
    /// (they are `Arc`s, not copies), so a `#` subscription gets every retained message
    /// however many there are.
    pub retained: Vec<Delivery>,
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

/// Session -> Registry: remove subscriptions. Reply: for each filter, whether it existed.
#[derive(Message, Debug)]
#[rtype(result = "Vec<bool>")]
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
    /// Completed (or dropped) once every delivery of the message is in its subscriber's queue:
    /// the publisher's PUBACK/PUBREC waits for it. `None` when nobody waits (QoS 0, Wills).
    pub ack: Option<oneshot::Sender<()>>,
}

/// Session -> Registry: this connection has ended. Ignored unless `conn_id` still owns the id
/// (a taken-over session must not remove its successor).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Unregister {
    pub client_id: Arc<str>,
    pub conn_id: u64,
}

/// Broker -> Registry: close every session with DISCONNECT 0x8B. Reply: when all of them have
/// unregistered (the broker bounds the wait).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Anyone -> Registry: how many clients are connected and registered now.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct ActiveClients;

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

/// Session -> DbActor: `client_id` connected. Reply: once the row is committed.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), DbError>")]
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

/// Session -> DbActor: the connection `connection_id` of `client_id` ended. A no-op if a newer
/// connection has since been recorded for that client id.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), DbError>")]
pub struct RecordDisconnect {
    pub client_id: String,
    pub connection_id: i64,
    pub at_ms: i64,
    /// Why it ended, e.g. "client disconnect", "keep-alive timeout", "taken over".
    pub reason: String,
}

/// Broker -> DbActor: mark every connection still recorded as open as disconnected at `at_ms`
/// (at shutdown, and at start-up for rows left open by a crash). Reply: rows updated.
#[derive(Message, Debug)]
#[rtype(result = "Result<usize, DbError>")]
pub struct CloseOpenConnections {
    pub at_ms: i64,
    pub reason: String,
}

/// Session -> DbActor: the ACL rules that apply to a connection: those for its username, for
/// its client id, and for everyone. Reply: the rules, in id order.
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<AclRule>, DbError>")]
pub struct LoadAcl {
    pub username: Option<String>,
    pub client_id: String,
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

// ---- handled by Listener ---------------------------------------------------------------------

/// Broker -> Listener: stop accepting and close the listening socket (first step of shutdown).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StopAccepting;
