//! Read replicas (PostgreSQL hot standbys) with read-your-writes.
//!
//! Every write on the primary yields a [`Position`]: the primary's WAL insert
//! position read on the same connection right after the commit, so at or past
//! the commit record. A read that carries a position is served by a replica
//! only once that replica's `pg_last_wal_replay_lsn()` has reached it, checked
//! and read on one connection (replay only moves forward, so the read's
//! snapshot is at least as new as the check). Otherwise the read polls for
//! [`crate::StoreConfig::replica_wait`] and then goes to the primary. Within a
//! process the store remembers each session's last position, so its own reads
//! need no help; across processes the caller carries it (the server's
//! `Interview-Position` header).
//!
//! A background thread measures each replica's lag every [`TICK`] and takes a
//! replica out of rotation while it lags more than
//! [`crate::StoreConfig::replica_max_lag`] or cannot be reached; it comes back
//! on the first tick that finds it fine.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text};
use parking_lot::Mutex;
use uuid::Uuid;

use crate::connection::{AnyConnection, DatabaseUrl};
use crate::error::{Category, Error, Result};
use crate::pool::{Pool, PoolConfig};

/// How often the lag of every replica is measured.
pub(crate) const TICK: Duration = Duration::from_millis(250);
/// A replica check waits at most this long for one of its pooled connections.
const CHECKOUT: Duration = Duration::from_millis(20);
/// Between two checks of a replica that has not reached a position yet.
const POLL: Duration = Duration::from_millis(5);
/// Sessions whose positions are remembered before the ones every replica reached are forgotten.
const REMEMBERED: usize = 100_000;

/// A position in the primary's write-ahead log: a read carrying it sees every
/// write that returned it (or an earlier one).
///
/// Written as PostgreSQL writes an LSN, `16/B374D848`; parsing accepts only that form.
///
/// ```
/// use interview_store::Position;
/// let p: Position = "16/B374D848".parse().unwrap();
/// assert_eq!(p.to_string(), "16/B374D848");
/// assert!(p > "16/B374D847".parse().unwrap());
/// assert!("16/B3 74".parse::<Position>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(u64);

impl Position {
    /// Past every real position: what no replica ever reaches.
    pub(crate) const MAX: Position = Position(u64::MAX);
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for Position {
    type Err = Error;
    fn from_str(s: &str) -> Result<Position> {
        let bad = || Error::invalid("position", "is not a WAL position like 16/B374D848");
        // Exactly the form, nothing around it: the HTTP header's own pattern.
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u64::from_str_radix(p, 16).map_err(|_| bad())
        };
        Ok(Position(part(hi)? << 32 | part(lo)?))
    }
}

/// Why a read went to the primary although replicas are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// No replica had reached the read's position within the wait.
    Behind,
    /// No replica was in rotation, or none answered.
    NoReplica,
}

impl Fallback {
    /// `"behind"` or `"no_replica"`, as metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Behind => "behind",
            Fallback::NoReplica => "no_replica",
        }
    }
}

/// One replica as monitoring sees it ([`crate::Store::replicas`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaState {
    /// Its URL, password masked.
    pub url: String,
    /// Whether reads go to it now.
    pub in_rotation: bool,
    /// How far its replay is behind the primary, as of the last measurement (`None`: unknown).
    pub lag: Option<Duration>,
    /// Reads it served since start.
    pub reads: u64,
    /// Why it is out of rotation, when it is.
    pub error: Option<String>,
}

pub(crate) struct Replica {
    pool: Pool,
    in_rotation: AtomicBool,
    reads: AtomicU64,
    // Its last measurement: lag, replay position, and why it is out when it is.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    lag: Option<Duration>,
    replay: Option<u64>,
    error: Option<String>,
}

/// The replicas of a store, the positions it remembers, and the counts of fallbacks.
pub(crate) struct Replicas {
    list: Vec<Replica>,
    next: AtomicUsize,
    wait: Duration,
    max_lag: Duration,
    sessions: Mutex<HashMap<Uuid, u64>>,
    behind: AtomicU64,
    no_replica: AtomicU64,
    // The primary's position at each tick, oldest first: a replica's lag is the
    // age of the oldest of them it has not replayed yet.
    history: Mutex<VecDeque<(Instant, u64)>>,
}

impl Replicas {
    pub(crate) fn open(
        urls: &[DatabaseUrl],
        pool: &PoolConfig,
        wait: Duration,
        max_lag: Duration,
    ) -> Result<Replicas> {
        let list = urls
            .iter()
            .map(|url| {
                if url.backend() != crate::Backend::Postgres {
                    return Err(Error::invalid(
                        "replica url",
                        "a replica is a PostgreSQL hot standby",
                    ));
                }
                Ok(Replica {
                    pool: Pool::open_replica(url.clone(), pool)?,
                    // Out until the first measurement says it is fine.
                    in_rotation: AtomicBool::new(false),
                    reads: AtomicU64::new(0),
                    seen: Mutex::new(Seen::default()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Replicas {
            list,
            next: AtomicUsize::new(0),
            wait,
            max_lag,
            sessions: Mutex::new(HashMap::new()),
            behind: AtomicU64::new(0),
            no_replica: AtomicU64::new(0),
            history: Mutex::new(VecDeque::new()),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Remembers that `session` was written up to `at`.
    pub(crate) fn remember(&self, session: Uuid, at: Position) {
        let mut sessions = self.sessions.lock();
        let slot = sessions.entry(session).or_insert(0);
        *slot = (*slot).max(at.0);
    }

    /// The last position written for `session` by this process.
    pub(crate) fn position_of(&self, session: Uuid) -> Option<Position> {
        self.sessions.lock().get(&session).copied().map(Position)
    }

    /// Runs `f` on a replica that has reached `need`, or says why none served it.
    ///
    /// A replica's "not found" is its answer; any other error moves on to the
    /// next replica, then to the primary.
    pub(crate) fn read<T>(
        &self,
        need: Option<Position>,
        f: &dyn Fn(&mut AnyConnection) -> Result<T>,
    ) -> std::result::Result<Result<T>, Fallback> {
        let n = self.list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.wait;
        loop {
            let mut answered = false;
            for i in 0..n {
                let r = &self.list[(start + i) % n];
                if !r.in_rotation.load(Ordering::Relaxed) {
                    continue;
                }
                let served = r.pool.run_within(CHECKOUT, |conn| {
                    if let Some(need) = need {
                        if !reached(conn, need)? {
                            return Ok(None);
                        }
                    }
                    f(conn).map(Some)
                });
                match served {
                    Ok(Some(v)) => {
                        r.reads.fetch_add(1, Ordering::Relaxed);
                        return Ok(Ok(v));
                    }
                    Ok(None) => answered = true,
                    // "No such session" is an answer: the replica has what the read must see.
                    Err(e) if matches!(e.category(), Category::NotFound | Category::Input) => {
                        r.reads.fetch_add(1, Ordering::Relaxed);
                        return Ok(Err(e));
                    }
                    // Anything else is the replica's trouble, not the read's: unreachable,
                    // or a query cancelled by a conflict with recovery (a standby's own
                    // error). The next replica, or the primary, serves it.
                    Err(e) => log::debug!("replica {}: {e}", r.pool.url().masked()),
                }
            }
            if !answered {
                self.no_replica.fetch_add(1, Ordering::Relaxed);
                return Err(Fallback::NoReplica);
            }
            if Instant::now() + POLL > deadline {
                self.behind.fetch_add(1, Ordering::Relaxed);
                return Err(Fallback::Behind);
            }
            std::thread::sleep(POLL);
        }
    }

    pub(crate) fn states(&self) -> Vec<ReplicaState> {
        self.list
            .iter()
            .map(|r| {
                let seen = r.seen.lock();
                ReplicaState {
                    url: r.pool.url().masked(),
                    in_rotation: r.in_rotation.load(Ordering::Relaxed),
                    lag: seen.lag,
                    reads: r.reads.load(Ordering::Relaxed),
                    error: seen.error.clone(),
                }
            })
            .collect()
    }

    pub(crate) fn fallbacks(&self) -> Vec<(Fallback, u64)> {
        vec![
            (Fallback::Behind, self.behind.load(Ordering::Relaxed)),
            (Fallback::NoReplica, self.no_replica.load(Ordering::Relaxed)),
        ]
    }

    /// The pools' connection counts, for a closing store to wait on.
    pub(crate) fn alive(&self) -> Vec<Arc<crate::connection::Alive>> {
        self.list.iter().map(|r| r.pool.alive()).collect()
    }

    /// One measurement: the primary's position, then each replica's replay and lag.
    fn tick(&self, primary: &Pool) {
        let now = Instant::now();
        if let Ok(Some(p)) =
            primary.run_within(CHECKOUT, |conn| position(conn, "pg_current_wal_lsn()"))
        {
            let mut history = self.history.lock();
            history.push_back((now, p.0));
            // Enough to tell a lag past the bound; older samples tell nothing more.
            while history
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > self.max_lag + TICK * 4)
            {
                history.pop_front();
            }
        }
        for r in &self.list {
            let replay = r
                .pool
                .run_within(CHECKOUT, |conn| position(conn, "pg_last_wal_replay_lsn()"));
            let mut seen = r.seen.lock();
            let fine = match replay {
                Ok(Some(at)) => {
                    let lag = self.lag_of(at.0, now);
                    seen.replay = Some(at.0);
                    seen.lag = lag;
                    match lag {
                        Some(lag) if lag <= self.max_lag => {
                            seen.error = None;
                            true
                        }
                        Some(lag) => {
                            seen.error = Some(format!(
                                "lags {lag:.1?}, more than the bound of {:.1?}",
                                self.max_lag
                            ));
                            false
                        }
                        None => {
                            seen.error = Some("lag not measured yet".into());
                            false
                        }
                    }
                }
                Ok(None) => {
                    seen.error = Some("not in recovery: not a standby".into());
                    false
                }
                Err(e) => {
                    seen.error = Some(e.to_string());
                    false
                }
            };
            let was = r.in_rotation.swap(fine, Ordering::Relaxed);
            if was != fine {
                let url = r.pool.url().masked();
                match &seen.error {
                    None => log::info!("replica {url} back in rotation"),
                    Some(why) => log::warn!("replica {url} out of rotation: {why}"),
                }
            }
        }
        self.forget_reached();
    }

    /// How long ago the primary was last at or before `replay`, to within one
    /// tick and never less than the truth; zero when it replayed every sample.
    ///
    /// A replica that has replayed the sample taken at `t` but not the next
    /// one lags between `now - next` and `now - t`: the larger is taken, so a
    /// replica is never kept in rotation on an underestimate.
    fn lag_of(&self, replay: u64, now: Instant) -> Option<Duration> {
        let history = self.history.lock();
        let (oldest, _) = *history.front()?;
        let lag = match history.iter().position(|(_, p)| *p > replay) {
            None => Duration::ZERO,
            // Not even the oldest sample: at least that old.
            Some(0) => now.duration_since(oldest),
            Some(i) => now.duration_since(history[i - 1].0),
        };
        Some(lag)
    }

    /// Bounds the remembered sessions: past [`REMEMBERED`], forgets the
    /// positions every replica has replayed (a read of them is served anywhere).
    fn forget_reached(&self) {
        let mut sessions = self.sessions.lock();
        if sessions.len() <= REMEMBERED {
            return;
        }
        let reached = self
            .list
            .iter()
            .map(|r| r.seen.lock().replay)
            .min()
            .flatten();
        if let Some(reached) = reached {
            sessions.retain(|_, p| *p > reached);
        }
    }
}

/// Starts the thread that measures the replicas every [`TICK`]; it ends with the store.
pub(super) fn monitor(inner: Weak<super::Inner>) {
    let spawned = std::thread::Builder::new()
        .name("store-replicas".into())
        .spawn(move || loop {
            match inner.upgrade() {
                Some(inner) => inner.replicas.tick(&inner.pool),
                None => return,
            }
            std::thread::sleep(TICK);
        });
    if let Err(e) = spawned {
        // Without it replicas never enter rotation: reads stay on the primary.
        log::error!("cannot start the replica monitor: {e}; reads stay on the primary");
    }
}

#[derive(QueryableByName)]
struct Lsn {
    #[diesel(sql_type = Nullable<Text>)]
    lsn: Option<String>,
}

/// `function` (an LSN-valued function of PostgreSQL) on `conn`; `None` when it is NULL.
fn position(conn: &mut AnyConnection, function: &str) -> Result<Option<Position>> {
    let row: Lsn = diesel::sql_query(format!("SELECT {function}::text AS lsn")).get_result(conn)?;
    row.lsn.map(|s| s.parse()).transpose()
}

/// The primary's WAL insert position, on the connection that just committed.
///
/// The insert position, not `pg_current_wal_lsn()` (the write position):
/// under `synchronous_commit = off` the commit record may not be written yet,
/// but it is always inserted before the commit returns.
pub(crate) fn after_commit(conn: &mut AnyConnection) -> Result<Option<Position>> {
    position(conn, "pg_current_wal_insert_lsn()")
}

#[derive(QueryableByName)]
struct Reached {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Bool>)]
    reached: Option<bool>,
}

/// Whether this standby has replayed up to `need` (false on a server not in recovery).
fn reached(conn: &mut AnyConnection, need: Position) -> Result<bool> {
    let row: Reached =
        diesel::sql_query("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS reached")
            .bind::<Text, _>(need.to_string())
            .get_result(conn)?;
    Ok(row.reached.unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_only_lsns() {
        for ok in ["0/0", "0/16B3748", "FFFFFFFF/FFFFFFFF", "a/b"] {
            let p: Position = ok.parse().unwrap();
            assert_eq!(p.to_string(), ok.to_ascii_uppercase());
        }
        for bad in [
            "",
            "/",
            "0/",
            "1",
            "0/1/2",
            "g/0",
            "100000000/0",
            "0/-1",
            "0/1;DROP",
            " 0/1",
            "0/+1",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
    }
}
