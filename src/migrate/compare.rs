//! The dual-read check: the same sessions read through the repository on both backends.

use std::path::Path;

use uuid::Uuid;

use super::sample::{self, SampleSource, SessionRead};
use crate::error::{Error, Result};
use crate::store::{Draft, SessionWithMessages, Store};

/// Which sessions [`compare`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Up to this many sessions picked at random from the first store.
    Sample(i64),
    /// Exactly these sessions.
    Sessions(Vec<Uuid>),
}

/// One way in which the two sides disagree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// The session read.
    pub session: Uuid,
    /// What differs, e.g. `message 41 text` or `missing on postgres`.
    pub what: String,
}

/// The result of [`compare`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompareReport {
    /// Sessions read on both sides.
    pub sessions: usize,
    /// Messages compared.
    pub messages: usize,
    /// Every disagreement found.
    pub differences: Vec<Difference>,
}

impl CompareReport {
    /// Whether both sides returned the same domain objects.
    pub fn is_equal(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Reads the selected sessions through `left` and `right` and lists every difference.
///
/// Compares what the application sees: the session's fields, its messages in
/// order (id, role, text, created_at) and its latest draft. A read that fails
/// on one side is a difference, not an abort, so one bad row does not hide
/// the rest.
///
/// Each session is read on its own through the store, which needs the index on
/// `messages(session_id)` that the store's migrations make; for a legacy file
/// as the old service left it, use [`compare_file`].
pub fn compare(left: &Store, right: &Store, selection: &Selection) -> Result<CompareReport> {
    let ids = match selection {
        Selection::Sample(n) => left.sample_session_ids(*n)?,
        Selection::Sessions(ids) => ids.clone(),
    };
    let sides = (left.backend().as_str(), right.backend().as_str());
    let mut report = CompareReport::default();
    for id in ids {
        tally(&mut report, sides, id, read(left, id), read(right, id));
    }
    Ok(report)
}

/// Like [`compare`], with the left side a SQLite file, and both sides read
/// in one pass per 1,000 sampled sessions (250 where the file has the indexes
/// [`super::index_source`] makes) rather than one read per session.
///
/// A legacy file has no index on `messages(session_id)` (the old service never
/// made one), so a read per session would scan every message once per session.
/// The file is opened read-only in effect (nothing is created or written),
/// without the store's memory map, so memory stays that of the sessions read.
///
/// ```no_run
/// use interview_store::migrate::{compare_file, Selection};
/// let pg = interview_store::Store::connect("postgres://app@db/interview", Default::default())?;
/// let report = compare_file("interview.db".as_ref(), &pg, &Selection::Sample(1000))?;
/// assert!(report.is_equal(), "{:?}", report.differences);
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn compare_file(sqlite: &Path, right: &Store, selection: &Selection) -> Result<CompareReport> {
    let mut left = SampleSource::open(sqlite)?;
    let ids = match selection {
        Selection::Sample(n) => left.sample_ids(*n)?,
        Selection::Sessions(ids) => ids.clone(),
    };
    let sides = ("sqlite", right.backend().as_str());
    let mut report = CompareReport::default();
    let per_pass = if left.indexed {
        sample::INDEXED_CHUNK
    } else {
        sample::CHUNK
    };
    for chunk in ids.chunks(per_pass) {
        let mut ours = left.read(chunk);
        // The other side in bulk too: one round trip per table, not two per session.
        let mut theirs = right.with_connection(|conn| Ok(sample::read_sessions(conn, chunk)))?;
        for &id in chunk {
            let take = |found: &mut std::collections::HashMap<Uuid, SessionRead>| {
                found
                    .remove(&id)
                    .unwrap_or_else(|| Err(Error::not_found(format!("session {id}"))))
            };
            let (a, b) = (take(&mut ours), take(&mut theirs));
            tally(&mut report, sides, id, a, b);
        }
    }
    Ok(report)
}

/// Adds one session's two reads to the report.
fn tally(
    report: &mut CompareReport,
    (l, r): (&str, &str),
    id: Uuid,
    a: SessionRead,
    b: SessionRead,
) {
    let mut differ = |what: String| report.differences.push(Difference { session: id, what });
    match (a, b) {
        (Ok((sa, da)), Ok((sb, db))) => {
            diff_session(&sa, &sb, &mut differ);
            diff_draft(da.as_ref(), db.as_ref(), &mut differ);
            report.sessions += 1;
            report.messages += sa.messages.len();
        }
        (Err(Error::NotFound { .. }), Ok(_)) => differ(format!("missing on {l}")),
        (Ok(_), Err(Error::NotFound { .. })) => differ(format!("missing on {r}")),
        (Err(e), Ok(_)) => differ(format!("unreadable on {l}: {e}")),
        (Ok(_), Err(e)) => differ(format!("unreadable on {r}: {e}")),
        (Err(e1), Err(e2)) => differ(format!("unreadable on both: {l}: {e1}; {r}: {e2}")),
    }
}

fn read(store: &Store, id: Uuid) -> SessionRead {
    Ok((store.get_session(id)?, store.latest_draft(id)?))
}

fn diff_session(a: &SessionWithMessages, b: &SessionWithMessages, differ: &mut impl FnMut(String)) {
    if a.session.created_at != b.session.created_at {
        differ(format!(
            "created_at {} vs {}",
            a.session.created_at, b.session.created_at
        ));
    }
    if a.session.updated_at != b.session.updated_at {
        differ(format!(
            "updated_at {} vs {}",
            a.session.updated_at, b.session.updated_at
        ));
    }
    if a.session.summary != b.session.summary {
        differ("summary".to_string());
    }
    if a.messages.len() != b.messages.len() {
        differ(format!(
            "{} messages vs {}",
            a.messages.len(),
            b.messages.len()
        ));
    }
    for (ma, mb) in a.messages.iter().zip(&b.messages) {
        if ma.id != mb.id {
            differ(format!("message order: id {} vs {}", ma.id, mb.id));
            break;
        }
        for (field, same) in [
            ("role", ma.role == mb.role),
            ("text", ma.text == mb.text),
            ("created_at", ma.created_at == mb.created_at),
        ] {
            if !same {
                differ(format!("message {} {field}", ma.id));
            }
        }
    }
}

fn diff_draft(a: Option<&Draft>, b: Option<&Draft>, differ: &mut impl FnMut(String)) {
    match (a, b) {
        (None, None) => {}
        (Some(a), Some(b)) if a == b => {}
        (Some(a), Some(b)) => differ(format!("latest draft {} vs {}", a.id, b.id)),
        (Some(a), None) => differ(format!("latest draft {} missing on one side", a.id)),
        (None, Some(b)) => differ(format!("latest draft {} missing on one side", b.id)),
    }
}
