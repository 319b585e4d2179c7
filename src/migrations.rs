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

/// The PostgreSQL migrations not applied yet, found without writing anything.
///
/// diesel's own `pending_migrations` creates its bookkeeping table first; a
/// reporting command (verify, compare) must leave the database as it found it,
/// so this reads the table only when it exists.
pub fn pending_postgres(pg: &mut diesel::PgConnection) -> Result<Vec<String>> {
    use diesel::migration::MigrationSource;
    use diesel::prelude::*;
    use diesel::sql_types::{Bool, Text};

    #[derive(QueryableByName)]
    struct Present {
        #[diesel(sql_type = Bool)]
        present: bool,
    }
    #[derive(QueryableByName)]
    struct Applied {
        #[diesel(sql_type = Text)]
        version: String,
    }
    let embedded = MigrationSource::<diesel::pg::Pg>::migrations(&POSTGRES)
        .map_err(|e| Error::Migration(e.to_string()))?;
    let present = diesel::sql_query(
        "SELECT to_regclass('__diesel_schema_migrations') IS NOT NULL AS present",
    )
    .get_result::<Present>(pg)?
    .present;
    let applied: std::collections::HashSet<String> = if present {
        diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
            .load::<Applied>(pg)?
            .into_iter()
            .map(|a| a.version)
            .collect()
    } else {
        Default::default()
    };
    Ok(embedded
        .iter()
        .map(|m| m.name().version().to_string())
        .filter(|v| !applied.contains(v))
        .collect())
}
