//! The normalisation rules: how a raw legacy SQLite row becomes a PostgreSQL row, or a reject.
//!
//! The rules (also in docs/design.md, "Normalisation rules"):
//! - timestamps: see [`crate::timestamp`]; empty, NULL or numeric values are invalid;
//! - UUIDs: any form [`crate::types::read_legacy_uuid`] accepts, stored canonical; two
//!   sessions whose ids are the same UUID are both invalid;
//! - `role` is exactly `user` or `assistant`;
//! - NULL `text`/`content` is invalid, empty is valid; text with a NUL byte
//!   or invalid UTF-8 is invalid (PostgreSQL accepts neither);
//! - a NULL `summary` loads as `''` (and is counted);
//! - a message or draft whose session is missing or invalid is invalid.

use std::collections::HashMap;

use uuid::Uuid;

use super::source::{RawDraft, RawMessage, RawSession};
use crate::store::drafts::DraftRow;
use crate::store::messages::MessageRow;
use crate::store::sessions::SessionRow;
use crate::timestamp;
use crate::types::{DbTimestamp, DbUuid};

// The record of an invalid row lives beside the error that carries a list of
// them (`Error::InvalidSource`), below every module that reports one.
pub use crate::error::Reject;

/// How long a rejected value may be in reports.
const VALUE_SHOWN: usize = 80;

fn shown(bytes: &Option<Vec<u8>>) -> Option<String> {
    bytes
        .as_ref()
        // PostgreSQL text cannot hold NUL, and the value goes into the rejects table.
        .map(|b| timestamp::shorten(&String::from_utf8_lossy(b), VALUE_SHOWN).replace('\0', "\\0"))
}

struct Bad {
    column: &'static str,
    value: Option<String>,
    reason: String,
}

fn bad(column: &'static str, raw: &Option<Vec<u8>>, reason: impl Into<String>) -> Bad {
    Bad {
        column,
        value: shown(raw),
        reason: reason.into(),
    }
}

/// Takes the bytes over without copying them: text is most of the data.
fn text(column: &'static str, raw: Option<Vec<u8>>) -> Result<String, Bad> {
    let Some(b) = raw else {
        return Err(bad(column, &None, "is NULL"));
    };
    if b.contains(&0) {
        return Err(bad(column, &Some(b), "contains a NUL byte"));
    }
    String::from_utf8(b).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        bad(
            column,
            &Some(e.into_bytes()),
            format!("is not valid UTF-8 (byte {at})"),
        )
    })
}

fn time(column: &'static str, raw: &Option<Vec<u8>>) -> Result<DbTimestamp, Bad> {
    let Some(b) = raw else {
        return Err(bad(column, raw, "is NULL"));
    };
    timestamp::parse_bytes(b)
        .map(DbTimestamp)
        .ok_or_else(|| bad(column, raw, "is not an ISO-8601 timestamp"))
}

fn uuid(column: &'static str, raw: &Option<Vec<u8>>) -> Result<Uuid, Bad> {
    let Some(b) = raw else {
        return Err(bad(column, raw, "is NULL"));
    };
    // The one reader of stored ids, shared with the store (see crate::types).
    crate::types::read_legacy_uuid(b).map_err(|e| bad(column, raw, e.reason))
}

/// What the sessions of a source look like, from a first pass over them;
/// messages and drafts are judged against it.
#[derive(Debug, Default)]
pub(crate) struct SessionIndex {
    // UUID -> how many source sessions have it, and whether one of them is valid.
    seen: HashMap<Uuid, (u32, bool)>,
}

impl SessionIndex {
    /// Records a session of the first pass; returns its `updated_at` when it is valid on its own.
    pub(crate) fn add(&mut self, raw: &RawSession) -> Option<chrono::DateTime<chrono::Utc>> {
        let id = uuid("id", &raw.id).ok()?;
        let valid = validate_session(raw).ok();
        let e = self.seen.entry(id).or_insert((0, false));
        e.0 += 1;
        e.1 |= valid.is_some();
        valid.map(|s| s.row.updated_at.0)
    }

    /// Whether any session with this UUID was recorded.
    pub(crate) fn knows(&self, id: &Uuid) -> bool {
        self.seen.contains_key(id)
    }

    /// Why a child row's session cannot take it, or `None` when it can.
    fn refuses(&self, id: &Uuid) -> Option<String> {
        match self.seen.get(id) {
            None => Some(format!("session {id} does not exist")),
            Some((n, _)) if *n > 1 => {
                Some(format!("session {id} is invalid (its id is duplicated)"))
            }
            Some((_, false)) => Some(format!("session {id} is invalid")),
            Some(_) => None,
        }
    }

    /// Marks a session as loaded by someone else (e.g. already in PostgreSQL before a sync).
    pub(crate) fn insert_valid(&mut self, id: Uuid) {
        self.seen.entry(id).or_insert((1, true));
    }
}

/// A normalised session, and whether its summary was NULL.
pub(crate) struct NormalSession {
    pub row: SessionRow,
    pub null_summary: bool,
}

fn validate_session(raw: &RawSession) -> Result<NormalSession, Bad> {
    let id = uuid("id", &raw.id)?;
    let created_at = time("created_at", &raw.created_at)?;
    let updated_at = time("updated_at", &raw.updated_at)?;
    let (summary, null_summary) = match &raw.summary {
        None => (String::new(), true),
        s => (text("summary", s.clone())?, false),
    };
    Ok(NormalSession {
        row: SessionRow {
            id: DbUuid(id),
            created_at,
            updated_at,
            summary,
        },
        null_summary,
    })
}

fn source_key(raw: &Option<Vec<u8>>) -> String {
    shown(raw).unwrap_or_else(|| "NULL".into())
}

fn reject(table: &str, id: String, b: Bad) -> Reject {
    Reject {
        table: table.into(),
        id,
        column: b.column.into(),
        value: b.value,
        reason: b.reason,
    }
}

/// Normalises a session, judging duplicate ids against the first pass.
pub(crate) fn session(raw: &RawSession, index: &SessionIndex) -> Result<NormalSession, Reject> {
    let key = || source_key(&raw.id);
    let s = validate_session(raw).map_err(|b| reject("sessions", key(), b))?;
    if let Some((n, _)) = index.seen.get(&s.row.id.0) {
        if *n > 1 {
            return Err(reject(
                "sessions",
                key(),
                bad(
                    "id",
                    &raw.id,
                    format!("{n} sessions have the UUID {}", s.row.id.0),
                ),
            ));
        }
    }
    Ok(s)
}

fn child_session(index: &SessionIndex, raw: &Option<Vec<u8>>) -> Result<DbUuid, Bad> {
    let id = uuid("session_id", raw)?;
    match index.refuses(&id) {
        Some(reason) => Err(bad("session_id", raw, reason)),
        None => Ok(DbUuid(id)),
    }
}

/// Normalises a message.
pub(crate) fn message(raw: RawMessage, index: &SessionIndex) -> Result<MessageRow, Reject> {
    let id = raw.id;
    let go = || -> Result<MessageRow, Bad> {
        let session_id = child_session(index, &raw.session_id)?;
        let role = match raw.role.as_deref() {
            Some(b"user") => "user",
            Some(b"assistant") => "assistant",
            _ => {
                return Err(bad(
                    "role",
                    &raw.role,
                    "is neither \"user\" nor \"assistant\"",
                ))
            }
        };
        Ok(MessageRow {
            id,
            session_id,
            created_at: time("created_at", &raw.created_at)?,
            role: role.to_string(),
            text: text("text", raw.text)?,
        })
    };
    go().map_err(|b| reject("messages", id.to_string(), b))
}

/// Normalises a draft.
pub(crate) fn draft(raw: RawDraft, index: &SessionIndex) -> Result<DraftRow, Reject> {
    let id = raw.id;
    let go = || -> Result<DraftRow, Bad> {
        Ok(DraftRow {
            id,
            session_id: child_session(index, &raw.session_id)?,
            created_at: time("created_at", &raw.created_at)?,
            content: text("content", raw.content)?,
        })
    };
    go().map_err(|b| reject("drafts", id.to_string(), b))
}
