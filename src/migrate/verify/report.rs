//! The one report of every row comparison: verify's full scan, and the
//! switch's bounded checks in both directions, count and list differences
//! through it, so a difference means the same wherever it was found and
//! the rows in flight are told apart in one place.

use std::collections::HashSet;

use uuid::Uuid;

use crate::migrate::changelog::Changes;
use crate::migrate::keys::{KeysVerify, LISTED, TRACKED};
use crate::migrate::source::Table;
use crate::types::read_legacy_uuid;

/// What a bounded check found (the switch's under traffic, either way): the
/// rows the change log named, compared, in the one report verify gives.
#[derive(Debug, Default)]
pub(crate) struct BoundedCheck {
    /// The differences, counted and listed as verify counts and lists them.
    pub report: VerifyReport,
    /// Rows compared: named by the log, on either side or none.
    pub rows: u64,
}

/// One row that differs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowDifference {
    /// The table.
    pub table: Table,
    /// The row's key: the session UUID or the message/draft id.
    pub id: String,
    /// The column that differs, or `*` for a row on one side only.
    pub column: String,
    /// What differs.
    pub detail: String,
}

impl std::fmt::Display for RowDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}: {}",
            self.table, self.id, self.column, self.detail
        )
    }
}

/// One table's side-by-side figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableVerify {
    /// Every row in SQLite, by `count(*)` with no condition (invalid ones included).
    pub sqlite_count: u64,
    /// Every row in PostgreSQL, by `count(*)` with no condition.
    pub postgres_count: u64,
    /// Valid rows in SQLite, as the row comparison read them.
    pub sqlite_rows: u64,
    /// Rows in PostgreSQL, as the row comparison read them.
    pub postgres_rows: u64,
    /// SQLite rows recorded as rejected by copy or sync (not differences).
    pub rejected: u64,
    /// Rows that differ, are missing on one side, or are invalid without a recorded
    /// reject; plus one for each `count(*)` that disagrees (verify counts apart from the rows).
    pub differences: u64,
    /// Checksum over the normalised SQLite rows (order-independent).
    pub sqlite_checksum: String,
    /// Checksum over the PostgreSQL rows.
    pub postgres_checksum: String,
}

/// What [`verify`](fn@crate::migrate::verify) found, and what the bounded checks find.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Sessions, messages, drafts.
    pub sessions: TableVerify,
    /// Messages.
    pub messages: TableVerify,
    /// Drafts.
    pub drafts: TableVerify,
    /// Sessions whose messages differ (other ids, or in another order).
    pub sessions_with_message_differences: u64,
    /// The first `LISTED` differences.
    pub differences: Vec<RowDifference>,
    /// The finished idempotency keys, compared apart (see `migrate::keys`).
    pub idempotency_keys: KeysVerify,
    /// Of the differences, those in rows SQLite's change log names past the
    /// mark PostgreSQL has applied: written while the verify ran (or not yet
    /// synced), so not a fault of the copy. `None` when too many rows differ
    /// to tell.
    pub in_flight: Option<u64>,
    /// The change-log position up to which both sides were found equal, the
    /// rows in flight aside; recorded for a switch under traffic, which
    /// compares only the rows named after it. `None` when they differ.
    pub verified_upto: Option<i64>,
    /// After the switch: the transaction horizon up to which both sides were
    /// found equal, the rows in flight aside; a switch back under traffic
    /// compares only the rows PostgreSQL's log names from it on.
    pub verified_horizon: Option<i64>,
    /// Time taken, in milliseconds.
    pub elapsed_ms: u64,
    /// The rows that differ, up to `TRACKED`, to tell the ones in flight.
    #[serde(skip)]
    differing: Vec<Differing>,
}

/// What kind of difference a [`VerifyReport`] remembers, to tell the ones in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A column of a row on both sides.
    Column,
    /// A row on one side only.
    OneSided,
    /// The tables' `count(*)` differ: in flight only when every row on one
    /// side only is (the comparison read every row, so they make up the gap).
    Count,
    /// The row comparison read other rows than `count(*)` counts: a fault of
    /// the reader, never in flight.
    Scan,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Differing {
    table: Table,
    id: String,
    kind: Kind,
}

impl VerifyReport {
    /// Whether both sides hold the same data, rejected rows aside.
    pub fn is_equal(&self) -> bool {
        self.sessions.differences == 0
            && self.messages.differences == 0
            && self.drafts.differences == 0
            && self.idempotency_keys.differences == 0
    }

    pub(super) fn table(&mut self, t: Table) -> &mut TableVerify {
        match t {
            Table::Sessions => &mut self.sessions,
            Table::Messages => &mut self.messages,
            Table::Drafts => &mut self.drafts,
        }
    }

    /// Every difference counted: rows of the three tables, and idempotency keys.
    pub fn total_differences(&self) -> u64 {
        self.sessions.differences
            + self.messages.differences
            + self.drafts.differences
            + self.idempotency_keys.differences
    }

    /// The count and the first few differences, for a refusal's message.
    pub fn describe(&self) -> String {
        let rows = self.sessions.differences + self.messages.differences + self.drafts.differences;
        let shown: Vec<String> = self
            .differences
            .iter()
            .take(5)
            .map(|d| d.to_string())
            .chain(
                self.idempotency_keys
                    .listed
                    .iter()
                    .take(5)
                    .map(|d| d.to_string()),
            )
            .collect();
        format!(
            "{rows} row(s) and {} idempotency key(s) differ: {}",
            self.idempotency_keys.differences,
            shown.join("; ")
        )
    }

    /// Whether every difference is in a row written since the mark
    /// PostgreSQL applied (a follower is behind by those rows, nothing else).
    pub fn is_equal_but_in_flight(&self) -> bool {
        let all = self.sessions.differences + self.messages.differences + self.drafts.differences;
        self.idempotency_keys.is_equal_but_in_flight() && self.in_flight == Some(all)
    }

    /// Counts the differences in rows named by `named` (log entries past the applied mark).
    pub(crate) fn settle_in_flight(&mut self, named: &Changes) {
        // Keys in flight are excused as rows are: an answered retry is a write.
        self.idempotency_keys
            .settle_in_flight(&named.keys, named.all_keys);
        let all = self.sessions.differences + self.messages.differences + self.drafts.differences;
        if all as usize > self.differing.len() {
            self.in_flight = None;
            return;
        }
        let sessions: HashSet<Uuid> = named
            .sessions
            .iter()
            .filter_map(|k| read_legacy_uuid(k.as_bytes()).ok())
            .collect();
        let is_named = |d: &Differing| match d.table {
            Table::Sessions => {
                read_legacy_uuid(d.id.as_bytes()).is_ok_and(|u| sessions.contains(&u))
            }
            Table::Messages | Table::Drafts => {
                d.id.parse::<i64>()
                    .is_ok_and(|i| named.children(d.table).contains(&i))
            }
        };
        // A row differing in two columns is one difference per column.
        let mut in_flight = 0u64;
        let mut settled_one_sided = [true; 3];
        for d in &self.differing {
            match d.kind {
                Kind::Column | Kind::OneSided if is_named(d) => in_flight += 1,
                Kind::OneSided => settled_one_sided[d.table as usize] = false,
                _ => {}
            }
        }
        in_flight += self
            .differing
            .iter()
            .filter(|d| d.kind == Kind::Count && settled_one_sided[d.table as usize])
            .count() as u64;
        self.in_flight = Some(in_flight);
    }

    pub(crate) fn differ(
        &mut self,
        table: Table,
        id: String,
        column: &str,
        detail: impl Into<String>,
    ) {
        let kind = if column == "*" {
            Kind::OneSided
        } else {
            Kind::Column
        };
        self.remember(table, id, kind, column, detail.into());
    }

    pub(super) fn remember(
        &mut self,
        table: Table,
        id: String,
        kind: Kind,
        column: &str,
        detail: String,
    ) {
        self.table(table).differences += 1;
        if self.differing.len() < TRACKED {
            self.differing.push(Differing {
                table,
                id: id.clone(),
                kind,
            });
        }
        if self.differences.len() < LISTED {
            self.differences.push(RowDifference {
                table,
                id,
                column: column.into(),
                detail,
            });
        }
    }

    /// Compares the row comparison's figures of one table with `count(*)` on
    /// each side; `invalid` SQLite rows are not expected on PostgreSQL.
    pub(super) fn check_counts(&mut self, table: Table, invalid: u64) {
        let t = self.table(table).clone();
        if t.sqlite_rows + invalid != t.sqlite_count {
            self.remember(
                table,
                "count(*)".into(),
                Kind::Scan,
                "*",
                format!(
                    "the row comparison read {} of sqlite's {} rows",
                    t.sqlite_rows + invalid,
                    t.sqlite_count
                ),
            );
        }
        if t.postgres_rows != t.postgres_count {
            self.remember(
                table,
                "count(*)".into(),
                Kind::Scan,
                "*",
                format!(
                    "the row comparison read {} of postgres's {} rows",
                    t.postgres_rows, t.postgres_count
                ),
            );
        }
        if t.sqlite_count.saturating_sub(invalid) != t.postgres_count {
            self.remember(
                table,
                "count(*)".into(),
                Kind::Count,
                "*",
                format!(
                    "count(*): sqlite {} ({invalid} invalid), postgres {}",
                    t.sqlite_count, t.postgres_count
                ),
            );
        }
    }
}
