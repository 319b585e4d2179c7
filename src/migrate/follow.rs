//! Continuous follow: one side's change log applied to the other in a loop, so the other side trails by milliseconds.
//!
//! Forward, SQLite's log goes to PostgreSQL by the same pass as `sync`;
//! backward (after the switch), PostgreSQL's log goes to SQLite by the same
//! pass as `rollback-sync`. Each pass takes the migration lock inside its own
//! transaction for as long as it writes, so a `switch` or a `verify` takes
//! turns with the follower instead of being refused, and nothing but the
//! database decides who writes. The follower keeps no state of its own: the
//! mark it resumes from after a crash, a restart of either database or a
//! lost connection is the one committed with the rows.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;

use super::changelog;
use super::lock;
use super::phase::Phase;
use super::pipeline::write_rejects;
use super::source::Source;
use super::state;
use super::sync;
use crate::connection::DatabaseUrl;
use crate::error::{Error, Refusal, Result};

/// How a follower runs.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// Follow PostgreSQL's log into SQLite (after the switch) instead of SQLite's into PostgreSQL.
    pub reverse: bool,
    /// How long to wait when there is nothing to apply.
    pub poll: Duration,
    /// How often to report the lag.
    pub report_every: Duration,
    /// Forward only: load valid rows and append invalid ones here (JSON
    /// lines); without it an invalid row stops the follower, as it stops `sync`.
    pub reject_file: Option<PathBuf>,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            reverse: false,
            poll: Duration::from_millis(20),
            report_every: Duration::from_secs(2),
            reject_file: None,
        }
    }
}

/// The follower's figures, reported every [`FollowOptions::report_every`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FollowStatus {
    /// `sqlite->postgres` or `postgres->sqlite`.
    pub direction: &'static str,
    /// Entries written on the followed side and not applied yet.
    pub pending_entries: u64,
    /// How long the oldest of them has been waiting, as this follower saw it
    /// (0 when none): the other side trails the followed one by this much.
    pub lag_ms: u64,
    /// Entries applied since the follower started.
    pub applied_entries: u64,
    /// Batches applied since the follower started.
    pub passes: u64,
    /// Times the follower lost a database and connected again.
    pub reconnects: u64,
    /// Errors met since the follower started (each one retried).
    pub errors: u64,
    /// Whether both databases are connected now.
    pub connected: bool,
    /// The last error met (password masked); the follower retries.
    pub last_error: Option<String>,
}

/// Why a follower ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowEnd {
    /// It was asked to stop (SIGINT/SIGTERM).
    Stopped,
    /// The service moved to the followed side's target: forward, PostgreSQL
    /// is live (run `follow --reverse` to keep SQLite current); backward,
    /// SQLite is live again.
    Switched,
}

/// Applies one side's change log to the other until `stop` is set or a switch ends the direction.
///
/// Reports its [`FollowStatus`] to `report` every `report_every` and once at
/// the end. Lost connections (a database restarting, a network blip) are
/// retried with a backoff of up to 2 s, resuming from the mark committed in
/// PostgreSQL; errors no retry can mend (the cutover is in another phase,
/// an invalid row without a reject file, no change log) end it with the error.
///
/// ```no_run
/// use std::sync::atomic::AtomicBool;
/// use interview_store::migrate::{follow, FollowOptions};
/// let stop = AtomicBool::new(false);
/// let end = follow("interview.db".as_ref(), &"postgres://app@db/interview".parse()?,
///     &FollowOptions::default(), &stop, |s| println!("{} entries behind, {} ms", s.pending_entries, s.lag_ms))?;
/// # Ok::<(), interview_store::Error>(())
/// ```
pub fn follow(
    sqlite: &Path,
    postgres: &DatabaseUrl,
    opts: &FollowOptions,
    stop: &AtomicBool,
    mut report: impl FnMut(&FollowStatus),
) -> Result<FollowEnd> {
    crate::connection::require_sqlite_file(sqlite)?;
    if postgres.backend() != crate::Backend::Postgres {
        return Err(Error::invalid(
            "postgres",
            format!("{} is not a PostgreSQL URL", postgres.masked()),
        ));
    }
    let mut leg: Box<dyn Leg + '_> = if opts.reverse {
        Box::new(Backward::new(sqlite, postgres))
    } else {
        Box::new(Forward::new(sqlite, postgres, opts.reject_file.clone()))
    };
    let mut run = Run::new(leg.direction());
    let end = loop {
        if stop.load(Ordering::Relaxed) {
            break FollowEnd::Stopped;
        }
        if let Some(end) = run.turn(leg.as_mut(), opts, stop)? {
            break end;
        }
        if run.last_report.elapsed() >= opts.report_every {
            report(&run.status);
            run.last_report = Instant::now();
        }
    };
    // The last report tells where it stopped, not where it last looked.
    if run.connected {
        if let Ok(Poll::Pending(p)) = leg.poll() {
            run.measure(&p);
        }
    }
    report(&run.status);
    Ok(end)
}

/// One direction of following.
trait Leg {
    fn direction(&self) -> &'static str;
    /// Opens both databases.
    fn connect(&mut self) -> Result<()>;
    /// Drops both connections (after an error), so the next turn connects again.
    fn disconnect(&mut self);
    /// What waits to be applied, or that the direction has ended.
    fn poll(&mut self) -> Result<Poll>;
    /// Applies one batch: the entries applied, or `None` when another
    /// migration command holds the lock (try again later).
    fn step(&mut self) -> Result<Option<u64>>;
}

enum Poll {
    Pending(Pending),
    Ended(FollowEnd),
}

/// What waits on the followed side.
struct Pending {
    entries: u64,
    /// The newest entry's sequence number.
    newest: i64,
    /// The oldest entry not applied yet (when `entries > 0`).
    oldest: Option<i64>,
}

/// The loop's bookkeeping.
struct Run {
    status: FollowStatus,
    connected: bool,
    backoff: Duration,
    last_report: Instant,
    /// Sequence numbers as first seen, to tell how long an entry waited.
    seen: VecDeque<(i64, Instant)>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Run {
    fn new(direction: &'static str) -> Run {
        Run {
            status: FollowStatus {
                direction,
                ..Default::default()
            },
            connected: false,
            backoff: Duration::from_millis(100),
            last_report: Instant::now(),
            seen: VecDeque::new(),
        }
    }

    /// One turn: connect if needed, look, apply what waits or sleep.
    fn turn(
        &mut self,
        leg: &mut dyn Leg,
        opts: &FollowOptions,
        stop: &AtomicBool,
    ) -> Result<Option<FollowEnd>> {
        if !self.connected {
            if let Err(e) = leg.connect() {
                return self.failed(leg, e, stop).map(|()| None);
            }
            self.connected = true;
            self.status.connected = true;
            self.backoff = Duration::from_millis(100);
        }
        let pending = match leg.poll() {
            Ok(Poll::Ended(end)) => return Ok(Some(end)),
            Ok(Poll::Pending(p)) => p,
            Err(e) => return self.failed(leg, e, stop).map(|()| None),
        };
        self.measure(&pending);
        if pending.entries == 0 {
            nap(opts.poll, stop);
            return Ok(None);
        }
        match leg.step() {
            Ok(Some(applied)) => {
                self.status.applied_entries += applied;
                self.status.passes += 1;
                Ok(None)
            }
            Ok(None) => {
                nap(opts.poll, stop);
                Ok(None)
            }
            // A switch that finished between the look and the batch: the
            // pass refuses, and the next look tells the direction ended.
            Err(e @ Error::Refused { .. }) => match leg.poll() {
                Ok(Poll::Ended(end)) => Ok(Some(end)),
                _ => Err(e),
            },
            Err(e) => self.failed(leg, e, stop).map(|()| None),
        }
    }

    /// The pending count and the age of the oldest pending entry.
    fn measure(&mut self, p: &Pending) {
        let now = Instant::now();
        if self.seen.back().is_none_or(|(seq, _)| p.newest > *seq) {
            self.seen.push_back((p.newest, now));
        }
        let oldest = p.oldest.unwrap_or(i64::MAX);
        while self.seen.front().is_some_and(|(seq, _)| *seq < oldest) {
            self.seen.pop_front();
        }
        self.status.pending_entries = p.entries;
        self.status.lag_ms = match (p.entries, self.seen.front()) {
            (0, _) | (_, None) => 0,
            (_, Some((_, at))) => now.duration_since(*at).as_millis() as u64,
        };
    }

    /// A lost connection or a database down is waited out; anything else ends the follower.
    fn failed(&mut self, leg: &mut dyn Leg, e: Error, stop: &AtomicBool) -> Result<()> {
        if !transient(&e) {
            return Err(e);
        }
        log::warn!("follow: {e}; connecting again in {:?}", self.backoff);
        self.status.last_error = Some(e.to_string());
        self.status.errors += 1;
        if self.connected {
            self.status.reconnects += 1;
        }
        self.connected = false;
        self.status.connected = false;
        leg.disconnect();
        nap(self.backoff, stop);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Ok(())
    }
}

/// Errors a later try can get past: the database away, a connection lost, a lock held.
fn transient(e: &Error) -> bool {
    !matches!(
        e,
        Error::Refused { .. }
            | Error::InvalidSource { .. }
            | Error::InvalidInput { .. }
            | Error::NoSuchFile { .. }
            | Error::Corrupt { .. }
            | Error::Migration(_)
    )
}

/// Sleeps up to `d`, waking early when asked to stop.
fn nap(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// SQLite's log into PostgreSQL.
struct Forward<'a> {
    sqlite: &'a Path,
    postgres: &'a DatabaseUrl,
    reject_file: Option<PathBuf>,
    conns: Option<(PgConnection, Source)>,
    /// How far the log may be trimmed, and when it last was: trimming is a
    /// write to the service's database, so it is done at most once a second.
    trim_upto: i64,
    trimmed_at: Instant,
}

const TRIM_EVERY: Duration = Duration::from_secs(1);

impl<'a> Forward<'a> {
    fn new(sqlite: &'a Path, postgres: &'a DatabaseUrl, reject_file: Option<PathBuf>) -> Self {
        Forward {
            sqlite,
            postgres,
            reject_file,
            conns: None,
            trim_upto: 0,
            trimmed_at: Instant::now(),
        }
    }

    fn conns(&mut self) -> Result<&mut (PgConnection, Source)> {
        if self.conns.is_none() {
            self.connect()?;
        }
        self.conns
            .as_mut()
            .ok_or_else(|| Error::refused(Refusal::NotReady, "follow: not connected"))
    }
}

impl Leg for Forward<'_> {
    fn direction(&self) -> &'static str {
        "sqlite->postgres"
    }

    fn connect(&mut self) -> Result<()> {
        let pg = state::connect(self.postgres)?;
        let mut src = Source::open(self.sqlite)?;
        // Without a log nothing would ever look pending: say so instead of idling.
        if !changelog::sqlite_installed(src.conn())? {
            return Err(Error::refused(
                Refusal::NotReady,
                format!(
                    "{} has no change log, so its changes cannot be followed; run `migrate setup \
                 --sqlite …` and `migrate copy` (it installs the log)",
                    self.sqlite.display()
                ),
            ));
        }
        self.conns = Some((pg, src));
        Ok(())
    }

    fn disconnect(&mut self) {
        self.conns = None;
    }

    fn poll(&mut self) -> Result<Poll> {
        let (pg, src) = self.conns()?;
        let st = state::load(pg)?;
        let phase = st.as_ref().map(|s| s.phase()).transpose()?;
        let mark = match (phase, st.as_ref().and_then(|s| s.mark_change_seq)) {
            (Some(Phase::Switched | Phase::SwitchingToSqlite(_) | Phase::RolledBack), _) => {
                return Ok(Poll::Ended(FollowEnd::Switched))
            }
            (Some(Phase::Copied | Phase::SwitchingToPostgres(_)), Some(mark)) => mark,
            // Let the pass say why not, as `sync` says it.
            _ => 0,
        };
        let position = changelog::sqlite_position(src.conn())?;
        let entries = (position - mark).max(0) as u64;
        Ok(Poll::Pending(Pending {
            entries,
            newest: position,
            oldest: (entries > 0).then_some(mark + 1),
        }))
    }

    fn step(&mut self) -> Result<Option<u64>> {
        let (sqlite, postgres) = (self.sqlite, self.postgres);
        let strict = self.reject_file.is_none();
        let (pg, src) = self.conns()?;
        let pass = pg.transaction(|pg| {
            if !lock::try_lock(pg)? {
                return Ok(None);
            }
            sync::pass(pg, src, sqlite, postgres, strict, None).map(Some)
        })?;
        let Some(pass) = pass else { return Ok(None) };
        if let Some(path) = &self.reject_file {
            if !pass.rejects.is_empty() {
                write_rejects(path, &pass.rejects, true)?;
            }
        }
        self.trim_upto = pass.trim_upto;
        if self.trimmed_at.elapsed() >= TRIM_EVERY {
            let upto = self.trim_upto;
            let (_, src) = self.conns()?;
            sync::trim(src, upto);
            self.trimmed_at = Instant::now();
        }
        log::debug!("follow: {:?}", pass.report);
        Ok(Some(pass.report.entries))
    }
}

/// PostgreSQL's log into SQLite, after the switch.
struct Backward<'a> {
    sqlite: &'a Path,
    postgres: &'a DatabaseUrl,
    conns: Option<(PgConnection, crate::AnyConnection)>,
}

impl<'a> Backward<'a> {
    fn new(sqlite: &'a Path, postgres: &'a DatabaseUrl) -> Self {
        Backward {
            sqlite,
            postgres,
            conns: None,
        }
    }

    fn conns(&mut self) -> Result<&mut (PgConnection, crate::AnyConnection)> {
        if self.conns.is_none() {
            self.connect()?;
        }
        self.conns
            .as_mut()
            .ok_or_else(|| Error::refused(Refusal::NotReady, "follow: not connected"))
    }
}

impl Leg for Backward<'_> {
    fn direction(&self) -> &'static str {
        "postgres->sqlite"
    }

    fn connect(&mut self) -> Result<()> {
        let pg = state::connect(self.postgres)?;
        let lite = super::pause::open_sqlite(self.sqlite)?;
        self.conns = Some((pg, lite));
        Ok(())
    }

    fn disconnect(&mut self) {
        self.conns = None;
    }

    fn poll(&mut self) -> Result<Poll> {
        let (pg, _) = self.conns()?;
        match state::load(pg)?.map(|s| s.phase()).transpose()? {
            Some(Phase::RolledBack) => return Ok(Poll::Ended(FollowEnd::Switched)),
            // A switch back under way still takes this side's last entries.
            Some(Phase::Switched | Phase::SwitchingToSqlite(_)) => {}
            phase => {
                return Err(Error::refused(Refusal::OutOfOrder, format!(
                    "follow --reverse applies what is written to PostgreSQL after `migrate \
                     switch`, but the cutover is {}: run `migrate follow` (forward) until the switch",
                    phase.map_or("not started".to_string(), |p| format!("in phase {p}"))
                )))
            }
        }
        let p = super::rollback::reverse_pending(pg)?;
        Ok(Poll::Pending(Pending {
            entries: p.entries,
            newest: p.newest,
            oldest: p.oldest,
        }))
    }

    fn step(&mut self) -> Result<Option<u64>> {
        let (pg, lite) = self.conns()?;
        Ok(super::rollback::reverse_step(pg, lite)?.map(|r| r.entries))
    }
}
