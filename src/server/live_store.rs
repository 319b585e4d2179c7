//! The store every request uses, swapped when the database is switched.
//!
//! A switch (`migrate switch`) retires the old database and then makes the
//! new one live, both in the databases themselves. Each server process
//! notices on its own: a write refused with [`Error::Retired`], or the
//! background `watch` reading the maintenance row, makes it open the other
//! backend named by its own settings (never by the retired database), check
//! that its maintenance row is live, and route every later request there. No
//! operator action per process, no restart.
//!
//! Reads on the retired side keep working until the swap, and are stale once
//! the new side takes writes: the window is at most one watch interval
//! ([`WATCH_EVERY`]) plus one maintenance read, unless a write notices first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use super::blocking;
use crate::connection::DatabaseUrl;
use crate::error::{Error, Result};
use crate::store::{Store, StoreConfig};

/// How often `watch` reads the current database's maintenance row.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);

/// The store requests use now, and where a switch leads.
///
/// Cheap to clone (one `Arc`); [`LiveStore::current`] is a read lock and a
/// clone of an `Arc`, on every request.
#[derive(Clone)]
pub struct LiveStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The store in use and its generation (bumped by every swap).
    current: RwLock<(u64, Store)>,
    /// The other backend from the server's settings, if configured.
    other_url: RwLock<Option<DatabaseUrl>>,
    /// The other backend's store once opened (for the switch and shadow reads).
    other: Mutex<Option<Store>>,
    config: StoreConfig,
    /// One switch at a time in this process.
    switching: tokio::sync::Mutex<()>,
    /// Whether the missing other backend was logged already (once is enough;
    /// held writes ask every 25 ms).
    told_unconfigured: AtomicBool,
}

/// What [`LiveStore::follow`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Requests now use another store (this call or a concurrent one swapped it).
    Switched,
    /// Nothing to switch to yet: the other side is paused (a switch in
    /// progress), unreachable, or not configured. Keep holding.
    Stay,
}

impl LiveStore {
    /// A store that never switches (no other backend configured).
    pub fn fixed(store: Store) -> Self {
        let config = store.config().clone();
        Self::new(store, None, config)
    }

    /// `store` now, following a switch to `other_url` (opened with `config`) when one happens.
    pub fn new(store: Store, other_url: Option<DatabaseUrl>, config: StoreConfig) -> Self {
        LiveStore {
            inner: Arc::new(Inner {
                current: RwLock::new((0, store)),
                other_url: RwLock::new(other_url),
                other: Mutex::new(None),
                config,
                switching: tokio::sync::Mutex::new(()),
                told_unconfigured: AtomicBool::new(false),
            }),
        }
    }

    /// The store to use for this request.
    pub fn current(&self) -> Store {
        self.inner.current.read().1.clone()
    }

    /// The store to use, with its generation (to tell later whether it was swapped).
    pub fn current_with_generation(&self) -> (u64, Store) {
        let guard = self.inner.current.read();
        (guard.0, guard.1.clone())
    }

    /// The other backend's store, opened on first use; `None` when not configured.
    ///
    /// Blocking (it may connect): call it off the async workers.
    pub fn other(&self) -> Result<Option<Store>> {
        if let Some(store) = self.inner.other.lock().clone() {
            return Ok(Some(store));
        }
        let Some(url) = self.inner.other_url.read().clone() else {
            return Ok(None);
        };
        // Opened outside the lock: a slow connect must not hold up the others.
        // The migration tool set that database up; this never migrates it.
        let store = Store::open(url, self.inner.config.clone())?;
        Ok(Some(self.inner.other.lock().get_or_insert(store).clone()))
    }

    /// Switches to the other backend if the one at `generation` is retired
    /// and the other is live; returns whether requests now use another store.
    ///
    /// Concurrent callers wait for one switch; whoever comes after it finds
    /// the generation moved on and returns [`Follow::Switched`] at once.
    pub async fn follow(&self, generation: u64, timeout: Duration) -> Follow {
        let _one = self.inner.switching.lock().await;
        if self.inner.current.read().0 != generation {
            return Follow::Switched;
        }
        let me = self.clone();
        match blocking::run(timeout, move || me.try_switch()).await {
            Ok(follow) => follow,
            Err(e) => {
                log::warn!("switch: cannot open the other backend yet: {e}");
                Follow::Stay
            }
        }
    }

    fn try_switch(&self) -> Result<Follow> {
        let current = self.current();
        let here = current.maintenance()?;
        if here.retired_to.is_none() {
            return Ok(Follow::Stay);
        }
        let Some(next) = self.other()? else {
            if self.inner.told_unconfigured.swap(true, Ordering::Relaxed) {
                return Ok(Follow::Stay);
            }
            log::warn!(
                "switch: {} is retired but the other backend is not configured \
                 (INTERVIEW_POSTGRES_URL / INTERVIEW_SQLITE_PATH): writes answer 503 read_only",
                current.url().masked()
            );
            return Ok(Follow::Stay);
        };
        let there = next.maintenance()?;
        if there.paused {
            // The switch makes the new side live right after retiring the old one.
            log::debug!(
                "switch: {} is retired, {} not live yet ({there}): holding writes",
                current.url().masked(),
                next.url().masked()
            );
            return Ok(Follow::Stay);
        }
        {
            let mut guard = self.inner.current.write();
            guard.0 += 1;
            guard.1 = next.clone();
        }
        *self.inner.other.lock() = Some(current.clone());
        *self.inner.other_url.write() = Some(current.url().clone());
        log::warn!(
            "switch: {} is retired; serving from {} ({}) from now on",
            current.url().masked(),
            next.url().masked(),
            next.backend()
        );
        Ok(Follow::Switched)
    }
}

/// Reads the current database's maintenance row every [`WATCH_EVERY`] and
/// follows a switch, so a process that only serves reads moves too.
pub(super) async fn watch(live: LiveStore, timeout: Duration) {
    // PostgreSQL opened ahead, so that a switch does not build a pool while
    // writes wait. Not SQLite: opening a missing file would create it.
    let other_is_pg =
        live.inner.other_url.read().as_ref().map(|u| u.backend()) == Some(crate::Backend::Postgres);
    if other_is_pg {
        let ahead = live.clone();
        if let Err(e) = blocking::run(timeout, move || ahead.other().map(|_| ())).await {
            log::debug!("switch watch: the other backend is not reachable yet: {e}");
        }
    }
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let (generation, store) = live.current_with_generation();
        let backend = store.backend();
        let state = blocking::run(timeout, move || store.maintenance()).await;
        if let Ok(m) = &state {
            super::metrics::maintenance(backend, m);
        }
        match state {
            Ok(m) if m.retired_to.is_some() => {
                live.follow(generation, timeout).await;
            }
            Ok(_) => {}
            Err(e) => log::debug!("switch watch: cannot read the maintenance row: {e}"),
        }
    }
}

/// Whether `e` is the database refusing writes (paused or retired): worth holding the write.
pub(super) fn is_refusal(e: &Error) -> bool {
    matches!(e, Error::ReadOnly | Error::Retired { .. })
}
