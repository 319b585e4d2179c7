//! Drafts: written-up answers composed from an interview.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use uuid::Uuid;

use super::Store;
use crate::error::{Error, Result};
use crate::schema::drafts;
use crate::types::{DbTimestamp, DbUuid};

/// A written-up answer composed from a session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Draft {
    /// Increases in save order.
    pub id: i64,
    /// The session it was composed from.
    pub session_id: Uuid,
    /// The text of the draft.
    pub content: String,
    /// When it was saved.
    pub created_at: DateTime<Utc>,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = drafts)]
// Plain binds, no DEFAULT placeholders: binary COPY needs every value.
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct DraftRow {
    pub id: i64,
    pub session_id: DbUuid,
    pub content: String,
    pub created_at: DbTimestamp,
}

impl From<DraftRow> for Draft {
    fn from(r: DraftRow) -> Self {
        Draft {
            id: r.id,
            session_id: r.session_id.0,
            content: r.content,
            created_at: r.created_at.0,
        }
    }
}

impl Store {
    /// Saves a new draft for a session; earlier drafts are kept.
    ///
    /// Fails with [`Error::NotFound`] for an unknown session.
    pub fn save_draft(&self, session_id: Uuid, content: &str) -> Result<Draft> {
        self.check_text("content", content)?;
        self.write(|conn, now| save_draft_in(conn, now, session_id, content))
    }

    /// The most recently saved draft of a session, if any.
    pub fn latest_draft(&self, session_id: Uuid) -> Result<Option<Draft>> {
        self.read(|conn| {
            Ok(drafts::table
                .filter(drafts::session_id.eq(DbUuid(session_id)))
                .order(drafts::id.desc())
                .select(DraftRow::as_select())
                .first::<DraftRow>(conn)
                .optional()
                .map_err(|e| Error::from(e).reading(|| format!("drafts of session {session_id}")))?
                .map(Draft::from))
        })
    }
}

/// Inserts a draft inside the caller's write transaction.
pub(crate) fn save_draft_in(
    conn: &mut crate::AnyConnection,
    now: DateTime<Utc>,
    session_id: Uuid,
    content: &str,
) -> Result<Draft> {
    let id = diesel::insert_into(drafts::table)
        .values((
            drafts::session_id.eq(DbUuid(session_id)),
            drafts::content.eq(content),
            drafts::created_at.eq(DbTimestamp(now)),
        ))
        .returning(drafts::id)
        .get_result::<i64>(conn)
        .map_err(|e| match e {
            // Both backends enforce the foreign key (SQLite through PRAGMA foreign_keys).
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
                Error::not_found(format!("session {session_id}"))
            }
            other => Error::from(other),
        })?;
    Ok(Draft {
        id,
        session_id,
        content: content.to_string(),
        created_at: now,
    })
}
