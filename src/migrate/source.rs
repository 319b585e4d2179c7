//! Reading a legacy SQLite file as raw bytes, in rowid order, inside one snapshot.
//!
//! Values are read as `CAST(col AS BLOB)` so that nothing is decoded before
//! the normalisation rules look at it: a timestamp stored as an integer, text
//! with invalid UTF-8 and NULLs all reach [`super::normalize`] as they are.

use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Nullable, Text};
use diesel::sqlite::Sqlite;

use crate::error::{Error, Result};

/// The three tables, in load order (sessions first: children are judged against them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// `sessions`
    Sessions,
    /// `messages`
    Messages,
    /// `drafts`
    Drafts,
}

impl Table {
    /// All tables in load order.
    pub const ALL: [Table; 3] = [Table::Sessions, Table::Messages, Table::Drafts];

    /// The table's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Sessions => "sessions",
            Table::Messages => "messages",
            Table::Drafts => "drafts",
        }
    }

    fn columns(self) -> &'static str {
        match self {
            Table::Sessions => "rowid AS rowid, CAST(id AS BLOB) AS id, CAST(created_at AS BLOB) AS created_at, CAST(updated_at AS BLOB) AS updated_at, CAST(summary AS BLOB) AS summary",
            Table::Messages => "rowid AS id, CAST(session_id AS BLOB) AS session_id, CAST(role AS BLOB) AS role, CAST(text AS BLOB) AS text, CAST(created_at AS BLOB) AS created_at",
            Table::Drafts => "rowid AS id, CAST(session_id AS BLOB) AS session_id, CAST(content AS BLOB) AS content, CAST(created_at AS BLOB) AS created_at",
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `sessions` row as stored.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct RawSession {
    #[diesel(sql_type = BigInt)]
    pub rowid: i64,
    #[diesel(sql_type = Nullable<Binary>)]
    pub id: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub created_at: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub updated_at: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub summary: Option<Vec<u8>>,
}

/// A `messages` row as stored.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct RawMessage {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Nullable<Binary>)]
    pub session_id: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub role: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub text: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub created_at: Option<Vec<u8>>,
}

/// A `drafts` row as stored.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct RawDraft {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Nullable<Binary>)]
    pub session_id: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub content: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub created_at: Option<Vec<u8>>,
}

fn len(v: &Option<Vec<u8>>) -> usize {
    v.as_ref().map_or(0, Vec::len)
}

impl RawSession {
    pub(crate) fn bytes(&self) -> usize {
        len(&self.id) + len(&self.created_at) + len(&self.updated_at) + len(&self.summary)
    }
}

impl RawMessage {
    pub(crate) fn bytes(&self) -> usize {
        len(&self.session_id) + len(&self.role) + len(&self.text) + len(&self.created_at)
    }
}

impl RawDraft {
    pub(crate) fn bytes(&self) -> usize {
        len(&self.session_id) + len(&self.content) + len(&self.created_at)
    }
}

/// Where a source stood at one snapshot: the largest rowid of each table.
///
/// Marks are inclusive upper bounds only; every reader starts before the
/// first row (see `Source::rows`). An empty table's mark is 0: the copy
/// then reads nothing from it, and what is written later, at any rowid,
/// reaches PostgreSQL through the change log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Marks {
    /// Largest `sessions` rowid.
    pub session_rowid: i64,
    /// Largest message id.
    pub message_id: i64,
    /// Largest draft id.
    pub draft_id: i64,
}

impl Marks {
    /// The mark of one table.
    pub fn of(&self, table: Table) -> i64 {
        match table {
            Table::Sessions => self.session_rowid,
            Table::Messages => self.message_id,
            Table::Drafts => self.draft_id,
        }
    }
}

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Mode {
    #[diesel(sql_type = Text)]
    journal_mode: String,
}

/// How a source file is named in the bookkeeping: its absolute path, so that
/// runs from other directories recognise it.
pub(crate) fn source_name(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Keys bound per query (as one JSON array), to keep statements small.
const KEYS_PER_QUERY: usize = 5_000;

/// An open legacy SQLite file.
pub(crate) struct Source {
    conn: SqliteConnection,
    wal: bool,
}

impl Source {
    /// Opens an existing file; never creates one, never changes its journal mode.
    pub fn open(path: &Path) -> Result<Source> {
        let shown = path.display().to_string();
        let mut conn = crate::connection::open_existing_sqlite(path)?;
        conn.batch_execute("PRAGMA busy_timeout = 10000")?;
        let mode = diesel::sql_query("PRAGMA journal_mode")
            .get_result::<Mode>(&mut conn)?
            .journal_mode;
        let wal = mode.eq_ignore_ascii_case("wal");
        if !wal {
            log::warn!(
                "{shown} is in journal mode {mode}, not WAL: the long read of a copy blocks the service's writes meanwhile"
            );
        }
        Ok(Source { conn, wal })
    }

    /// Whether the file is in WAL mode (readers and the writer do not block each other).
    pub fn is_wal(&self) -> bool {
        self.wal
    }

    /// Runs `f` inside one read transaction, so every read sees the same snapshot.
    pub fn snapshot<T>(&mut self, f: impl FnOnce(&mut Source) -> Result<T>) -> Result<T> {
        self.conn.batch_execute("BEGIN DEFERRED")?;
        let out = f(self);
        // A read transaction has nothing to keep; ending it lets a WAL checkpoint move on.
        let end = self.conn.batch_execute("ROLLBACK");
        let out = out?;
        end?;
        Ok(out)
    }

    /// The largest rowid of each table.
    pub fn marks(&mut self) -> Result<Marks> {
        let mut max = |t: Table| -> Result<i64> {
            Ok(
                diesel::sql_query(format!("SELECT coalesce(max(rowid), 0) AS n FROM {t}"))
                    .get_result::<One>(&mut self.conn)?
                    .n,
            )
        };
        Ok(Marks {
            session_rowid: max(Table::Sessions)?,
            message_id: max(Table::Messages)?,
            draft_id: max(Table::Drafts)?,
        })
    }

    /// How many rows of `table` have a rowid in `(after, upto]`; `after` None
    /// counts from the very first row (SQLite allows any `i64` rowid, zero and
    /// negative ones included).
    pub fn count(&mut self, table: Table, after: Option<i64>, upto: i64) -> Result<i64> {
        let q = match after {
            Some(after) => diesel::sql_query(format!(
                "SELECT count(*) AS n FROM {table} WHERE rowid > ? AND rowid <= ?"
            ))
            .into_boxed::<Sqlite>()
            .bind::<BigInt, _>(after),
            None => diesel::sql_query(format!(
                "SELECT count(*) AS n FROM {table} WHERE rowid <= ?"
            ))
            .into_boxed(),
        };
        Ok(q.bind::<BigInt, _>(upto)
            .get_result::<One>(&mut self.conn)?
            .n)
    }

    /// Up to `limit` rows of `table` with a rowid in `(after, upto]`, in rowid
    /// order. `after` is a keyset cursor: None starts before the first row,
    /// whatever its rowid (down to `i64::MIN`), `Some(last)` goes on after the
    /// last row read, so no `last + 1` can overflow at `i64::MAX`.
    pub fn rows<R: QueryableByName<Sqlite> + 'static>(
        &mut self,
        table: Table,
        after: Option<i64>,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<R>> {
        // Two statements rather than `? IS NULL OR rowid > ?`, which would keep
        // SQLite from seeking the rowid and make every page a scan from the start.
        let q = match after {
            Some(after) => diesel::sql_query(format!(
                "SELECT {} FROM {table} WHERE rowid > ? AND rowid <= ? ORDER BY rowid LIMIT ?",
                table.columns()
            ))
            .into_boxed::<Sqlite>()
            .bind::<BigInt, _>(after),
            None => diesel::sql_query(format!(
                "SELECT {} FROM {table} WHERE rowid <= ? ORDER BY rowid LIMIT ?",
                table.columns()
            ))
            .into_boxed(),
        };
        Ok(q.bind::<BigInt, _>(upto)
            .bind::<BigInt, _>(limit)
            .load(&mut self.conn)?)
    }

    /// The sessions whose stored id is one of `keys` (ids as stored, the change log's keys).
    pub fn sessions_by_key(&mut self, keys: &[&String]) -> Result<Vec<RawSession>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            let json =
                serde_json::to_string(chunk).map_err(|e| Error::invalid("keys", e.to_string()))?;
            out.extend(
                diesel::sql_query(format!(
                    "SELECT {} FROM sessions WHERE id IN (SELECT value FROM json_each(?)) ORDER BY rowid",
                    Table::Sessions.columns()
                ))
                .bind::<Text, _>(json)
                .load::<RawSession>(&mut self.conn)?,
            );
        }
        Ok(out)
    }

    /// The rows of a child table with these rowids, in rowid order.
    pub fn rows_by_id<R: QueryableByName<Sqlite> + 'static>(
        &mut self,
        table: Table,
        ids: &[i64],
    ) -> Result<Vec<R>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(KEYS_PER_QUERY) {
            let json =
                serde_json::to_string(chunk).map_err(|e| Error::invalid("keys", e.to_string()))?;
            out.extend(
                diesel::sql_query(format!(
                    "SELECT {} FROM {table} WHERE rowid IN (SELECT value FROM json_each(?)) ORDER BY rowid",
                    table.columns()
                ))
                .bind::<Text, _>(json)
                .load::<R>(&mut self.conn)?,
            );
        }
        Ok(out)
    }

    /// The rowids of `table`'s rows whose stored `session_id` is one of `keys`
    /// (found through the `(session_id, id)` index).
    pub fn children_of(&mut self, table: Table, keys: &[&String]) -> Result<Vec<i64>> {
        let mut out = Vec::new();
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            let json =
                serde_json::to_string(chunk).map_err(|e| Error::invalid("keys", e.to_string()))?;
            out.extend(
                diesel::sql_query(format!(
                    "SELECT rowid AS n FROM {table} WHERE session_id IN (SELECT value FROM json_each(?))"
                ))
                .bind::<Text, _>(json)
                .load::<One>(&mut self.conn)?
                .into_iter()
                .map(|r| r.n),
            );
        }
        Ok(out)
    }

    /// The connection, for the change log's own queries.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }

    /// Every session, streamed in the order of the index on `id` (the UUID
    /// order when the ids are spelled alike), one row in memory at a time.
    /// No bound and no cursor: verify's own read, independent of the copy's.
    pub fn sessions_by_id(&mut self) -> Result<impl Iterator<Item = Result<RawSession>> + '_> {
        Ok(diesel::sql_query(format!(
            "SELECT {} FROM sessions ORDER BY id",
            Table::Sessions.columns()
        ))
        .load_iter::<RawSession, diesel::connection::DefaultLoadingMode>(&mut self.conn)?
        .map(|r| r.map_err(crate::error::Error::from))
        .fuse())
    }

    /// Every row of `table` in rowid order, in one statement streamed a row
    /// at a time: verify's own read, with no bound, cursor or filter shared
    /// with the copy's pagination.
    pub fn stream<R: QueryableByName<Sqlite> + 'static>(
        &mut self,
        table: Table,
    ) -> Result<impl Iterator<Item = Result<R>> + '_> {
        Ok(diesel::sql_query(format!(
            "SELECT {} FROM {table} ORDER BY rowid",
            table.columns()
        ))
        .load_iter::<R, diesel::connection::DefaultLoadingMode>(&mut self.conn)?
        .map(|r| r.map_err(crate::error::Error::from))
        // SQLite runs a finished statement again when stepped once more: one pass only.
        .fuse())
    }

    /// Up to `limit` rows of `table` after the keyset cursor `after` (None:
    /// from the first row, whatever its rowid), in rowid order, with no upper
    /// bound: verify's own pages, apart from the copy's bounded ones.
    pub fn page<R: QueryableByName<Sqlite> + 'static>(
        &mut self,
        table: Table,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<R>> {
        let cols = table.columns();
        let q = match after {
            Some(after) => diesel::sql_query(format!(
                "SELECT {cols} FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?"
            ))
            .into_boxed::<Sqlite>()
            .bind::<BigInt, _>(after),
            None => diesel::sql_query(format!("SELECT {cols} FROM {table} ORDER BY rowid LIMIT ?"))
                .into_boxed(),
        };
        Ok(q.bind::<BigInt, _>(limit).load(&mut self.conn)?)
    }

    /// Every row of `table`, counted by SQLite (`count(*)`, no condition).
    pub fn count_all(&mut self, table: Table) -> Result<u64> {
        let n = diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
            .get_result::<One>(&mut self.conn)?
            .n;
        Ok(n as u64)
    }

    /// Every session, in rowid order, `batch` at a time.
    pub fn each_session(
        &mut self,
        upto: i64,
        batch: i64,
        mut f: impl FnMut(&RawSession) -> Result<()>,
    ) -> Result<()> {
        let mut after = None;
        loop {
            let rows: Vec<RawSession> = self.rows(Table::Sessions, after, upto, batch)?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            after = Some(last.rowid);
            for r in &rows {
                f(r)?;
            }
        }
    }
}
