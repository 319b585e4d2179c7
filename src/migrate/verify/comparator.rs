//! The one rule of "equal". Every comparison pairs rows by key and hands each
//! pair here: verify's full scan, and the switch's bounded checks in both
//! directions ([`crate::migrate::recheck`], the way back's). So a row is equal
//! by the same columns, at the same precision (timestamps to the microsecond,
//! text byte for byte through its digest), wherever it is compared, and a
//! difference is counted and worded once.

use std::collections::HashSet;

use uuid::Uuid;

use super::report::VerifyReport;
use crate::migrate::digest::{Digest, SessionDigest};
use crate::migrate::id_merge::Pair;
use crate::migrate::source::Table;

/// Judges one session key: counted on the side(s) holding it, and every
/// column that differs (or the side missing it) is a difference.
pub(crate) fn session(report: &mut VerifyReport, pair: Pair<&SessionDigest>) {
    let table = Table::Sessions;
    let (s, p) = match pair {
        Pair::Both(s, p) => (s, p),
        Pair::SqliteOnly(s) => {
            report.table(table).sqlite_rows += 1;
            report.differ(table, s.id.to_string(), "*", "missing on postgres");
            return;
        }
        Pair::PostgresOnly(p) => {
            report.table(table).postgres_rows += 1;
            report.differ(table, p.id.to_string(), "*", "only on postgres");
            return;
        }
    };
    report.table(table).sqlite_rows += 1;
    report.table(table).postgres_rows += 1;
    let id = s.id.to_string();
    for (col, a, b) in [
        ("created_at", s.created_at, p.created_at),
        ("updated_at", s.updated_at, p.updated_at),
    ] {
        if a != b {
            report.differ(
                table,
                id.clone(),
                col,
                format!("sqlite {}, postgres {}", shown(a), shown(b)),
            );
        }
    }
    if s.summary_hash != p.summary_hash {
        report.differ(table, id, "summary", "text differs");
    }
}

/// Judges one message or draft key, as [`session`] does; a child that is
/// missing, extra or under another session marks its session(s) `uneven`.
pub(crate) fn child(
    report: &mut VerifyReport,
    uneven: &mut HashSet<Uuid>,
    table: Table,
    pair: Pair<&Digest>,
) {
    let (a, b) = match pair {
        Pair::Both(a, b) => (a, b),
        Pair::SqliteOnly(a) => {
            report.table(table).sqlite_rows += 1;
            report.differ(table, a.id.to_string(), "*", "missing on postgres");
            uneven.insert(a.session_id);
            return;
        }
        Pair::PostgresOnly(b) => {
            report.table(table).postgres_rows += 1;
            report.differ(table, b.id.to_string(), "*", "only on postgres");
            uneven.insert(b.session_id);
            return;
        }
    };
    report.table(table).sqlite_rows += 1;
    report.table(table).postgres_rows += 1;
    let body = if table == Table::Drafts {
        "content"
    } else {
        "text"
    };
    for (col, differs) in [
        ("session_id", a.session_id != b.session_id),
        ("role", a.role_hash != b.role_hash),
        (body, a.body_hash != b.body_hash),
        ("created_at", a.created_at != b.created_at),
    ] {
        if differs {
            report.differ(table, a.id.to_string(), col, "values differ");
            if col == "session_id" {
                uneven.insert(a.session_id);
            }
        }
    }
}

/// A timestamp in microseconds, as a difference shows it.
fn shown(t: i64) -> String {
    chrono::DateTime::from_timestamp_micros(t).map_or_else(|| t.to_string(), |t| format!("{t:?}"))
}
