//! The crash suite: every named step of every migration command killed, in
//! the style of Ghostferry's interrupt/resume tests.
//!
//! For each step of `Step::ALL` the command is run with the test-only hook
//! (`INTERVIEW_CRASH_AT=<step>`, feature `crash-hooks`), which aborts the
//! process there as `kill -9` would. Then the test does what an operator
//! does: runs `migrate status`, runs the one command it names, finishes the
//! cutover, and checks what users rely on: every chat two server processes
//! acknowledged is stored exactly once on the live side, nothing was
//! accepted on a retired side, and both servers serve the live side without
//! a restart.
#![cfg(all(feature = "server", feature = "crash-hooks"))]

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::bin::example_bin;
use common::traffic::{all_on, client, runtime, spawn_server_waiting, wait_healthy, Traffic};
use common::PgDatabase;
use interview_store::migrate::{self, Step};
use interview_store::{Backend, DatabaseUrl, Role, Store, StoreConfig};

/// What one run of `migrate` did.
struct Ran {
    status: ExitStatus,
    out: String,
}

/// Runs `migrate` with `args`, `--sqlite` and `--postgres`, and the crash hook set to `crash`.
fn migrate(args: &[&str], sqlite: &str, postgres: &str, crash: Option<Step>) -> Ran {
    let mut cmd = std::process::Command::new(example_bin("migrate"));
    cmd.args(args)
        .args(["--sqlite", sqlite, "--postgres", postgres])
        .env("RUST_LOG", "warn");
    if let Some(step) = crash {
        cmd.env("INTERVIEW_CRASH_AT", step.name());
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "migrate {} (crash at {crash:?}): {}\n{text}",
        args.join(" "),
        out.status
    );
    Ran {
        status: out.status,
        out: text,
    }
}

/// The command `status` names on its `next:` line, as arguments (without `migrate`).
fn next_command(status: &str) -> Vec<String> {
    let next = status
        .lines()
        .find_map(|l| l.strip_prefix("next: "))
        .unwrap_or_else(|| panic!("status names no next command:\n{status}"));
    let command = next
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("no command in {next:?}"));
    command
        .split_whitespace()
        .skip(1) // "migrate"
        .map(str::to_string)
        .collect()
}

/// Kills `args` at `step`, then follows `status` once; returns the command status named.
fn kill_and_follow_status(args: &[&str], sqlite: &str, postgres: &str, step: Step) -> Vec<String> {
    let killed = migrate(args, sqlite, postgres, Some(step));
    assert!(
        killed.status.code().is_none(),
        "{args:?} was to be killed at {step}, but it exited: {}\n{}",
        killed.status,
        killed.out
    );
    let status = migrate(&["status"], sqlite, postgres, None);
    assert!(status.status.success(), "status: {}", status.out);
    assert!(
        status.out.contains("next: "),
        "status says what to do: {}",
        status.out
    );
    let next = next_command(&status.out);
    // Only a switch stands interrupted at a recorded step; the other
    // commands' kills leave a state their plain rerun finishes.
    if next.first().map(String::as_str) == Some("switch") {
        let args: Vec<&str> = next.iter().map(String::as_str).collect();
        let rerun = migrate(&args, sqlite, postgres, None);
        assert!(
            rerun.status.success(),
            "the command status named ({next:?}) failed: {}",
            rerun.out
        );
    }
    next
}

/// A legacy file with a few sessions, copied into a fresh PostgreSQL database.
struct Rig {
    _dir: tempfile::TempDir,
    sqlite_path: PathBuf,
    sqlite: String,
    pg: PgDatabase,
}

fn rig(copy: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let sqlite_path = dir.path().join("interview.db");
    let sqlite = sqlite_path.to_str().unwrap().to_string();
    let seed = Store::connect(&sqlite, StoreConfig::default()).unwrap();
    seed.migrate().unwrap();
    for _ in 0..10 {
        let s = seed.start_session().unwrap();
        seed.append_message(s.id, Role::User, "seed").unwrap();
    }
    drop(seed);
    let pg = PgDatabase::create();
    if copy {
        let url = DatabaseUrl::postgres(&pg.url).unwrap();
        migrate::copy(&sqlite_path, &url, &Default::default()).unwrap();
    }
    Rig {
        _dir: dir,
        sqlite_path,
        sqlite,
        pg,
    }
}

/// Every (session, text) of the messages stored in `url`'s database.
fn messages(url: &str) -> Vec<(String, String)> {
    use diesel::prelude::*;
    use interview_store::schema::messages as m;
    use interview_store::types::DbUuid;
    let store = Store::connect(url, StoreConfig::default()).unwrap();
    let rows: Vec<(DbUuid, String)> = store
        .with_connection(|c| Ok(m::table.select((m::session_id, m::text)).load(c)?))
        .unwrap();
    rows.into_iter()
        .map(|(s, text)| (s.0.to_string(), text))
        .collect()
}

/// The switch there and back under chats from two server processes, with
/// the switch to PostgreSQL killed at `there` and the switch back at `back`.
fn cutover_killed(there: Option<Step>, back: Option<Step>) {
    let r = rig(true);
    let (sqlite, postgres) = (r.sqlite.as_str(), r.pg.url.as_str());
    let (one, base_one) = spawn_server_waiting(sqlite, postgres, 20_000);
    let (two, base_two) = spawn_server_waiting(sqlite, postgres, 20_000);
    let mut servers = [one, two];
    let bases = vec![base_one, base_two];
    let t = Arc::new(Traffic {
        stop: AtomicBool::new(false),
        switching: AtomicBool::new(false),
        seen: Mutex::default(),
    });
    let run = |args: &'static [&'static str]| {
        let (s, p) = (sqlite.to_string(), postgres.to_string());
        move || migrate(args, &s, &p, None)
    };
    let kill = |args: &'static [&'static str], step: Step| {
        let (s, p) = (sqlite.to_string(), postgres.to_string());
        move || kill_and_follow_status(args, &s, &p, step)
    };
    runtime().block_on(async {
        let http = reqwest::Client::new();
        for base in &bases {
            wait_healthy(&http, base).await;
        }
        let clients: Vec<_> = (0..4)
            .map(|n| tokio::spawn(client(t.clone(), bases.clone(), n)))
            .collect();
        tokio::time::sleep(Duration::from_millis(800)).await;
        for args in [&["sync"][..], &["verify", "--live", "--record"][..]] {
            let ran = tokio::task::spawn_blocking(run(args)).await.unwrap();
            assert!(ran.status.success(), "{args:?}: {}", ran.out);
        }
        if let Some(step) = there {
            tokio::task::spawn_blocking(kill(&["switch", "--to", "postgres"], step))
                .await
                .unwrap();
        }
        // Finishes the cutover whatever the kill left: says "already" when the rerun did it.
        let done = tokio::task::spawn_blocking(run(&["switch", "--to", "postgres"]))
            .await
            .unwrap();
        assert!(done.status.success(), "switch --to postgres: {}", done.out);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        all_on(&http, &bases, "postgres").await;

        if let Some(step) = back {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tokio::task::spawn_blocking(kill(&["switch", "--to", "sqlite"], step))
                .await
                .unwrap();
            let done = tokio::task::spawn_blocking(run(&["switch", "--to", "sqlite"]))
                .await
                .unwrap();
            assert!(done.status.success(), "switch --to sqlite: {}", done.out);
            tokio::time::sleep(Duration::from_millis(1200)).await;
            all_on(&http, &bases, "sqlite").await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        t.stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.await.unwrap();
        }
    });
    for (n, s) in servers.iter_mut().enumerate() {
        assert!(s.0.try_wait().unwrap().is_none(), "server {n} restarted");
    }
    let seen = t.seen.lock().unwrap();
    assert!(
        seen.failed.is_empty(),
        "requests failed: {:#?}",
        seen.failed
    );
    assert!(!seen.acked.is_empty(), "the clients chatted");
    let (live, retired) = match back {
        Some(_) => (sqlite, postgres),
        None => (postgres, sqlite),
    };
    let on_live = messages(live);
    for (session, text) in &seen.acked {
        let n = on_live
            .iter()
            .filter(|(s, m)| s == session && m == text)
            .count();
        assert_eq!(n, 1, "acknowledged {text:?} of {session} stored {n} times");
    }
    // A write accepted on the retired side after its retirement would be
    // there and not on the live side: nothing may be.
    let live_set: HashSet<_> = on_live.into_iter().collect();
    let stray: Vec<_> = messages(retired)
        .into_iter()
        .filter(|m| !live_set.contains(m))
        .collect();
    assert!(stray.is_empty(), "accepted on the retired side: {stray:?}");
    drop(servers);
}

#[test]
fn killed_at_catch_up_both_ways() {
    cutover_killed(Some(Step::SwitchCatchUp), Some(Step::BackCatchUp));
}

#[test]
fn killed_at_pause_both_ways() {
    cutover_killed(Some(Step::SwitchPause), Some(Step::BackPause));
}

#[test]
fn killed_at_last_entries_both_ways() {
    cutover_killed(Some(Step::SwitchLastEntries), Some(Step::BackLastEntries));
}

#[test]
fn killed_at_retire_both_ways() {
    cutover_killed(Some(Step::SwitchRetire), Some(Step::BackRetire));
}

#[test]
fn killed_at_go_live_both_ways() {
    cutover_killed(Some(Step::SwitchGoLive), Some(Step::BackGoLive));
}

#[test]
fn killed_at_the_switch_backs_record_and_log_removal() {
    cutover_killed(None, Some(Step::BackRecord));
    cutover_killed(None, Some(Step::BackRemoveLog));
}

/// The bulk copy, sync and the way back killed at each of their steps: a
/// plain rerun (what `status` names) finishes them, and verify finds both
/// sides equal: nothing lost, nothing twice.
#[test]
fn copy_sync_follow_and_the_way_back_killed_at_each_step_finish_on_a_rerun() {
    for step in [Step::CopyStart, Step::CopyBatch, Step::CopyFinish] {
        let r = rig(false);
        let next = kill_and_follow_status(&["copy"], &r.sqlite, &r.pg.url, step);
        assert_eq!(next, ["copy"], "after a kill at {step}");
        let rerun = migrate(&["copy"], &r.sqlite, &r.pg.url, None);
        assert!(rerun.status.success(), "{}", rerun.out);
        require_equal(&r.sqlite_path, &r.pg.url);
    }

    let r = rig(true);
    let lite = Store::connect(&r.sqlite, StoreConfig::default()).unwrap();
    for (args, step) in [
        (&["sync"][..], Step::SyncPass),
        (&["follow"][..], Step::SyncPass),
    ] {
        let s = lite.start_session().unwrap();
        lite.append_message(s.id, Role::User, "after the copy")
            .unwrap();
        let killed = migrate(args, &r.sqlite, &r.pg.url, Some(step));
        assert!(killed.status.code().is_none(), "{args:?}: {}", killed.out);
        let rerun = migrate(&["sync"], &r.sqlite, &r.pg.url, None);
        assert!(rerun.status.success(), "{}", rerun.out);
        require_equal(&r.sqlite_path, &r.pg.url);
    }

    // The way back: switched with SQLite paused (the full verify), writes on
    // PostgreSQL, then rollback-sync and follow --reverse killed mid-pass.
    let url = DatabaseUrl::postgres(&r.pg.url).unwrap();
    let mut m =
        interview_store::maintenance::connect(&DatabaseUrl::sqlite(r.sqlite.clone())).unwrap();
    interview_store::maintenance::pause(&mut m).unwrap();
    migrate::switch(&r.sqlite_path, &url, Backend::Postgres).unwrap();
    let pg = Store::connect(&r.pg.url, StoreConfig::default()).unwrap();
    for (args, step) in [
        (&["rollback-sync"][..], Step::ReversePass),
        (&["follow", "--reverse"][..], Step::ReversePass),
    ] {
        // A pass leaves entries of transactions still in flight at its
        // snapshot to the next one, and the snapshot's horizon is the whole
        // cluster's: a long transaction of a test running beside this one
        // holds it back. Write again until a pass has one to apply, for up to
        // 30 s (five tries were not enough on a loaded machine).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let killed = std::iter::from_fn(|| (std::time::Instant::now() < deadline).then_some(()))
            .any(|()| {
                let s = pg.start_session().unwrap();
                pg.append_message(s.id, Role::User, "after the switch")
                    .unwrap();
                std::thread::sleep(Duration::from_millis(100));
                migrate(args, &r.sqlite, &r.pg.url, Some(step))
                    .status
                    .code()
                    .is_none()
            });
        assert!(killed, "{args:?} was never killed at {step}");
        let rerun = migrate(&["rollback-sync"], &r.sqlite, &r.pg.url, None);
        assert!(rerun.status.success(), "{}", rerun.out);
        let mut on_pg = messages(&r.pg.url);
        let mut on_lite = messages(&r.sqlite);
        on_pg.sort();
        on_lite.sort();
        assert_eq!(on_lite, on_pg, "after a kill of {args:?} at {step}");
    }
}

fn require_equal(sqlite: &Path, postgres: &str) {
    let ran = migrate(&["verify"], sqlite.to_str().unwrap(), postgres, None);
    assert!(ran.status.success(), "verify after the rerun: {}", ran.out);
    assert!(ran.out.contains("EQUAL"), "{}", ran.out);
}

/// The suite covers every named step: a step added to the code without a
/// kill here fails this test.
#[test]
fn the_suite_kills_at_every_named_step() {
    let source = include_str!("crash.rs");
    let missing: Vec<&str> = Step::ALL
        .iter()
        .filter(|s| !source.contains(&format!("Step::{s:?}")))
        .map(|s| s.name())
        .collect();
    assert!(missing.is_empty(), "steps no test kills at: {missing:?}");
}
