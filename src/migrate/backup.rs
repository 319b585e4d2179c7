//! A consistent copy of a live SQLite database, checked before it is trusted.

use std::path::{Path, PathBuf};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::connection::open_existing_sqlite;
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
/// deleted and an error returned. An existing `out` is never overwritten; the
/// backup is readable by its owner only (mode 0600), as the database may be.
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
    let mut conn = open_existing_sqlite(source)?;
    let out_str = path_str(out)?;
    conn.batch_execute("PRAGMA busy_timeout = 10000")?;
    create_private(out)?;
    // SQLite takes the file name as a string literal here; quotes are doubled.
    // It writes into the empty file created above, keeping its mode.
    let vacuum = conn.batch_execute(&format!("VACUUM INTO '{}'", out_str.replace('\'', "''")));
    drop(conn);
    if let Err(e) = vacuum {
        let _ = std::fs::remove_file(out);
        return Err(e.into());
    }

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
    let mut conn = open_existing_sqlite(Path::new(path))?;
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

/// Creates `out` empty, readable by its owner only, and fails if it exists.
///
/// The mode is set at creation, so the data is never readable by others,
/// not even for a moment; creating exclusively also means an existing file is
/// never overwritten, whoever creates it meanwhile.
fn create_private(out: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(out) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::invalid(
            "backup path",
            format!("{} already exists; choose a new file", out.display()),
        )),
        Err(source) => Err(Error::Io {
            path: out.display().to_string(),
            source,
        }),
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| Error::invalid("path", format!("{} is not valid UTF-8", p.display())))
}
