//! Reading a sample of sessions from a SQLite file in one pass per chunk, not one scan per session.
//!
//! A legacy file has no index on `messages(session_id)` or `drafts(session_id)` (the old service
//! never made one), so reading its sessions one at a time through the store scans every message
//! once per session: 263 s for a sample of 1,000 on a 20,000-session file. Here a chunk of the
//! sample costs one scan of each child table (or index lookups when the file has the index, as
//! the store's own migrations make), and the rows are decoded into the same domain objects as
//! the store's `get_session` and `latest_draft`. The connection has no memory map, so the pages
//! a scan passes over are not counted in this process's memory.

use std::collections::HashMap;
use std::path::Path;

use diesel::prelude::*;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::schema::{drafts, messages, sessions};
use crate::store::drafts::DraftRow;
use crate::store::messages::MessageRow;
use crate::store::sessions::SessionRow;
use crate::store::{Draft, Message, Session, SessionWithMessages};
use crate::types::{uuid_key, DbUuid, DbUuidKey, SQLITE_UUID_KEY};
use crate::AnyConnection;

/// Sessions read per pass on a file that must be scanned; their messages and
/// drafts are in memory together (about 30 MB for 1,000 sessions of 40 messages).
pub(crate) const CHUNK: usize = 1000;

/// Sessions read per pass through the indexes: a pass costs lookups, not a scan,
/// so smaller passes keep memory down for nothing.
pub(crate) const INDEXED_CHUNK: usize = 250;

/// What the store would return for one session: the session with its
/// messages in id order, and its latest draft.
pub(crate) type SessionRead = Result<(SessionWithMessages, Option<Draft>)>;

diesel::define_sql_function!(fn random() -> diesel::sql_types::Double);

/// The indexes a session's reads need, as the store's SQLite migrations define them (so a
/// store that adopts the file later finds them made): the plain ones, which the change
/// log's reads by stored key use, and the ones on the UUID key (see
/// [`crate::types::uuid_key`]), which reads by UUID use.
fn child_indexes() -> [String; 5] {
    let key = |col: &str| format!("{}{col}{}", SQLITE_UUID_KEY.0, SQLITE_UUID_KEY.1);
    [
        "CREATE INDEX IF NOT EXISTS messages_session_id_id_idx ON messages (session_id, id)".into(),
        "CREATE INDEX IF NOT EXISTS drafts_session_id_id_idx ON drafts (session_id, id)".into(),
        format!(
            "CREATE INDEX IF NOT EXISTS sessions_id_uuid_key_idx ON sessions ({})",
            key("id")
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS messages_session_uuid_key_id_idx ON messages ({}, id)",
            key("session_id")
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS drafts_session_uuid_key_id_idx ON drafts ({}, id)",
            key("session_id")
        ),
    ]
}

/// Creates the indexes on `messages(session_id, id)` and `drafts(session_id, id)` in a legacy
/// file, which the old service never made; returns whether any was missing.
///
/// Without them every read of a session's messages scans the whole table: `compare` reads
/// its sample in one scan per 1,000 sessions, 22 s on a 7 GB file, and 0.1 s with them.
/// Building them reads the two tables once and holds SQLite's write lock meanwhile, so the
/// service's writes wait (up to its busy timeout): run it at a quiet hour, before the copy.
///
/// ```no_run
/// interview_store::migrate::index_source("interview.db".as_ref())?;
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn index_source(path: &Path) -> Result<bool> {
    let mut conn = crate::connection::open_existing_sqlite(path)?;
    diesel::connection::SimpleConnection::batch_execute(&mut conn, "PRAGMA busy_timeout = 10000")?;
    let missing = !has_child_index(&mut conn, "messages")?
        || !has_child_index(&mut conn, "drafts")?
        || !has_key_index(&mut conn, "sessions", "id")?
        || !has_key_index(&mut conn, "messages", "session_id")?
        || !has_key_index(&mut conn, "drafts", "session_id")?;
    if missing {
        conn.immediate_transaction(|c| {
            child_indexes()
                .iter()
                .try_for_each(|sql| diesel::connection::SimpleConnection::batch_execute(c, sql))
        })?;
    }
    Ok(missing)
}

#[derive(QueryableByName)]
struct Found {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Whether some index of `table` starts with `session_id` (whatever its name).
fn has_child_index(conn: &mut SqliteConnection, table: &str) -> Result<bool> {
    Ok(diesel::sql_query(
        "SELECT count(*) AS n FROM pragma_index_list(?) AS l, pragma_index_info(l.name) AS i \
         WHERE i.seqno = 0 AND i.name = 'session_id'",
    )
    .bind::<diesel::sql_types::Text, _>(table)
    .get_result::<Found>(conn)?
    .n > 0)
}

/// Whether some index of `table` starts with the UUID key of `column` (whatever its name).
fn has_key_index(conn: &mut SqliteConnection, table: &str, column: &str) -> Result<bool> {
    let start = format!("({}{column}{}", SQLITE_UUID_KEY.0, SQLITE_UUID_KEY.1);
    Ok(diesel::sql_query(
        "SELECT count(*) AS n FROM sqlite_master WHERE type = 'index' AND tbl_name = ? \
         AND instr(replace(sql, ' ', ''), replace(?, ' ', '')) > 0",
    )
    .bind::<diesel::sql_types::Text, _>(table)
    .bind::<diesel::sql_types::Text, _>(start)
    .get_result::<Found>(conn)?
    .n > 0)
}

/// A SQLite file opened for sampled reads: never created, never written.
pub(crate) struct SampleSource {
    conn: AnyConnection,
    /// Whether messages and drafts are indexed by session (else each read scans them).
    pub indexed: bool,
}

impl SampleSource {
    /// Opens an existing file.
    pub(crate) fn open(path: &Path) -> Result<SampleSource> {
        let mut conn = crate::connection::open_existing_sqlite(path)?;
        diesel::connection::SimpleConnection::batch_execute(
            &mut conn,
            "PRAGMA busy_timeout = 10000",
        )?;
        // Reads are by UUID key (a legacy file may spell ids in several ways), so only the
        // indexes on the key serve them; the plain `session_id` ones do not.
        let mut indexed = true;
        for table in ["messages", "drafts"] {
            indexed &= has_key_index(&mut conn, table, "session_id")?;
        }
        if !indexed {
            log::warn!(
                "{} has no index on the UUID key of messages(session_id) or drafts(session_id): \
                 each 1,000 sampled sessions cost a scan of both tables (`migrate setup --sqlite` \
                 creates the indexes)",
                path.display()
            );
        }
        Ok(SampleSource {
            conn: AnyConnection::Sqlite(conn),
            indexed,
        })
    }

    /// Up to `n` session ids picked at random (read from the primary key's index alone).
    pub(crate) fn sample_ids(&mut self, n: i64) -> Result<Vec<Uuid>> {
        if n < 0 {
            return Err(Error::invalid(
                "sample size",
                format!("is {n}, must not be negative"),
            ));
        }
        Ok(sessions::table
            .select(sessions::id)
            .order(random())
            .limit(n)
            .load::<DbUuid>(&mut self.conn)
            .map_err(|e| Error::from(e).reading(|| "session ids".to_string()))?
            .into_iter()
            .map(|id| id.0)
            .collect())
    }

    /// Reads the sessions `ids` (at most [`CHUNK`] at a time is sensible), each
    /// as the store would: missing sessions are [`Error::NotFound`], a row the
    /// store could not decode makes that session's read fail.
    ///
    /// When one of the three statements fails as a whole (a value no row type
    /// can hold), each session is read on its own instead, so that the failure
    /// lands on the sessions it belongs to.
    pub(crate) fn read(&mut self, ids: &[Uuid]) -> HashMap<Uuid, SessionRead> {
        read_sessions(&mut self.conn, ids)
    }
}

/// Reads the sessions `ids` on any backend, each as the store would: missing
/// sessions are [`Error::NotFound`], a row the store could not decode makes
/// that session's read fail.
///
/// When one of the three statements fails as a whole (a value no row type
/// can hold), each session is read on its own instead, so that the failure
/// lands on the sessions it belongs to.
pub(crate) fn read_sessions(conn: &mut AnyConnection, ids: &[Uuid]) -> HashMap<Uuid, SessionRead> {
    match read_together(conn, ids) {
        Ok(found) => found,
        Err(e) => {
            log::info!(
                "reading {} sessions together failed ({e}); reading them one by one",
                ids.len()
            );
            ids.iter()
                .map(|id| {
                    (
                        *id,
                        read_together(conn, &[*id]).and_then(|mut m| take(&mut m, *id)),
                    )
                })
                .collect()
        }
    }
}

fn read_together(conn: &mut AnyConnection, ids: &[Uuid]) -> Result<HashMap<Uuid, SessionRead>> {
    // By UUID, not by spelling (see crate::types::uuid_key): a legacy file may store the
    // sampled ids as 32 hex digits or in upper case, and children spelled unlike their session.
    let keys: Vec<DbUuidKey> = ids.iter().copied().map(DbUuidKey).collect();
    let what = || format!("{} sampled sessions", ids.len());
    let found: Vec<SessionRow> = sessions::table
        .filter(uuid_key(sessions::id).eq_any(&keys))
        .select(SessionRow::as_select())
        .load(conn)
        .map_err(|e| Error::from(e).reading(what))?;
    // One pass over each child table, in id order: the order get_session returns.
    let rows: Vec<MessageRow> = messages::table
        .filter(uuid_key(messages::session_id).eq_any(&keys))
        .order(messages::id)
        .select(MessageRow::as_select())
        .load(conn)
        .map_err(|e| Error::from(e).reading(|| format!("messages of {}", what())))?;
    let mut children: HashMap<Uuid, Result<Vec<Message>>> = HashMap::new();
    for row in rows {
        let entry = children
            .entry(row.session_id.0)
            .or_insert_with(|| Ok(Vec::new()));
        // After one undecodable message the session's read has failed; the rest are skipped.
        if let Ok(list) = &mut *entry {
            match Message::try_from(row) {
                Ok(m) => list.push(m),
                Err(e) => *entry = Err(e),
            }
        }
    }
    let mut latest: HashMap<Uuid, Draft> = HashMap::new();
    for row in drafts::table
        .filter(uuid_key(drafts::session_id).eq_any(&keys))
        .order(drafts::id)
        .select(DraftRow::as_select())
        .load::<DraftRow>(conn)
        .map_err(|e| Error::from(e).reading(|| format!("drafts of {}", what())))?
    {
        latest.insert(row.session_id.0, Draft::from(row));
    }
    let mut out: HashMap<Uuid, SessionRead> = ids
        .iter()
        .map(|id| (*id, Err(Error::not_found(format!("session {id}")))))
        .collect();
    for s in found {
        let session: Session = s.into();
        let id = session.id;
        let read = children
            .remove(&id)
            .unwrap_or_else(|| Ok(Vec::new()))
            .map(|messages| {
                (
                    SessionWithMessages { session, messages },
                    latest.remove(&id),
                )
            });
        out.insert(id, read);
    }
    Ok(out)
}

fn take(found: &mut HashMap<Uuid, SessionRead>, id: Uuid) -> SessionRead {
    found
        .remove(&id)
        .unwrap_or_else(|| Err(Error::not_found(format!("session {id}"))))
}
