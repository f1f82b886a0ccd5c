//! Storage: the DbActor on a SyncArbiter, running Diesel on SQLite.

/// Errors from the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
}
