//! Every SQL statement of the broker, as plain functions over a connection.
//!
//! Each write is a single autocommit statement: SQLite takes the write lock for it at once and
//! waits up to `busy_timeout`. A function that ever needs several statements must wrap them in
//! `conn.immediate_transaction`, never a deferred `transaction` (a read that is then upgraded
//! to a write fails with SQLITE_BUSY instead of waiting).

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use diesel::sql_types::Integer;

use super::DbError;
use super::models::{ClientRecord, NewClientRecord, NewUser, User};
use super::schema::{clients, users};

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

/// Records a new connection of a client id: inserts its row, or overwrites every column of the
/// existing one and marks it open again.
pub fn record_connect(
    conn: &mut SqliteConnection,
    record: &NewClientRecord<'_>,
) -> Result<(), DbError> {
    diesel::insert_into(clients::table)
        .values(record)
        .on_conflict(clients::client_id)
        .do_update()
        .set((
            record,
            clients::disconnected_at_ms.eq(None::<i64>),
            clients::disconnect_reason.eq(None::<&str>),
        ))
        .execute(conn)?;
    Ok(())
}

/// Marks connection `connection_id` of `client_id` as ended. Returns `false`, changing nothing,
/// if the row now belongs to another (newer) connection or is already closed.
pub fn record_disconnect(
    conn: &mut SqliteConnection,
    client_id: &str,
    connection_id: i64,
    at_ms: i64,
    reason: &str,
) -> Result<bool, DbError> {
    let updated = diesel::update(
        clients::table
            .find(client_id)
            .filter(clients::connection_id.eq(connection_id))
            .filter(clients::disconnected_at_ms.is_null()),
    )
    .set((
        clients::disconnected_at_ms.eq(at_ms),
        clients::disconnect_reason.eq(reason),
    ))
    .execute(conn)?;
    Ok(updated == 1)
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

    fn test_db() -> (tempfile::TempDir, SqliteConnection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db").display().to_string();
        let mut conn = open_connection(&path).unwrap();
        run_migrations(&mut conn).unwrap();
        (dir, conn)
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
        assert!(record_disconnect(&mut conn, "c1", 1, 150, "client disconnect").unwrap());

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
        assert!(record_disconnect(&mut conn, "c1", 1, 150, "keep-alive timeout").unwrap());
        assert!(!record_disconnect(&mut conn, "c1", 1, 160, "again").unwrap());
        assert!(!record_disconnect(&mut conn, "nobody", 1, 160, "x").unwrap());
        let row = get_client(&mut conn, "c1").unwrap().unwrap();
        assert_eq!(row.disconnected_at_ms, Some(150));
        assert_eq!(row.disconnect_reason.as_deref(), Some("keep-alive timeout"));
    }

    #[test]
    fn stale_disconnect_does_not_touch_a_newer_connection() {
        let (_dir, mut conn) = test_db();
        record_connect(&mut conn, &connect("c1", 1, 100)).unwrap();
        // Connection 2 takes the client id over before connection 1 reports its end.
        record_connect(&mut conn, &connect("c1", 2, 200)).unwrap();
        assert!(!record_disconnect(&mut conn, "c1", 1, 210, "taken over").unwrap());
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
        record_disconnect(&mut conn, "b", 2, 150, "client disconnect").unwrap();

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

    #[test]
    fn checkpoint_truncates_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db").display().to_string();
        let mut conn = open_connection(&path).unwrap();
        run_migrations(&mut conn).unwrap();
        add_user(&mut conn, "alice", "h", 1).unwrap();
        assert!(std::fs::metadata(format!("{path}-wal")).unwrap().len() > 0);

        assert!(checkpoint(&mut conn).unwrap());
        assert_eq!(std::fs::metadata(format!("{path}-wal")).unwrap().len(), 0);
        assert_eq!(list_users(&mut conn).unwrap().len(), 1);
    }
}
