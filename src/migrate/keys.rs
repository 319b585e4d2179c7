//! Idempotency keys as the migration carries them: the finished keys, beside the three tables.
//!
//! A side channel rather than a fourth [`super::source::Table`]: the keys are
//! this crate's own bookkeeping of HTTP retries, not interview data. They are
//! written in canonical form (no legacy spellings, hence no rejects), named by
//! `(scope, key)` rather than a rowid or id, only the finished ones travel (a
//! key still running belongs to a request that either fails or finds its
//! claim gone and rolls back), and a legacy file has no such table at all.
//! Every step of the engine calls this module at one point, after its tables.

use std::collections::{BTreeMap, BTreeSet};

use diesel::dsl::sql;
use diesel::pg::upsert::excluded;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::error::Result;
use crate::schema::idempotency_keys as keys;
use crate::types::{DbTimestamp, DbUuid};

/// How many differences a witness lists (all are counted): verify, its key
/// comparison and the switch's bounded checks.
pub const LISTED: usize = 50;

/// How many differing rows are remembered to tell which are in flight: more
/// than writes in flight ever amount to, few enough to stay small in memory.
pub(super) const TRACKED: usize = 200_000;

/// The change log's table name for the keys.
pub(crate) const TABLE: &str = "idempotency_keys";

/// Keys read or written per statement.
const PAGE: i64 = 1_000;

/// One idempotency key row; reading it from SQLite normalises its timestamps and token.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = keys, treat_none_as_default_value = false)]
pub(crate) struct KeyRow {
    pub scope: String,
    pub key: String,
    pub request_hash: String,
    pub token: DbUuid,
    pub status_code: Option<i32>,
    pub response_body: Option<String>,
    pub created_at: DbTimestamp,
    pub claimed_at: DbTimestamp,
    pub completed_at: Option<DbTimestamp>,
}

impl KeyRow {
    fn id(&self) -> (String, String) {
        (self.scope.clone(), self.key.clone())
    }
}

/// The keys a change log names, as they are now on the side it was read from.
#[derive(Debug, Default)]
pub(crate) struct KeyChanges {
    /// Finished keys to write on the other side.
    pub present: Vec<KeyRow>,
    /// Keys gone (or no longer finished): delete them on the other side.
    pub gone: Vec<(String, String)>,
    /// The log asked for every key (its key triggers were installed late).
    pub all: bool,
}

/// What a step did to the keys, for its report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeysApplied {
    /// Finished keys written (inserted or replaced).
    pub written: u64,
    /// Keys deleted.
    pub deleted: u64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Whether the SQLite file has the keys table (a legacy service's file does not).
pub(crate) fn sqlite_has_table(conn: &mut SqliteConnection) -> Result<bool> {
    Ok(diesel::sql_query(
        "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = ?",
    )
    .bind::<Text, _>(TABLE)
    .get_result::<Count>(conn)?
    .n == 1)
}

/// Up to [`PAGE`] finished SQLite keys after `after`, in `(scope, key)` byte order
/// (the primary key's order: SQLite compares text as bytes).
fn sqlite_page(
    conn: &mut SqliteConnection,
    after: Option<&(String, String)>,
) -> Result<Vec<KeyRow>> {
    let mut q = keys::table
        .filter(keys::status_code.is_not_null())
        .order((keys::scope, keys::key))
        .limit(PAGE)
        .select(KeyRow::as_select())
        .into_boxed();
    if let Some((s, k)) = after {
        q = q.filter(
            keys::scope
                .gt(s.clone())
                .or(keys::scope.eq(s.clone()).and(keys::key.gt(k.clone()))),
        );
    }
    Ok(q.load(conn)?)
}

/// Calls `f` with every finished SQLite key, a page at a time (inside the caller's snapshot).
pub(crate) fn each_sqlite_page(
    conn: &mut SqliteConnection,
    mut f: impl FnMut(&[KeyRow]) -> Result<()>,
) -> Result<()> {
    if !sqlite_has_table(conn)? {
        return Ok(());
    }
    let mut after = None;
    loop {
        let page = sqlite_page(conn, after.as_ref())?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.id());
        f(&page)?;
    }
}

/// Replaces PostgreSQL's keys with SQLite's finished ones, with `COPY`, inside
/// the caller's PostgreSQL transaction and SQLite snapshot. Returns how many.
pub(crate) fn copy_into_pg(src: &mut SqliteConnection, pg: &mut PgConnection) -> Result<u64> {
    diesel::delete(keys::table).execute(pg)?;
    let mut n = 0u64;
    each_sqlite_page(src, |page| {
        diesel::copy_from(keys::table)
            .from_insertable(page)
            .execute(pg)?;
        n += page.len() as u64;
        Ok(())
    })?;
    Ok(n)
}

/// Finished keys on PostgreSQL (for `status` and reports).
pub(crate) fn pg_count(pg: &mut PgConnection) -> Result<i64> {
    Ok(keys::table
        .filter(keys::status_code.is_not_null())
        .count()
        .get_result(pg)?)
}

fn by_scope(wanted: &BTreeSet<(String, String)>) -> BTreeMap<&str, Vec<&str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (s, k) in wanted {
        out.entry(s.as_str()).or_default().push(k.as_str());
    }
    out
}

/// Splits the named keys into the finished rows found and the rest.
fn split(wanted: &BTreeSet<(String, String)>, present: Vec<KeyRow>) -> KeyChanges {
    let found: BTreeSet<(String, String)> = present.iter().map(KeyRow::id).collect();
    KeyChanges {
        gone: wanted.difference(&found).cloned().collect(),
        present,
        all: false,
    }
}

/// The finished SQLite rows of the keys a change log names (inside the caller's snapshot).
pub(crate) fn read_sqlite(
    conn: &mut SqliteConnection,
    wanted: &BTreeSet<(String, String)>,
    all: bool,
) -> Result<KeyChanges> {
    if all {
        return Ok(KeyChanges {
            all: true,
            ..Default::default()
        });
    }
    let mut present = Vec::new();
    if !wanted.is_empty() && sqlite_has_table(conn)? {
        for (scope, names) in by_scope(wanted) {
            for chunk in names.chunks(PAGE as usize) {
                present.extend(
                    keys::table
                        .filter(keys::status_code.is_not_null())
                        .filter(keys::scope.eq(scope))
                        .filter(keys::key.eq_any(chunk))
                        .select(KeyRow::as_select())
                        .load(conn)?,
                );
            }
        }
    }
    Ok(split(wanted, present))
}

/// The finished PostgreSQL rows of the keys its change log names.
pub(crate) fn read_pg(
    pg: &mut PgConnection,
    wanted: &BTreeSet<(String, String)>,
) -> Result<KeyChanges> {
    let mut present = Vec::new();
    for (scope, names) in by_scope(wanted) {
        for chunk in names.chunks(PAGE as usize) {
            present.extend(
                keys::table
                    .filter(keys::status_code.is_not_null())
                    .filter(keys::scope.eq(scope))
                    .filter(keys::key.eq_any(chunk))
                    .select(KeyRow::as_select())
                    .load(pg)?,
            );
        }
    }
    Ok(split(wanted, present))
}

/// Applies SQLite's key changes to PostgreSQL (inside sync's transaction and snapshot).
pub(crate) fn apply_to_pg(
    pg: &mut PgConnection,
    src: &mut SqliteConnection,
    changes: &KeyChanges,
) -> Result<KeysApplied> {
    if changes.all {
        let written = copy_into_pg(src, pg)?;
        return Ok(KeysApplied {
            written,
            deleted: 0,
        });
    }
    let mut out = KeysApplied::default();
    for chunk in changes.present.chunks(PAGE as usize) {
        diesel::insert_into(keys::table)
            .values(chunk)
            .on_conflict((keys::scope, keys::key))
            .do_update()
            .set((
                keys::request_hash.eq(excluded(keys::request_hash)),
                keys::token.eq(excluded(keys::token)),
                keys::status_code.eq(excluded(keys::status_code)),
                keys::response_body.eq(excluded(keys::response_body)),
                keys::created_at.eq(excluded(keys::created_at)),
                keys::claimed_at.eq(excluded(keys::claimed_at)),
                keys::completed_at.eq(excluded(keys::completed_at)),
            ))
            .execute(pg)?;
        out.written += chunk.len() as u64;
    }
    for (scope, key) in &changes.gone {
        out.deleted += diesel::delete(
            keys::table
                .filter(keys::scope.eq(scope))
                .filter(keys::key.eq(key)),
        )
        .execute(pg)? as u64;
    }
    Ok(out)
}

/// Applies PostgreSQL's key changes to SQLite (inside rollback-sync's transaction).
pub(crate) fn apply_to_sqlite(
    c: &mut SqliteConnection,
    changes: &KeyChanges,
) -> Result<KeysApplied> {
    let mut out = KeysApplied::default();
    for row in &changes.present {
        diesel::replace_into(keys::table).values(row).execute(c)?;
        out.written += 1;
    }
    for (scope, key) in &changes.gone {
        out.deleted += diesel::delete(
            keys::table
                .filter(keys::scope.eq(scope))
                .filter(keys::key.eq(key)),
        )
        .execute(c)? as u64;
    }
    Ok(out)
}

/// A key whose recorded answer differs between the two sides.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyDifference {
    /// The key's scope (the endpoint).
    pub scope: String,
    /// The key.
    pub key: String,
    /// The column that differs, or `*` for a key on one side only.
    pub column: String,
    /// What differs.
    pub detail: String,
}

impl std::fmt::Display for KeyDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "idempotency key {} {:?} {}: {}",
            self.scope, self.key, self.column, self.detail
        )
    }
}

/// The finished keys of both sides, side by side.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeysVerify {
    /// Finished keys in SQLite.
    pub sqlite_keys: u64,
    /// Finished keys in PostgreSQL.
    pub postgres_keys: u64,
    /// Keys that differ or are on one side only.
    pub differences: u64,
    /// The first `LISTED` of them.
    pub listed: Vec<KeyDifference>,
    /// Of the differences, those in keys the change log names past the
    /// position the other side stands at: answered while the verify ran (or
    /// not applied yet), so in flight, as rows are. `None` until settled, or
    /// when too many keys differ to tell.
    pub in_flight: Option<u64>,
    /// The keys that differ, up to `TRACKED`, to tell the ones in flight.
    #[serde(skip)]
    pub(crate) differing: Vec<(String, String)>,
}

impl KeysVerify {
    pub(crate) fn differ(&mut self, scope: &str, key: &str, column: &str, detail: &str) {
        self.differences += 1;
        if self.differing.len() < TRACKED {
            self.differing.push((scope.into(), key.into()));
        }
        if self.listed.len() < LISTED {
            self.listed.push(KeyDifference {
                scope: scope.into(),
                key: key.into(),
                column: column.into(),
                detail: detail.into(),
            });
        }
    }

    /// Counts the differences in keys `named` names (every key when `all`):
    /// change-log entries past the position the compared side stands at.
    pub(crate) fn settle_in_flight(&mut self, named: &BTreeSet<(String, String)>, all: bool) {
        self.in_flight = if self.differences as usize > self.differing.len() {
            None
        } else if all {
            Some(self.differences)
        } else {
            Some(self.differing.iter().filter(|k| named.contains(*k)).count() as u64)
        };
    }

    /// Whether every difference is in a key in flight (or there is none).
    pub fn is_equal_but_in_flight(&self) -> bool {
        self.differences == 0 || self.in_flight == Some(self.differences)
    }

    fn compare(&mut self, a: &KeyRow, b: &KeyRow) {
        for (col, differs) in [
            ("request_hash", a.request_hash != b.request_hash),
            ("status_code", a.status_code != b.status_code),
            ("response_body", a.response_body != b.response_body),
        ] {
            if differs {
                self.differ(&a.scope, &a.key, col, "values differ");
            }
        }
    }
}

/// Compares the keys a change log names on both sides (all of them when it
/// names every key), inside the caller's SQLite snapshot.
pub(crate) fn verify_named(
    src: &mut SqliteConnection,
    pg: &mut PgConnection,
    wanted: &BTreeSet<(String, String)>,
    all: bool,
) -> Result<KeysVerify> {
    if all {
        return verify(src, pg);
    }
    let ours = read_sqlite(src, wanted, false)?;
    let theirs = read_pg(pg, wanted)?;
    let theirs: BTreeMap<(String, String), KeyRow> =
        theirs.present.into_iter().map(|r| (r.id(), r)).collect();
    let mut out = KeysVerify {
        sqlite_keys: ours.present.len() as u64,
        postgres_keys: theirs.len() as u64,
        ..Default::default()
    };
    for a in &ours.present {
        match theirs.get(&a.id()) {
            Some(b) => out.compare(a, b),
            None => out.differ(&a.scope, &a.key, "*", "missing on postgres"),
        }
    }
    for (scope, key) in &ours.gone {
        if theirs.contains_key(&(scope.clone(), key.clone())) {
            out.differ(scope, key, "*", "gone from sqlite, on postgres");
        }
    }
    Ok(out)
}

/// Compares the finished keys of both sides by one merge in `(scope, key)`
/// byte order: SQLite's in pages (inside the caller's snapshot), PostgreSQL's
/// streamed in the `C` collation, which orders text as bytes too.
pub(crate) fn verify(src: &mut SqliteConnection, pg: &mut PgConnection) -> Result<KeysVerify> {
    let mut out = KeysVerify::default();
    let mut theirs = keys::table
        .filter(keys::status_code.is_not_null())
        .order((
            sql::<Text>("scope COLLATE \"C\""),
            sql::<Text>("key COLLATE \"C\""),
        ))
        .select(KeyRow::as_select())
        .load_iter::<KeyRow, diesel::pg::PgRowByRowLoadingMode>(pg)?
        .peekable();
    each_sqlite_page(src, |page| {
        out.sqlite_keys += page.len() as u64;
        for a in page {
            merge_one(&mut out, a, &mut theirs)?;
        }
        Ok(())
    })?;
    for b in theirs {
        let b = b?;
        out.postgres_keys += 1;
        out.differ(&b.scope, &b.key, "*", "only on postgres");
    }
    Ok(out)
}

/// Meets one SQLite key with PostgreSQL's stream: the keys before it are
/// PostgreSQL's only, an equal one is compared.
fn merge_one(
    out: &mut KeysVerify,
    a: &KeyRow,
    theirs: &mut std::iter::Peekable<impl Iterator<Item = QueryResult<KeyRow>>>,
) -> Result<()> {
    let id = (a.scope.as_str(), a.key.as_str());
    loop {
        let next = match theirs.peek() {
            None => break,
            Some(Err(_)) => {
                theirs.next().transpose()?;
                continue;
            }
            Some(Ok(b)) => (b.scope.as_str(), b.key.as_str()).cmp(&id),
        };
        match next {
            std::cmp::Ordering::Less => {
                if let Some(b) = theirs.next().transpose()? {
                    out.postgres_keys += 1;
                    out.differ(&b.scope, &b.key, "*", "only on postgres");
                }
            }
            std::cmp::Ordering::Equal => {
                if let Some(b) = theirs.next().transpose()? {
                    out.postgres_keys += 1;
                    out.compare(a, &b);
                }
                return Ok(());
            }
            std::cmp::Ordering::Greater => break,
        }
    }
    out.differ(&a.scope, &a.key, "*", "missing on postgres");
    Ok(())
}
