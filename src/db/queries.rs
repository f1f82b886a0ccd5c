//! Every SQL statement of the broker, as plain functions over a connection.
//!
//! Each write is a single autocommit statement: SQLite takes the write lock for it at once and
//! waits up to `busy_timeout`. A function that ever needs several statements must wrap them in
//! `conn.immediate_transaction`, never a deferred `transaction` (a read that is then upgraded
//! to a write fails with SQLITE_BUSY instead of waiting).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use diesel::sql_types::{BigInt, Integer, Text};

use super::DbError;
use super::models::{
    AclRuleRow, ClientRecord, NewAclRule, NewClientRecord, NewRetained, NewUser, RetainedRow, User,
};
use super::schema::{acl_rules, clients, retained, users};
use crate::acl::{self, AclAction, AclPermission, AclRule, AclSubject};
use crate::message::AppMessage;
use crate::messages::{ConnectionEvent, RecordDisconnect};
use crate::mqtt::properties::PropertyContext;
use crate::mqtt::topic;
use crate::mqtt::{EncodeError, Properties, PropertyValues, QoS};

// ---- users -----------------------------------------------------------------------------------

/// Inserts a user. Fails with [`DbError::UserExists`] if `username` is taken.
pub fn add_user(
    conn: &mut SqliteConnection,
    username: &str,
    password_hash: &str,
    now_ms: i64,
) -> Result<(), DbError> {
    let user = NewUser {
        username,
        password_hash,
        created_at_ms: now_ms,
    };
    match diesel::insert_into(users::table)
        .values(&user)
        .execute(conn)
    {
        Ok(_) => Ok(()),
        Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
            Err(DbError::UserExists(username.to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Replaces a user's password hash. Returns `false` if there is no such user.
pub fn set_password_hash(
    conn: &mut SqliteConnection,
    username: &str,
    password_hash: &str,
) -> Result<bool, DbError> {
    let updated = diesel::update(users::table.find(username))
        .set(users::password_hash.eq(password_hash))
        .execute(conn)?;
    Ok(updated == 1)
}

/// Deletes a user. Returns `false` if there was no such user.
pub fn remove_user(conn: &mut SqliteConnection, username: &str) -> Result<bool, DbError> {
    Ok(diesel::delete(users::table.find(username)).execute(conn)? == 1)
}

/// All users, ordered by name.
pub fn list_users(conn: &mut SqliteConnection) -> Result<Vec<User>, DbError> {
    Ok(users::table
        .order(users::username)
        .select(User::as_select())
        .load(conn)?)
}

/// The stored password hash of `username`, if the user exists.
pub fn find_password_hash(
    conn: &mut SqliteConnection,
    username: &str,
) -> Result<Option<String>, DbError> {
    Ok(users::table
        .find(username)
        .select(users::password_hash)
        .first(conn)
        .optional()?)
}

// ---- clients ---------------------------------------------------------------------------------

/// Records a new connection of a client id: inserts its row, or replaces the existing one
/// (which marks it open again). REPLACE rather than an upsert: Diesel prepares an upsert
/// again for every execution, and caches this one.
pub fn record_connect(
    conn: &mut SqliteConnection,
    record: &NewClientRecord<'_>,
) -> Result<(), DbError> {
    diesel::replace_into(clients::table)
        .values(record)
        .execute(conn)?;
    Ok(())
}

/// A connection whose end `record_disconnects` wrote.
#[derive(QueryableByName, PartialEq, Eq, Hash)]
struct Closed {
    #[diesel(sql_type = Text)]
    client_id: String,
    #[diesel(sql_type = BigInt)]
    connection_id: i64,
}

/// Marks each connection of `ended` as ended, in one statement: Diesel prepares an UPDATE
/// again for every execution, and parsing was most of the cost of one per disconnect. Returns,
/// for each, whether it was written: not if its row now belongs to another (newer) connection
/// or is already closed.
pub fn record_disconnects(
    conn: &mut SqliteConnection,
    ended: &[&RecordDisconnect],
) -> Result<Vec<bool>, DbError> {
    if ended.is_empty() {
        return Ok(Vec::new());
    }
    // The columns of a VALUES table are named column1, column2, ...
    let sql = format!(
        "UPDATE clients SET disconnected_at_ms = v.column3, disconnect_reason = v.column4 \
         FROM (VALUES {}) AS v \
         WHERE clients.client_id = v.column1 AND clients.connection_id = v.column2 \
         AND clients.disconnected_at_ms IS NULL \
         RETURNING clients.client_id, clients.connection_id",
        vec!["(?, ?, ?, ?)"; ended.len()].join(", ")
    );
    let mut query = diesel::sql_query(sql).into_boxed();
    for d in ended {
        query = query
            .bind::<Text, _>(&d.client_id)
            .bind::<BigInt, _>(d.connection_id)
            .bind::<BigInt, _>(d.at_ms)
            .bind::<Text, _>(&d.reason);
    }
    let closed: HashSet<Closed> = query.load(conn)?.into_iter().collect();
    Ok(ended
        .iter()
        .map(|d| {
            closed.contains(&Closed {
                client_id: d.client_id.clone(),
                connection_id: d.connection_id,
            })
        })
        .collect())
}

/// Marks every connection still open as ended at `at_ms`: at shutdown, and at start-up for the
/// rows a crash left open. Returns how many rows changed.
pub fn close_open_connections(
    conn: &mut SqliteConnection,
    at_ms: i64,
    reason: &str,
) -> Result<usize, DbError> {
    Ok(
        diesel::update(clients::table.filter(clients::disconnected_at_ms.is_null()))
            .set((
                clients::disconnected_at_ms.eq(at_ms),
                clients::disconnect_reason.eq(reason),
            ))
            .execute(conn)?,
    )
}

/// What one event of [`record_connections`] did.
#[derive(Debug)]
pub struct Applied {
    /// 1 for a connect, 0 or 1 for a disconnect (0: a newer connection owns the row), the
    /// count for a close-open.
    pub rows: usize,
    /// For a connect: the rules that apply to it ([`rules_for`]), read in the same
    /// transaction, so that accepting a connection costs one database round trip.
    pub rules: Vec<AclRule>,
}

/// Applies `events` in order in one transaction (a group commit of the ConnectionLog), and
/// returns what each did.
pub fn record_connections(
    conn: &mut SqliteConnection,
    events: &[ConnectionEvent],
) -> Result<Vec<Applied>, DbError> {
    conn.immediate_transaction(|conn| {
        let mut rows = Vec::with_capacity(events.len());
        let mut rest = events;
        while let Some(event) = rest.first() {
            let applied = match event {
                ConnectionEvent::Connect(c) => {
                    let record = NewClientRecord {
                        client_id: &c.client_id,
                        connection_id: c.connection_id,
                        username: c.username.as_deref(),
                        address: &c.address,
                        protocol_version: c.protocol_version,
                        connected_at_ms: c.at_ms,
                    };
                    record_connect(conn, &record)?;
                    let rules = rules_for(conn, c.username.as_deref(), &c.client_id)?;
                    rows.push(Applied { rows: 1, rules });
                    1
                }
                ConnectionEvent::Disconnect(_) => {
                    // Consecutive disconnects go together (see `record_disconnects`).
                    let ended: Vec<&RecordDisconnect> = rest
                        .iter()
                        .map_while(|e| match e {
                            ConnectionEvent::Disconnect(d) => Some(d),
                            _ => None,
                        })
                        .collect();
                    let written = record_disconnects(conn, &ended)?;
                    rows.extend(written.into_iter().map(|done| Applied {
                        rows: usize::from(done),
                        rules: Vec::new(),
                    }));
                    ended.len()
                }
                ConnectionEvent::CloseOpen(c) => {
                    rows.push(Applied {
                        rows: close_open_connections(conn, c.at_ms, &c.reason)?,
                        rules: Vec::new(),
                    });
                    1
                }
            };
            rest = &rest[applied..];
        }
        Ok(rows)
    })
}

/// The row of `client_id`, if the broker has ever seen it.
pub fn get_client(
    conn: &mut SqliteConnection,
    client_id: &str,
) -> Result<Option<ClientRecord>, DbError> {
    Ok(clients::table
        .find(client_id)
        .select(ClientRecord::as_select())
        .first(conn)
        .optional()?)
}

/// All client rows, ordered by client id.
pub fn list_clients(conn: &mut SqliteConnection) -> Result<Vec<ClientRecord>, DbError> {
    Ok(clients::table
        .order(clients::client_id)
        .select(ClientRecord::as_select())
        .load(conn)?)
}

// ---- retained messages -----------------------------------------------------------------------

/// Makes `message` the retained message of its topic, replacing the previous one; an empty
/// payload deletes the topic's retained message instead [MQTT-3.3.1-6] [MQTT-3.3.1-7].
/// `Ok(false)`: a new topic while `max_messages` (0 = no limit) are retained; nothing stored.
pub fn store_retained(
    conn: &mut SqliteConnection,
    message: &AppMessage,
    now_ms: i64,
    max_messages: usize,
) -> Result<bool, DbError> {
    if message.payload.is_empty() {
        diesel::delete(retained::table.find(&*message.topic)).execute(conn)?;
        return Ok(true);
    }
    conn.immediate_transaction(|conn| store_retained_within(conn, message, now_ms, max_messages))
}

/// The store itself, inside the caller's transaction so the quota check and the insert see
/// the same table. `Ok(false)`: a new topic over `max_messages` (0 = no limit), not stored.
fn store_retained_within(
    conn: &mut SqliteConnection,
    message: &AppMessage,
    now_ms: i64,
    max_messages: usize,
) -> Result<bool, DbError> {
    if max_messages != 0 {
        let exists = diesel::select(diesel::dsl::exists(retained::table.find(&*message.topic)))
            .get_result::<bool>(conn)?;
        let count: i64 = retained::table.count().get_result(conn)?;
        if !exists && usize::try_from(count).unwrap_or(usize::MAX) >= max_messages {
            return Ok(false);
        }
    }
    let properties =
        encode_forwarded(&message.properties).map_err(|source| DbError::EncodeRetained {
            topic: message.topic.to_string(),
            source,
        })?;
    let row = NewRetained {
        topic: &message.topic,
        payload: &message.payload,
        qos: message.qos as i32,
        properties: &properties,
        expires_at_ms: message.expires_at_ms,
        publisher: &message.publisher,
        stored_at_ms: now_ms,
    };
    diesel::insert_into(retained::table)
        .values(&row)
        .on_conflict(retained::topic)
        .do_update()
        .set(&row)
        .execute(conn)?;
    Ok(true)
}

/// Every retained message that has not expired at `now_ms`, ordered by topic. Expired ones are
/// deleted on the way. A row that does not decode is an error ([`DbError::CorruptRow`]).
pub fn load_retained(conn: &mut SqliteConnection, now_ms: i64) -> Result<Vec<AppMessage>, DbError> {
    let rows = conn.immediate_transaction(|conn| {
        let expired = diesel::delete(retained::table.filter(retained::expires_at_ms.le(now_ms)))
            .execute(conn)?;
        if expired > 0 {
            log::info!("deleted {expired} expired retained messages");
        }
        retained::table
            .order(retained::topic)
            .select(RetainedRow::as_select())
            .load(conn)
    })?;
    rows.into_iter().map(retained_message).collect()
}

/// Encodes the properties that travel with a message [MQTT-3.3.2-17] [MQTT-3.3.2-18]. Nothing
/// else is kept, so that the block always decodes as PUBLISH properties again; the expiry has
/// its own column. Also the encoding of `messages.properties` and `sessions.will_properties`.
pub(super) fn encode_forwarded(properties: &Properties) -> Result<Vec<u8>, EncodeError> {
    let forwarded = Properties::from(PropertyValues {
        payload_format_indicator: properties.payload_format_indicator,
        content_type: properties.content_type.clone(),
        response_topic: properties.response_topic.clone(),
        correlation_data: properties.correlation_data.clone(),
        user_properties: properties.user_properties.clone(),
        ..PropertyValues::default()
    });
    let mut block = BytesMut::with_capacity(forwarded.encoded_len());
    forwarded.encode(&mut block)?;
    Ok(block.into())
}

/// Decodes a block written by [`encode_forwarded`]; `Err` describes what is wrong with it.
pub(super) fn decode_forwarded(block: Vec<u8>) -> Result<Properties, String> {
    let mut block = Bytes::from(block);
    let properties = Properties::decode(&mut block, PropertyContext::Publish)
        .map_err(|e| format!("properties: {e}"))?;
    if !block.is_empty() {
        return Err(format!("{} bytes after the property block", block.len()));
    }
    Ok(properties)
}

fn retained_message(row: RetainedRow) -> Result<AppMessage, DbError> {
    let corrupt = |detail: String| DbError::CorruptRow {
        table: "retained",
        key: row.topic.clone(),
        detail,
    };
    topic::validate_topic_name(&row.topic).map_err(|e| corrupt(format!("topic: {e}")))?;
    let qos = u8::try_from(row.qos)
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| corrupt(format!("QoS {}", row.qos)))?;
    let properties = decode_forwarded(row.properties).map_err(corrupt)?;
    Ok(AppMessage {
        topic: Arc::from(row.topic),
        payload: Bytes::from(row.payload),
        qos,
        retain: true,
        properties,
        expires_at_ms: row.expires_at_ms,
        publisher: Arc::from(row.publisher),
    })
}

// ---- ACL rules -------------------------------------------------------------------------------

/// Adds a rule and returns its id. Fails with [`DbError::InvalidAclTopic`] unless `topic` passes
/// [`acl::validate_rule_topic`], and with [`DbError::InvalidInput`] for an empty username or
/// client id.
pub fn add_rule(
    conn: &mut SqliteConnection,
    subject: &AclSubject,
    action: AclAction,
    permission: AclPermission,
    topic: &str,
    now_ms: i64,
) -> Result<i64, DbError> {
    acl::validate_rule_topic(topic).map_err(|source| DbError::InvalidAclTopic {
        topic: topic.to_owned(),
        source,
    })?;
    if subject.name() == Some("") {
        return Err(DbError::InvalidInput(
            "the username or client id of a rule must not be empty",
        ));
    }
    let rule = NewAclRule {
        subject_kind: subject.kind(),
        subject: subject.name(),
        action: action.as_str(),
        permission: permission.as_str(),
        topic,
        created_at_ms: now_ms,
    };
    Ok(diesel::insert_into(acl_rules::table)
        .values(&rule)
        .returning(acl_rules::id)
        .get_result(conn)?)
}

/// Deletes rule `id`. Returns `false` if there was no such rule.
pub fn remove_rule(conn: &mut SqliteConnection, id: i64) -> Result<bool, DbError> {
    Ok(diesel::delete(acl_rules::table.find(id)).execute(conn)? == 1)
}

/// All rules, in id order.
pub fn list_rules(conn: &mut SqliteConnection) -> Result<Vec<AclRule>, DbError> {
    acl_rules::table
        .order(acl_rules::id)
        .select(AclRuleRow::as_select())
        .load(conn)?
        .into_iter()
        .map(acl_rule)
        .collect()
}

/// The rules that apply to a connection, in id order: those for `username`, for `client_id`
/// and for everyone.
pub fn rules_for(
    conn: &mut SqliteConnection,
    username: Option<&str>,
    client_id: &str,
) -> Result<Vec<AclRule>, DbError> {
    use acl_rules::{subject, subject_kind};
    // Without a username this compares with NULL, which is never true: no user rule applies.
    let for_user = subject_kind.eq("user").and(subject.eq(username));
    let for_client = subject_kind.eq("client").and(subject.eq(client_id));
    acl_rules::table
        .filter(subject_kind.eq("all").or(for_user).or(for_client))
        .order(acl_rules::id)
        .select(AclRuleRow::as_select())
        .load(conn)?
        .into_iter()
        .map(acl_rule)
        .collect()
}

/// Most client ids per `IN (...)` query: SQLite's limit on bound variables is 32,766.
const IDS_PER_QUERY: usize = 10_000;

/// The username each of `client_ids` last connected with (the `clients` table); ids without a
/// row or without a username are left out.
pub fn last_usernames(
    conn: &mut SqliteConnection,
    client_ids: &[&str],
) -> Result<HashMap<String, String>, DbError> {
    let mut usernames = HashMap::new();
    for chunk in client_ids.chunks(IDS_PER_QUERY) {
        let rows: Vec<(String, Option<String>)> = clients::table
            .filter(clients::client_id.eq_any(chunk))
            .select((clients::client_id, clients::username))
            .load(conn)?;
        usernames.extend(rows.into_iter().filter_map(|(id, name)| Some((id, name?))));
    }
    Ok(usernames)
}

fn acl_rule(row: AclRuleRow) -> Result<AclRule, DbError> {
    let corrupt = |detail: String| DbError::CorruptRow {
        table: "acl_rules",
        key: row.id.to_string(),
        detail,
    };
    let subject = match (row.subject_kind.as_str(), row.subject) {
        ("user", Some(name)) => AclSubject::User(name),
        ("client", Some(id)) => AclSubject::Client(id),
        ("all", None) => AclSubject::All,
        (kind, name) => return Err(corrupt(format!("subject {kind:?} {name:?}"))),
    };
    Ok(AclRule {
        id: row.id,
        subject,
        action: row.action.parse().map_err(|e| corrupt(format!("{e}")))?,
        permission: row
            .permission
            .parse()
            .map_err(|e| corrupt(format!("{e}")))?,
        topic: row.topic,
    })
}

// ---- maintenance -----------------------------------------------------------------------------

#[derive(QueryableByName)]
struct WalCheckpoint {
    /// 1 if another connection's read or write kept the checkpoint from finishing.
    #[diesel(sql_type = Integer)]
    busy: i32,
}

/// Copies the WAL into the database file and truncates it to zero bytes. Returns `false` if
/// another connection was busy and the checkpoint could not complete.
pub fn checkpoint(conn: &mut SqliteConnection) -> Result<bool, DbError> {
    let result: WalCheckpoint =
        diesel::sql_query("PRAGMA wal_checkpoint(TRUNCATE)").get_result(conn)?;
    Ok(result.busy == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{open_connection, run_migrations};
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

    /// One disconnect through `record_disconnects`: whether it was written.
    fn disconnect(
        conn: &mut SqliteConnection,
        client_id: &str,
        connection_id: i64,
        at_ms: i64,
        reason: &str,
    ) -> Result<bool, DbError> {
        let ended = RecordDisconnect {
            client_id: client_id.into(),
            connection_id,
            at_ms,
            reason: reason.into(),
        };
        Ok(record_disconnects(conn, &[&ended])?[0])
    }

    fn connect<'a>(client_id: &'a str, connection_id: i64, at_ms: i64) -> NewClientRecord<'a> {
        NewClientRecord {
            client_id,
            connection_id,
            username: Some("alice"),
            address: "10.0.0.1:50000",
            protocol_version: 5,
            connected_at_ms: at_ms,
        }
    }

    #[test]
    fn add_and_find_user() {
        let (_dir, mut conn) = test_db();
        add_user(&mut conn, "alice", "h1", 10).unwrap();
        assert_eq!(
            find_password_hash(&mut conn, "alice").unwrap().as_deref(),
            Some("h1")
        );
        assert_eq!(find_password_hash(&mut conn, "bob").unwrap(), None);
    }

    #[test]
    fn add_existing_user_fails() {
        let (_dir, mut conn) = test_db();
        add_user(&mut conn, "alice", "h1", 10).unwrap();
        let err = add_user(&mut conn, "alice", "h2", 20).unwrap_err();
        assert!(
            matches!(&err, DbError::UserExists(name) if name == "alice"),
            "{err}"
        );
        assert_eq!(
            find_password_hash(&mut conn, "alice").unwrap().as_deref(),
            Some("h1")
        );
    }

    #[test]
    fn set_password_hash_of_existing_and_missing_user() {
        let (_dir, mut conn) = test_db();
        add_user(&mut conn, "alice", "h1", 10).unwrap();
        assert!(set_password_hash(&mut conn, "alice", "h2").unwrap());
        assert_eq!(
            find_password_hash(&mut conn, "alice").unwrap().as_deref(),
            Some("h2")
        );
        assert!(!set_password_hash(&mut conn, "bob", "h3").unwrap());
        assert_eq!(find_password_hash(&mut conn, "bob").unwrap(), None);
    }

    #[test]
    fn remove_existing_and_missing_user() {
        let (_dir, mut conn) = test_db();
        add_user(&mut conn, "alice", "h1", 10).unwrap();
        assert!(remove_user(&mut conn, "alice").unwrap());
        assert!(!remove_user(&mut conn, "alice").unwrap());
        assert!(list_users(&mut conn).unwrap().is_empty());
    }

    #[test]
    fn list_users_is_ordered_by_name() {
        let (_dir, mut conn) = test_db();
        for (name, at) in [("carol", 1), ("alice", 2), ("bob", 3)] {
            add_user(&mut conn, name, "h", at).unwrap();
        }
        let users = list_users(&mut conn).unwrap();
        let names: Vec<_> = users.iter().map(|u| u.username.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
        assert_eq!(
            users[0],
            User {
                username: "alice".into(),
                password_hash: "h".into(),
                created_at_ms: 2
            }
        );
    }

    #[test]
    fn record_connect_inserts_a_row() {
        let (_dir, mut conn) = test_db();
        record_connect(&mut conn, &connect("c1", 7, 100)).unwrap();
        assert_eq!(
            get_client(&mut conn, "c1").unwrap(),
            Some(ClientRecord {
                client_id: "c1".into(),
                connection_id: 7,
                username: Some("alice".into()),
                address: "10.0.0.1:50000".into(),
                protocol_version: 5,
                connected_at_ms: 100,
                disconnected_at_ms: None,
                disconnect_reason: None,
            })
        );
        assert_eq!(get_client(&mut conn, "c2").unwrap(), None);
    }

    #[test]
    fn record_connect_overwrites_and_reopens_the_row() {
        let (_dir, mut conn) = test_db();
        record_connect(&mut conn, &connect("c1", 1, 100)).unwrap();
        assert!(disconnect(&mut conn, "c1", 1, 150, "client disconnect").unwrap());

        let again = NewClientRecord {
            username: None,
            address: "10.0.0.2:40000",
            protocol_version: 4,
            ..connect("c1", 2, 200)
        };
        record_connect(&mut conn, &again).unwrap();
        let row = get_client(&mut conn, "c1").unwrap().unwrap();
        assert_eq!(row.connection_id, 2);
        assert_eq!(
            row.username, None,
            "a connection without username clears the old one"
        );
        assert_eq!(row.address, "10.0.0.2:40000");
        assert_eq!(row.protocol_version, 4);
        assert_eq!(row.connected_at_ms, 200);
        assert_eq!(row.disconnected_at_ms, None);
        assert_eq!(row.disconnect_reason, None);
        assert_eq!(list_clients(&mut conn).unwrap().len(), 1);
    }

    #[test]
    fn record_disconnect_closes_the_matching_open_connection_once() {
        let (_dir, mut conn) = test_db();
        record_connect(&mut conn, &connect("c1", 1, 100)).unwrap();
        assert!(disconnect(&mut conn, "c1", 1, 150, "keep-alive timeout").unwrap());
        assert!(!disconnect(&mut conn, "c1", 1, 160, "again").unwrap());
        assert!(!disconnect(&mut conn, "nobody", 1, 160, "x").unwrap());
        let row = get_client(&mut conn, "c1").unwrap().unwrap();
        assert_eq!(row.disconnected_at_ms, Some(150));
        assert_eq!(row.disconnect_reason.as_deref(), Some("keep-alive timeout"));
    }

    #[test]
    fn disconnects_written_together_report_each_one() {
        let (_dir, mut conn) = test_db();
        for (id, conn_id) in [("a", 1), ("b", 2), ("c", 3)] {
            record_connect(&mut conn, &connect(id, conn_id, 100)).unwrap();
        }
        let ended = |client_id: &str, connection_id| RecordDisconnect {
            client_id: client_id.into(),
            connection_id,
            at_ms: 200 + connection_id,
            reason: format!("reason {connection_id}"),
        };
        let (a, stale, c) = (ended("a", 1), ended("b", 9), ended("c", 3));
        let written = record_disconnects(&mut conn, &[&a, &stale, &c]).unwrap();
        assert_eq!(written, [true, false, true]);
        let row = get_client(&mut conn, "c").unwrap().unwrap();
        assert_eq!(row.disconnected_at_ms, Some(203));
        assert_eq!(row.disconnect_reason.as_deref(), Some("reason 3"));
        let row = get_client(&mut conn, "b").unwrap().unwrap();
        assert_eq!(
            (row.disconnected_at_ms, row.disconnect_reason),
            (None, None)
        );
    }

    #[test]
    fn stale_disconnect_does_not_touch_a_newer_connection() {
        let (_dir, mut conn) = test_db();
        record_connect(&mut conn, &connect("c1", 1, 100)).unwrap();
        // Connection 2 takes the client id over before connection 1 reports its end.
        record_connect(&mut conn, &connect("c1", 2, 200)).unwrap();
        assert!(!disconnect(&mut conn, "c1", 1, 210, "taken over").unwrap());
        let row = get_client(&mut conn, "c1").unwrap().unwrap();
        assert_eq!((row.connection_id, row.disconnected_at_ms), (2, None));
        assert_eq!(row.disconnect_reason, None);
    }

    #[test]
    fn close_open_connections_closes_only_open_rows() {
        let (_dir, mut conn) = test_db();
        for (id, conn_id) in [("a", 1), ("b", 2), ("c", 3)] {
            record_connect(&mut conn, &connect(id, conn_id, 100)).unwrap();
        }
        disconnect(&mut conn, "b", 2, 150, "client disconnect").unwrap();

        assert_eq!(
            close_open_connections(&mut conn, 300, "broker restart").unwrap(),
            2
        );
        assert_eq!(
            close_open_connections(&mut conn, 400, "broker restart").unwrap(),
            0
        );
        let rows = list_clients(&mut conn).unwrap();
        let closed: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.client_id.as_str(),
                    r.disconnected_at_ms,
                    r.disconnect_reason.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            closed,
            [
                ("a", Some(300), Some("broker restart")),
                ("b", Some(150), Some("client disconnect")),
                ("c", Some(300), Some("broker restart")),
            ]
        );
    }

    #[test]
    fn list_clients_is_ordered_by_client_id() {
        let (_dir, mut conn) = test_db();
        for (id, conn_id) in [("z", 1), ("a", 2), ("m", 3)] {
            record_connect(&mut conn, &connect(id, conn_id, 100)).unwrap();
        }
        let ids: Vec<_> = list_clients(&mut conn)
            .unwrap()
            .into_iter()
            .map(|r| r.client_id)
            .collect();
        assert_eq!(ids, ["a", "m", "z"]);
    }

    // ---- retained ----------------------------------------------------------------------------

    fn retained_message(topic: &str, payload: &'static [u8]) -> AppMessage {
        AppMessage {
            topic: Arc::from(topic),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::from(PropertyValues {
                payload_format_indicator: Some(1),
                content_type: Some("text/plain".into()),
                response_topic: Some("reply/here".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
                ..PropertyValues::default()
            }),
            expires_at_ms: None,
            publisher: Arc::from("pub-1"),
        }
    }

    fn retained_rows(conn: &mut SqliteConnection) -> Vec<RetainedRow> {
        retained::table
            .order(retained::topic)
            .select(RetainedRow::as_select())
            .load(conn)
            .unwrap()
    }

    #[test]
    fn retained_messages_round_trip() {
        let (_dir, mut conn) = test_db();
        let a = retained_message("a/b", b"hello");
        let b = AppMessage {
            qos: QoS::ExactlyOnce,
            properties: Properties::default(),
            expires_at_ms: Some(5_000),
            ..retained_message("$SYS/x", b"\xff")
        };
        store_retained(&mut conn, &a, 100, 0).unwrap();
        store_retained(&mut conn, &b, 100, 0).unwrap();
        assert_eq!(load_retained(&mut conn, 200).unwrap(), [b, a]);
    }

    #[test]
    fn retained_stores_only_forwarded_properties_and_loads_with_retain_set() {
        let (_dir, mut conn) = test_db();
        let mut message = retained_message("t", b"x");
        message.retain = false;
        message.properties.topic_alias = Some(3);
        message.properties.subscription_identifiers = vec![7];
        message.properties.message_expiry_interval = Some(60);
        message.properties.session_expiry_interval = Some(10);
        store_retained(&mut conn, &message, 1, 0).unwrap();

        let loaded = load_retained(&mut conn, 2).unwrap();
        assert_eq!(loaded, [retained_message("t", b"x")]);
        // The stored block carries its Property Length and decodes as PUBLISH properties.
        let rows = retained_rows(&mut conn);
        assert_eq!(
            usize::from(rows[0].properties[0]) + 1,
            rows[0].properties.len()
        );
    }

    #[test]
    fn store_retained_replaces_every_column() {
        let (_dir, mut conn) = test_db();
        let first = AppMessage {
            expires_at_ms: Some(9_000),
            ..retained_message("t", b"one")
        };
        store_retained(&mut conn, &first, 100, 0).unwrap();
        let second = AppMessage {
            qos: QoS::AtMostOnce,
            properties: Properties::default(),
            publisher: Arc::from("pub-2"),
            ..retained_message("t", b"two")
        };
        store_retained(&mut conn, &second, 200, 0).unwrap();

        let rows = retained_rows(&mut conn);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].stored_at_ms, 200);
        assert_eq!(rows[0].expires_at_ms, None, "no expiry clears the old one");
        assert_eq!(
            rows[0].properties,
            [0],
            "an empty property block is its length 0"
        );
        assert_eq!(load_retained(&mut conn, 300).unwrap(), [second]);
    }

    #[test]
    fn empty_payload_deletes_the_retained_message() {
        let (_dir, mut conn) = test_db();
        store_retained(&mut conn, &retained_message("a", b"x"), 1, 0).unwrap();
        store_retained(&mut conn, &retained_message("b", b"y"), 1, 0).unwrap();
        store_retained(&mut conn, &retained_message("a", b""), 2, 0).unwrap();
        // Deleting a topic without a retained message is fine too.
        store_retained(&mut conn, &retained_message("c", b""), 3, 0).unwrap();
        let topics: Vec<_> = retained_rows(&mut conn)
            .into_iter()
            .map(|r| r.topic)
            .collect();
        assert_eq!(topics, ["b"]);
    }

    #[test]
    fn load_retained_skips_and_deletes_expired_messages() {
        let (_dir, mut conn) = test_db();
        for (topic, expires_at_ms) in [
            ("old", Some(999)),
            ("edge", Some(1_000)),
            ("new", Some(1_001)),
        ] {
            let message = AppMessage {
                expires_at_ms,
                ..retained_message(topic, b"x")
            };
            store_retained(&mut conn, &message, 0, 0).unwrap();
        }
        store_retained(&mut conn, &retained_message("never", b"x"), 0, 0).unwrap();

        let loaded = load_retained(&mut conn, 1_000).unwrap();
        let topics: Vec<_> = loaded.iter().map(|m| &*m.topic).collect();
        assert_eq!(topics, ["never", "new"]);
        assert_eq!(loaded[1].remaining_expiry(1_000), Some(1));
        let stored: Vec<_> = retained_rows(&mut conn)
            .into_iter()
            .map(|r| r.topic)
            .collect();
        assert_eq!(stored, ["never", "new"], "expired rows are gone");
    }

    #[test]
    fn corrupt_retained_rows_are_errors() {
        let cases: [(&str, i32, &[u8]); 5] = [
            ("bad qos", 3, &[0]),
            ("negative qos", -1, &[0]),
            ("truncated properties", 0, &[5, 0x01]),
            ("session property", 0, &[5, 0x11, 0, 0, 0, 1]),
            ("trailing bytes", 0, &[0, 0]),
        ];
        for (what, qos, properties) in cases {
            let (_dir, mut conn) = test_db();
            diesel::insert_into(retained::table)
                .values(NewRetained {
                    topic: "t",
                    payload: b"x",
                    qos,
                    properties,
                    expires_at_ms: None,
                    publisher: "p",
                    stored_at_ms: 0,
                })
                .execute(&mut conn)
                .unwrap();
            let err = load_retained(&mut conn, 0).unwrap_err();
            assert!(
                matches!(&err, DbError::CorruptRow { table: "retained", key, .. } if key == "t"),
                "{what}: {err}"
            );
        }
        let (_dir, mut conn) = test_db();
        diesel::insert_into(retained::table)
            .values(NewRetained {
                topic: "a/#",
                payload: b"x",
                qos: 0,
                properties: &[0],
                expires_at_ms: None,
                publisher: "p",
                stored_at_ms: 0,
            })
            .execute(&mut conn)
            .unwrap();
        assert!(matches!(
            load_retained(&mut conn, 0),
            Err(DbError::CorruptRow { .. })
        ));
    }

    #[test]
    fn unencodable_properties_are_an_error() {
        let (_dir, mut conn) = test_db();
        let mut message = retained_message("t", b"x");
        message.properties.content_type = Some("x".repeat(70_000));
        assert!(matches!(
            store_retained(&mut conn, &message, 0, 0),
            Err(DbError::EncodeRetained { .. })
        ));
        assert!(retained_rows(&mut conn).is_empty());
    }

    // ---- ACL rules ---------------------------------------------------------------------------

    fn add(conn: &mut SqliteConnection, subject: AclSubject, topic: &str) -> i64 {
        add_rule(
            conn,
            &subject,
            AclAction::Publish,
            AclPermission::Allow,
            topic,
            10,
        )
        .unwrap()
    }

    fn ids(rules: &[AclRule]) -> Vec<i64> {
        rules.iter().map(|r| r.id).collect()
    }

    #[test]
    fn add_list_and_remove_rules() {
        let (_dir, mut conn) = test_db();
        let alice = AclSubject::User("alice".into());
        let a = add_rule(
            &mut conn,
            &alice,
            AclAction::Subscribe,
            AclPermission::Deny,
            "x/%u/#",
            10,
        )
        .unwrap();
        let b = add(&mut conn, AclSubject::All, "#");
        let c = add(&mut conn, AclSubject::Client("c1".into()), "%c");
        assert_eq!(
            list_rules(&mut conn).unwrap(),
            [
                AclRule {
                    id: a,
                    subject: alice,
                    action: AclAction::Subscribe,
                    permission: AclPermission::Deny,
                    topic: "x/%u/#".into(),
                },
                AclRule {
                    id: b,
                    subject: AclSubject::All,
                    action: AclAction::Publish,
                    permission: AclPermission::Allow,
                    topic: "#".into(),
                },
                AclRule {
                    id: c,
                    subject: AclSubject::Client("c1".into()),
                    action: AclAction::Publish,
                    permission: AclPermission::Allow,
                    topic: "%c".into(),
                },
            ]
        );

        assert!(remove_rule(&mut conn, b).unwrap());
        assert!(!remove_rule(&mut conn, b).unwrap());
        assert_eq!(ids(&list_rules(&mut conn).unwrap()), [a, c]);
        // AUTOINCREMENT: the id of the removed (and of the last) rule is not reused.
        assert!(remove_rule(&mut conn, c).unwrap());
        assert!(add(&mut conn, AclSubject::All, "y") > c);
    }

    #[test]
    fn add_rule_validates_topic_and_subject() {
        let (_dir, mut conn) = test_db();
        let mut try_add = |subject: AclSubject, topic: &str| {
            add_rule(
                &mut conn,
                &subject,
                AclAction::Receive,
                AclPermission::Allow,
                topic,
                1,
            )
        };
        for bad in ["", "a/#/b", "a+", "a/x%u", "%c%u", "$share/g/x"] {
            let err = try_add(AclSubject::All, bad).unwrap_err();
            assert!(
                matches!(&err, DbError::InvalidAclTopic { topic, .. } if topic == bad),
                "{bad:?}: {err}"
            );
        }
        for subject in [
            AclSubject::User(String::new()),
            AclSubject::Client(String::new()),
        ] {
            assert!(matches!(
                try_add(subject, "a"),
                Err(DbError::InvalidInput(_))
            ));
        }
        assert!(list_rules(&mut conn).unwrap().is_empty());
    }

    #[test]
    fn rules_for_a_connection() {
        let (_dir, mut conn) = test_db();
        let alice = add(&mut conn, AclSubject::User("alice".into()), "a");
        let all = add(&mut conn, AclSubject::All, "b");
        add(&mut conn, AclSubject::User("bob".into()), "c");
        let c1 = add(&mut conn, AclSubject::Client("c1".into()), "d");
        add(&mut conn, AclSubject::Client("c2".into()), "e");
        // A client rule whose id equals the username does not apply, nor the reverse.
        add(&mut conn, AclSubject::Client("alice".into()), "f");
        add(&mut conn, AclSubject::User("c1".into()), "g");

        assert_eq!(
            ids(&rules_for(&mut conn, Some("alice"), "c1").unwrap()),
            [alice, all, c1]
        );
        assert_eq!(ids(&rules_for(&mut conn, None, "c1").unwrap()), [all, c1]);
        assert_eq!(ids(&rules_for(&mut conn, None, "zz").unwrap()), [all]);
        assert_eq!(ids(&rules_for(&mut conn, Some(""), "zz").unwrap()), [all]);
    }

    #[test]
    fn the_table_rejects_a_subject_that_contradicts_its_kind() {
        let (_dir, mut conn) = test_db();
        for (kind, subject) in [("all", Some("x")), ("user", None), ("group", Some("x"))] {
            let result = diesel::insert_into(acl_rules::table)
                .values(NewAclRule {
                    subject_kind: kind,
                    subject,
                    action: "publish",
                    permission: "allow",
                    topic: "t",
                    created_at_ms: 0,
                })
                .execute(&mut conn);
            assert!(
                matches!(
                    result,
                    Err(Error::DatabaseError(DatabaseErrorKind::CheckViolation, _))
                ),
                "{kind} {subject:?}: {result:?}"
            );
        }
    }

    #[test]
    fn corrupt_acl_rows_are_errors() {
        let rows = [
            ("all", Some("x"), "publish", "allow"),
            ("user", None, "publish", "allow"),
            ("group", Some("x"), "publish", "allow"),
            ("all", None, "PUBLISH", "allow"),
            ("all", None, "publish", "maybe"),
        ];
        for (kind, subject, action, permission) in rows {
            let (_dir, mut conn) = test_db();
            // Only a hand-edited database gets past the CHECK constraints.
            conn.batch_execute("PRAGMA ignore_check_constraints = ON;")
                .unwrap();
            diesel::insert_into(acl_rules::table)
                .values(NewAclRule {
                    subject_kind: kind,
                    subject,
                    action,
                    permission,
                    topic: "t",
                    created_at_ms: 0,
                })
                .execute(&mut conn)
                .unwrap();
            let err = list_rules(&mut conn).unwrap_err();
            assert!(
                matches!(&err, DbError::CorruptRow { table: "acl_rules", key, .. } if key == "1"),
                "{kind} {subject:?} {action} {permission}: {err}"
            );
            if kind == "all" {
                assert!(
                    rules_for(&mut conn, None, "x").is_err(),
                    "rules_for selects it too"
                );
            }
        }
    }

    #[test]
    fn checkpoint_truncates_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db").display().to_string();
        let mut conn = open_connection(&path, Durability::default()).unwrap();
        run_migrations(&mut conn).unwrap();
        add_user(&mut conn, "alice", "h", 1).unwrap();
        assert!(std::fs::metadata(format!("{path}-wal")).unwrap().len() > 0);

        assert!(checkpoint(&mut conn).unwrap());
        assert_eq!(std::fs::metadata(format!("{path}-wal")).unwrap().len(), 0);
        assert_eq!(list_users(&mut conn).unwrap().len(), 1);
    }

    #[test]
    fn retained_topics_over_the_limit_are_not_stored_but_replacing_one_is() {
        let (_dir, mut conn) = test_db();
        assert!(store_retained(&mut conn, &retained_message("a", b"1"), 1, 2).unwrap());
        assert!(store_retained(&mut conn, &retained_message("b", b"1"), 1, 2).unwrap());
        assert!(!store_retained(&mut conn, &retained_message("c", b"1"), 1, 2).unwrap());
        assert!(store_retained(&mut conn, &retained_message("a", b"2"), 1, 2).unwrap());
        let topics: Vec<String> = load_retained(&mut conn, 1)
            .unwrap()
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        assert_eq!(topics.len(), 2);
        assert!(!topics.contains(&"c".to_string()));
    }
}
