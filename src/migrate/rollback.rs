//! The way back: what was written to PostgreSQL after the switch, applied to SQLite from PostgreSQL's change log.
//!
//! A pass reads the log by transaction id (see [`super::changelog`]): in one
//! REPEATABLE READ transaction it takes the horizon `h` of its snapshot,
//! applies the entries from the recorded horizon up to `h`, and records `h`.
//! An entry of a transaction still open at the snapshot is never skipped: its
//! id is at or past `h`, so a later pass reads it. Passes take turns on the
//! migration lock and on the bookkeeping row ([`state::load_for_rollback_pass`]),
//! so SQLite only ever receives rows of a newer snapshot than the last pass's.
//! Applying an entry twice is harmless: a pass writes each named row as it is
//! in its snapshot, or deletes it.

mod bounded;

use std::collections::{BTreeSet, HashSet};
use std::hash::Hash;
use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::DatabaseErrorKind;
use diesel::sql_types::{BigInt, Text};
use diesel::upsert::excluded;
use uuid::Uuid;

use super::changelog::{self, Changes};
use super::keys::{self, KeyChanges, KeysApplied};
use super::lock::{self, MigrationLock};
use super::phase::Phase;
use super::state::{self, State};
use crate::connection::{AnyConnection, DatabaseUrl};
use crate::error::{Error, Refusal, Result};
use crate::schema::{drafts, messages, sessions};
use crate::store::drafts::DraftRow;
use crate::store::messages::MessageRow;
use crate::store::sessions::SessionRow;
use crate::types::sql::MultiTimestamp;
use crate::types::{uuid_key, DbUuid, DbUuidKey};

pub(crate) use bounded::verify_named;

/// What [`rollback_sync`] (or one pass of a reverse follower) applied to SQLite.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RollbackReport {
    /// Sessions created on PostgreSQL after the switch.
    pub sessions_inserted: u64,
    /// Sessions changed on PostgreSQL, written again into SQLite.
    pub sessions_updated: u64,
    /// Sessions deleted on PostgreSQL, deleted (with their children) in SQLite.
    pub sessions_deleted: u64,
    /// Messages inserted or updated.
    pub messages: u64,
    /// Drafts inserted or updated.
    pub drafts: u64,
    /// Messages deleted.
    pub messages_deleted: u64,
    /// Drafts deleted.
    pub drafts_deleted: u64,
    /// Finished idempotency keys written and deleted.
    pub keys: KeysApplied,
    /// PostgreSQL change log entries read. An entry of a transaction at or
    /// past the horizon may be read again by the next pass (and written again, unchanged).
    pub entries: u64,
    /// The largest sequence number of the entries read (for display; the
    /// log is read by transaction id, see `xid_horizon`).
    pub change_seq: i64,
    /// PostgreSQL's change log is applied for every transaction below this id.
    pub xid_horizon: i64,
}

/// How a pass reads PostgreSQL's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    /// Writers may be in flight: the entries of transactions below the
    /// snapshot's horizon only.
    Online,
    /// The four logged tables are locked in SHARE mode by the pass's
    /// transaction before its snapshot: no writer is in flight, every entry
    /// from the recorded horizon on is complete, and all of them are read.
    Locked,
}

/// Locks out every writer of the logged tables (the keys too: a prune touches
/// no other table); the first statement of a [`Reading::Locked`] pass, so that
/// its snapshot is taken after every writer in flight has finished.
const LOCK_WRITERS: &str = "LOCK TABLE sessions, messages, drafts, idempotency_keys IN SHARE MODE";

/// Applies to SQLite everything written to PostgreSQL since the switch (or the last rollback-sync).
///
/// Reads PostgreSQL's change log (installed by `migrate switch`) from the
/// horizon in the bookkeeping, collapses it per row, and writes each named
/// row as it is now into SQLite (ids kept, canonical formats), or deletes it,
/// in one SQLite transaction that passes SQLite's retirement. Then records the
/// new horizon in PostgreSQL and trims the entries no longer needed.
///
/// PostgreSQL need not be paused: the log is read by transaction id, and an
/// entry of a transaction still in flight is left for the next run. When
/// PostgreSQL is paused, the log is read holding SHARE locks on the logged
/// tables (waiting out any writer the pause let finish), so everything
/// written before the run is applied. Running it again writes the same rows
/// again, unchanged.
///
/// ```no_run
/// use interview_store::migrate::rollback_sync;
/// let report = rollback_sync("interview.db".as_ref(), &"postgres://app@db/interview".parse()?)?;
/// println!("{} messages back in SQLite", report.messages);
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn rollback_sync(sqlite: &Path, postgres: &DatabaseUrl) -> Result<RollbackReport> {
    // The source first: a missing file must not leave PostgreSQL set up for nothing.
    crate::connection::require_sqlite_file(sqlite)?;
    let _lock = MigrationLock::acquire(postgres)?;
    let mut pg = state::connect(postgres)?;
    rollback_allowed(&mut pg, postgres)?;
    let mut lite = super::pause::open_sqlite(sqlite)?;
    let reading = if super::pause::pg_paused(postgres)? {
        Reading::Locked
    } else {
        Reading::Online
    };
    let report = run_pass(&mut pg, &mut lite, reading)?.report;
    log::info!("rollback-sync: {report:?}");
    Ok(report)
}

/// One pass of a reverse follower: applies to SQLite what PostgreSQL's
/// transactions committed since the last pass, while PostgreSQL serves.
///
/// `Ok(None)` when another migration command holds the migration lock, or
/// another pass committed meanwhile: try again shortly. [`Error::Refused`]
/// when the cutover is not in phase `switched` (nothing to follow: stop).
/// `lite` is SQLite's maintenance connection ([`crate::maintenance::connect`]).
pub(crate) fn reverse_step(
    pg: &mut PgConnection,
    lite: &mut AnyConnection,
) -> Result<Option<RollbackReport>> {
    require_log(pg, "PostgreSQL")?;
    let out = pg.build_transaction().repeatable_read().run(|pg| {
        if !lock::try_lock(pg)? {
            return Ok(None);
        }
        pass(pg, lite, Reading::Online).map(|p| Some(p.report))
    });
    match out {
        Err(e) if serialization_failure(&e) => Ok(None),
        other => other,
    }
}

/// How many PostgreSQL log entries a reverse follower has not applied yet
/// (at or past the horizon), for its lag report. 0 without a log.
pub(crate) fn reverse_pending(pg: &mut PgConnection) -> Result<changelog::PgPending> {
    if !changelog::pg_ready(pg)? {
        return Ok(changelog::PgPending::default());
    }
    let horizon = state::load(pg)?.map_or(0, |s| s.rollback_xid_horizon);
    changelog::pg_pending(pg, horizon)
}

/// A reverse follower's connections: PostgreSQL's and SQLite's maintenance
/// connection, kept open across passes.
///
/// ```no_run
/// use interview_store::migrate::ReverseFollower;
/// let mut follower = ReverseFollower::open("interview.db".as_ref(), &"postgres://app@db/interview".parse()?)?;
/// loop {
///     match follower.step()? {
///         Some(report) if report.entries > 0 => println!("{} entries applied", report.entries),
///         _ => std::thread::sleep(std::time::Duration::from_millis(100)),
///     }
/// }
/// # Ok::<(), interview_store::Error>(())
/// ```
pub struct ReverseFollower {
    pg: PgConnection,
    lite: AnyConnection,
}

impl ReverseFollower {
    /// Opens both sides (the SQLite file must exist).
    pub fn open(sqlite: &Path, postgres: &DatabaseUrl) -> Result<ReverseFollower> {
        crate::connection::require_sqlite_file(sqlite)?;
        Ok(ReverseFollower {
            pg: state::connect(postgres)?,
            lite: super::pause::open_sqlite(sqlite)?,
        })
    }

    /// One pass: applies to SQLite what PostgreSQL's transactions committed
    /// since the last one. `None` when it must wait its turn (another
    /// migration command holds the lock, or another pass committed
    /// meanwhile); [`Error::Refused`] once the cutover left phase `switched`.
    pub fn step(&mut self) -> Result<Option<RollbackReport>> {
        reverse_step(&mut self.pg, &mut self.lite)
    }

    /// PostgreSQL log entries not applied yet (at or past the horizon; a
    /// transaction still open is not counted until it commits).
    pub fn pending(&mut self) -> Result<u64> {
        Ok(reverse_pending(&mut self.pg)?.entries)
    }
}

impl std::fmt::Debug for ReverseFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReverseFollower").finish_non_exhaustive()
    }
}

/// A pass done.
pub(crate) struct Passed {
    /// What it applied.
    pub report: RollbackReport,
    /// The bookkeeping as the pass found it (in its snapshot).
    pub state: State,
}

/// Runs one pass in a REPEATABLE READ transaction of its own; the caller holds
/// the migration lock.
pub(crate) fn run_pass(
    pg: &mut PgConnection,
    lite: &mut AnyConnection,
    reading: Reading,
) -> Result<Passed> {
    pg.build_transaction().repeatable_read().run(|pg| {
        if reading == Reading::Locked {
            pg.batch_execute(LOCK_WRITERS)?;
        }
        pass(pg, lite, reading)
    })
}

/// The first statement of a [`Reading::Locked`] pass's transaction, for a
/// caller that reads more in the same snapshot after the pass (the switch back's verify).
pub(crate) fn lock_writers(pg: &mut PgConnection) -> Result<()> {
    pg.batch_execute(LOCK_WRITERS)?;
    Ok(())
}

/// One pass inside the caller's REPEATABLE READ transaction.
pub(crate) fn pass(
    pg: &mut PgConnection,
    lite: &mut AnyConnection,
    reading: Reading,
) -> Result<Passed> {
    let st = require_switched(state::load(pg)?)?;
    let h = changelog::pg_snapshot_horizon(pg)?;
    let below = (reading == Reading::Online).then_some(h);
    let changes = changelog::pg_changes(pg, st.rollback_xid_horizon, below)?;
    let mut report = RollbackReport {
        entries: changes.entries,
        change_seq: changes.last_seq.max(st.rollback_change_seq),
        xid_horizon: st.rollback_xid_horizon,
        ..Default::default()
    };
    if changes.entries == 0 {
        // An idle poll writes nothing, not even a row lock (which would take a
        // transaction id). The horizon may stay behind: nothing lies below `h`
        // past it, so the next pass reads no more for it.
        return Ok(Passed { report, state: st });
    }
    report.xid_horizon = h.max(st.rollback_xid_horizon);
    // From here on this pass writes: it must be the newest snapshot to do so.
    state::load_for_rollback_pass(pg)?;
    let rows = read_rows(pg, changes)?;
    super::pause::write_into_sqlite(lite, |c| {
        apply(c, &rows, &mut report)?;
        report.keys = keys::apply_to_sqlite(c, &rows.keys)?;
        Ok(())
    })?;
    state::advance_rollback(pg, h, report.change_seq)?;
    // Entries the switch back must still verify stay.
    let keep_from = st.rollback_verified_horizon.map_or(h, |v| v.min(h));
    changelog::trim_pg(pg, keep_from)?;
    Ok(Passed { report, state: st })
}

/// Whether `e` is PostgreSQL refusing a transaction that raced another: here,
/// another pass committed after this one's snapshot.
fn serialization_failure(e: &Error) -> bool {
    matches!(
        e,
        Error::Database(diesel::result::Error::DatabaseError(
            DatabaseErrorKind::SerializationFailure,
            _
        ))
    )
}

/// The phase check of a pass, in its snapshot.
fn require_switched(st: Option<State>) -> Result<State> {
    match st {
        // The switch back's own last pass runs with its intent recorded.
        Some(st) if matches!(st.phase()?, Phase::Switched | Phase::SwitchingToSqlite(_)) => Ok(st),
        st => Err(Error::refused(
            Refusal::OutOfOrder,
            format!(
            "the way back applies what was written to PostgreSQL after `migrate switch`, but the \
             cutover is {}: nothing to follow",
            st.map_or("not started".to_string(), |s| format!("in phase {}", s.phase))
        ),
        )),
    }
}

/// PostgreSQL's log must exist (the switch installs it); brought up to date.
fn require_log(pg: &mut PgConnection, shown: &str) -> Result<()> {
    if changelog::pg_ready(pg)? {
        return Ok(());
    }
    require_switched(state::load(pg)?)?;
    Err(Error::refused(
        Refusal::NotReady,
        format!("{shown} has no change log: was `migrate switch` interrupted? Run it again"),
    ))
}

/// The phase and log checks of rollback-sync, naming the database.
fn rollback_allowed(pg: &mut PgConnection, postgres: &DatabaseUrl) -> Result<()> {
    let st = state::load(pg)?;
    match st.as_ref().map(|s| s.phase()).transpose()? {
        Some(Phase::Switched | Phase::SwitchingToSqlite(_)) => {}
        phase => {
            return Err(Error::refused(
                Refusal::OutOfOrder,
                format!(
                    "rollback-sync applies what was written to {} after `migrate switch`, but the \
                 cutover is {}: nothing to roll back",
                    postgres.masked(),
                    phase.map_or("not started".to_string(), |p| format!("in phase {p}"))
                ),
            ))
        }
    }
    require_log(pg, &postgres.masked())
}

/// The rows PostgreSQL's log names, as they are in the pass's snapshot.
struct PgRows {
    keys: KeyChanges,
    sessions: Vec<SessionRow>,
    /// Sessions of the messages and drafts below that the log did not name
    /// (yet): their entry belongs to a transaction past the horizon. Inserted
    /// when SQLite lacks them, so the children's foreign key holds.
    parents: Vec<SessionRow>,
    messages: Vec<MessageRow>,
    drafts: Vec<DraftRow>,
    deleted_sessions: Vec<DbUuid>,
    deleted_messages: Vec<i64>,
    deleted_drafts: Vec<i64>,
}

/// Rows read per query.
const CHUNK: usize = 10_000;

/// PostgreSQL's sessions with these ids, in id order.
pub(crate) fn pg_sessions(pg: &mut PgConnection, ids: &[DbUuid]) -> Result<Vec<SessionRow>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        out.extend(
            sessions::table
                .filter(sessions::id.eq_any(chunk))
                .order(sessions::id)
                .select(SessionRow::as_select())
                .load(pg)?,
        );
    }
    Ok(out)
}

/// PostgreSQL's messages with these ids, in id order.
pub(crate) fn pg_messages(pg: &mut PgConnection, ids: &[i64]) -> Result<Vec<MessageRow>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        out.extend(
            messages::table
                .filter(messages::id.eq_any(chunk))
                .order(messages::id)
                .select(MessageRow::as_select())
                .load(pg)?,
        );
    }
    Ok(out)
}

/// PostgreSQL's drafts with these ids, in id order.
pub(crate) fn pg_drafts(pg: &mut PgConnection, ids: &[i64]) -> Result<Vec<DraftRow>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        out.extend(
            drafts::table
                .filter(drafts::id.eq_any(chunk))
                .order(drafts::id)
                .select(DraftRow::as_select())
                .load(pg)?,
        );
    }
    Ok(out)
}

/// The session ids a log names (PostgreSQL writes them as UUID text).
pub(crate) fn named_sessions(changes: &Changes) -> Vec<DbUuid> {
    changes
        .sessions
        .iter()
        .filter_map(|k| Uuid::parse_str(k).ok())
        .map(DbUuid)
        .collect()
}

/// The ids asked for that were not found.
fn missing<T: Hash + Eq + Copy>(asked: &[T], found: impl Iterator<Item = T>) -> Vec<T> {
    let found: HashSet<T> = found.collect();
    asked
        .iter()
        .filter(|id| !found.contains(id))
        .copied()
        .collect()
}

fn read_rows(pg: &mut PgConnection, changes: Changes) -> Result<PgRows> {
    let keys = keys::read_pg(pg, &changes.keys)?;
    let ids = named_sessions(&changes);
    let sessions_now = pg_sessions(pg, &ids)?;
    let deleted_sessions = missing(&ids, sessions_now.iter().map(|r| r.id));

    let ids: Vec<i64> = changes.messages.iter().copied().collect();
    let messages_now = pg_messages(pg, &ids)?;
    let deleted_messages = missing(&ids, messages_now.iter().map(|r| r.id));

    let ids: Vec<i64> = changes.drafts.iter().copied().collect();
    let drafts_now = pg_drafts(pg, &ids)?;
    let deleted_drafts = missing(&ids, drafts_now.iter().map(|r| r.id));

    let named: HashSet<DbUuid> = sessions_now.iter().map(|r| r.id).collect();
    let unnamed: BTreeSet<Uuid> = messages_now
        .iter()
        .map(|r| r.session_id)
        .chain(drafts_now.iter().map(|r| r.session_id))
        .filter(|id| !named.contains(id))
        .map(|id| id.0)
        .collect();
    let parents = pg_sessions(pg, &unnamed.into_iter().map(DbUuid).collect::<Vec<_>>())?;
    Ok(PgRows {
        keys,
        sessions: sessions_now,
        parents,
        messages: messages_now,
        drafts: drafts_now,
        deleted_sessions,
        deleted_messages,
        deleted_drafts,
    })
}

/// Writes the rows into SQLite: sessions first (children need them), then
/// children, then deletions children first.
///
/// SQLite's rows are found by UUID key ([`uuid_key`]), never by canonical text:
/// a legacy file may spell its ids otherwise (see `docs/legacy-ids.md`), and no
/// stored id is rewritten. A child names its session as the session's row
/// spells it (INSERT ... SELECT from that row, as the store does): SQLite's
/// foreign key, and the legacy service, compare the text.
fn apply(c: &mut SqliteConnection, rows: &PgRows, report: &mut RollbackReport) -> Result<()> {
    apply_sessions(c, rows, report)?;
    for row in &rows.messages {
        // A row already under the same session is updated without touching its
        // session_id: its spelling stays, and SQLite checks no foreign key for
        // it (a legacy child may be spelled unlike its session).
        let kept = diesel::update(
            messages::table
                .find(row.id)
                .filter(uuid_key(messages::session_id).eq(DbUuidKey(row.session_id.0))),
        )
        .set((
            messages::role.eq(&row.role),
            messages::text.eq(&row.text),
            messages::created_at.eq(row.created_at),
        ))
        .execute(c)?;
        if kept == 1 {
            continue;
        }
        // No session with that key (cannot happen: its parent was written above)
        // inserts nothing, and a count short of the rows says so.
        let written = diesel::insert_into(messages::table)
            .values(
                sessions::table
                    .filter(uuid_key(sessions::id).eq(DbUuidKey(row.session_id.0)))
                    .select((
                        row.id.into_sql::<BigInt>(),
                        sessions::id,
                        row.role.as_str().into_sql::<Text>(),
                        row.text.as_str().into_sql::<Text>(),
                        row.created_at.into_sql::<MultiTimestamp>(),
                    )),
            )
            .into_columns((
                messages::id,
                messages::session_id,
                messages::role,
                messages::text,
                messages::created_at,
            ))
            .on_conflict(messages::id)
            .do_update()
            .set((
                messages::session_id.eq(excluded(messages::session_id)),
                messages::role.eq(excluded(messages::role)),
                messages::text.eq(excluded(messages::text)),
                messages::created_at.eq(excluded(messages::created_at)),
            ))
            .execute(c)?;
        require_parent(written, "message", row.id, row.session_id)?;
    }
    report.messages = rows.messages.len() as u64;
    for row in &rows.drafts {
        let kept = diesel::update(
            drafts::table
                .find(row.id)
                .filter(uuid_key(drafts::session_id).eq(DbUuidKey(row.session_id.0))),
        )
        .set((
            drafts::content.eq(&row.content),
            drafts::created_at.eq(row.created_at),
        ))
        .execute(c)?;
        if kept == 1 {
            continue;
        }
        let written = diesel::insert_into(drafts::table)
            .values(
                sessions::table
                    .filter(uuid_key(sessions::id).eq(DbUuidKey(row.session_id.0)))
                    .select((
                        row.id.into_sql::<BigInt>(),
                        sessions::id,
                        row.content.as_str().into_sql::<Text>(),
                        row.created_at.into_sql::<MultiTimestamp>(),
                    )),
            )
            .into_columns((
                drafts::id,
                drafts::session_id,
                drafts::content,
                drafts::created_at,
            ))
            .on_conflict(drafts::id)
            .do_update()
            .set((
                drafts::session_id.eq(excluded(drafts::session_id)),
                drafts::content.eq(excluded(drafts::content)),
                drafts::created_at.eq(excluded(drafts::created_at)),
            ))
            .execute(c)?;
        require_parent(written, "draft", row.id, row.session_id)?;
    }
    report.drafts = rows.drafts.len() as u64;
    apply_deletions(c, rows, report)
}

/// A child's upsert wrote one row, or its session is missing from SQLite
/// (none) or held twice in different spellings (several).
fn require_parent(written: usize, what: &str, id: i64, session: DbUuid) -> Result<()> {
    match written {
        1 => Ok(()),
        0 => Err(Error::Corrupt {
            what: format!("{what} {id} of session {}", session.0),
            reason: "its session is not in SQLite after the sessions were applied".into(),
        }),
        _ => Err(Error::Corrupt {
            what: format!("session {}", session.0),
            reason: "several sessions rows hold this UUID, spelled differently".into(),
        }),
    }
}

/// Updates each named session in place by key (its stored id kept), inserting
/// a canonical row only when SQLite has none with that key.
fn apply_sessions(
    c: &mut SqliteConnection,
    rows: &PgRows,
    report: &mut RollbackReport,
) -> Result<()> {
    for row in &rows.sessions {
        let updated =
            diesel::update(sessions::table.filter(uuid_key(sessions::id).eq(DbUuidKey(row.id.0))))
                .set((
                    sessions::created_at.eq(row.created_at),
                    sessions::updated_at.eq(row.updated_at),
                    sessions::summary.eq(&row.summary),
                ))
                .execute(c)?;
        if updated == 0 {
            diesel::insert_into(sessions::table)
                .values(row)
                .execute(c)?;
            report.sessions_inserted += 1;
        } else {
            report.sessions_updated += 1;
        }
    }
    for row in &rows.parents {
        let held = diesel::select(diesel::dsl::exists(
            sessions::table.filter(uuid_key(sessions::id).eq(DbUuidKey(row.id.0))),
        ))
        .get_result::<bool>(c)?;
        if !held {
            diesel::insert_into(sessions::table)
                .values(row)
                .execute(c)?;
            report.sessions_inserted += 1;
        }
    }
    Ok(())
}

fn apply_deletions(
    c: &mut SqliteConnection,
    rows: &PgRows,
    report: &mut RollbackReport,
) -> Result<()> {
    for id in &rows.deleted_messages {
        report.messages_deleted += diesel::delete(messages::table.find(id)).execute(c)? as u64;
    }
    for id in &rows.deleted_drafts {
        report.drafts_deleted += diesel::delete(drafts::table.find(id)).execute(c)? as u64;
    }
    for id in &rows.deleted_sessions {
        let key = DbUuidKey(id.0);
        report.messages_deleted +=
            diesel::delete(messages::table.filter(uuid_key(messages::session_id).eq(key)))
                .execute(c)? as u64;
        report.drafts_deleted +=
            diesel::delete(drafts::table.filter(uuid_key(drafts::session_id).eq(key))).execute(c)?
                as u64;
        report.sessions_deleted +=
            diesel::delete(sessions::table.filter(uuid_key(sessions::id).eq(key))).execute(c)?
                as u64;
    }
    Ok(())
}
