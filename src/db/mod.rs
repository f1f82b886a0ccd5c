//! Storage: the DbActor on a SyncArbiter, running Diesel on SQLite.
//!
//! - [`open_connection`] opens a connection with the PRAGMAs every connection needs.
//! - [`start`] migrates the database once and starts the DbActor threads.
//! - [`queries`] holds the SQL as plain functions over `&mut SqliteConnection`; the handlers
//!   below only call them.
//! - [`users`] is what the `mqttd user ...` command line calls, and the password check.
//! - [`acl`] is what the `mqttd acl ...` command line calls.
//! - [`sessions`] stores persistent sessions (`Commit`) and reads them back (`LoadState`).
//! - [`connection_log`] is the ConnectionLog actor: group commit of the `clients` table.

pub mod acl;
pub mod connection_log;
pub mod migrate;
pub mod models;
pub mod password;
pub mod queries;
pub mod schema;
pub mod sessions;
pub mod users;

use actix::prelude::*;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use crate::acl::{AclRule, RuleTopicError};
use crate::clock::unix_millis;
use crate::message::AppMessage;
use crate::messages::{
    Authenticate, Checkpoint, Commit, ConnectionEvent, LoadAcl, LoadPublisherRules, LoadRetained,
    LoadState, PublisherRules, RecordConnections, StoreRetained,
};
use crate::mqtt::EncodeError;
use crate::persist::{Durability, StoredState};
pub use connection_log::ConnectionLog;
pub use migrate::run_migrations;

/// Errors from the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("cannot open database: {0}")]
    Connection(#[from] diesel::ConnectionError),
    #[error("cannot create database file {path}: {source}")]
    CreateFile {
        path: String,
        source: std::io::Error,
    },
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("password hashing failed: {0}")]
    Password(String),
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("no such user {0:?}")]
    NoSuchUser(String),
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
    #[error("invalid ACL rule topic {topic:?}: {source}")]
    InvalidAclTopic {
        topic: String,
        source: RuleTopicError,
    },
    #[error("no such ACL rule {0}")]
    NoSuchRule(i64),
    /// A group commit failed: each record in the batch is answered with its error.
    #[error("{0}")]
    Batch(std::sync::Arc<DbError>),
    /// The actor that runs the query has stopped (the broker is shutting down).
    #[error("database actor unavailable: {0}")]
    Unavailable(String),
    #[error("cannot store the retained message of {topic:?}: {source}")]
    EncodeRetained { topic: String, source: EncodeError },
    #[error("cannot store the properties of a message to {topic:?}: {source}")]
    EncodeMessage { topic: String, source: EncodeError },
    /// A stored row that cannot be what the broker wrote, e.g. edited by hand.
    #[error("corrupt row {key:?} in table {table}: {detail}")]
    CorruptRow {
        table: &'static str,
        key: String,
        detail: String,
    },
    /// `PRAGMA quick_check` found damage: the broker must not run on this file.
    #[error(
        "the database file is damaged (PRAGMA quick_check: {0}); restore it from a backup, or \
         move it aside to start with an empty database"
    )]
    Corrupt(String),
}

/// Opens the SQLite database at `path`, creating it readable by its owner only, and applies the
/// per-connection PRAGMAs (busy timeout 5 s, WAL, `durability`'s synchronous level, foreign
/// keys on). Each is its own statement, in this order: `busy_timeout` comes first so that the
/// switch to WAL (which needs an exclusive lock) already waits instead of failing with
/// "database is locked" when several connections open at once.
pub fn open_connection(path: &str, durability: Durability) -> Result<SqliteConnection, DbError> {
    create_private_file(path)?;
    let mut conn = SqliteConnection::establish(path)?;
    conn.batch_execute("PRAGMA busy_timeout = 5000;")?;
    conn.batch_execute("PRAGMA journal_mode = WAL;")?;
    conn.batch_execute(&format!(
        "PRAGMA synchronous = {};",
        durability.synchronous()
    ))?;
    conn.batch_execute("PRAGMA foreign_keys = ON;")?;
    Ok(conn)
}

/// Creates `path` with mode 0600 if it does not exist yet. SQLite would create it with 0644
/// minus the umask, leaving password hashes world-readable (CVE-2017-9868 in Mosquitto); it
/// gives the `-wal` and `-shm` files the database file's mode.
#[cfg(unix)]
fn create_private_file(path: &str) -> Result<(), DbError> {
    use std::os::unix::fs::OpenOptionsExt;

    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|source| DbError::CreateFile {
            path: path.to_owned(),
            source,
        })
}

#[cfg(not(unix))]
fn create_private_file(_path: &str) -> Result<(), DbError> {
    Ok(())
}

/// Opens and migrates the database for a command-line operation. The broker may be running on
/// the same file: its migrations have run already, so this is a no-op then.
fn open_migrated(db_path: &str) -> Result<SqliteConnection, DbError> {
    let mut conn = open_connection(db_path, Durability::default())?;
    run_migrations(&mut conn)?;
    Ok(conn)
}

/// Runs the database queries of the broker, one connection per SyncArbiter thread.
pub struct DbActor {
    conn: SqliteConnection,
}

impl DbActor {
    pub fn new(conn: SqliteConnection) -> Self {
        DbActor { conn }
    }
}

impl Actor for DbActor {
    type Context = SyncContext<Self>;
}

/// Migrates the database at `path`, checks it for damage ([`sessions::integrity_check`]), then
/// starts `threads` DbActor threads (at least one), each with its own connection opened with
/// `durability`. Must be called from inside a running actix `System`.
///
/// SQLite allows one writer at a time, so extra threads only speed up reads.
pub fn start(path: &str, threads: usize, durability: Durability) -> Result<Addr<DbActor>, DbError> {
    let mut conn = open_connection(path, durability)?;
    // Refuse a damaged file now, before migrations write to it, rather than fail (or lose
    // state) at some later query.
    sessions::integrity_check(&mut conn)?;
    // Once, here: migrating from every worker's factory races on a fresh database.
    run_migrations(&mut conn)?;
    drop(conn);
    // Compute it now rather than on the first unknown-user login, which would take twice as
    // long as the others and so reveal that the user does not exist.
    password::dummy_hash()?;

    Ok(start_threads(path, threads, durability))
}

/// One more DbActor thread on an already started (migrated) database: the journal's writer.
/// Group commits go to this one connection in turn, so its page cache stays warm and no
/// two batches ever compete for the write lock.
pub fn start_writer(path: &str, durability: Durability) -> Addr<DbActor> {
    start_threads(path, 1, durability)
}

fn start_threads(path: &str, threads: usize, durability: Durability) -> Addr<DbActor> {
    let path = path.to_owned();
    #[expect(clippy::panic, reason = "a SyncArbiter factory cannot return an error")]
    SyncArbiter::start(threads.max(1), move || {
        // The factory cannot return an error. The same path was opened and migrated at
        // start-up, so this fails only if the file was removed or the process ran out of
        // descriptors since; a panic then ends this one worker thread with a clear message.
        let conn = open_connection(&path, durability)
            .unwrap_or_else(|e| panic!("DbActor: cannot reopen database {path}: {e}"));
        DbActor::new(conn)
    })
}

// Handlers stay thin and never panic: a panic would kill the SyncArbiter thread for good.

impl Handler<Authenticate> for DbActor {
    type Result = Result<bool, DbError>;

    fn handle(&mut self, msg: Authenticate, _: &mut Self::Context) -> Self::Result {
        users::authenticate(&mut self.conn, &msg.username, msg.password.as_deref())
    }
}

impl Handler<RecordConnections> for DbActor {
    type Result = Result<Vec<queries::Applied>, DbError>;

    fn handle(&mut self, msg: RecordConnections, _: &mut Self::Context) -> Self::Result {
        let rows = queries::record_connections(&mut self.conn, &msg.events)?;
        for (event, applied) in msg.events.iter().zip(&rows) {
            if let (ConnectionEvent::Disconnect(d), 0) = (event, applied.rows) {
                log::debug!(
                    "disconnect of {:?} connection {} not recorded: a newer connection owns the row",
                    d.client_id,
                    d.connection_id
                );
            }
        }
        Ok(rows)
    }
}

impl Handler<LoadAcl> for DbActor {
    type Result = Result<Vec<AclRule>, DbError>;

    fn handle(&mut self, msg: LoadAcl, _: &mut Self::Context) -> Self::Result {
        queries::rules_for(&mut self.conn, msg.username.as_deref(), &msg.client_id)
    }
}

impl Handler<LoadPublisherRules> for DbActor {
    type Result = Result<PublisherRules, DbError>;

    /// Two queries however many publishers: every rule (rule tables are small next to the
    /// retained messages a `#` subscription can match), and the publishers' usernames.
    fn handle(&mut self, msg: LoadPublisherRules, _: &mut Self::Context) -> Self::Result {
        let ids: Vec<&str> = msg.publishers.iter().map(|id| &**id).collect();
        Ok(PublisherRules {
            rules: queries::list_rules(&mut self.conn)?,
            usernames: queries::last_usernames(&mut self.conn, &ids)?,
        })
    }
}

impl Handler<StoreRetained> for DbActor {
    type Result = Result<bool, DbError>;

    fn handle(&mut self, msg: StoreRetained, _: &mut Self::Context) -> Self::Result {
        queries::store_retained(
            &mut self.conn,
            &msg.message,
            unix_millis(),
            msg.max_messages,
        )
    }
}

impl Handler<LoadRetained> for DbActor {
    type Result = Result<Vec<AppMessage>, DbError>;

    fn handle(&mut self, _: LoadRetained, _: &mut Self::Context) -> Self::Result {
        queries::load_retained(&mut self.conn, unix_millis())
    }
}

impl Handler<Commit> for DbActor {
    type Result = Result<(), DbError>;

    fn handle(&mut self, msg: Commit, _: &mut Self::Context) -> Self::Result {
        sessions::apply(&mut self.conn, &msg.ops, msg.alive_at_ms)
    }
}

impl Handler<LoadState> for DbActor {
    type Result = Result<StoredState, DbError>;

    fn handle(&mut self, msg: LoadState, _: &mut Self::Context) -> Self::Result {
        sessions::load(&mut self.conn, msg.now_ms)
    }
}

impl Handler<Checkpoint> for DbActor {
    type Result = Result<(), DbError>;

    fn handle(&mut self, _: Checkpoint, _: &mut Self::Context) -> Self::Result {
        if !queries::checkpoint(&mut self.conn)? {
            log::warn!("WAL checkpoint incomplete: another connection is still reading");
        }
        Ok(())
    }
}

impl Handler<crate::messages::Ping> for DbActor {
    type Result = Result<(), DbError>;

    fn handle(&mut self, _: crate::messages::Ping, _: &mut Self::Context) -> Self::Result {
        diesel::sql_query("SELECT 1").execute(&mut self.conn)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{CloseOpenConnections, RecordConnect, RecordDisconnect};
    use crate::mqtt::PropertyValues;
    use diesel::sql_types::{BigInt, Text};

    #[derive(QueryableByName)]
    struct JournalMode {
        #[diesel(sql_type = Text)]
        journal_mode: String,
    }

    #[derive(QueryableByName)]
    struct ForeignKeys {
        #[diesel(sql_type = BigInt)]
        foreign_keys: i64,
    }

    // `PRAGMA busy_timeout` names its result column "timeout".
    #[derive(QueryableByName)]
    struct BusyTimeout {
        #[diesel(sql_type = BigInt)]
        timeout: i64,
    }

    #[derive(QueryableByName)]
    struct Synchronous {
        #[diesel(sql_type = BigInt)]
        synchronous: i64,
    }

    fn temp_db() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db").display().to_string();
        (dir, path)
    }

    #[test]
    fn pragmas_are_in_effect() {
        let (_dir, path) = temp_db();
        let conn = &mut open_connection(&path, Durability::default()).unwrap();

        let mode: JournalMode = diesel::sql_query("PRAGMA journal_mode")
            .get_result(conn)
            .unwrap();
        assert_eq!(mode.journal_mode, "wal");
        let fk: ForeignKeys = diesel::sql_query("PRAGMA foreign_keys")
            .get_result(conn)
            .unwrap();
        assert_eq!(fk.foreign_keys, 1);
        let busy: BusyTimeout = diesel::sql_query("PRAGMA busy_timeout")
            .get_result(conn)
            .unwrap();
        assert_eq!(busy.timeout, 5000);
        let sync: Synchronous = diesel::sql_query("PRAGMA synchronous")
            .get_result(conn)
            .unwrap();
        assert_eq!(sync.synchronous, 1, "1 = NORMAL");
    }

    #[test]
    fn power_durability_syncs_fully() {
        let (_dir, path) = temp_db();
        let conn = &mut open_connection(&path, Durability::Power).unwrap();
        let sync: Synchronous = diesel::sql_query("PRAGMA synchronous")
            .get_result(conn)
            .unwrap();
        assert_eq!(sync.synchronous, 2, "2 = FULL");
    }

    /// Stores `n` messages for one persistent session, `payload_len` bytes each.
    fn store_messages(conn: &mut SqliteConnection, n: i64, payload_len: usize) {
        use crate::mqtt::QoS;
        use crate::persist::{StoreOp, StoredDelivery};
        use std::sync::Arc;

        let client_id: Arc<str> = Arc::from("c");
        let mut ops = vec![StoreOp::OpenSession {
            client_id: client_id.clone(),
            clean: false,
            expiry_interval: 3600,
            will: None,
        }];
        for id in 1..=n {
            let message = Arc::new(AppMessage {
                topic: Arc::from(format!("t/{id}")),
                payload: bytes::Bytes::from(vec![b'x'; payload_len]),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: crate::mqtt::Properties::default(),
                expires_at_ms: None,
                publisher: Arc::from("p"),
            });
            ops.push(StoreOp::Enqueue {
                client_id: client_id.clone(),
                message_id: id,
                message,
                delivery: StoredDelivery {
                    seq: id,
                    packet_id: u16::try_from(id).unwrap(),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    subscription_ids: Vec::new(),
                    released: false,
                },
            });
        }
        sessions::apply(conn, &ops, 1).unwrap();
    }

    #[actix::test]
    async fn start_refuses_a_damaged_file() {
        use std::io::{Seek, SeekFrom, Write};

        let (_dir, path) = temp_db();
        {
            let conn = &mut open_connection(&path, Durability::default()).unwrap();
            run_migrations(conn).unwrap();
            store_messages(conn, 3000, 200);
            // Move everything from the WAL into the database file.
            assert!(queries::checkpoint(conn).unwrap());
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len > 400_000, "{len} bytes");
        // Two pages of garbage in the middle of the file.
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(len / 2 / 4096 * 4096)).unwrap();
        file.write_all(&[0xA5; 8192]).unwrap();
        drop(file);

        let err = start(&path, 1, Durability::default()).err().unwrap();
        assert!(matches!(err, DbError::Corrupt(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "the database file is damaged (PRAGMA quick_check: database disk image is \
             malformed); restore it from a backup, or move it aside to start with an empty \
             database"
        );
    }

    #[cfg(unix)]
    #[test]
    fn database_files_are_private() {
        use std::os::unix::fs::PermissionsExt;

        let (_dir, path) = temp_db();
        let conn = &mut open_connection(&path, Durability::default()).unwrap();
        run_migrations(conn).unwrap();
        for file in [path.clone(), format!("{path}-wal"), format!("{path}-shm")] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
    }

    #[test]
    fn open_fails_in_a_missing_directory() {
        let (_dir, path) = temp_db();
        let err = open_connection(&format!("{path}/nope/x.db"), Durability::default())
            .err()
            .unwrap();
        assert!(matches!(err, DbError::CreateFile { .. }), "{err}");
    }

    #[test]
    fn migrations_run_twice_are_a_no_op() {
        let (_dir, path) = temp_db();
        let conn = &mut open_connection(&path, Durability::default()).unwrap();
        run_migrations(conn).unwrap();
        queries::add_user(conn, "alice", "hash", 1).unwrap();
        run_migrations(conn).unwrap();
        assert_eq!(queries::list_users(conn).unwrap().len(), 1);
    }

    #[actix::test]
    async fn db_actor_handles_every_message() {
        let (_dir, path) = temp_db();
        let hash = password::hash(b"secret").unwrap();
        {
            let conn = &mut open_connection(&path, Durability::default()).unwrap();
            run_migrations(conn).unwrap();
            queries::add_user(conn, "alice", &hash, 1).unwrap();
        }
        let db = start(&path, 2, Durability::default()).unwrap();

        let auth = |username: &str, password: Option<&'static [u8]>| Authenticate {
            username: username.to_owned(),
            password: password.map(bytes::Bytes::from_static),
        };
        assert!(
            db.send(auth("alice", Some(b"secret")))
                .await
                .unwrap()
                .unwrap()
        );
        assert!(
            !db.send(auth("alice", Some(b"wrong")))
                .await
                .unwrap()
                .unwrap()
        );
        assert!(!db.send(auth("alice", None)).await.unwrap().unwrap());
        assert!(
            !db.send(auth("bob", Some(b"secret")))
                .await
                .unwrap()
                .unwrap()
        );

        let connect = |client_id: &str, connection_id: i64| RecordConnect {
            client_id: client_id.to_owned(),
            connection_id,
            username: Some("alice".to_owned()),
            address: "127.0.0.1:1883".to_owned(),
            protocol_version: 5,
            at_ms: 100,
        };
        let log = ConnectionLog::new(db.clone()).start();
        log.send(connect("c1", 1)).await.unwrap().unwrap();
        log.send(connect("c2", 2)).await.unwrap().unwrap();
        log.send(RecordDisconnect {
            client_id: "c1".to_owned(),
            connection_id: 1,
            at_ms: 200,
            reason: "client disconnect".to_owned(),
        })
        .await
        .unwrap()
        .unwrap();
        let closed = log
            .send(CloseOpenConnections {
                at_ms: 300,
                reason: "shutdown".to_owned(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(closed, 1, "only c2 was still open");
        db.send(Checkpoint).await.unwrap().unwrap();

        let conn = &mut open_connection(&path, Durability::default()).unwrap();
        let c1 = queries::get_client(conn, "c1").unwrap().unwrap();
        assert_eq!(c1.disconnected_at_ms, Some(200));
        assert_eq!(c1.disconnect_reason.as_deref(), Some("client disconnect"));
        let c2 = queries::get_client(conn, "c2").unwrap().unwrap();
        assert_eq!(c2.disconnected_at_ms, Some(300));
        assert_eq!(c2.disconnect_reason.as_deref(), Some("shutdown"));
        // TRUNCATE left an empty WAL behind.
        assert_eq!(std::fs::metadata(format!("{path}-wal")).unwrap().len(), 0);
    }

    #[actix::test]
    async fn db_actor_handles_commit_and_load_state() {
        let (_dir, path) = temp_db();
        let db = start(&path, 2, Durability::default()).unwrap();
        let empty = db.send(LoadState { now_ms: 10 }).await.unwrap().unwrap();
        assert!(empty.sessions.is_empty());
        assert_eq!(empty.last_alive_ms, None);

        let conn = &mut open_connection(&path, Durability::default()).unwrap();
        store_messages(conn, 3, 10);
        db.send(Commit {
            ops: vec![crate::persist::StoreOp::Completed {
                client_id: "c".into(),
                packet_id: 2,
            }],
            alive_at_ms: 20,
        })
        .await
        .unwrap()
        .unwrap();

        let state = db.send(LoadState { now_ms: 30 }).await.unwrap().unwrap();
        assert_eq!(state.last_alive_ms, Some(20));
        assert_eq!(state.sessions.len(), 1);
        let packet_ids: Vec<_> = state.sessions[0]
            .queue
            .iter()
            .map(|(_, d)| d.packet_id)
            .collect();
        assert_eq!(packet_ids, [1, 3]);
        assert_eq!((state.next_message_id, state.next_seq), (4, 4));
    }

    #[actix::test]
    async fn db_actor_handles_acl_and_retained_messages() {
        use crate::acl::{AclAction, AclPermission, AclSubject};
        use crate::mqtt::{Properties, QoS};
        use std::sync::Arc;

        let (_dir, path) = temp_db();
        let (own, everyone) = {
            let conn = &mut open_connection(&path, Durability::default()).unwrap();
            run_migrations(conn).unwrap();
            let mut add = |subject: AclSubject| {
                queries::add_rule(
                    conn,
                    &subject,
                    AclAction::Publish,
                    AclPermission::Allow,
                    "t/%u",
                    1,
                )
                .unwrap()
            };
            let own = add(AclSubject::User("alice".into()));
            add(AclSubject::User("bob".into()));
            (own, add(AclSubject::All))
        };
        let db = start(&path, 2, Durability::default()).unwrap();

        let rules = db
            .send(LoadAcl {
                username: Some("alice".into()),
                client_id: "c1".into(),
            })
            .await
            .unwrap()
            .unwrap();
        let ids: Vec<_> = rules.iter().map(|r| r.id).collect();
        assert_eq!(ids, [own, everyone]);

        // The retained re-check: every rule, and each publisher's last username.
        let log = ConnectionLog::new(db.clone()).start();
        log.send(RecordConnect {
            client_id: "c1".into(),
            connection_id: 1,
            username: Some("alice".into()),
            address: "127.0.0.1:1".into(),
            protocol_version: 5,
            at_ms: 1,
        })
        .await
        .unwrap()
        .unwrap();
        let loaded = db
            .send(LoadPublisherRules {
                publishers: vec![Arc::from("c1"), Arc::from("never-connected")],
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(loaded.rules.len(), 3);
        assert_eq!(
            loaded.usernames,
            [("c1".to_string(), "alice".to_string())].into()
        );

        let message = |topic: &str, payload: &'static [u8], expires_at_ms: Option<i64>| {
            Arc::new(AppMessage {
                topic: Arc::from(topic),
                payload: bytes::Bytes::from_static(payload),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: Properties::from(PropertyValues {
                    content_type: Some("text/plain".into()),
                    ..PropertyValues::default()
                }),
                expires_at_ms,
                publisher: Arc::from("c1"),
            })
        };
        let kept = message("a", b"1", None);
        for message in [
            kept.clone(),
            message("b", b"2", None),
            message("b", b"", None),
            message("old", b"3", Some(1)),
        ] {
            assert!(
                db.send(StoreRetained {
                    message,
                    max_messages: 0
                })
                .await
                .unwrap()
                .unwrap()
            );
        }
        let loaded = db.send(LoadRetained).await.unwrap().unwrap();
        assert_eq!(
            loaded,
            [(*kept).clone()],
            "deleted and expired ones are not loaded"
        );
    }
}
