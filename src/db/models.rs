//! Rows of the tables in `schema.rs`, and borrowed structs to insert them.

use diesel::prelude::*;

use super::schema::{acl_rules, clients, retained, users};

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

/// A new connection of `client_id`; it replaces the row of the previous one.
#[derive(Debug, Insertable)]
#[diesel(table_name = clients)]
// NULL rather than the column left out: the statement is then the same for every record, so
// Diesel caches it prepared.
#[diesel(treat_none_as_default_value = false)]
pub struct NewClientRecord<'a> {
    pub client_id: &'a str,
    pub connection_id: i64,
    pub username: Option<&'a str>,
    pub address: &'a str,
    pub protocol_version: i32,
    pub connected_at_ms: i64,
}

/// A row of `retained`; see `queries::load_retained` for how it becomes an `AppMessage`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = retained)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub struct RetainedRow {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: i32,
    /// Encoded property block, Property Length included.
    pub properties: Vec<u8>,
    pub expires_at_ms: Option<i64>,
    pub publisher: String,
    pub stored_at_ms: i64,
}

/// A retained message to store, borrowing the payload instead of copying it. Also the
/// changeset that replaces an existing row: `treat_none_as_null` so that a message without
/// expiry clears the previous one's.
#[derive(Debug, Insertable, AsChangeset)]
#[diesel(table_name = retained)]
#[diesel(primary_key(topic))]
#[diesel(treat_none_as_null = true)]
pub struct NewRetained<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: i32,
    pub properties: &'a [u8],
    pub expires_at_ms: Option<i64>,
    pub publisher: &'a str,
    pub stored_at_ms: i64,
}

/// A row of `acl_rules`, as stored; `queries` turns it into an [`crate::acl::AclRule`].
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = acl_rules)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub struct AclRuleRow {
    pub id: i64,
    pub subject_kind: String,
    pub subject: Option<String>,
    pub action: String,
    pub permission: String,
    pub topic: String,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = acl_rules)]
pub struct NewAclRule<'a> {
    pub subject_kind: &'a str,
    pub subject: Option<&'a str>,
    pub action: &'a str,
    pub permission: &'a str,
    pub topic: &'a str,
    pub created_at_ms: i64,
}
