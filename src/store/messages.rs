//! Messages: the turns of an interview.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::Store;
use crate::error::{Error, Result};
use crate::schema::{messages, sessions};
use crate::timestamp;
use crate::types::{uuid_key, DbTimestamp, DbUuid, DbUuidKey, StoredUuid};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The person being interviewed.
    User,
    /// The interviewer.
    Assistant,
}

impl Role {
    /// `"user"` or `"assistant"`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            other => Err(Error::invalid(
                "role",
                format!(
                    "{:?} is neither \"user\" nor \"assistant\"",
                    timestamp::shorten(other, 40)
                ),
            )),
        }
    }
}

/// One turn of an interview.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// Increases in append order.
    pub id: i64,
    /// The session it belongs to.
    pub session_id: Uuid,
    /// Who wrote it.
    pub role: Role,
    /// What was said.
    pub text: String,
    /// When it was appended.
    pub created_at: DateTime<Utc>,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = messages)]
// Plain binds, no DEFAULT placeholders: binary COPY needs every value.
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct MessageRow {
    pub id: i64,
    pub session_id: DbUuid,
    pub role: String,
    pub text: String,
    pub created_at: DbTimestamp,
}

impl TryFrom<MessageRow> for Message {
    type Error = Error;
    fn try_from(r: MessageRow) -> Result<Self> {
        let role = r.role.parse::<Role>().map_err(|e| {
            // A stored row the store cannot represent is a database problem, not the caller's.
            Error::Corrupt {
                what: format!("messages row {}", r.id),
                reason: e.to_string(),
            }
        })?;
        Ok(Message {
            id: r.id,
            session_id: r.session_id.0,
            role,
            text: r.text,
            created_at: r.created_at.0,
        })
    }
}

impl Store {
    /// Appends a message to a session and bumps the session's `updated_at`, in one transaction.
    ///
    /// Fails with [`Error::NotFound`] for an unknown session and
    /// [`Error::InvalidInput`] for text over the size limit or with a NUL character.
    pub fn append_message(&self, session_id: Uuid, role: Role, text: &str) -> Result<Message> {
        self.check_text("text", text)?;
        self.write_in(
            |_| Some(session_id),
            |conn, _| append_in(conn, session_id, role, text),
        )
    }

    /// Appends several messages in order and, if given, sets the summary: all or nothing.
    ///
    /// A chat turn (the user's message, the interviewer's reply and the new
    /// summary) goes through here, so a write pause or a failure never
    /// leaves half a turn stored.
    ///
    /// ```
    /// use interview_store::{Role, Store, StoreConfig};
    /// # fn main() -> interview_store::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = Store::connect(dir.path().join("i.db").to_str().unwrap(), StoreConfig::default())?;
    /// # store.migrate()?;
    /// let (session, _opening) = store.start_session_with(Role::Assistant, "What did you build?")?;
    /// let turn = store.append_messages(
    ///     session.id,
    ///     &[(Role::User, "A billing pipeline."), (Role::Assistant, "What was hardest?")],
    ///     Some("Built a billing pipeline."),
    /// )?;
    /// assert_eq!(turn[1].text, "What was hardest?");
    /// assert_eq!(store.get_session(session.id)?.messages.len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn append_messages(
        &self,
        session_id: Uuid,
        turns: &[(Role, &str)],
        summary: Option<&str>,
    ) -> Result<Vec<Message>> {
        self.check_turns(turns, summary)?;
        self.write_in(
            |_| Some(session_id),
            |conn, _| append_turns_in(conn, session_id, turns, summary),
        )
    }

    pub(crate) fn check_turns(&self, turns: &[(Role, &str)], summary: Option<&str>) -> Result<()> {
        for (_, text) in turns {
            self.check_text("text", text)?;
        }
        if let Some(s) = summary {
            self.check_text("summary", s)?;
        }
        Ok(())
    }
}

/// Appends a turn and sets the summary inside the caller's write transaction.
pub(crate) fn append_turns_in(
    conn: &mut crate::AnyConnection,
    session_id: Uuid,
    turns: &[(Role, &str)],
    summary: Option<&str>,
) -> Result<Vec<Message>> {
    let stored = turns
        .iter()
        .map(|(role, text)| append_in(conn, session_id, *role, text))
        .collect::<Result<Vec<_>>>()?;
    if let Some(s) = summary {
        diesel::update(sessions::table.filter(uuid_key(sessions::id).eq(DbUuidKey(session_id))))
            .set(sessions::summary.eq(s))
            .execute(conn)?;
    }
    Ok(stored)
}

/// Appends one message inside the caller's write transaction.
pub(crate) fn append_in(
    conn: &mut crate::AnyConnection,
    session_id: Uuid,
    role: Role,
    text: &str,
) -> Result<Message> {
    // Lock the session row first (a no-op update): concurrent appends to
    // one session then queue here, and the time read after the lock
    // gives ids, created_at and updated_at all in commit order.
    // The session is found by UUID; the message then names it by the row's own
    // spelling (see `StoredUuid`), and later statements use the primary key.
    let stored = lock_session(conn, session_id)?;
    let now = timestamp::now();
    // Column tuple, not a derived `Insertable`, so PostgreSQL reuses the
    // prepared statement (see `start_session`).
    let id = diesel::insert_into(messages::table)
        .values((
            messages::session_id.eq(&stored),
            messages::role.eq(role.as_str()),
            messages::text.eq(text),
            messages::created_at.eq(DbTimestamp(now)),
        ))
        .returning(messages::id)
        .get_result::<i64>(conn)?;
    diesel::update(sessions::table.filter(sessions::id.eq(&stored)))
        .set(sessions::updated_at.eq(DbTimestamp(now)))
        .execute(conn)?;
    Ok(Message {
        id,
        session_id,
        role,
        text: text.to_string(),
        created_at: now,
    })
}

/// Locks the session `id` for the caller's write transaction (a no-op update) and
/// returns its id as stored; [`Error::NotFound`] when there is none.
pub(crate) fn lock_session(conn: &mut crate::AnyConnection, id: Uuid) -> Result<StoredUuid> {
    let mut rows: Vec<StoredUuid> =
        diesel::update(sessions::table.filter(uuid_key(sessions::id).eq(DbUuidKey(id))))
            .set(sessions::updated_at.eq(sessions::updated_at))
            .returning(sessions::id)
            .get_results(conn)?;
    match rows.len() {
        0 => Err(Error::not_found(format!("session {id}"))),
        1 => Ok(rows.remove(0)),
        // Only SQLite can hold them; the caller's transaction is rolled back.
        _ => Err(Error::Corrupt {
            what: format!("session {id}"),
            reason: "several sessions rows hold this UUID, spelled differently".into(),
        }),
    }
}
