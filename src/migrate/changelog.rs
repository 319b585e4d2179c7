//! The change logs that drive sync and rollback-sync: every insert, update and
//! delete of the three tables, and of finished idempotency keys (named by
//! `(scope, key)` as a JSON array, see [`super::keys`]), recorded by triggers
//! in the writer's own transaction, numbered by a sequence of the database itself.
//!
//! No wall clock decides anything: a summary edited without touching
//! `updated_at`, an `updated_at` moved into the past, a deleted row, all leave
//! an entry. An entry names a row (`sessions` by their stored id text,
//! `messages`/`drafts` by rowid), not its values: the reader collapses the
//! entries per row and reads each row's current state in its snapshot.
//!
//! - SQLite: `interview_change_log`, `seq INTEGER PRIMARY KEY AUTOINCREMENT`.
//!   One writer at a time, and triggers run inside its transaction, so `seq` is
//!   commit order: "every entry past the mark" is complete at any snapshot.
//!   Installed by `migrate setup --sqlite` and by `copy` (never by the store's
//!   embedded migrations: a service that is not migrating must not grow a log).
//! - PostgreSQL: the same table with `BIGSERIAL`, installed by `migrate switch`
//!   for the way back. Sequence values are NOT in commit order there (a
//!   transaction that takes a low number may commit after one with a higher
//!   number), so the way back reads by the writer's transaction id instead:
//!   each entry records it (`xid`), and a reader in one REPEATABLE READ
//!   transaction takes `h`, the oldest transaction id its snapshot sees still
//!   running. Every transaction below `h` has ended, so its entries are all
//!   visible, or it aborted and left none; entries from `h` on wait for a
//!   later pass. The reader applies `horizon <= xid < h` and records `h` as
//!   the new horizon (see [`super::rollback`]). With the data tables locked in
//!   SHARE mode no writer is in flight, and every entry from the horizon on is complete.

mod sql;

use std::collections::BTreeSet;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::source::Table;
use crate::error::Result;
use sql::{
    PG_ADD_XID, PG_INSTALL, PG_UNINSTALL, SQLITE_INSTALL, SQLITE_INSTALL_KEYS, SQLITE_KEY_TRIGGERS,
    SQLITE_UNINSTALL,
};

/// The entry that stands for every key: written with the keys' triggers when
/// they come after the copy, so the next sync carries all keys over.
const ALL_KEYS: &str = "*";

/// Installs the change log and its triggers on a SQLite file (idempotent),
/// so that every later write of any writer, the legacy service included, is logged.
///
/// `migrate setup --sqlite` runs it; `copy` runs it too when it is absent.
///
/// ```no_run
/// interview_store::migrate::install_change_log("interview.db".as_ref())?;
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn install_change_log(sqlite: &std::path::Path) -> Result<()> {
    let mut src = super::source::Source::open(sqlite)?;
    install_sqlite(src.conn())
}

/// Installs the SQLite log and its triggers (idempotent), the keys' too
/// when the file has the keys table.
pub(crate) fn install_sqlite(conn: &mut SqliteConnection) -> Result<()> {
    conn.immediate_transaction(|c| c.batch_execute(SQLITE_INSTALL))?;
    install_sqlite_keys(conn)
}

/// Installs the keys' triggers when the file has the keys table and they are
/// missing (the store adopted a legacy file after the copy): with them goes
/// an entry naming every key, since keys written before were never logged.
/// Writes nothing otherwise.
pub(crate) fn install_sqlite_keys(conn: &mut SqliteConnection) -> Result<()> {
    if !super::keys::sqlite_has_table(conn)? || sqlite_keys_installed(conn)? {
        return Ok(());
    }
    conn.immediate_transaction(|c| {
        c.batch_execute(SQLITE_INSTALL_KEYS)?;
        diesel::sql_query(
            "INSERT INTO interview_change_log (table_name, row_key, op) VALUES (?, ?, 'insert')",
        )
        .bind::<Text, _>(super::keys::TABLE)
        .bind::<Text, _>(ALL_KEYS)
        .execute(c)?;
        Ok(())
    })
}

fn sqlite_keys_installed(conn: &mut SqliteConnection) -> Result<bool> {
    let n = diesel::sql_query(
        "SELECT count(*) AS n FROM sqlite_master WHERE type = 'trigger' AND name IN (?, ?, ?)",
    )
    .bind::<Text, _>(SQLITE_KEY_TRIGGERS[0])
    .bind::<Text, _>(SQLITE_KEY_TRIGGERS[1])
    .bind::<Text, _>(SQLITE_KEY_TRIGGERS[2])
    .get_result::<Count>(conn)?
    .n;
    Ok(n == 3)
}

/// Removes the SQLite log and its triggers (the service writes without a log again).
pub(crate) fn uninstall_sqlite(conn: &mut SqliteConnection) -> Result<()> {
    conn.immediate_transaction(|c| c.batch_execute(SQLITE_UNINSTALL))?;
    Ok(())
}

/// Installs the PostgreSQL log and its triggers (idempotent), inside the caller's transaction.
pub(crate) fn install_pg(pg: &mut PgConnection) -> Result<()> {
    pg.batch_execute(PG_INSTALL)?;
    Ok(())
}

/// Empties the PostgreSQL log: what it holds before the switch are the
/// migration tool's own writes, which SQLite has already.
pub(crate) fn clear_pg(pg: &mut PgConnection) -> Result<()> {
    pg.batch_execute("DELETE FROM interview_change_log")?;
    Ok(())
}

/// Whether PostgreSQL has its log, bringing a log installed before the
/// transaction id column up to date (in a transaction of its own, before any
/// reader's snapshot). The check is one catalog lookup; the `ALTER` runs once.
pub(crate) fn pg_ready(pg: &mut PgConnection) -> Result<bool> {
    let n = diesel::sql_query(
        "SELECT CASE WHEN to_regclass('interview_change_log') IS NULL THEN -1 \
         ELSE (SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass('interview_change_log') \
               AND attname = 'xid' AND NOT attisdropped) END AS n",
    )
    .get_result::<Count>(pg)?
    .n;
    match n {
        -1 => Ok(false),
        0 => {
            log::info!("PostgreSQL's change log gets its transaction id column");
            pg.transaction(|pg| pg.batch_execute(PG_ADD_XID))?;
            Ok(true)
        }
        _ => Ok(true),
    }
}

/// Removes the PostgreSQL log and its triggers.
pub(crate) fn uninstall_pg(pg: &mut PgConnection) -> Result<()> {
    pg.batch_execute(PG_UNINSTALL)?;
    Ok(())
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Whether the SQLite file has its log and the nine triggers of the three
/// tables (the keys' are [`install_sqlite_keys`]'s business).
pub(crate) fn sqlite_installed(conn: &mut SqliteConnection) -> Result<bool> {
    let n = diesel::sql_query(
        "SELECT count(*) AS n FROM sqlite_master WHERE (type = 'table' AND name = 'interview_change_log') \
         OR (type = 'trigger' AND name LIKE 'interview_change_log_%' AND name NOT LIKE 'interview_change_log_keys_%')",
    )
    .get_result::<Count>(conn)?
    .n;
    Ok(n == 10)
}

/// The largest sequence number the SQLite log ever issued (0 when none), as
/// seen by the caller's snapshot. AUTOINCREMENT never reuses a number, even
/// after the entries are trimmed.
pub(crate) fn sqlite_position(conn: &mut SqliteConnection) -> Result<i64> {
    Ok(diesel::sql_query(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'interview_change_log'), 0) AS n",
    )
    .get_result::<Count>(conn)?
    .n)
}

/// The largest sequence number in the PostgreSQL log (0 when empty).
pub(crate) fn pg_position(pg: &mut PgConnection) -> Result<i64> {
    Ok(
        diesel::sql_query("SELECT coalesce(max(seq), 0) AS n FROM interview_change_log")
            .get_result::<Count>(pg)?
            .n,
    )
}

#[derive(QueryableByName)]
struct Entry {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    row_key: String,
}

/// The rows named by the log entries past a mark, once each.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Session ids as stored (SQLite) or as UUID text (PostgreSQL).
    pub sessions: BTreeSet<String>,
    /// Message ids.
    pub messages: BTreeSet<i64>,
    /// Draft ids.
    pub drafts: BTreeSet<i64>,
    /// Idempotency keys, `(scope, key)`.
    pub keys: BTreeSet<(String, String)>,
    /// Every key is named (the keys' triggers came after the copy).
    pub all_keys: bool,
    /// The last entry read: the new mark once applied.
    pub last_seq: i64,
    /// How many entries were read.
    pub entries: u64,
}

impl Changes {
    fn add(&mut self, e: Entry) {
        self.last_seq = self.last_seq.max(e.seq);
        self.entries += 1;
        match e.table_name.as_str() {
            "sessions" => {
                self.sessions.insert(e.row_key);
            }
            "messages" => {
                self.messages.extend(e.row_key.parse::<i64>().ok());
            }
            "drafts" => {
                self.drafts.extend(e.row_key.parse::<i64>().ok());
            }
            super::keys::TABLE if e.row_key == ALL_KEYS => self.all_keys = true,
            super::keys::TABLE => match serde_json::from_str::<(String, String)>(&e.row_key) {
                Ok(k) => {
                    self.keys.insert(k);
                }
                Err(err) => log::warn!("change log entry {} names no key: {err}", e.seq),
            },
            other => log::warn!("change log entry {} names unknown table {other}", e.seq),
        }
    }

    /// The ids of one child table.
    pub(crate) fn children(&self, table: Table) -> &BTreeSet<i64> {
        match table {
            Table::Messages => &self.messages,
            _ => &self.drafts,
        }
    }
}

/// Entries read per query.
const PAGE: i64 = 10_000;

/// Every SQLite log entry past `mark`, collapsed per row (inside the caller's read snapshot).
pub(crate) fn sqlite_changes(conn: &mut SqliteConnection, mark: i64) -> Result<Changes> {
    let mut out = Changes {
        last_seq: mark,
        ..Default::default()
    };
    loop {
        let page: Vec<Entry> = diesel::sql_query(
            "SELECT seq, table_name, row_key FROM interview_change_log WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind::<BigInt, _>(out.last_seq)
        .bind::<BigInt, _>(PAGE)
        .load(conn)?;
        if page.is_empty() {
            return Ok(out);
        }
        page.into_iter().for_each(|e| out.add(e));
    }
}

/// The transaction id below which every transaction has ended, in the
/// caller's REPEATABLE READ snapshot: the horizon a pass reads up to.
pub(crate) fn pg_snapshot_horizon(pg: &mut PgConnection) -> Result<i64> {
    Ok(
        diesel::sql_query("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS n")
            .get_result::<Count>(pg)?
            .n,
    )
}

#[derive(QueryableByName)]
struct XidEntry {
    #[diesel(sql_type = BigInt)]
    xid: i64,
    #[diesel(embed)]
    entry: Entry,
}

/// The PostgreSQL log entries written by transactions from `from` up to
/// (not including) `below`, or with no upper bound, collapsed per row (inside
/// the caller's snapshot). Paged in `(xid, seq)` order, the index's.
pub(crate) fn pg_changes(pg: &mut PgConnection, from: i64, below: Option<i64>) -> Result<Changes> {
    let mut out = Changes::default();
    let below = below.unwrap_or(i64::MAX);
    let mut after = (from, i64::MIN);
    loop {
        let page: Vec<XidEntry> = diesel::sql_query(
            "SELECT xid, seq, table_name, row_key FROM interview_change_log \
             WHERE (xid, seq) > ($1, $2) AND xid >= $1 AND xid < $3 ORDER BY xid, seq LIMIT $4",
        )
        .bind::<BigInt, _>(after.0)
        .bind::<BigInt, _>(after.1)
        .bind::<BigInt, _>(below)
        .bind::<BigInt, _>(PAGE)
        .load(pg)?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        after = (last.xid, last.entry.seq);
        page.into_iter().for_each(|e| out.add(e.entry));
    }
}

/// The PostgreSQL log entries at or past a horizon: not yet applied, or
/// applied but kept until their transactions are all below it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PgPending {
    pub entries: u64,
    /// The smallest and largest sequence numbers among them (for the lag report only).
    pub oldest: Option<i64>,
    pub newest: i64,
}

/// The entries at or past `horizon`.
pub(crate) fn pg_pending(pg: &mut PgConnection, horizon: i64) -> Result<PgPending> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        n: i64,
        #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
        oldest: Option<i64>,
        #[diesel(sql_type = BigInt)]
        newest: i64,
    }
    let r: Row = diesel::sql_query(
        "SELECT count(*) AS n, min(seq) AS oldest, coalesce(max(seq), 0) AS newest \
         FROM interview_change_log WHERE xid >= $1",
    )
    .bind::<BigInt, _>(horizon)
    .get_result(pg)?;
    Ok(PgPending {
        entries: r.n as u64,
        oldest: r.oldest,
        newest: r.newest,
    })
}

/// How many entries a SQLite file's change log holds (entries not yet
/// applied and trimmed); `None` when it has no log.
///
/// ```no_run
/// let pending = interview_store::migrate::change_log_entries("interview.db".as_ref())?;
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn change_log_entries(sqlite: &std::path::Path) -> Result<Option<i64>> {
    let mut src = super::source::Source::open(sqlite)?;
    if !sqlite_installed(src.conn())? {
        return Ok(None);
    }
    sqlite_len(src.conn()).map(Some)
}

fn sqlite_len(conn: &mut SqliteConnection) -> Result<i64> {
    Ok(
        diesel::sql_query("SELECT count(*) AS n FROM interview_change_log")
            .get_result::<Count>(conn)?
            .n,
    )
}

/// Deletes the SQLite entries up to a mark PostgreSQL has committed. A write
/// to the source: it waits on the busy timeout like any writer, and failing is
/// harmless (the next sync reads past the mark anyway and trims again).
pub(crate) fn trim_sqlite(conn: &mut SqliteConnection, upto: i64) -> Result<usize> {
    Ok(
        diesel::sql_query("DELETE FROM interview_change_log WHERE seq <= ?")
            .bind::<BigInt, _>(upto)
            .execute(conn)?,
    )
}

/// Deletes the PostgreSQL entries of transactions below `xid` (applied to SQLite and no longer needed).
pub(crate) fn trim_pg(pg: &mut PgConnection, xid: i64) -> Result<usize> {
    Ok(
        diesel::sql_query("DELETE FROM interview_change_log WHERE xid < $1")
            .bind::<BigInt, _>(xid)
            .execute(pg)?,
    )
}
