//! The way back: copy what was written to PostgreSQL after the cutover into SQLite.

use chrono::{DateTime, Utc};
use diesel::dsl::{max, sql};
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text};

use crate::connection::Backend;
use crate::error::{Error, Result};
use crate::schema::{drafts, messages, sessions};
use crate::store::drafts::DraftRow;
use crate::store::messages::MessageRow;
use crate::store::sessions::SessionRow;
use crate::store::Store;
use crate::timestamp;
use crate::types::DbTimestamp;

const BATCH: i64 = 5_000;

/// Where SQLite stood before [`rollback_sync`] ran: everything past these marks came from PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct RollbackMarks {
    /// Latest `updated_at` of any session SQLite held.
    pub sessions_updated_at: Option<DateTime<Utc>>,
    /// Largest message id SQLite held.
    pub message_id: i64,
    /// Largest draft id SQLite held.
    pub draft_id: i64,
}

/// What [`rollback_sync`] copied into SQLite.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RollbackReport {
    /// SQLite's marks before the copy.
    pub marks: RollbackMarks,
    /// Sessions created on PostgreSQL after the cutover.
    pub sessions_inserted: u64,
    /// Sessions whose `updated_at` or summary changed on PostgreSQL.
    pub sessions_updated: u64,
    /// Messages copied.
    pub messages: u64,
    /// Drafts copied.
    pub drafts: u64,
}

/// Copies into `sqlite` everything written to `postgres` since SQLite was last in step.
///
/// Meant for the rollback after a cutover, with writes paused: new and
/// changed sessions (by `updated_at` past SQLite's latest), and messages and
/// drafts past SQLite's largest ids, all with their ids kept and written in
/// the canonical formats, in one SQLite transaction. Running it again copies
/// nothing twice.
///
/// Relies on the cutover's invariant: SQLite held everything PostgreSQL had
/// when the service switched, and PostgreSQL's ids continue after SQLite's.
pub fn rollback_sync(postgres: &Store, sqlite: &Store) -> Result<RollbackReport> {
    if postgres.backend() != Backend::Postgres || sqlite.backend() != Backend::Sqlite {
        return Err(Error::invalid(
            "stores",
            format!(
                "rollback-sync copies from postgres into sqlite, not from {} into {}",
                postgres.backend(),
                sqlite.backend()
            ),
        ));
    }
    let marks = sqlite.with_connection(read_marks)?;
    let mut report = RollbackReport {
        marks,
        ..Default::default()
    };

    let changed: Vec<SessionRow> = postgres.with_connection(|conn| {
        let mut q = sessions::table.select(SessionRow::as_select()).into_boxed();
        if let Some(t) = marks.sessions_updated_at {
            q = q.filter(sessions::updated_at.gt(DbTimestamp(t)));
        }
        Ok(q.order(sessions::updated_at.asc()).load(conn)?)
    })?;

    // SQLite is paused (or retired) at this point of a rollback: this one
    // transaction writes through the pause while every other writer stays refused.
    sqlite.with_connection(|conn| {
        crate::maintenance::write_while_paused(conn, |conn| {
            for row in &changed {
                let updated = diesel::update(sessions::table.find(row.id))
                    .set((
                        sessions::updated_at.eq(row.updated_at),
                        sessions::summary.eq(&row.summary),
                    ))
                    .execute(conn)?;
                if updated == 0 {
                    diesel::insert_into(sessions::table)
                        .values(row)
                        .execute(conn)?;
                    report.sessions_inserted += 1;
                } else {
                    report.sessions_updated += 1;
                }
            }
            let mut after = marks.message_id;
            loop {
                let batch: Vec<MessageRow> = postgres.with_connection(|pg| {
                    Ok(messages::table
                        .filter(messages::id.gt(after))
                        .order(messages::id.asc())
                        .limit(BATCH)
                        .select(MessageRow::as_select())
                        .load(pg)?)
                })?;
                let Some(last) = batch.last() else { break };
                after = last.id;
                for row in &batch {
                    diesel::insert_into(messages::table)
                        .values(row)
                        .execute(conn)?;
                }
                report.messages += batch.len() as u64;
            }
            let mut after = marks.draft_id;
            loop {
                let batch: Vec<DraftRow> = postgres.with_connection(|pg| {
                    Ok(drafts::table
                        .filter(drafts::id.gt(after))
                        .order(drafts::id.asc())
                        .limit(BATCH)
                        .select(DraftRow::as_select())
                        .load(pg)?)
                })?;
                let Some(last) = batch.last() else { break };
                after = last.id;
                for row in &batch {
                    diesel::insert_into(drafts::table)
                        .values(row)
                        .execute(conn)?;
                }
                report.drafts += batch.len() as u64;
            }
            Ok::<_, Error>(())
        })
    })?;
    log::info!("rollback-sync: {report:?}");
    Ok(report)
}

/// SQLite's marks. `updated_at` is read as text and parsed here, so legacy
/// forms compare by time, not by spelling; values that do not parse cannot
/// have come from PostgreSQL and are skipped.
fn read_marks(conn: &mut crate::AnyConnection) -> Result<RollbackMarks> {
    let updated: Vec<Option<String>> = sessions::table
        .select(sql::<Nullable<Text>>("updated_at"))
        .load(conn)?;
    Ok(RollbackMarks {
        sessions_updated_at: updated
            .iter()
            .flatten()
            .filter_map(|t| timestamp::parse(t).ok())
            .max(),
        message_id: messages::table
            .select(max(messages::id))
            .first::<Option<i64>>(conn)?
            .unwrap_or(0),
        draft_id: drafts::table
            .select(max(drafts::id))
            .first::<Option<i64>>(conn)?
            .unwrap_or(0),
    })
}
