//! The embedded schema migrations, one set per backend.

use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::connection::AnyConnection;
use crate::error::{Error, Result};

/// SQLite: adopts the legacy service's tables as they are and adds indexes.
pub const SQLITE: EmbeddedMigrations = embed_migrations!("migrations_sqlite");
/// PostgreSQL: typed columns, constraints and indexes.
pub const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations_postgres");

/// Applies the pending migrations of the connection's backend; returns the versions applied.
pub fn run_pending(conn: &mut AnyConnection) -> Result<Vec<String>> {
    let applied = match conn {
        AnyConnection::Sqlite(c) => c
            .run_pending_migrations(SQLITE)
            .map(|v| v.iter().map(ToString::to_string).collect()),
        AnyConnection::Postgres(c) => c
            .run_pending_migrations(POSTGRES)
            .map(|v| v.iter().map(ToString::to_string).collect()),
    };
    let applied: Vec<String> = applied.map_err(|e| Error::Migration(e.to_string()))?;
    for v in &applied {
        log::info!("applied migration {v}");
    }
    Ok(applied)
}
