//! Drafts: written-up answers composed from an interview.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::Text;
use uuid::Uuid;

use super::Store;
use crate::error::{Error, Result};
use crate::schema::{drafts, sessions};
use crate::types::sql::MultiTimestamp;
use crate::types::{uuid_key, DbTimestamp, DbUuid, DbUuidKey};

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
        self.write_in(
            |_| Some(session_id),
            |conn, now| save_draft_in(conn, now, session_id, content),
        )
    }

    /// The most recently saved draft of a session, if any.
    pub fn latest_draft(&self, session_id: Uuid) -> Result<Option<Draft>> {
        self.read_session(session_id, |conn| {
            Ok(drafts::table
                .filter(uuid_key(drafts::session_id).eq(DbUuidKey(session_id)))
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
    // INSERT ... SELECT from the session found by UUID: the draft names its session
    // the way the session's row spells it (a legacy file may use 32 hex digits, upper
    // case...), which SQLite's foreign key and the legacy service both compare as text;
    // and no row is inserted when there is no such session. One statement, as before.
    let ids = diesel::insert_into(drafts::table)
        .values(
            sessions::table
                .filter(uuid_key(sessions::id).eq(DbUuidKey(session_id)))
                .select((
                    sessions::id,
                    content.into_sql::<Text>(),
                    DbTimestamp(now).into_sql::<MultiTimestamp>(),
                )),
        )
        .into_columns((drafts::session_id, drafts::content, drafts::created_at))
        .returning(drafts::id)
        .get_results::<i64>(conn)
        .map_err(|e| match e {
            // Both backends enforce the foreign key (SQLite through PRAGMA foreign_keys).
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
                Error::not_found(format!("session {session_id}"))
            }
            other => Error::from(other),
        })?;
    let id = match ids[..] {
        [] => return Err(Error::not_found(format!("session {session_id}"))),
        [id] => id,
        // Only SQLite can hold them; the caller's transaction is rolled back.
        _ => {
            return Err(Error::Corrupt {
                what: format!("session {session_id}"),
                reason: "several sessions rows hold this UUID, spelled differently".into(),
            })
        }
    };
    Ok(Draft {
        id,
        session_id,
        content: content.to_string(),
        created_at: now,
    })
}
