//! The one error type of the crate, and the monitoring category of each error.

use std::fmt;
use std::time::Duration;

/// What went wrong in a store operation.
///
/// Every variant says what and where; [`Error::category`] folds them into the
/// few buckets that dashboards and HTTP status codes care about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thing asked for does not exist, e.g. `session 0190…`.
    #[error("{what} not found")]
    NotFound {
        /// What was looked up, with its key.
        what: String,
    },
    /// The caller passed a value the store refuses: which field and why.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The field or argument at fault.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// Writes are paused in the database (see [`crate::maintenance`]); retry later.
    #[error("the store is read-only: writes are paused")]
    ReadOnly,
    /// The database is retired: its data moved for good, and it refuses every write.
    #[error("this database is retired: its data moved to {moved_to}; writes are refused here, and only switching back to it (`migrate switch`) makes it live again")]
    Retired {
        /// Where the data went (masked URL or path).
        moved_to: String,
    },
    /// No pooled connection became free (or could be opened) in time.
    #[error("no database connection available within {waited:?} ({url}){}", last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    PoolTimeout {
        /// How long the caller waited.
        waited: Duration,
        /// The database, password masked.
        url: String,
        /// The last connection error the pool saw, if any.
        last_error: Option<String>,
    },
    /// Opening the database failed (bad URL, unreachable server, wrong credentials).
    #[error("cannot open database {url}: {reason}")]
    Connect {
        /// The database, password masked.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The TLS handshake with PostgreSQL failed: a certificate that does not
    /// verify against `sslrootcert` or does not name the host (`sslmode=verify-full`),
    /// a missing root certificate file, or a server without TLS. A
    /// configuration fault, not an outage: retrying does not help.
    #[error("TLS to database {url} failed: {reason}")]
    Tls {
        /// The database, password masked.
        url: String,
        /// libpq's account of the TLS failure.
        reason: String,
    },
    /// An SQLite file that must exist (the migration tool never creates one) is missing.
    #[error("no such SQLite file: {path}")]
    NoSuchFile {
        /// The path as given.
        path: String,
    },
    /// A query failed, or a stored value could not be read back.
    #[error("database error: {0}")]
    Database(diesel::result::Error),
    /// A stored row holds a value the store cannot read back (e.g. a legacy
    /// timestamp in an unknown format): which rows and why.
    #[error("unreadable stored data in {what}: {reason}")]
    Corrupt {
        /// The rows being read, e.g. `messages of session 0190…`.
        what: String,
        /// The offending column and value.
        reason: String,
    },
    /// Applying the embedded schema migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The migration source holds invalid rows and the copy is strict: nothing was loaded.
    #[error("the source holds {count} invalid row(s), so nothing was loaded; the first: {}", rejects.first().map(ToString::to_string).unwrap_or_default())]
    InvalidSource {
        /// How many rows are invalid.
        count: usize,
        /// Each invalid row: table, source key, column, value and reason.
        rejects: Vec<Reject>,
    },
    /// A step refused to run and changed nothing: the kind of refusal, which
    /// callers branch on (the migration CLI's exit status), and the account
    /// of it, which says what to run instead.
    #[error("{message}")]
    Refused {
        /// Why, as a kind.
        why: Refusal,
        /// What was refused and what to do about it.
        message: String,
    },
    /// Another migration command holds the target's lock; nothing was changed.
    #[error("{0}")]
    Busy(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// One source row that cannot be loaded: where it is, which value, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reject {
    /// `sessions`, `messages` or `drafts`.
    pub table: String,
    /// The source primary key: the session id as stored, or the message/draft id.
    pub id: String,
    /// The first offending column.
    pub column: String,
    /// The offending value, shortened; `null` when it was NULL.
    pub value: Option<String>,
    /// Why it is invalid.
    pub reason: String,
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = match &self.value {
            Some(v) => format!("{v:?}"),
            None => "NULL".to_string(),
        };
        write!(
            f,
            "{} {}: {} = {}: {}",
            self.table, self.id, self.column, value, self.reason
        )
    }
}

/// What the triggers raise while writes are paused; recognised by [`Error`]
/// (the triggers of [`crate::maintenance`] raise them).
pub(crate) const PAUSED_MESSAGE: &str =
    "interview-store: writes are paused (read-only maintenance)";
/// What the triggers raise on a retired database, followed by where the data moved.
pub(crate) const RETIRED_PREFIX: &str =
    "interview-store: this database is retired; its data moved to ";

/// Recognises the triggers' refusal in a database error message.
fn refusal(message: &str) -> Option<Error> {
    if message.starts_with(PAUSED_MESSAGE) {
        return Some(Error::ReadOnly);
    }
    message
        .strip_prefix(RETIRED_PREFIX)
        .map(|to| Error::Retired {
            moved_to: to.to_string(),
        })
}

/// Why a step refused to run ([`Error::Refused`]). The refusal changed
/// nothing; its kind, not its wording, is what a caller decides on, so a
/// script driving the cutover can tell "run the steps in order" from "the
/// two sides differ" from "try again" without reading text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// A destructive step waits for its confirmation (`--truncate` without `--yes`).
    Unconfirmed,
    /// The step does not apply in the cutover's phase, or a step it needs has
    /// not run yet (`migrate status` names the one that does).
    OutOfOrder,
    /// The two sides differ, so the step would lose or change data.
    Differs,
    /// The target holds another source's copy, or rows no copy wrote.
    Foreign,
    /// A database lacks what the step needs (this tool's schema, a change
    /// log, a log that was not recreated since the copy).
    NotReady,
    /// Something moved while the step ran (another command, a write in the
    /// switch's window, a retry that took over a key): run it again.
    Moved,
    /// The test-only fault hook stopped the step where it was told to.
    Injected,
}

impl Refusal {
    /// Every kind, in exit-status order.
    pub const ALL: [Refusal; 7] = [
        Refusal::Unconfirmed,
        Refusal::OutOfOrder,
        Refusal::Differs,
        Refusal::Foreign,
        Refusal::NotReady,
        Refusal::Moved,
        Refusal::Injected,
    ];

    /// The migration CLI's exit status for this refusal (docs/cutover.md,
    /// "Exit status"). `Unconfirmed` shares 2 with invalid usage: the command
    /// line lacks `--yes`.
    pub fn exit_code(self) -> u8 {
        match self {
            Refusal::Unconfirmed => 2,
            Refusal::OutOfOrder => 4,
            Refusal::Differs => 5,
            Refusal::Foreign => 6,
            Refusal::NotReady => 7,
            Refusal::Moved => 8,
            Refusal::Injected => 9,
        }
    }

    /// The stable lowercase name (`out_of_order`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unconfirmed => "unconfirmed",
            Refusal::OutOfOrder => "out_of_order",
            Refusal::Differs => "differs",
            Refusal::Foreign => "foreign",
            Refusal::NotReady => "not_ready",
            Refusal::Moved => "moved",
            Refusal::Injected => "injected",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Database errors, with the write pause's refusal recognised whoever wrote:
/// [`Error::ReadOnly`] or [`Error::Retired`] (see [`crate::maintenance`]).
impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        if let diesel::result::Error::DatabaseError(_, info) = &e {
            if let Some(refusal) = refusal(info.message()) {
                return refusal;
            }
        }
        Error::Database(e)
    }
}

/// The monitoring bucket of an [`Error`].
///
/// `Db` is what post-cutover monitoring watches: it counts failures of the
/// database itself, not of callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// The database failed or returned something unreadable.
    Db,
    /// The caller sent something invalid.
    Input,
    /// The requested row does not exist.
    NotFound,
    /// The database cannot be reached right now; retry later.
    Unavailable,
    /// Writes are paused; retry later.
    ReadOnly,
}

impl Category {
    /// The stable lowercase name used in logs, metrics and JSON (`db`, `input`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Db => "db",
            Category::Input => "input",
            Category::NotFound => "not_found",
            Category::Unavailable => "unavailable",
            Category::ReadOnly => "read_only",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// The monitoring bucket this error falls in.
    ///
    /// ```
    /// use interview_store::{Category, Error};
    /// assert_eq!(Error::ReadOnly.category(), Category::ReadOnly);
    /// assert_eq!(Error::not_found("session x").category().as_str(), "not_found");
    /// ```
    pub fn category(&self) -> Category {
        match self {
            Error::NotFound { .. } => Category::NotFound,
            Error::InvalidInput { .. } => Category::Input,
            Error::ReadOnly | Error::Retired { .. } => Category::ReadOnly,
            Error::PoolTimeout { .. }
            | Error::Connect { .. }
            | Error::NoSuchFile { .. }
            | Error::Busy(_) => Category::Unavailable,
            Error::Database(e) if is_connection_lost(e) || is_timeout(e) => Category::Unavailable,
            Error::Database(_)
            | Error::Tls { .. }
            | Error::Corrupt { .. }
            | Error::Migration(_)
            | Error::Io { .. } => Category::Db,
            Error::InvalidSource { .. } | Error::Refused { .. } => Category::Input,
        }
    }

    /// Whether the database connection was lost while running the operation.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Error::Database(e) if is_connection_lost(e))
    }

    /// Names the rows being read when a stored value could not be decoded.
    pub(crate) fn reading(self, what: impl FnOnce() -> String) -> Self {
        match self {
            Error::Database(diesel::result::Error::DeserializationError(e)) => Error::Corrupt {
                what: what(),
                reason: chain(&*e),
            },
            other => other,
        }
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field,
            reason: reason.into(),
        }
    }

    /// A step's refusal of the given kind (see [`Refusal`]).
    pub fn refused(why: Refusal, message: impl Into<String>) -> Self {
        Error::Refused {
            why,
            message: message.into(),
        }
    }

    /// The refusal's kind, if this is a refusal.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Error::Refused { why, .. } => Some(*why),
            _ => None,
        }
    }
}

pub(crate) fn is_connection_lost(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as D};
    matches!(
        e,
        D::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _
        ) | D::BrokenTransactionManager
    )
}

/// Whether PostgreSQL cancelled the statement for running past
/// `statement_timeout` or waiting past `lock_timeout`: the database is
/// saturated, not broken, so callers should retry later (503, not 500).
/// Diesel does not expose the SQLSTATE (57014, 55P03), so the server's text
/// is matched; it is English unless `lc_messages` says otherwise.
pub(crate) fn is_timeout(e: &diesel::result::Error) -> bool {
    matches!(
        e,
        diesel::result::Error::DatabaseError(_, info)
            if info.message().starts_with("canceling statement due to statement timeout")
                || info.message().starts_with("canceling statement due to lock timeout")
    )
}

/// An error and its sources on one line: diesel puts the column name and the
/// decoding failure at different levels.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_own_exit_status_apart_from_success_differences_and_failures() {
        let mut seen = std::collections::HashSet::new();
        for why in Refusal::ALL {
            let code = why.exit_code();
            assert!(seen.insert(code), "{why} shares exit status {code}");
            // 0 done, 1 the sides differ, 3 a database failed: never a refusal.
            assert!(![0, 1, 3].contains(&code), "{why}: {code}");
            let e = Error::refused(why, "x");
            assert_eq!(e.refusal(), Some(why));
            assert_eq!(e.category(), Category::Input);
        }
        assert_eq!(Refusal::Unconfirmed.exit_code(), 2, "usage, as documented");
    }
}
