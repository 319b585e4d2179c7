//! Idempotency keys: a retried write stores nothing twice and gets the first answer.
//!
//! A request carrying a key first [claims](Store::claim_idempotency_key) it in
//! its own short transaction (the row says "running"), then does its write
//! through one of the `*_once` methods, which record the response in the same
//! transaction as the write. So a crash leaves either the write and its
//! response, or neither; a retry then replays the response or runs afresh.
//! Claims are held by a token: a claim older than the lease may be taken over
//! (its holder crashed), and the old holder's write is then rolled back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use uuid::Uuid;

use super::{Draft, Message, Role, Session, Store};
use crate::error::{Error, Refusal, Result};
use crate::schema::idempotency_keys as keys;
use crate::types::{DbTimestamp, DbUuid};

/// How long claims and recorded responses are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    /// A claim older than this whose request has not answered is taken to be
    /// abandoned, and a retry may run in its place.
    pub lease: Duration,
    /// How long a recorded response is replayed; older keys count as new and are pruned.
    pub retention: Duration,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        KeyPolicy {
            lease: Duration::from_secs(60),
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// A response recorded under a key: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// HTTP status code.
    pub status: u16,
    /// Response body, as sent.
    pub body: String,
}

/// The right to run a request under a key, and to record its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    scope: String,
    key: String,
    token: Uuid,
}

/// What [`Store::claim_idempotency_key`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is new (or its previous holder gave up): run the request.
    Run(Ticket),
    /// The same request already answered: send this again, store nothing.
    Replay(Recorded),
    /// The same request is still running.
    InProgress,
    /// The key was used with a different request body.
    Mismatch,
}

#[derive(Queryable)]
struct KeyRow {
    request_hash: String,
    status_code: Option<i32>,
    response_body: Option<String>,
    created_at: DbTimestamp,
    claimed_at: DbTimestamp,
}

fn ago(now: DateTime<Utc>, d: Duration) -> DbTimestamp {
    DbTimestamp(now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
}

impl Store {
    /// Claims `key` in `scope` (e.g. the endpoint) for a request whose body hashes to `request_hash`.
    ///
    /// ```
    /// use interview_store::{Claim, KeyPolicy, Recorded, Role, Store, StoreConfig};
    /// # fn main() -> interview_store::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = Store::connect(dir.path().join("i.db").to_str().unwrap(), StoreConfig::default())?;
    /// # store.migrate()?;
    /// let policy = KeyPolicy::default();
    /// let Claim::Run(ticket) = store.claim_idempotency_key("start", "k1", "hash", policy)? else { panic!() };
    /// store.start_session_once(&ticket, Role::Assistant, "Hello", |_| Recorded { status: 201, body: "{}".into() })?;
    /// let again = store.claim_idempotency_key("start", "k1", "hash", policy)?;
    /// assert_eq!(again, Claim::Replay(Recorded { status: 201, body: "{}".into() }));
    /// assert_eq!(store.claim_idempotency_key("start", "k1", "other", policy)?, Claim::Mismatch);
    /// assert_eq!(store.counts()?.sessions, 1);
    /// # Ok(()) }
    /// ```
    pub fn claim_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        request_hash: &str,
        policy: KeyPolicy,
    ) -> Result<Claim> {
        match self.write(|conn, now| claim_in(conn, now, scope, key, request_hash, policy)) {
            // Two first claims raced on PostgreSQL; the loser now sees the winner's row.
            Err(Error::Database(DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                _,
            ))) => self.write(|conn, now| claim_in(conn, now, scope, key, request_hash, policy)),
            other => other,
        }
    }

    /// Gives a claim up after its request failed without storing anything, so a retry runs at once.
    pub fn release_idempotency_key(&self, ticket: &Ticket) -> Result<()> {
        self.write(|conn, _| {
            diesel::delete(
                keys::table
                    .filter(keys::scope.eq(&ticket.scope))
                    .filter(keys::key.eq(&ticket.key))
                    .filter(keys::token.eq(DbUuid(ticket.token)))
                    .filter(keys::status_code.is_null()),
            )
            .execute(conn)?;
            Ok(())
        })
    }

    /// Deletes keys first claimed more than `retention` ago; returns how many.
    pub fn prune_idempotency_keys(&self, retention: Duration) -> Result<usize> {
        self.write(|conn, now| {
            Ok(
                diesel::delete(keys::table.filter(keys::created_at.lt(ago(now, retention))))
                    .execute(conn)?,
            )
        })
    }

    /// [`Store::start_session_with`], recording `respond`'s answer under `ticket` in the same transaction.
    pub fn start_session_once(
        &self,
        ticket: &Ticket,
        role: Role,
        text: &str,
        respond: impl FnOnce(&(Session, Message)) -> Recorded,
    ) -> Result<(Session, Message)> {
        self.check_text("text", text)?;
        self.write_in(
            |(s, _): &(Session, Message)| Some(s.id),
            |conn, now| {
                let done = super::sessions::start_with_in(conn, now, role, text)?;
                complete_in(conn, now, ticket, respond(&done))?;
                Ok(done)
            },
        )
    }

    /// [`Store::append_messages`], recording `respond`'s answer under `ticket` in the same transaction.
    pub fn append_messages_once(
        &self,
        ticket: &Ticket,
        session_id: Uuid,
        turns: &[(Role, &str)],
        summary: Option<&str>,
        respond: impl FnOnce(&[Message]) -> Recorded,
    ) -> Result<Vec<Message>> {
        self.check_turns(turns, summary)?;
        self.write_in(
            |_| Some(session_id),
            |conn, now| {
                let done = super::messages::append_turns_in(conn, session_id, turns, summary)?;
                complete_in(conn, now, ticket, respond(&done))?;
                Ok(done)
            },
        )
    }

    /// [`Store::save_draft`], recording `respond`'s answer under `ticket` in the same transaction.
    pub fn save_draft_once(
        &self,
        ticket: &Ticket,
        session_id: Uuid,
        content: &str,
        respond: impl FnOnce(&Draft) -> Recorded,
    ) -> Result<Draft> {
        self.check_text("content", content)?;
        self.write_in(
            |_| Some(session_id),
            |conn, now| {
                let done = super::drafts::save_draft_in(conn, now, session_id, content)?;
                complete_in(conn, now, ticket, respond(&done))?;
                Ok(done)
            },
        )
    }
}

fn claim_in(
    conn: &mut crate::AnyConnection,
    now: DateTime<Utc>,
    scope: &str,
    key: &str,
    request_hash: &str,
    policy: KeyPolicy,
) -> Result<Claim> {
    let this = keys::table
        .filter(keys::scope.eq(scope))
        .filter(keys::key.eq(key));
    let row: Option<KeyRow> = this
        .select((
            keys::request_hash,
            keys::status_code,
            keys::response_body,
            keys::created_at,
            keys::claimed_at,
        ))
        .first(conn)
        .optional()
        .map_err(|e| Error::from(e).reading(|| format!("idempotency key {scope} {key:?}")))?;
    let token = Uuid::new_v4();
    let ticket = Ticket {
        scope: scope.to_string(),
        key: key.to_string(),
        token,
    };
    let Some(row) = row.filter(|r| r.created_at.0 >= ago(now, policy.retention).0) else {
        // New, or past its retention: the key starts over.
        diesel::delete(this).execute(conn)?;
        diesel::insert_into(keys::table)
            .values((
                keys::scope.eq(scope),
                keys::key.eq(key),
                keys::request_hash.eq(request_hash),
                keys::token.eq(DbUuid(token)),
                keys::created_at.eq(DbTimestamp(now)),
                keys::claimed_at.eq(DbTimestamp(now)),
            ))
            .execute(conn)?;
        return Ok(Claim::Run(ticket));
    };
    if row.request_hash != request_hash {
        return Ok(Claim::Mismatch);
    }
    if let (Some(status), Some(body)) = (row.status_code, row.response_body) {
        let status = u16::try_from(status).map_err(|_| Error::Corrupt {
            what: format!("idempotency key {scope} {key:?}"),
            reason: format!("status code {status}"),
        })?;
        return Ok(Claim::Replay(Recorded { status, body }));
    }
    if row.claimed_at.0 >= ago(now, policy.lease).0 {
        return Ok(Claim::InProgress);
    }
    // The holder has not answered within the lease: it is gone, or will find its claim lost.
    diesel::update(this)
        .set((
            keys::token.eq(DbUuid(token)),
            keys::claimed_at.eq(DbTimestamp(now)),
        ))
        .execute(conn)?;
    Ok(Claim::Run(ticket))
}

fn complete_in(
    conn: &mut crate::AnyConnection,
    now: DateTime<Utc>,
    ticket: &Ticket,
    recorded: Recorded,
) -> Result<()> {
    let updated = diesel::update(
        keys::table
            .filter(keys::scope.eq(&ticket.scope))
            .filter(keys::key.eq(&ticket.key))
            .filter(keys::token.eq(DbUuid(ticket.token)))
            .filter(keys::status_code.is_null()),
    )
    .set((
        keys::status_code.eq(i32::from(recorded.status)),
        keys::response_body.eq(recorded.body),
        keys::completed_at.eq(DbTimestamp(now)),
    ))
    .execute(conn)?;
    if updated == 0 {
        // Rolls the write back: a retry took the key over and answers for it.
        return Err(Error::refused(Refusal::Moved, format!(
            "idempotency key {:?} was taken over by a retry after its lease ran out; nothing was stored",
            ticket.key
        )));
    }
    Ok(())
}
