//! How each migration command's report reads: the lines `examples/migrate.rs`
//! prints. The reports are defined with their commands; this module only
//! says how they print (`SwitchReport` and `Status` print from their own
//! modules). No line ends the output with a newline: the caller adds it.

use std::fmt::{self, Display, Formatter};
use std::path::Path;

use super::admin::{FollowEnded, PauseReport, RowCounts, SetupReport};
use super::backup::BackupReport;
use super::check::CheckReport;
use super::compare::CompareReport;
use super::copy::CopyReport;
use super::follow::FollowStatus;
use super::rollback::RollbackReport;
use super::source::Table;
use super::sync::SyncReport;
use super::verify::{TableVerify, VerifyReport};
use crate::store::TableCounts;

/// A [`CheckReport`] with the file it checked, as `migrate check` prints it.
pub struct CheckOf<'a> {
    report: &'a CheckReport,
    source: &'a Path,
}

impl CheckReport {
    /// Prints as [`Display`] does, the summary line naming `source`.
    pub fn of<'a>(&'a self, source: &'a Path) -> CheckOf<'a> {
        CheckOf {
            report: self,
            source,
        }
    }

    fn write(&self, f: &mut Formatter<'_>, source: Option<&Path>) -> fmt::Result {
        for r in &self.rejects {
            writeln!(f, "{r}")?;
        }
        if let Some(path) = source {
            write!(f, "{}: ", path.display())?;
        }
        write!(
            f,
            "{} sessions, {} messages, {} drafts; {} invalid; {} NULL summaries load as ''",
            self.rows[0],
            self.rows[1],
            self.rows[2],
            self.rejects.len(),
            self.null_summaries
        )
    }
}

impl Display for CheckReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        self.write(f, None)
    }
}

impl Display for CheckOf<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        self.report.write(f, Some(self.source))
    }
}

impl Display for SetupReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: schema up to date ({} migration(s) applied)",
            self.postgres,
            self.applied.len()
        )?;
        if let Some(path) = &self.sqlite {
            write!(f, "\n{}: change log installed", path.display())?;
            if let Some(took) = self.indexed_in {
                write!(
                    f,
                    "\n{}: indexes on messages(session_id), drafts(session_id) and the UUID keys made in {took:.1?}",
                    path.display()
                )?;
            }
        }
        Ok(())
    }
}

impl Display for CopyReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for (t, c) in Table::ALL.iter().zip(self.tables) {
            writeln!(f, "{t}: {} copied, {} rejected", c.copied, c.rejected)?;
        }
        writeln!(f, "idempotency keys: {} copied", self.idempotency_keys)?;
        write!(
            f,
            "{} NULL summaries loaded as ''; {} in {:.1?}",
            self.null_summaries,
            if self.already_copied {
                "already copied"
            } else {
                "done"
            },
            self.elapsed
        )
    }
}

impl Display for SyncReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} change log entries up to {}: sessions {} new, {} changed, {} deleted; \
             messages {} written, {} deleted; drafts {} written, {} deleted; idempotency keys {} \
             written, {} deleted; rejected: {:?}; in {:.1?}",
            self.entries,
            self.change_seq,
            self.sessions_inserted,
            self.sessions_updated,
            self.sessions_deleted,
            self.messages,
            self.messages_deleted,
            self.drafts,
            self.drafts_deleted,
            self.keys.written,
            self.keys.deleted,
            self.rejected,
            self.elapsed
        )
    }
}

impl Display for RollbackReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} change log entries up to {}: sessions {} new, {} changed, {} deleted; \
             messages {} written, {} deleted; drafts {} written, {} deleted; idempotency keys {} \
             written, {} deleted",
            self.entries,
            self.change_seq,
            self.sessions_inserted,
            self.sessions_updated,
            self.sessions_deleted,
            self.messages,
            self.messages_deleted,
            self.drafts,
            self.drafts_deleted,
            self.keys.written,
            self.keys.deleted
        )
    }
}

impl Display for TableVerify {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "count(*) sqlite {} / postgres {}; compared sqlite {} / postgres {} rows, {} rejected, \
             {} differences, checksums {} / {}",
            self.sqlite_count,
            self.postgres_count,
            self.sqlite_rows,
            self.postgres_rows,
            self.rejected,
            self.differences,
            self.sqlite_checksum,
            self.postgres_checksum
        )
    }
}

impl Display for VerifyReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for (t, v) in [
            (Table::Sessions, &self.sessions),
            (Table::Messages, &self.messages),
            (Table::Drafts, &self.drafts),
        ] {
            writeln!(f, "{t}: {v}")?;
        }
        writeln!(
            f,
            "sessions whose messages differ: {}",
            self.sessions_with_message_differences
        )?;
        for d in &self.differences {
            writeln!(f, "  {d}")?;
        }
        let k = &self.idempotency_keys;
        writeln!(
            f,
            "idempotency keys (finished): sqlite {} / postgres {}, {} differences",
            k.sqlite_keys, k.postgres_keys, k.differences
        )?;
        for d in &k.listed {
            writeln!(f, "  {d}")?;
        }
        if let Some(n) = k.in_flight.filter(|n| *n > 0) {
            writeln!(
                f,
                "{n} of the key differences are in keys answered since the last applied \
                 change-log entry (in flight)"
            )?;
        }
        if let Some(n) = self.in_flight.filter(|n| *n > 0) {
            writeln!(
                f,
                "{n} of the differences are in rows written since the last applied \
                 change-log entry (in flight: a follower or sync applies them)"
            )?;
        }
        if let Some(upto) = self.verified_upto {
            writeln!(
                f,
                "equal up to change-log position {upto} (recorded: a switch under traffic \
                 compares only the rows written since)"
            )?;
        }
        write!(
            f,
            "{} in {} ms",
            if self.is_equal() {
                "EQUAL"
            } else if self.is_equal_but_in_flight() {
                "EQUAL BUT IN FLIGHT"
            } else {
                "DIFFERENT"
            },
            self.elapsed_ms
        )
    }
}

impl Display for CompareReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for d in &self.differences {
            writeln!(f, "{} {}", d.session, d.what)?;
        }
        write!(
            f,
            "{} sessions and {} messages compared: {}",
            self.sessions,
            self.messages,
            if self.is_equal() {
                "EQUAL"
            } else {
                "DIFFERENT"
            }
        )
    }
}

impl Display for BackupReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} bytes, integrity ok, {} sessions, {} messages, {} drafts",
            self.path.display(),
            self.bytes,
            self.counts.sessions,
            self.counts.messages,
            self.counts.drafts
        )
    }
}

impl Display for FollowStatus {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "follow {}: {} entries behind, lag {} ms; {} applied in {} batches",
            self.direction, self.pending_entries, self.lag_ms, self.applied_entries, self.passes
        )?;
        if !self.connected {
            f.write_str("; DISCONNECTED, retrying")?;
            if let Some(e) = &self.last_error {
                write!(f, ": {e}")?;
            }
        }
        Ok(())
    }
}

impl Display for FollowEnded {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "follow ended: {}", self.detail)
    }
}

impl Display for PauseReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.database, self.state)
    }
}

fn counts(c: &TableCounts) -> String {
    format!(
        "{} sessions, {} messages, {} drafts",
        c.sessions, c.messages, c.drafts
    )
}

impl Display for RowCounts {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let o = &self.other;
        write!(
            f,
            "{}: {}; other side: {}, {}, {}",
            self.live,
            counts(&self.live_counts),
            o.sessions,
            o.messages,
            o.drafts
        )
    }
}
