//! User accounts: the password check of the broker, and the operations behind
//! `mqttd user add|passwd|remove|list --db PATH`.
//!
//! The command-line functions open the database themselves and run the migrations, so they
//! work on a fresh file and next to a running broker (SQLite serialises the writes).

use diesel::SqliteConnection;

use super::models::User;
use super::{DbError, open_migrated, password, queries};
use crate::clock::unix_millis;

/// Whether `password` is the password of `username`. An absent or empty password never
/// matches. An unknown user costs the time of one verification, like a wrong password, so
/// that response times do not reveal which usernames exist.
pub fn authenticate(
    conn: &mut SqliteConnection,
    username: &str,
    password: Option<&[u8]>,
) -> Result<bool, DbError> {
    let Some(password) = password.filter(|p| !p.is_empty()) else {
        return Ok(false);
    };
    match queries::find_password_hash(conn, username)? {
        Some(phc) => password::verify(password, &phc),
        None => {
            password::verify(password, password::dummy_hash()?)?;
            Ok(false)
        }
    }
}

/// Creates user `username`. Fails with [`DbError::UserExists`] if it exists already.
pub fn add_user(db_path: &str, username: &str, password: &str) -> Result<(), DbError> {
    check_username(username)?;
    let hash = hash_new_password(password)?;
    queries::add_user(&mut open_migrated(db_path)?, username, &hash, unix_millis())
}

/// Sets a new password for `username`. Fails with [`DbError::NoSuchUser`] if it does not exist.
pub fn set_password(db_path: &str, username: &str, password: &str) -> Result<(), DbError> {
    check_username(username)?;
    let hash = hash_new_password(password)?;
    if queries::set_password_hash(&mut open_migrated(db_path)?, username, &hash)? {
        Ok(())
    } else {
        Err(DbError::NoSuchUser(username.to_owned()))
    }
}

/// Deletes `username`. Fails with [`DbError::NoSuchUser`] if it does not exist.
pub fn remove_user(db_path: &str, username: &str) -> Result<(), DbError> {
    check_username(username)?;
    if queries::remove_user(&mut open_migrated(db_path)?, username)? {
        Ok(())
    } else {
        Err(DbError::NoSuchUser(username.to_owned()))
    }
}

/// All users, ordered by name.
pub fn list_users(db_path: &str) -> Result<Vec<User>, DbError> {
    queries::list_users(&mut open_migrated(db_path)?)
}

fn check_username(username: &str) -> Result<(), DbError> {
    if username.is_empty() {
        return Err(DbError::InvalidInput("username must not be empty"));
    }
    Ok(())
}

/// Rejects an empty password: it could never be used to log in.
fn hash_new_password(password: &str) -> Result<String, DbError> {
    if password.is_empty() {
        return Err(DbError::InvalidInput("password must not be empty"));
    }
    password::hash(password.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::open_connection;
    use crate::persist::Durability;

    fn temp_db() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.db").display().to_string();
        (dir, path)
    }

    #[test]
    fn authenticate_known_unknown_and_missing_passwords() {
        let (_dir, path) = temp_db();
        add_user(&path, "alice", "secret").unwrap();
        let conn = &mut open_connection(&path, Durability::default()).unwrap();

        assert!(authenticate(conn, "alice", Some(b"secret")).unwrap());
        assert!(!authenticate(conn, "alice", Some(b"wrong")).unwrap());
        assert!(!authenticate(conn, "alice", Some(b"")).unwrap());
        assert!(!authenticate(conn, "alice", None).unwrap());
        assert!(!authenticate(conn, "bob", Some(b"secret")).unwrap());
    }

    #[test]
    fn authenticate_with_a_corrupt_stored_hash_is_an_error() {
        let (_dir, path) = temp_db();
        let conn = &mut open_migrated(&path).unwrap();
        queries::add_user(conn, "alice", "garbage", 1).unwrap();
        assert!(matches!(
            authenticate(conn, "alice", Some(b"x")),
            Err(DbError::Password(_))
        ));
    }

    #[test]
    fn cli_add_passwd_remove_list() {
        let (_dir, path) = temp_db();
        add_user(&path, "bob", "pw1").unwrap();
        add_user(&path, "alice", "pw2").unwrap();
        assert!(matches!(
            add_user(&path, "bob", "x"),
            Err(DbError::UserExists(_))
        ));

        let users = list_users(&path).unwrap();
        let names: Vec<_> = users.iter().map(|u| u.username.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert!(
            users
                .iter()
                .all(|u| u.password_hash.starts_with("$argon2id$"))
        );
        assert!(users.iter().all(|u| u.created_at_ms > 0));

        set_password(&path, "bob", "pw3").unwrap();
        let conn = &mut open_connection(&path, Durability::default()).unwrap();
        assert!(authenticate(conn, "bob", Some(b"pw3")).unwrap());
        assert!(!authenticate(conn, "bob", Some(b"pw1")).unwrap());
        assert!(matches!(
            set_password(&path, "carol", "x"),
            Err(DbError::NoSuchUser(_))
        ));

        remove_user(&path, "bob").unwrap();
        assert!(matches!(
            remove_user(&path, "bob"),
            Err(DbError::NoSuchUser(_))
        ));
        assert_eq!(list_users(&path).unwrap().len(), 1);
    }

    #[test]
    fn cli_rejects_empty_username_and_password() {
        let (_dir, path) = temp_db();
        assert!(matches!(
            add_user(&path, "", "pw"),
            Err(DbError::InvalidInput(_))
        ));
        assert!(matches!(
            add_user(&path, "alice", ""),
            Err(DbError::InvalidInput(_))
        ));
        assert!(matches!(
            set_password(&path, "", "pw"),
            Err(DbError::InvalidInput(_))
        ));
        assert!(matches!(
            remove_user(&path, ""),
            Err(DbError::InvalidInput(_))
        ));
        assert!(list_users(&path).unwrap().is_empty());
    }
}
