//! Rows of the tables in `schema.rs`, and borrowed structs to insert them.

use diesel::prelude::*;

use super::schema::{clients, users};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = users)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub struct User {
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    pub username: &'a str,
    pub password_hash: &'a str,
    pub created_at_ms: i64,
}

/// What the broker last saw of a client id.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = clients)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub struct ClientRecord {
    pub client_id: String,
    pub connection_id: i64,
    pub username: Option<String>,
    pub address: String,
    pub protocol_version: i32,
    pub connected_at_ms: i64,
    /// `None` while the connection is open (or was left open by a crash).
    pub disconnected_at_ms: Option<i64>,
    pub disconnect_reason: Option<String>,
}

/// A new connection of `client_id`. Also the changeset that overwrites an existing row:
/// `treat_none_as_null` so that a connection without a username clears the previous one.
#[derive(Debug, Insertable, AsChangeset)]
#[diesel(table_name = clients)]
#[diesel(primary_key(client_id))]
#[diesel(treat_none_as_null = true)]
pub struct NewClientRecord<'a> {
    pub client_id: &'a str,
    pub connection_id: i64,
    pub username: Option<&'a str>,
    pub address: &'a str,
    pub protocol_version: i32,
    pub connected_at_ms: i64,
}
