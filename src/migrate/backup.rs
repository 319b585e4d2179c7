//! A consistent copy of a live SQLite database, checked before it is trusted.

use std::path::{Path, PathBuf};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::SqliteConnection;

use crate::error::{Error, Result};
use crate::store::TableCounts;

/// What [`backup`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackupReport {
    /// The backup file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Rows per table in the backup.
    pub counts: TableCounts,
}

#[derive(QueryableByName)]
struct Check {
    #[diesel(sql_type = Text)]
    integrity_check: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Writes a consistent snapshot of the SQLite database at `source` to `out`.
///
/// Uses `VACUUM INTO`, which reads inside one read transaction: on a
/// WAL-mode database the service keeps writing meanwhile and is not blocked.
/// The copy is then opened and must pass `PRAGMA integrity_check`, or it is
/// deleted and an error returned. An existing `out` is never overwritten.
///
/// ```
/// # fn main() -> interview_store::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let db = dir.path().join("live.db");
/// let store = interview_store::Store::connect(db.to_str().unwrap(), Default::default())?;
/// store.migrate()?;
/// store.start_session()?;
/// let report = interview_store::migrate::backup(&db, &dir.path().join("backup.db"))?;
/// assert_eq!(report.counts.sessions, 1);
/// # Ok(()) }
/// ```
pub fn backup(source: &Path, out: &Path) -> Result<BackupReport> {
    if out.exists() {
        return Err(Error::invalid(
            "backup path",
            format!("{} already exists; choose a new file", out.display()),
        ));
    }
    if !source.is_file() {
        return Err(Error::invalid(
            "sqlite path",
            format!("{} is not a file", source.display()),
        ));
    }
    let source_str = path_str(source)?;
    let out_str = path_str(out)?;
    let mut conn = SqliteConnection::establish(source_str).map_err(|e| Error::Connect {
        url: format!("sqlite://{source_str}"),
        reason: e.to_string(),
    })?;
    conn.batch_execute("PRAGMA busy_timeout = 10000")?;
    // SQLite takes the file name as a string literal here; quotes are doubled.
    conn.batch_execute(&format!("VACUUM INTO '{}'", out_str.replace('\'', "''")))?;
    drop(conn);

    let verified = verify_copy(out_str);
    if verified.is_err() {
        let _ = std::fs::remove_file(out);
    }
    let counts = verified?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    log::info!(
        "backup of {} written to {} ({bytes} bytes, {counts:?})",
        source.display(),
        out.display()
    );
    Ok(BackupReport {
        path: out.to_path_buf(),
        bytes,
        counts,
    })
}

fn verify_copy(path: &str) -> Result<TableCounts> {
    let mut conn = SqliteConnection::establish(path).map_err(|e| Error::Connect {
        url: format!("sqlite://{path}"),
        reason: e.to_string(),
    })?;
    let checks = diesel::sql_query("PRAGMA integrity_check").load::<Check>(&mut conn)?;
    if checks.len() != 1 || checks[0].integrity_check != "ok" {
        let problems: Vec<_> = checks
            .into_iter()
            .take(5)
            .map(|c| c.integrity_check)
            .collect();
        return Err(Error::Corrupt {
            what: format!("backup {path}"),
            reason: format!("integrity_check failed: {}", problems.join("; ")),
        });
    }
    let mut count = |table: &str| -> Result<i64> {
        Ok(
            diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
                .get_result::<Count>(&mut conn)?
                .n,
        )
    };
    Ok(TableCounts {
        sessions: count("sessions")?,
        messages: count("messages")?,
        drafts: count("drafts")?,
    })
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| Error::invalid("path", format!("{} is not valid UTF-8", p.display())))
}
