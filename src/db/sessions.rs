//! The SQLite side of persistent sessions (`crate::persist`): [`apply`] makes a batch of
//! [`StoreOp`]s durable in one transaction, [`load`] reads back what is left at start-up, and
//! [`integrity_check`] tells a damaged file apart before the broker relies on it.
//!
//! A message queued for many sessions is one `messages` row, referenced by one
//! `session_messages` row per session. `apply` runs on the hot path of every QoS 1/2 message to
//! a persistent subscriber, so consecutive ops share multi-row statements built with the DSL,
//! in shapes that Diesel prepares once per connection and reuses (see `Batch::apply_queue_run`).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use diesel::connection::DefaultLoadingMode;
use diesel::dsl::{exists, not};
use diesel::expression::AsExpression;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{Binary, Text};
use diesel::sqlite::Sqlite;

use super::DbError;
use super::queries::{decode_forwarded, encode_forwarded};
use super::schema::{
    broker_state, clients, inbound_qos2, messages, session_messages, session_subscriptions,
    sessions,
};
use crate::message::AppMessage;
use crate::mqtt::topic;
use crate::mqtt::{EncodeError, QoS, RetainHandling, SubscriptionOptions};
use crate::persist::{StoreOp, StoredDelivery, StoredSession, StoredState, StoredWill};
use crate::registry::subscriptions::Subscription;

/// `sessions.expiry_interval` of a session that never expires: 0xFFFFFFFF s (§3.1.2.11.2).
const NEVER_INTERVAL: i64 = u32::MAX as i64;

/// `sessions.expires_at_ms` of a session whose connection ended and that never expires: NULL
/// already means "connected".
const NEVER_MS: i64 = i64::MAX;

// ---- rows ------------------------------------------------------------------------------------

/// A session as `OpenSession` writes it; also the changeset that resumes an existing one
/// (`treat_none_as_null`: a new connection without a Will clears the old one).
#[derive(Insertable, AsChangeset)]
#[diesel(table_name = sessions, primary_key(client_id), treat_none_as_null = true)]
struct NewSession<'a> {
    client_id: &'a str,
    expiry_interval: i64,
    expires_at_ms: Option<i64>,
    will_topic: Option<&'a str>,
    will_payload: Option<&'a [u8]>,
    will_qos: Option<i32>,
    will_retain: Option<bool>,
    will_properties: Option<&'a [u8]>,
    will_expiry_interval: Option<i64>,
    will_delay: i64,
    will_at_ms: Option<i64>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = sessions, check_for_backend(diesel::sqlite::Sqlite))]
struct SessionRow {
    client_id: String,
    expiry_interval: i64,
    expires_at_ms: Option<i64>,
    will_topic: Option<String>,
    will_payload: Option<Vec<u8>>,
    will_qos: Option<i32>,
    will_retain: Option<bool>,
    will_properties: Option<Vec<u8>>,
    will_expiry_interval: Option<i64>,
    will_delay: i64,
    will_at_ms: Option<i64>,
}

#[derive(Insertable)]
#[diesel(table_name = session_subscriptions)]
struct NewSubscription<'a> {
    client_id: &'a str,
    filter: &'a str,
    qos: i32,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: i32,
    identifier: Option<i64>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = session_subscriptions, check_for_backend(diesel::sqlite::Sqlite))]
struct SubscriptionRow {
    client_id: String,
    filter: String,
    qos: i32,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: i32,
    identifier: Option<i64>,
}

/// A `messages` row. Rows own their values (shared, not copied) because Diesel caches a
/// multi-row insert only for `'static` row types (see [`in_pieces`]). Every column is bound,
/// `None` as NULL (`treat_none_as_default_value = false`): with column defaults the SQL would
/// depend on the values and Diesel would rebuild it for every execution.
#[derive(Insertable)]
#[diesel(table_name = messages, treat_none_as_default_value = false)]
struct NewMessage {
    id: i64,
    topic: SharedText,
    payload: SharedBytes,
    qos: i32,
    retain: bool,
    properties: Vec<u8>,
    expires_at_ms: Option<i64>,
    publisher: SharedText,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = messages, check_for_backend(diesel::sqlite::Sqlite))]
struct MessageRow {
    id: i64,
    topic: String,
    payload: Vec<u8>,
    qos: i32,
    retain: bool,
    properties: Vec<u8>,
    expires_at_ms: Option<i64>,
    publisher: String,
}

/// A `session_messages` row; owned for the same reason as [`NewMessage`].
#[derive(Insertable)]
#[diesel(table_name = session_messages, treat_none_as_default_value = false)]
struct NewQueued {
    client_id: SharedText,
    packet_id: i32,
    seq: i64,
    message_id: i64,
    qos: i32,
    retain: bool,
    subscription_ids: String,
    released: bool,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = session_messages, check_for_backend(diesel::sqlite::Sqlite))]
struct QueuedRow {
    client_id: String,
    packet_id: i32,
    seq: i64,
    message_id: i64,
    qos: i32,
    retain: bool,
    subscription_ids: String,
    released: bool,
}

/// A TEXT value bound straight from an `Arc<str>`, without copying it into a `String`.
#[derive(Debug, AsExpression)]
#[diesel(sql_type = Text)]
struct SharedText(Arc<str>);

impl ToSql<Text, Sqlite> for SharedText {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        <str as ToSql<Text, Sqlite>>::to_sql(&self.0, out)
    }
}

/// A BLOB value bound straight from `Bytes`.
#[derive(Debug, AsExpression)]
#[diesel(sql_type = Binary)]
struct SharedBytes(Bytes);

impl ToSql<Binary, Sqlite> for SharedBytes {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        <[u8] as ToSql<Binary, Sqlite>>::to_sql(&self.0, out)
    }
}

// ---- apply -----------------------------------------------------------------------------------

/// Applies `ops` in order in one IMMEDIATE transaction, then records that the broker was alive
/// at `alive_at_ms`. An op for a client id without a session row (`Subscribe`, `Enqueue`,
/// `InboundQos2`) is logged and skipped: the Registry always opens a session before anything
/// it holds, and losing that one op is better than failing the batch, whose other ops (and the
/// acknowledgements waiting on them) are sound.
pub fn apply(
    conn: &mut SqliteConnection,
    ops: &[StoreOp],
    alive_at_ms: i64,
) -> Result<(), DbError> {
    conn.immediate_transaction(|conn| {
        let mut batch = Batch::default();
        let mut enqueued = HashSet::new();
        let mut rest = ops;
        while let Some(op) = rest.first() {
            let run = queue_run_len(rest, &mut enqueued);
            if run > 0 {
                batch.apply_queue_run(conn, &rest[..run])?;
            } else {
                batch.apply(conn, op)?;
            }
            rest = &rest[run.max(1)..];
        }
        batch.collect_garbage(conn)?;
        diesel::replace_into(broker_state::table)
            .values((
                broker_state::id.eq(1),
                broker_state::last_alive_ms.eq(alive_at_ms),
            ))
            .execute(conn)?;
        Ok(())
    })
}

/// How many ops at the start of `ops` form one queue run for [`Batch::apply_queue_run`]:
/// `Enqueue` and `Completed` ops, up to a `Completed` of a packet id that the run enqueued,
/// because that delete must follow the insert and the run deletes first. Otherwise these ops
/// commute: each touches only its own `session_messages` row, and messages are collected after
/// the last op. `enqueued` is scratch space, reused from run to run.
fn queue_run_len<'a>(ops: &'a [StoreOp], enqueued: &mut HashSet<(&'a str, u16)>) -> usize {
    enqueued.clear();
    for (i, op) in ops.iter().enumerate() {
        match op {
            StoreOp::Enqueue {
                client_id,
                delivery,
                ..
            } => {
                enqueued.insert((client_id, delivery.packet_id));
            }
            StoreOp::Completed {
                client_id,
                packet_id,
            } if !enqueued.contains(&(&**client_id, *packet_id)) => {}
            _ => return i,
        }
    }
    ops.len()
}

/// What one `apply` call carries from op to op.
#[derive(Default)]
struct Batch {
    /// Message ids whose row this call has written (or found present): one published message
    /// comes as an `Enqueue` per subscriber, and only the first inserts it.
    stored: HashSet<i64>,
    /// Message ids that an op of this call stopped referencing; see `collect_garbage`.
    maybe_unreferenced: Vec<i64>,
}

impl Batch {
    fn apply(&mut self, conn: &mut SqliteConnection, op: &StoreOp) -> Result<(), DbError> {
        match op {
            StoreOp::OpenSession {
                client_id,
                clean,
                expiry_interval,
                will,
            } => {
                if *clean {
                    self.delete_session(conn, client_id)?;
                }
                open_session(conn, client_id, *expiry_interval, will.as_ref())?;
            }
            StoreOp::CloseSession {
                client_id,
                expires_at_ms,
                will_at_ms,
            } => {
                close_session(conn, client_id, *expires_at_ms, *will_at_ms)?;
            }
            StoreOp::DeleteSession { client_id } => self.delete_session(conn, client_id)?,
            StoreOp::Subscribe {
                client_id,
                filter,
                subscription,
            } => {
                let options = &subscription.options;
                let row = NewSubscription {
                    client_id,
                    filter,
                    qos: options.qos as i32,
                    no_local: options.no_local,
                    retain_as_published: options.retain_as_published,
                    retain_handling: options.retain_handling as i32,
                    identifier: subscription.identifier.map(i64::from),
                };
                let result = diesel::replace_into(session_subscriptions::table)
                    .values(&row)
                    .execute(conn);
                stored_unless_no_session(result, "subscription", client_id)?;
            }
            StoreOp::Unsubscribe { client_id, filter } => {
                diesel::delete(session_subscriptions::table.find((&**client_id, &**filter)))
                    .execute(conn)?;
            }
            StoreOp::Released {
                client_id,
                packet_id,
            } => {
                diesel::update(session_messages::table.find((&**client_id, i32::from(*packet_id))))
                    .set(session_messages::released.eq(true))
                    .execute(conn)?;
            }
            // `apply` passes these on as runs; a lone one is a run of one.
            StoreOp::Enqueue { .. } | StoreOp::Completed { .. } => {
                self.apply_queue_run(conn, std::slice::from_ref(op))?;
            }
            StoreOp::InboundQos2 {
                client_id,
                packet_id,
            } => {
                let result = diesel::insert_or_ignore_into(inbound_qos2::table)
                    .values((
                        inbound_qos2::client_id.eq(&**client_id),
                        inbound_qos2::packet_id.eq(i32::from(*packet_id)),
                    ))
                    .execute(conn);
                stored_unless_no_session(result, "inbound QoS 2 id", client_id)?;
            }
            StoreOp::InboundReleased {
                client_id,
                packet_id,
            } => {
                diesel::delete(inbound_qos2::table.find((&**client_id, i32::from(*packet_id))))
                    .execute(conn)?;
            }
        }
        Ok(())
    }

    /// Applies a run of `Enqueue` and `Completed` ops (see [`queue_run_len`]) in a few
    /// multi-row statements, as the per-statement work of Diesel and SQLite dominates the hot
    /// path: first the `Completed` ones, a client's consecutive packet ids in one range (a
    /// subscriber's acknowledgements are mostly consecutive ids), then the new messages, then
    /// the `Enqueue` rows in order. Each statement has one of a few fixed shapes that Diesel
    /// prepares once: an `IN (...)` list or an insert of any number of rows is prepared at
    /// every execution, and measured slower than one statement per row.
    fn apply_queue_run(
        &mut self,
        conn: &mut SqliteConnection,
        ops: &[StoreOp],
    ) -> Result<(), DbError> {
        let mut completed: Vec<(&str, i32)> = ops
            .iter()
            .filter_map(|op| match op {
                StoreOp::Completed {
                    client_id,
                    packet_id,
                } => Some((&**client_id, i32::from(*packet_id))),
                _ => None,
            })
            .collect();
        completed.sort_unstable();
        completed.dedup();
        for range in completed.chunk_by(|a, b| a.0 == b.0 && b.1 == a.1 + 1) {
            if let ([(client_id, first), ..], [.., (_, last)]) = (range, range) {
                // SELECT then DELETE: measured faster than DELETE ... RETURNING, which costs
                // SQLite a temporary b-tree per statement.
                let rows = session_messages::table
                    .filter(session_messages::client_id.eq(client_id))
                    .filter(session_messages::packet_id.between(first, last));
                for id in rows
                    .select(session_messages::message_id)
                    .load_iter::<i64, DefaultLoadingMode>(conn)?
                {
                    self.maybe_unreferenced.push(id?);
                }
                diesel::delete(rows).execute(conn)?;
            }
        }
        let mut new_messages = Vec::new();
        let mut queued = Vec::new();
        for op in ops {
            let StoreOp::Enqueue {
                client_id,
                message_id,
                message,
                delivery,
            } = op
            else {
                continue;
            };
            if self.stored.insert(*message_id) {
                new_messages.push(NewMessage {
                    id: *message_id,
                    topic: SharedText(message.topic.clone()),
                    payload: SharedBytes(message.payload.clone()),
                    qos: message.qos as i32,
                    retain: message.retain,
                    properties: encode_forwarded(&message.properties)
                        .map_err(|source| encode_error(message, source))?,
                    expires_at_ms: message.expires_at_ms,
                    publisher: SharedText(message.publisher.clone()),
                });
            }
            queued.push(NewQueued {
                client_id: SharedText(client_id.clone()),
                packet_id: i32::from(delivery.packet_id),
                seq: delivery.seq,
                message_id: *message_id,
                qos: delivery.qos as i32,
                retain: delivery.retain,
                subscription_ids: subscription_ids(&delivery.subscription_ids),
                released: delivery.released,
            });
        }
        in_pieces(conn, &new_messages, &mut InsertMessages)?;
        in_pieces(
            conn,
            &queued,
            &mut ReplaceQueued {
                unstored: &mut self.maybe_unreferenced,
            },
        )
    }

    /// Deletes `client_id`'s session and everything it holds (the rest by cascade).
    fn delete_session(&mut self, conn: &mut SqliteConnection, client_id: &str) -> QueryResult<()> {
        // Deleted here rather than by the cascade, to learn which messages to collect.
        let message_ids: Vec<i64> = diesel::delete(
            session_messages::table.filter(session_messages::client_id.eq(client_id)),
        )
        .returning(session_messages::message_id)
        .load(conn)?;
        self.maybe_unreferenced.extend(message_ids);
        diesel::delete(sessions::table.find(client_id)).execute(conn)?;
        Ok(())
    }

    /// Deletes the messages among those this call stopped referencing that no session holds
    /// any more: one indexed lookup per id, so the cost follows the batch, not the table (a
    /// sweep of `messages` would grow with every stored message). It runs after the last op
    /// because a later `Enqueue` of the same batch may still reference the id, and `stored`
    /// would then skip re-inserting it. An `Enqueue` that replaces an unfinished row of the
    /// same packet id could orphan a message too, but a packet id is reused only after its
    /// `Completed`; `load` sweeps the whole table at start-up for anything missed here.
    fn collect_garbage(&mut self, conn: &mut SqliteConnection) -> QueryResult<()> {
        self.maybe_unreferenced.sort_unstable();
        self.maybe_unreferenced.dedup();
        // Consecutive ids (the usual case: messages are numbered as published) go in one
        // range delete, a statement Diesel prepares once; `NOT EXISTS` is then one index
        // lookup per message of the range.
        for range in self.maybe_unreferenced.chunk_by(|a, b| *b == a + 1) {
            if let ([first, ..], [.., last]) = (range, range) {
                let referenced = exists(
                    session_messages::table.filter(session_messages::message_id.eq(messages::id)),
                );
                diesel::delete(
                    messages::table
                        .filter(messages::id.between(first, last))
                        .filter(not(referenced)),
                )
                .execute(conn)?;
            }
        }
        Ok(())
    }
}

/// `session_messages.subscription_ids`: decimal, comma-separated.
fn subscription_ids(ids: &[u32]) -> String {
    let mut text = String::new();
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(text, "{id}");
    }
    text
}

/// One multi-row statement for `N` rows at a time, run by [`in_pieces`].
trait Pieces {
    type Row;
    fn run<const N: usize>(
        &mut self,
        conn: &mut SqliteConnection,
        rows: &[Self::Row; N],
    ) -> Result<(), DbError>;
}

/// Runs `statement` over `rows` in order, in pieces of 32, 16, ... 1 rows (the largest that
/// fits first): six statement shapes, each prepared once by Diesel, with at most 32 × 8 = 256
/// bind variables, far below SQLite's limit (32766). Pieces of 64 or 128 measured no faster.
fn in_pieces<P: Pieces>(
    conn: &mut SqliteConnection,
    rows: &[P::Row],
    statement: &mut P,
) -> Result<(), DbError> {
    let mut rest = rows;
    loop {
        rest = if let Some((piece, rest)) = rest.split_first_chunk::<32>() {
            statement.run(conn, piece)?;
            rest
        } else if let Some((piece, rest)) = rest.split_first_chunk::<16>() {
            statement.run(conn, piece)?;
            rest
        } else if let Some((piece, rest)) = rest.split_first_chunk::<8>() {
            statement.run(conn, piece)?;
            rest
        } else if let Some((piece, rest)) = rest.split_first_chunk::<4>() {
            statement.run(conn, piece)?;
            rest
        } else if let Some((piece, rest)) = rest.split_first_chunk::<2>() {
            statement.run(conn, piece)?;
            rest
        } else if let Some((piece, rest)) = rest.split_first_chunk::<1>() {
            statement.run(conn, piece)?;
            rest
        } else {
            return Ok(());
        };
    }
}

/// Stores new messages.
struct InsertMessages;

impl Pieces for InsertMessages {
    type Row = NewMessage;
    fn run<const N: usize>(
        &mut self,
        conn: &mut SqliteConnection,
        rows: &[NewMessage; N],
    ) -> Result<(), DbError> {
        // OR IGNORE: an earlier batch may have stored one for other sessions already.
        diesel::insert_or_ignore_into(messages::table)
            .values(rows)
            .execute(conn)?;
        Ok(())
    }
}

/// Queues messages for sessions; the message ids of rows not stored for want of a session
/// go to `unstored`, to be collected.
struct ReplaceQueued<'a> {
    unstored: &'a mut Vec<i64>,
}

impl Pieces for ReplaceQueued<'_> {
    type Row = NewQueued;
    fn run<const N: usize>(
        &mut self,
        conn: &mut SqliteConnection,
        rows: &[NewQueued; N],
    ) -> Result<(), DbError> {
        match diesel::replace_into(session_messages::table)
            .values(rows)
            .execute(conn)
        {
            Ok(_) => Ok(()),
            // Some client has no session, which fails the whole statement (and only it): the
            // other rows are stored one by one. Rare, see `apply`.
            Err(Error::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)) => {
                for row in rows {
                    let result = diesel::replace_into(session_messages::table)
                        .values(row)
                        .execute(conn);
                    if !stored_unless_no_session(result, "message", &row.client_id.0)? {
                        self.unstored.push(row.message_id);
                    }
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Creates the session, or resumes it keeping its subscriptions and messages; either way it is
/// connected (no deadline, no Will due) with this expiry interval and Will.
fn open_session(
    conn: &mut SqliteConnection,
    client_id: &str,
    expiry_interval: u32,
    will: Option<&StoredWill>,
) -> Result<(), DbError> {
    let will_properties = will
        .map(|w| encode_forwarded(&w.message.properties).map_err(|e| encode_error(&w.message, e)))
        .transpose()?;
    let row = NewSession {
        client_id,
        expiry_interval: i64::from(expiry_interval),
        expires_at_ms: None,
        will_topic: will.map(|w| &*w.message.topic),
        will_payload: will.map(|w| &*w.message.payload),
        will_qos: will.map(|w| w.message.qos as i32),
        will_retain: will.map(|w| w.message.retain),
        will_properties: will_properties.as_deref(),
        will_expiry_interval: will.and_then(|w| w.expiry_interval).map(i64::from),
        will_delay: will.map_or(0, |w| i64::from(w.delay)),
        will_at_ms: None,
    };
    diesel::insert_into(sessions::table)
        .values(&row)
        .on_conflict(sessions::client_id)
        .do_update()
        .set(&row)
        .execute(conn)?;
    Ok(())
}

/// The connection ended: the session now expires at `expires_at_ms` (`None`: never), and its
/// Will is due at `will_at_ms`, or dropped.
fn close_session(
    conn: &mut SqliteConnection,
    client_id: &str,
    expires_at_ms: Option<i64>,
    will_at_ms: Option<i64>,
) -> QueryResult<usize> {
    let session = sessions::table.find(client_id);
    let expires = sessions::expires_at_ms.eq(expires_at_ms.unwrap_or(NEVER_MS));
    match will_at_ms {
        Some(at) => diesel::update(session)
            .set((expires, sessions::will_at_ms.eq(at)))
            .execute(conn),
        None => diesel::update(session)
            .set((
                expires,
                sessions::will_topic.eq(None::<&str>),
                sessions::will_payload.eq(None::<&[u8]>),
                sessions::will_qos.eq(None::<i32>),
                sessions::will_retain.eq(None::<bool>),
                sessions::will_properties.eq(None::<&[u8]>),
                sessions::will_expiry_interval.eq(None::<i64>),
                sessions::will_delay.eq(0),
                sessions::will_at_ms.eq(None::<i64>),
            ))
            .execute(conn),
    }
}

/// `Ok(false)` when `result` failed only because `client_id` has no session row (a foreign key
/// violation aborts just that statement, not the transaction); logged, see [`apply`].
fn stored_unless_no_session(
    result: QueryResult<usize>,
    what: &str,
    client_id: &str,
) -> Result<bool, DbError> {
    match result {
        Ok(_) => Ok(true),
        Err(Error::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)) => {
            log::warn!("{what} for {client_id:?} not stored: no stored session");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

fn encode_error(message: &AppMessage, source: EncodeError) -> DbError {
    DbError::EncodeMessage {
        topic: message.topic.to_string(),
        source,
    }
}

// ---- load ------------------------------------------------------------------------------------

/// Every row `load` reads, before decoding.
struct Rows {
    last_alive_ms: Option<i64>,
    sessions: Vec<SessionRow>,
    subscriptions: Vec<SubscriptionRow>,
    messages: Vec<MessageRow>,
    queue: Vec<QueuedRow>,
    inbound: Vec<(String, i32)>,
    /// (client id, username) of the last connection recorded for each session's id.
    owners: Vec<(String, Option<String>)>,
}

/// The persistent sessions at start-up, in client id order. Sessions that expired by `now_ms`
/// are deleted first (with everything they hold) unless they have a Will, then every message
/// no session holds. Expired sessions with a Will are returned so that the caller publishes
/// it and deletes them.
///
/// A session with `expires_at_ms: None` was connected when the previous run stopped, i.e. the
/// broker crashed. Its connection is taken to have ended at `last_alive_ms` (`now_ms` if that
/// is unknown): it is deleted here if its expiry interval ran out since (unless it has a
/// Will), and otherwise returned as stored, with `expires_at_ms: None`. The caller computes its deadline the same
/// way (`last_alive_ms` + `expiry_interval` seconds; never for 0xFFFFFFFF) and deals with its
/// Will, which the crash never published. A session whose connection ended and that never
/// expires comes back with `expires_at_ms: Some(i64::MAX)`.
pub fn load(conn: &mut SqliteConnection, now_ms: i64) -> Result<StoredState, DbError> {
    let rows = conn.immediate_transaction(|conn| read_unexpired(conn, now_ms))?;
    decode_state(rows)
}

fn read_unexpired(conn: &mut SqliteConnection, now_ms: i64) -> QueryResult<Rows> {
    let last_alive_ms = broker_state::table
        .find(1)
        .select(broker_state::last_alive_ms)
        .first::<i64>(conn)
        .optional()?;
    let ended_ms = last_alive_ms.unwrap_or(now_ms);
    // Expired sessions with a Will are returned: the caller publishes the Will, which was due
    // at the latest when the session ended [MQTT-3.1.3-9], then deletes them.
    let expired = diesel::delete(
        sessions::table
            .filter(sessions::expires_at_ms.le(now_ms))
            .filter(sessions::will_topic.is_null()),
    )
    .execute(conn)?;
    let expired_at_crash = diesel::delete(
        sessions::table
            .filter(sessions::will_topic.is_null())
            .filter(sessions::expires_at_ms.is_null())
            .filter(sessions::expiry_interval.ne(NEVER_INTERVAL))
            .filter((sessions::expiry_interval * 1000 + ended_ms).le(now_ms)),
    )
    .execute(conn)?;
    // NOT IN (SELECT ...) builds the set of referenced ids once: fine once per start-up.
    let orphans =
        diesel::delete(messages::table.filter(
            messages::id.ne_all(session_messages::table.select(session_messages::message_id)),
        ))
        .execute(conn)?;
    if expired + expired_at_crash + orphans > 0 {
        log::info!(
            "deleted {expired} expired sessions, {expired_at_crash} that expired after a \
             crash, and {orphans} messages no session held"
        );
    }
    Ok(Rows {
        last_alive_ms,
        sessions: sessions::table
            .order(sessions::client_id)
            .select(SessionRow::as_select())
            .load(conn)?,
        subscriptions: session_subscriptions::table
            .order((
                session_subscriptions::client_id,
                session_subscriptions::filter,
            ))
            .select(SubscriptionRow::as_select())
            .load(conn)?,
        messages: messages::table.select(MessageRow::as_select()).load(conn)?,
        queue: session_messages::table
            .order(session_messages::seq)
            .select(QueuedRow::as_select())
            .load(conn)?,
        inbound: inbound_qos2::table
            .order((inbound_qos2::client_id, inbound_qos2::packet_id))
            .load(conn)?,
        // The connect record is written after the session is committed, by the connection
        // that then holds it, so it names the session's owner (client_id_binding).
        owners: clients::table
            .filter(clients::client_id.eq_any(sessions::table.select(sessions::client_id)))
            .select((clients::client_id, clients::username))
            .load(conn)?,
    })
}

fn decode_state(rows: Rows) -> Result<StoredState, DbError> {
    let mut sessions = rows
        .sessions
        .into_iter()
        .map(decode_session)
        .collect::<Result<Vec<_>, _>>()?;
    // Rows come in `ORDER BY client_id`, whose BINARY collation is the byte order of `str`.
    let index = |sessions: &[StoredSession], table: &'static str, key: &str, client_id: &str| {
        sessions
            .binary_search_by(|s| s.client_id.as_str().cmp(client_id))
            .map_err(|_| corrupt(table, key, "no such session".to_owned()))
    };

    for row in rows.subscriptions {
        let key = format!("{} {}", row.client_id, row.filter);
        let i = index(&sessions, "session_subscriptions", &key, &row.client_id)?;
        let subscription = decode_subscription(&row)
            .map_err(|detail| corrupt("session_subscriptions", &key, detail))?;
        sessions[i].subscriptions.push((row.filter, subscription));
    }

    let mut next_message_id = 1;
    let mut shared = HashMap::with_capacity(rows.messages.len());
    for row in rows.messages {
        let id = row.id;
        next_message_id = next_message_id.max(id + 1);
        let message =
            decode_message(row).map_err(|detail| corrupt("messages", &id.to_string(), detail))?;
        shared.insert(id, Arc::new(message));
    }

    let mut next_seq = 1;
    for row in rows.queue {
        let key = format!("{} {}", row.client_id, row.packet_id);
        let i = index(&sessions, "session_messages", &key, &row.client_id)?;
        let message = shared.get(&row.message_id).ok_or_else(|| {
            corrupt(
                "session_messages",
                &key,
                format!("no message {}", row.message_id),
            )
        })?;
        next_seq = next_seq.max(row.seq + 1);
        let delivery =
            decode_delivery(&row).map_err(|detail| corrupt("session_messages", &key, detail))?;
        sessions[i].queue.push((message.clone(), delivery));
    }

    for (client_id, packet_id) in rows.inbound {
        let key = format!("{client_id} {packet_id}");
        let i = index(&sessions, "inbound_qos2", &key, &client_id)?;
        let packet_id = u16::try_from(packet_id)
            .map_err(|_| corrupt("inbound_qos2", &key, "packet id".to_owned()))?;
        sessions[i].inbound_qos2.push(packet_id);
    }

    for (client_id, username) in rows.owners {
        if let Ok(i) = sessions.binary_search_by(|s| s.client_id.as_str().cmp(&client_id)) {
            sessions[i].username = username;
        }
    }

    Ok(StoredState {
        sessions,
        last_alive_ms: rows.last_alive_ms,
        next_message_id,
        next_seq,
    })
}

fn corrupt(table: &'static str, key: &str, detail: String) -> DbError {
    DbError::CorruptRow {
        table,
        key: key.to_owned(),
        detail,
    }
}

fn decode_session(row: SessionRow) -> Result<StoredSession, DbError> {
    let err = |detail: String| corrupt("sessions", &row.client_id, detail);
    let expiry_interval = u32::try_from(row.expiry_interval)
        .map_err(|_| err(format!("expiry interval {}", row.expiry_interval)))?;
    let will = match (
        row.will_topic,
        row.will_payload,
        row.will_qos,
        row.will_retain,
        row.will_properties,
    ) {
        (None, None, None, None, None) => None,
        (Some(topic), Some(payload), Some(qos), Some(retain), Some(properties)) => {
            topic::validate_topic_name(&topic).map_err(|e| err(format!("Will topic: {e}")))?;
            let message = AppMessage {
                topic: Arc::from(topic),
                payload: Bytes::from(payload),
                qos: decode_qos(qos).map_err(&err)?,
                retain,
                properties: decode_forwarded(properties).map_err(&err)?,
                expires_at_ms: None,
                publisher: Arc::from(row.client_id.as_str()),
            };
            let expiry_interval = row
                .will_expiry_interval
                .map(|s| u32::try_from(s).map_err(|_| err(format!("Will expiry {s}"))))
                .transpose()?;
            let delay = u32::try_from(row.will_delay)
                .map_err(|_| err(format!("Will delay {}", row.will_delay)))?;
            Some(StoredWill {
                message: Arc::new(message),
                expiry_interval,
                delay,
            })
        }
        _ => return Err(err("a Will with some columns NULL".to_owned())),
    };
    Ok(StoredSession {
        client_id: row.client_id,
        expiry_interval,
        expires_at_ms: row.expires_at_ms,
        will,
        will_at_ms: row.will_at_ms,
        subscriptions: Vec::new(),
        queue: Vec::new(),
        inbound_qos2: Vec::new(),
        username: None,
    })
}

fn decode_qos(qos: i32) -> Result<QoS, String> {
    u8::try_from(qos)
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("QoS {qos}"))
}

fn decode_subscription(row: &SubscriptionRow) -> Result<Subscription, String> {
    let retain_handling = match row.retain_handling {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        other => return Err(format!("retain handling {other}")),
    };
    let identifier = row
        .identifier
        .map(|id| u32::try_from(id).map_err(|_| format!("identifier {id}")))
        .transpose()?;
    Ok(Subscription {
        options: SubscriptionOptions {
            qos: decode_qos(row.qos)?,
            no_local: row.no_local,
            retain_as_published: row.retain_as_published,
            retain_handling,
        },
        identifier,
    })
}

fn decode_message(row: MessageRow) -> Result<AppMessage, String> {
    topic::validate_topic_name(&row.topic).map_err(|e| format!("topic: {e}"))?;
    Ok(AppMessage {
        topic: Arc::from(row.topic),
        payload: Bytes::from(row.payload),
        qos: decode_qos(row.qos)?,
        retain: row.retain,
        properties: decode_forwarded(row.properties)?,
        expires_at_ms: row.expires_at_ms,
        publisher: Arc::from(row.publisher),
    })
}

fn decode_delivery(row: &QueuedRow) -> Result<StoredDelivery, String> {
    let qos = decode_qos(row.qos)?;
    if qos == QoS::AtMostOnce {
        return Err("QoS 0 is never stored".to_owned());
    }
    let subscription_ids = if row.subscription_ids.is_empty() {
        Vec::new()
    } else {
        row.subscription_ids
            .split(',')
            .map(|id| {
                id.parse()
                    .map_err(|_| format!("subscription ids {:?}", row.subscription_ids))
            })
            .collect::<Result<_, _>>()?
    };
    Ok(StoredDelivery {
        seq: row.seq,
        packet_id: u16::try_from(row.packet_id)
            .map_err(|_| format!("packet id {}", row.packet_id))?,
        qos,
        retain: row.retain,
        subscription_ids,
        released: row.released,
    })
}

// ---- integrity -------------------------------------------------------------------------------

#[derive(QueryableByName)]
struct QuickCheck {
    #[diesel(sql_type = Text)]
    quick_check: String,
}

/// Runs `PRAGMA quick_check` (the b-tree structure and the constraints, without the slower
/// index-content comparison of `integrity_check`). Anything but a single "ok" is
/// [`DbError::Corrupt`], with the first problems SQLite listed.
pub fn integrity_check(conn: &mut SqliteConnection) -> Result<(), DbError> {
    let rows: Vec<QuickCheck> = match diesel::sql_query("PRAGMA quick_check").load(conn) {
        Ok(rows) => rows,
        // SQLITE_CORRUPT and SQLITE_NOTADB: damage that stops the check itself.
        Err(Error::DatabaseError(_, info))
            if ["database disk image is malformed", "file is not a database"]
                .contains(&info.message()) =>
        {
            return Err(DbError::Corrupt(info.message().to_owned()));
        }
        Err(e) => return Err(e.into()),
    };
    if let [row] = rows.as_slice()
        && row.quick_check == "ok"
    {
        return Ok(());
    }
    // One problem per line, sometimes several in one row, under a "*** in database main ***"
    // header.
    const SHOWN: usize = 5;
    let problems: Vec<&str> = rows
        .iter()
        .flat_map(|row| row.quick_check.lines())
        .filter(|line| !line.starts_with("***"))
        .collect();
    let mut report = problems
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > SHOWN {
        let _ = write!(report, "; and {} more", problems.len() - SHOWN);
    }
    Err(DbError::Corrupt(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{open_connection, run_migrations};
    use crate::mqtt::Properties;
    use crate::mqtt::PropertyValues;
    use crate::persist::Durability;
    use diesel::connection::SimpleConnection;

    fn test_db() -> (tempfile::TempDir, SqliteConnection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db").display().to_string();
        let mut conn = open_connection(&path, Durability::default()).unwrap();
        run_migrations(&mut conn).unwrap();
        (dir, conn)
    }

    fn message(topic: &str, payload: &[u8]) -> Arc<AppMessage> {
        Arc::new(AppMessage {
            topic: Arc::from(topic),
            payload: Bytes::copy_from_slice(payload),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Properties::from(PropertyValues {
                content_type: Some("text/plain".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("k".into(), "v".into())],
                ..PropertyValues::default()
            }),
            expires_at_ms: Some(9_000_000),
            publisher: Arc::from("pub"),
        })
    }

    fn will(client_id: &str) -> StoredWill {
        StoredWill {
            message: Arc::new(AppMessage {
                topic: Arc::from("wills/x"),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: Properties::from(PropertyValues {
                    response_topic: Some("r".into()),
                    ..PropertyValues::default()
                }),
                expires_at_ms: None,
                publisher: Arc::from(client_id),
            }),
            expiry_interval: Some(30),
            delay: 5,
        }
    }

    fn open(client_id: &str, clean: bool, expiry_interval: u32) -> StoreOp {
        StoreOp::OpenSession {
            client_id: Arc::from(client_id),
            clean,
            expiry_interval,
            will: None,
        }
    }

    fn close(client_id: &str, expires_at_ms: Option<i64>) -> StoreOp {
        StoreOp::CloseSession {
            client_id: Arc::from(client_id),
            expires_at_ms,
            will_at_ms: None,
        }
    }

    fn delivery(seq: i64, packet_id: u16) -> StoredDelivery {
        StoredDelivery {
            seq,
            packet_id,
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: Vec::new(),
            released: false,
        }
    }

    fn enqueue(client_id: &str, message_id: i64, m: &Arc<AppMessage>, seq: i64) -> StoreOp {
        StoreOp::Enqueue {
            client_id: Arc::from(client_id),
            message_id,
            message: m.clone(),
            delivery: delivery(seq, u16::try_from(seq).unwrap()),
        }
    }

    fn completed(client_id: &str, packet_id: u16) -> StoreOp {
        StoreOp::Completed {
            client_id: Arc::from(client_id),
            packet_id,
        }
    }

    fn subscribe(client_id: &str, filter: &str, subscription: Subscription) -> StoreOp {
        StoreOp::Subscribe {
            client_id: Arc::from(client_id),
            filter: Arc::from(filter),
            subscription,
        }
    }

    fn count(conn: &mut SqliteConnection, table: &str) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table}"))
            .get_result::<Count>(conn)
            .unwrap()
            .n
    }

    fn session<'a>(state: &'a StoredState, client_id: &str) -> &'a StoredSession {
        state
            .sessions
            .iter()
            .find(|s| s.client_id == client_id)
            .unwrap()
    }

    #[test]
    fn every_op_round_trips() {
        let (_dir, mut conn) = test_db();
        let (m1, m2, m3) = (
            message("a/1", b"one"),
            message("a/2", b"two"),
            message("a/3", b""),
        );
        let sub = Subscription {
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
            identifier: Some(268_435_455),
        };
        let mut ops = vec![
            StoreOp::OpenSession {
                client_id: Arc::from("c1"),
                clean: true,
                expiry_interval: 3600,
                will: Some(will("c1")),
            },
            subscribe("c1", "a/#", sub),
            subscribe("c1", "$share/g/b", Subscription::default()),
            subscribe("c1", "gone", Subscription::default()),
            StoreOp::Unsubscribe {
                client_id: Arc::from("c1"),
                filter: Arc::from("gone"),
            },
            StoreOp::Enqueue {
                client_id: Arc::from("c1"),
                message_id: 7,
                message: m1.clone(),
                delivery: StoredDelivery {
                    seq: 10,
                    packet_id: 65_535,
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    subscription_ids: vec![1, 268_435_455],
                    released: false,
                },
            },
            enqueue("c1", 8, &m2, 11),
            enqueue("c1", 9, &m3, 12),
            StoreOp::Released {
                client_id: Arc::from("c1"),
                packet_id: 11,
            },
            completed("c1", 12),
        ];
        for packet_id in [1, 2, 65_535] {
            ops.push(StoreOp::InboundQos2 {
                client_id: Arc::from("c1"),
                packet_id,
            });
        }
        ops.push(StoreOp::InboundReleased {
            client_id: Arc::from("c1"),
            packet_id: 2,
        });
        ops.push(StoreOp::CloseSession {
            client_id: Arc::from("c1"),
            expires_at_ms: Some(5_000_000),
            will_at_ms: Some(1_005_000),
        });
        ops.extend([open("c2", false, 60), close("c2", None)]);
        ops.extend([
            open("c3", false, 60),
            StoreOp::DeleteSession {
                client_id: Arc::from("c3"),
            },
        ]);
        apply(&mut conn, &ops, 1_000_000).unwrap();

        let state = load(&mut conn, 1_000_001).unwrap();
        assert_eq!(state.last_alive_ms, Some(1_000_000));
        assert_eq!(
            state.next_message_id, 9,
            "message 9 was completed and collected"
        );
        assert_eq!(state.next_seq, 12);
        assert_eq!(state.sessions.len(), 2, "c3 was deleted");

        let c1 = session(&state, "c1");
        let expected_will = will("c1");
        assert_eq!(c1.expiry_interval, 3600);
        assert_eq!(c1.expires_at_ms, Some(5_000_000));
        assert_eq!(c1.will_at_ms, Some(1_005_000));
        assert_eq!(c1.will.as_ref(), Some(&expected_will));
        assert_eq!(
            c1.subscriptions,
            [
                ("$share/g/b".to_owned(), Subscription::default()),
                ("a/#".to_owned(), sub)
            ]
        );
        let queue: Vec<_> = c1.queue.iter().map(|(m, d)| ((**m).clone(), d)).collect();
        assert_eq!(
            queue,
            [
                (
                    (*m1).clone(),
                    &StoredDelivery {
                        seq: 10,
                        packet_id: 65_535,
                        qos: QoS::AtLeastOnce,
                        retain: true,
                        subscription_ids: vec![1, 268_435_455],
                        released: false,
                    }
                ),
                (
                    (*m2).clone(),
                    &StoredDelivery {
                        released: true,
                        ..delivery(11, 11)
                    }
                ),
            ]
        );
        assert_eq!(c1.inbound_qos2, [1, 65_535]);

        let c2 = session(&state, "c2");
        assert_eq!(
            (c2.expiry_interval, c2.expires_at_ms),
            (60, Some(i64::MAX)),
            "closed, never expires"
        );
        assert_eq!((&c2.will, c2.will_at_ms), (&None, None));
    }

    #[test]
    fn clean_start_replaces_and_resume_keeps() {
        let (_dir, mut conn) = test_db();
        let m = message("t", b"x");
        let setup = |conn: &mut SqliteConnection, id: &str| {
            let ops = [
                StoreOp::OpenSession {
                    client_id: Arc::from(id),
                    clean: true,
                    expiry_interval: 100,
                    will: Some(will(id)),
                },
                subscribe(id, "t", Subscription::default()),
                enqueue(id, 1, &m, 1),
                StoreOp::InboundQos2 {
                    client_id: Arc::from(id),
                    packet_id: 4,
                },
                close(id, Some(2_000_000)),
            ];
            apply(conn, &ops, 1_000_000).unwrap();
        };
        setup(&mut conn, "c");
        // Resume: the Will is replaced (here by none), everything else stays.
        apply(&mut conn, &[open("c", false, 200)], 1_000_000).unwrap();
        let state = load(&mut conn, 1_000_000).unwrap();
        let c = session(&state, "c");
        assert_eq!((c.expiry_interval, c.expires_at_ms), (200, None));
        assert_eq!((&c.will, c.will_at_ms), (&None, None));
        assert_eq!(
            (c.subscriptions.len(), c.queue.len(), c.inbound_qos2.len()),
            (1, 1, 1)
        );

        // Clean start: nothing of the old session is left, not even its message.
        apply(&mut conn, &[open("c", true, 300)], 1_000_000).unwrap();
        let state = load(&mut conn, 1_000_000).unwrap();
        let c = session(&state, "c");
        assert_eq!(c.expiry_interval, 300);
        assert!(c.subscriptions.is_empty() && c.queue.is_empty() && c.inbound_qos2.is_empty());
        assert_eq!(count(&mut conn, "messages"), 0);
    }

    #[test]
    fn deleting_a_session_deletes_everything_it_holds() {
        let (_dir, mut conn) = test_db();
        let m = message("t", b"x");
        let ops = [
            open("c", false, 100),
            subscribe("c", "t", Subscription::default()),
            enqueue("c", 1, &m, 1),
            enqueue("c", 2, &m, 2),
            StoreOp::InboundQos2 {
                client_id: Arc::from("c"),
                packet_id: 4,
            },
        ];
        apply(&mut conn, &ops, 1).unwrap();
        assert_eq!(count(&mut conn, "messages"), 2);
        // The cascade alone (no GC) removes the dependent rows.
        diesel::delete(sessions::table).execute(&mut conn).unwrap();
        for table in ["session_subscriptions", "session_messages", "inbound_qos2"] {
            assert_eq!(count(&mut conn, table), 0, "{table}");
        }

        apply(&mut conn, &ops, 1).unwrap();
        let delete = StoreOp::DeleteSession {
            client_id: Arc::from("c"),
        };
        apply(&mut conn, &[delete], 1).unwrap();
        for table in [
            "sessions",
            "session_subscriptions",
            "session_messages",
            "inbound_qos2",
            "messages",
        ] {
            assert_eq!(count(&mut conn, table), 0, "{table}");
        }
    }

    #[test]
    fn a_message_is_stored_once_and_collected_after_its_last_completion() {
        let (_dir, mut conn) = test_db();
        let m = message("t", b"x");
        let clients = ["a", "b", "c"];
        let mut ops: Vec<_> = clients.iter().map(|c| open(c, false, 100)).collect();
        ops.extend(clients.iter().map(|c| enqueue(c, 42, &m, 1)));
        apply(&mut conn, &ops, 1).unwrap();
        // Another batch referencing the same id: still one row.
        apply(&mut conn, &[enqueue("a", 42, &m, 2)], 1).unwrap();
        assert_eq!(count(&mut conn, "messages"), 1);
        assert_eq!(count(&mut conn, "session_messages"), 4);

        let state = load(&mut conn, 1).unwrap();
        let a = &session(&state, "a").queue;
        let c = &session(&state, "c").queue;
        assert!(Arc::ptr_eq(&a[0].0, &a[1].0) && Arc::ptr_eq(&a[0].0, &c[0].0));
        assert_eq!(state.next_message_id, 43);

        apply(&mut conn, &[completed("a", 1), completed("a", 2)], 1).unwrap();
        apply(&mut conn, &[completed("b", 1), completed("b", 9)], 1).unwrap();
        assert_eq!(count(&mut conn, "messages"), 1, "c still holds it");
        // Completed then enqueued again in one batch: the row must survive.
        apply(&mut conn, &[completed("c", 1), enqueue("b", 42, &m, 3)], 1).unwrap();
        assert_eq!(count(&mut conn, "messages"), 1, "b holds it again");
        apply(&mut conn, &[completed("b", 3)], 1).unwrap();
        assert_eq!(count(&mut conn, "messages"), 0);
    }

    /// `enqueue` with a packet id other than its seq.
    fn enqueue_as(
        client_id: &str,
        message_id: i64,
        m: &Arc<AppMessage>,
        seq: i64,
        packet_id: u16,
    ) -> StoreOp {
        StoreOp::Enqueue {
            client_id: Arc::from(client_id),
            message_id,
            message: m.clone(),
            delivery: delivery(seq, packet_id),
        }
    }

    /// `(packet_id, message_id)` of every queued row of `client_id`, in packet id order.
    fn queued(conn: &mut SqliteConnection, client_id: &str) -> Vec<(i32, i64)> {
        session_messages::table
            .filter(session_messages::client_id.eq(client_id))
            .order(session_messages::packet_id)
            .select((session_messages::packet_id, session_messages::message_id))
            .load(conn)
            .unwrap()
    }

    #[test]
    fn a_queue_run_keeps_the_order_of_ops_on_one_packet_id() {
        let (_dir, mut conn) = test_db();
        let m: Vec<_> = (0..5).map(|i| message(&format!("t/{i}"), b"x")).collect();
        apply(
            &mut conn,
            &[open("c", false, 100), enqueue_as("c", 1, &m[1], 1, 1)],
            1,
        )
        .unwrap();
        let ops = [
            // Completed, then the packet id reused: the new row stays.
            completed("c", 1),
            enqueue_as("c", 2, &m[2], 2, 1),
            // Enqueued, then completed: gone (the Completed starts a new run).
            enqueue_as("c", 3, &m[3], 3, 2),
            completed("c", 2),
            // The same packet id twice in one run: the later row replaces the earlier.
            enqueue_as("c", 3, &m[3], 4, 3),
            enqueue_as("c", 4, &m[4], 5, 3),
        ];
        apply(&mut conn, &ops, 1).unwrap();
        assert_eq!(queued(&mut conn, "c"), [(1, 2), (3, 4)]);
        let state = load(&mut conn, 1).unwrap();
        let seqs: Vec<_> = session(&state, "c")
            .queue
            .iter()
            .map(|(_, d)| d.seq)
            .collect();
        assert_eq!(seqs, [2, 5]);
        assert_eq!(count(&mut conn, "messages"), 2, "1 and 3 were collected");
    }

    #[test]
    fn completions_delete_exactly_their_rows() {
        let (_dir, mut conn) = test_db();
        let m = message("t", b"x");
        let mut ops = vec![open("a", false, 100), open("b", false, 100)];
        let packet_ids = (1..=10).chain([65_535]);
        ops.extend(
            packet_ids
                .clone()
                .map(|p| enqueue_as("a", i64::from(p), &m, i64::from(p), p)),
        );
        ops.extend((1..=3).map(|p| enqueue_as("b", 100 + i64::from(p), &m, 100 + i64::from(p), p)));
        apply(&mut conn, &ops, 1).unwrap();

        // One run, out of order, with a duplicate, an unknown id, and an Enqueue in between.
        let ops = [
            completed("a", 65_535),
            completed("a", 2),
            completed("b", 2),
            completed("a", 1),
            enqueue_as("b", 200, &m, 200, 4),
            completed("a", 3),
            completed("a", 7),
            completed("a", 2),
            completed("a", 9_999),
            completed("a", 8),
            completed("a", 5),
        ];
        apply(&mut conn, &ops, 1).unwrap();
        assert_eq!(queued(&mut conn, "a"), [(4, 4), (6, 6), (9, 9), (10, 10)]);
        assert_eq!(queued(&mut conn, "b"), [(1, 101), (3, 103), (4, 200)]);
        assert_eq!(
            count(&mut conn, "messages"),
            7,
            "the completed ones were collected"
        );
    }

    #[test]
    fn a_missing_session_does_not_lose_the_rest_of_a_multi_row_insert() {
        let (_dir, mut conn) = test_db();
        let m = message("t", b"x");
        apply(
            &mut conn,
            &[open("a", false, 100), open("b", false, 100)],
            1,
        )
        .unwrap();
        // 40 rows: pieces of 32 and 8, each with rows of the missing session.
        let clients = ["a", "ghost", "b"];
        let ops: Vec<_> = (1..=40u16)
            .map(|i| {
                let id = i64::from(i);
                enqueue_as(clients[usize::from(i) % 3], id, &m, id, i)
            })
            .collect();
        apply(&mut conn, &ops, 1).unwrap();
        let (a, b) = (queued(&mut conn, "a"), queued(&mut conn, "b"));
        assert_eq!((a.len(), b.len()), (13, 13));
        assert!(a.iter().all(|&(p, _)| p % 3 == 0) && b.iter().all(|&(p, _)| p % 3 == 2));
        assert_eq!(count(&mut conn, "session_messages"), 26);
        assert_eq!(
            count(&mut conn, "messages"),
            26,
            "the ghost's were collected"
        );
    }

    #[test]
    fn a_message_that_does_not_encode_fails_the_whole_batch() {
        let (_dir, mut conn) = test_db();
        let mut bad = (*message("t", b"x")).clone();
        bad.properties.content_type = Some("x".repeat(70_000));
        let ops = [open("c", false, 10), enqueue("c", 1, &Arc::new(bad), 1)];
        let err = apply(&mut conn, &ops, 1).unwrap_err();
        assert!(
            matches!(&err, DbError::EncodeMessage { topic, .. } if topic == "t"),
            "{err}"
        );
        assert_eq!(count(&mut conn, "sessions"), 0, "rolled back");
        assert_eq!(count(&mut conn, "broker_state"), 0, "rolled back");
    }

    #[test]
    fn ops_for_a_missing_session_are_skipped_not_fatal() {
        let (_dir, mut conn) = test_db();
        let m = message("t", b"x");
        let ops = [
            subscribe("ghost", "t", Subscription::default()),
            enqueue("ghost", 1, &m, 1),
            StoreOp::InboundQos2 {
                client_id: Arc::from("ghost"),
                packet_id: 1,
            },
            open("real", false, 10),
            enqueue("real", 2, &m, 2),
        ];
        apply(&mut conn, &ops, 1).unwrap();
        assert_eq!(count(&mut conn, "sessions"), 1);
        assert_eq!(count(&mut conn, "session_subscriptions"), 0);
        assert_eq!(count(&mut conn, "inbound_qos2"), 0);
        assert_eq!(count(&mut conn, "session_messages"), 1);
        assert_eq!(count(&mut conn, "messages"), 1, "message 1 was collected");
    }

    #[test]
    fn expired_sessions_are_deleted_at_load() {
        const S: i64 = 1000;
        let (_dir, mut conn) = test_db();
        let m = message("t", b"x");
        let last_alive = 1_000 * S;
        let now = last_alive + 20 * S;
        let ops = [
            // Ended before the crash: deadlines as recorded.
            open("closed-expired", false, 10),
            close("closed-expired", Some(now)),
            open("closed-kept", false, 10),
            close("closed-kept", Some(now + 1)),
            open("closed-never", false, u32::MAX),
            close("closed-never", None),
            // Connected at the crash: ended at last_alive.
            open("crashed-expired", false, 20),
            open("crashed-kept", false, 21),
            open("crashed-never", false, u32::MAX),
            enqueue("crashed-expired", 1, &m, 1),
            enqueue("crashed-kept", 2, &m, 2),
        ];
        apply(&mut conn, &ops, last_alive).unwrap();

        let state = load(&mut conn, now).unwrap();
        let kept: Vec<_> = state
            .sessions
            .iter()
            .map(|s| (s.client_id.as_str(), s.expires_at_ms))
            .collect();
        assert_eq!(
            kept,
            [
                ("closed-kept", Some(now + 1)),
                ("closed-never", Some(i64::MAX)),
                ("crashed-kept", None),
                ("crashed-never", None),
            ]
        );
        assert_eq!(count(&mut conn, "messages"), 1, "only message 2 is held");
        assert_eq!(state.next_message_id, 3);

        // Without a recorded last_alive, a crashed session's end is now_ms.
        diesel::delete(broker_state::table)
            .execute(&mut conn)
            .unwrap();
        let state = load(&mut conn, now + 20 * S).unwrap();
        assert_eq!(state.last_alive_ms, None);
        let names: Vec<_> = state
            .sessions
            .iter()
            .map(|s| s.client_id.as_str())
            .collect();
        assert_eq!(names, ["closed-never", "crashed-kept", "crashed-never"]);
    }

    #[test]
    fn an_empty_database_loads_as_nothing() {
        let (_dir, mut conn) = test_db();
        let state = load(&mut conn, 5).unwrap();
        assert!(state.sessions.is_empty());
        assert_eq!(state.last_alive_ms, None);
        assert_eq!((state.next_message_id, state.next_seq), (1, 1));
        // A batch of no ops still records that the broker was alive.
        apply(&mut conn, &[], 7).unwrap();
        assert_eq!(load(&mut conn, 8).unwrap().last_alive_ms, Some(7));
    }

    #[test]
    fn corrupt_rows_are_errors() {
        let edits = [
            (
                "sessions",
                "UPDATE sessions SET expiry_interval = 4294967296",
            ),
            ("sessions", "UPDATE sessions SET will_qos = NULL"),
            ("sessions", "UPDATE sessions SET will_qos = 3"),
            ("sessions", "UPDATE sessions SET will_topic = 'a/+'"),
            ("sessions", "UPDATE sessions SET will_properties = x'05'"),
            (
                "session_subscriptions",
                "UPDATE session_subscriptions SET retain_handling = 3",
            ),
            (
                "session_subscriptions",
                "UPDATE session_subscriptions SET identifier = -5",
            ),
            ("messages", "UPDATE messages SET qos = 7"),
            ("messages", "UPDATE messages SET topic = ''"),
            ("messages", "UPDATE messages SET properties = x'0201'"),
            (
                "session_messages",
                "UPDATE session_messages SET subscription_ids = '1,,2'",
            ),
            ("session_messages", "UPDATE session_messages SET qos = 0"),
            (
                "session_messages",
                "UPDATE session_messages SET packet_id = 70000",
            ),
            ("inbound_qos2", "UPDATE inbound_qos2 SET packet_id = -1"),
        ];
        for (table, edit) in edits {
            let (_dir, mut conn) = test_db();
            let ops = [
                StoreOp::OpenSession {
                    client_id: Arc::from("c"),
                    clean: false,
                    expiry_interval: 100,
                    will: Some(will("c")),
                },
                subscribe("c", "t", Subscription::default()),
                enqueue("c", 1, &message("t", b"x"), 1),
                StoreOp::InboundQos2 {
                    client_id: Arc::from("c"),
                    packet_id: 1,
                },
            ];
            apply(&mut conn, &ops, 1).unwrap();
            conn.batch_execute(edit).unwrap();
            let err = load(&mut conn, 1).unwrap_err();
            assert!(
                matches!(&err, DbError::CorruptRow { table: t, .. } if *t == table),
                "{edit}: {err}"
            );
        }
    }

    #[test]
    fn a_session_comes_back_with_the_username_of_its_last_connect_record() {
        use crate::db::models::NewClientRecord;
        use crate::db::queries::record_connect;

        let (_dir, mut conn) = test_db();
        apply(
            &mut conn,
            &[open("mine", true, 60), open("anon", true, 60)],
            1,
        )
        .unwrap();
        for (client_id, username) in [
            ("mine", Some("alice")),
            ("anon", None),
            ("no-session", Some("bob")),
        ] {
            let record = NewClientRecord {
                client_id,
                connection_id: 1,
                username,
                address: "127.0.0.1:1",
                protocol_version: 5,
                connected_at_ms: 1,
            };
            record_connect(&mut conn, &record).unwrap();
        }
        apply(&mut conn, &[open("unrecorded", true, 60)], 1).unwrap();
        let state = load(&mut conn, 2).unwrap();
        assert_eq!(state.sessions.len(), 3);
        assert_eq!(session(&state, "mine").username.as_deref(), Some("alice"));
        assert_eq!(session(&state, "anon").username, None);
        assert_eq!(session(&state, "unrecorded").username, None);
    }

    #[test]
    fn integrity_check_passes_a_sound_database_and_reports_damage() {
        use std::io::{Seek, SeekFrom, Write};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db").display().to_string();
        let mut conn = open_connection(&path, Durability::default()).unwrap();
        run_migrations(&mut conn).unwrap();
        integrity_check(&mut conn).unwrap();
        // Move everything into the database file, then claim 9 free pages in its header
        // (offset 36: total number of freelist pages), where there are none.
        assert!(crate::db::queries::checkpoint(&mut conn).unwrap());
        drop(conn);
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(36)).unwrap();
        file.write_all(&9u32.to_be_bytes()).unwrap();
        drop(file);

        let mut conn = open_connection(&path, Durability::default()).unwrap();
        let err = integrity_check(&mut conn).unwrap_err();
        assert!(
            matches!(&err, DbError::Corrupt(report) if report == "Freelist: size is 0 but should be 9"),
            "{err:?}"
        );
    }

    /// The p2p QoS 1 hot path: each batch enqueues `batch / 2` new messages (fan-out 1) and
    /// completes the previous batch's, interleaved as the Registry journals them (or as two
    /// runs, Completed first). `cargo test --release --lib -- --ignored --nocapture bench_enqueue`
    #[test]
    #[ignore = "a benchmark: run in release mode"]
    fn bench_enqueue_complete_mix() {
        const SESSIONS: usize = 16;
        const OPS: usize = 200_000;
        for batch in [64, 512] {
            for interleaved in [true, false] {
                let (_dir, mut conn) = test_db();
                let clients: Vec<Arc<str>> =
                    (0..SESSIONS).map(|i| Arc::from(format!("c{i}"))).collect();
                let opens: Vec<_> = clients.iter().map(|c| open(c, false, 3600)).collect();
                apply(&mut conn, &opens, 1).unwrap();
                let m = message("bench/t", &[b'x'; 64]);
                let mut batches = Vec::new();
                let mut previous: Vec<StoreOp> = Vec::new();
                for b in 0..OPS / batch {
                    let enqueues: Vec<_> = (0..batch / 2)
                        .map(|i| {
                            let n = b * batch / 2 + i;
                            let packet_id = u16::try_from(n / SESSIONS % 65_535 + 1).unwrap();
                            StoreOp::Enqueue {
                                client_id: clients[n % SESSIONS].clone(),
                                message_id: i64::try_from(n).unwrap() + 1,
                                message: m.clone(),
                                delivery: StoredDelivery {
                                    subscription_ids: vec![1],
                                    ..delivery(i64::try_from(n).unwrap() + 1, packet_id)
                                },
                            }
                        })
                        .collect();
                    let completions = previous.iter().map(|op| match op {
                        StoreOp::Enqueue {
                            client_id,
                            delivery,
                            ..
                        } => completed(client_id, delivery.packet_id),
                        _ => unreachable!(),
                    });
                    let ops: Vec<_> = if interleaved {
                        let mut ops = Vec::with_capacity(batch);
                        let mut completions = completions;
                        for e in &enqueues {
                            ops.push(e.clone());
                            ops.extend(completions.next());
                        }
                        ops
                    } else {
                        completions.chain(enqueues.iter().cloned()).collect()
                    };
                    previous = enqueues;
                    batches.push(ops);
                }
                let n: usize = batches.iter().map(Vec::len).sum();
                let start = std::time::Instant::now();
                for ops in &batches {
                    apply(&mut conn, ops, 2).unwrap();
                }
                let elapsed = start.elapsed();
                println!(
                    "bench_enqueue_complete_mix, batch {batch}, {}: {n} ops in {elapsed:?}: \
                     {:.0} ops/s",
                    if interleaved {
                        "interleaved"
                    } else {
                        "two runs"
                    },
                    n as f64 / elapsed.as_secs_f64()
                );
                assert_eq!(
                    count(&mut conn, "session_messages"),
                    i64::try_from(batch / 2).unwrap()
                );
                assert_eq!(
                    count(&mut conn, "messages"),
                    i64::try_from(batch / 2).unwrap()
                );
            }
        }
    }

    /// `cargo test --release --lib -- --ignored --nocapture bench_enqueue`
    #[test]
    #[ignore = "a benchmark: run in release mode"]
    fn bench_enqueue() {
        const SESSIONS: usize = 100;
        const OPS: usize = 100_000;
        let (_dir, mut conn) = test_db();
        let clients: Vec<Arc<str>> = (0..SESSIONS).map(|i| Arc::from(format!("c{i}"))).collect();
        let opens: Vec<_> = clients.iter().map(|c| open(c, false, 3600)).collect();

        // Each message to every session, then each message to one session.
        for fan_out in [SESSIONS, 1] {
            let mut ops = Vec::with_capacity(OPS);
            let mut packet_ids = [0u16; SESSIONS];
            for i in 0..OPS / fan_out {
                let m = message(&format!("bench/{i}"), &[b'x'; 64]);
                for k in 0..fan_out {
                    let c = (i + k) % SESSIONS;
                    packet_ids[c] += 1;
                    ops.push(StoreOp::Enqueue {
                        client_id: clients[c].clone(),
                        message_id: i64::try_from(i).unwrap() + 1,
                        message: m.clone(),
                        delivery: StoredDelivery {
                            subscription_ids: vec![1],
                            ..delivery(i64::try_from(ops.len()).unwrap(), packet_ids[c])
                        },
                    });
                }
            }
            // A fresh start for each run: drop the previous run's rows.
            diesel::delete(sessions::table).execute(&mut conn).unwrap();
            diesel::delete(messages::table).execute(&mut conn).unwrap();
            apply(&mut conn, &opens, 1).unwrap();

            let start = std::time::Instant::now();
            apply(&mut conn, &ops, 2).unwrap();
            let elapsed = start.elapsed();
            println!(
                "bench_enqueue, fan-out {fan_out}: {} Enqueue ops in {elapsed:?}: {:.0} enqueues/s",
                ops.len(),
                ops.len() as f64 / elapsed.as_secs_f64()
            );
            assert_eq!(
                count(&mut conn, "session_messages"),
                i64::try_from(OPS).unwrap()
            );
        }
    }
}
