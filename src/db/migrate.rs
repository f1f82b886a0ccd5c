//! Schema migrations, embedded in the binary from `migrations/` at compile time.

use diesel::SqliteConnection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::DbError;

/// `build.rs` makes cargo rebuild this when a migration directory is added.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Applies the migrations the database has not seen yet; a no-op on an up-to-date database.
/// Run it once per process, before any other connection is opened: concurrent runs on a fresh
/// database race ("table already exists").
pub fn run_migrations(conn: &mut SqliteConnection) -> Result<(), DbError> {
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| DbError::Migration(e.to_string()))?;
    for version in applied {
        log::info!("applied database migration {version}");
    }
    Ok(())
}
