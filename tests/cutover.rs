//! The whole cutover runbook under live traffic, and its rollback: nothing lost, nothing twice,
//! nothing accepted while paused. The service runs as two processes (two servers, each with its
//! own pool) on one database, and each pause is set through one of them only. A legacy writer
//! edits the file beside the service, a second migration command during the copy and a sync
//! after the switch are refused.
#![cfg(feature = "server")]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use interview_store::connection::DatabaseUrl;
use interview_store::migrate::{self, CopyOptions, SyncOptions};
use interview_store::server::{self, AppState};
use interview_store::{Backend, Category, Store, StoreConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const TOKEN: &str = "cutover-test-token";

/// The example server's code, serving one store until stopped.
struct Running {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(store: Store) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut state = AppState::new(store);
    state.admin_token = Some(TOKEN.into());
    let (stop, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(server::serve(listener, state, async {
        let _ = rx.await;
    }));
    Running { base, stop, task }
}

impl Running {
    async fn shut_down(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// What the clients saw succeed.
#[derive(Default)]
struct Seen {
    /// Message id -> (session, text) of every message the API returned.
    messages: HashMap<i64, (String, String)>,
    /// Draft id -> session.
    drafts: HashMap<i64, String>,
    /// Writes that succeeded while the pause was on (must stay 0).
    accepted_while_paused: u64,
}

struct Traffic {
    /// The service's processes; client `n` talks to process `n % len`. Swapped at each restart.
    bases: Mutex<Vec<String>>,
    paused: AtomicBool,
    stop: AtomicBool,
    seen: Mutex<Seen>,
    refused: AtomicU64,
}

async fn client(t: Arc<Traffic>, n: usize) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut session: Option<String> = None;
    let mut i = 0u64;
    while !t.stop.load(Ordering::SeqCst) {
        i += 1;
        let base = {
            let bases = t.bases.lock().unwrap();
            bases[n % bases.len()].clone()
        };
        let paused_before = t.paused.load(Ordering::SeqCst);
        let (path, body) = match &session {
            None => ("/interview/start", json!({})),
            Some(s) if i % 5 == 0 => (
                "/interview/draft",
                json!({"session_id": s, "content": format!("draft {n}/{i} — «ok»")}),
            ),
            Some(s) => (
                "/interview/chat",
                json!({"session_id": s, "text": format!("answer {n}/{i}\nwith 'quotes'")}),
            ),
        };
        let sent = http.post(format!("{base}{path}")).json(&body).send().await;
        let Ok(resp) = sent else {
            // The server is restarting; try again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(v["error"]["category"], "read_only", "{v}");
            t.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        assert!(status.is_success(), "{path}: {status} {v}");
        {
            let mut seen = t.seen.lock().unwrap();
            if paused_before && t.paused.load(Ordering::SeqCst) {
                seen.accepted_while_paused += 1;
            }
            let mut record = |m: &Value, s: &str| {
                let id = m["id"].as_i64().unwrap();
                let prev = seen
                    .messages
                    .insert(id, (s.to_string(), m["text"].as_str().unwrap().to_string()));
                assert!(prev.is_none(), "message id {id} returned twice");
            };
            match path {
                "/interview/start" => {
                    let s = v["session_id"].as_str().unwrap().to_string();
                    record(&v["reply"], &s);
                    session = Some(s);
                }
                "/interview/chat" => {
                    let s = session.clone().unwrap();
                    record(&v["message"], &s);
                    record(&v["reply"], &s);
                    if i % 7 == 0 {
                        session = None;
                    }
                }
                _ => {
                    let id = v["id"].as_i64().unwrap();
                    assert!(seen.drafts.insert(id, session.clone().unwrap()).is_none());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn admin(base: &str, read_only: bool) {
    let r = reqwest::Client::new()
        .post(format!("{base}/admin/maintenance"))
        .bearer_auth(TOKEN)
        .json(&json!({ "read_only": read_only }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// The legacy service: raw SQL on the file, its own clock, no care for `updated_at`.
fn legacy(file: &std::path::Path, sql: &str) {
    legacy_try(file, sql).unwrap();
}

fn legacy_try(file: &std::path::Path, sql: &str) -> QueryResult<()> {
    let mut c = SqliteConnection::establish(file.to_str().unwrap()).unwrap();
    c.batch_execute("PRAGMA busy_timeout = 10000")?;
    c.batch_execute(sql)
}

const LEGACY_A: &str = "0190a5f0-0000-7000-8000-0000000000aa";
const LEGACY_B: &str = "0190a5f0-0000-7000-8000-0000000000bb";

#[derive(QueryableByName, Debug, PartialEq)]
struct SessionText {
    #[diesel(sql_type = diesel::sql_types::Text)]
    summary: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    updated_at: String,
}

fn open(url: &str) -> Store {
    let s = Store::connect(url, StoreConfig::default()).unwrap();
    s.migrate().unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_runbook_under_load_loses_nothing_and_pauses_briefly() {
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("interview.db");
    let lite_url = file.display().to_string();
    let pg_db = common::PgDatabase::create();
    let pg_url: DatabaseUrl = pg_db.url.parse().unwrap();

    // 1. The service runs on SQLite as two processes, with clients writing all along.
    let srv = start(open(&lite_url)).await;
    let srv2 = start(open(&lite_url)).await;
    let traffic = Arc::new(Traffic {
        bases: Mutex::new(vec![srv.base.clone(), srv2.base.clone()]),
        paused: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        seen: Mutex::new(Seen::default()),
        refused: AtomicU64::new(0),
    });
    let clients: Vec<_> = (0..4)
        .map(|n| tokio::spawn(client(traffic.clone(), n)))
        .collect();
    // The legacy service writes too, with a clock two years behind.
    legacy(
        &file,
        &format!(
            "INSERT INTO sessions VALUES ('{LEGACY_A}', '2024-01-01 09:00:00', '2024-01-01 09:00:00', 'legacy a');
             INSERT INTO sessions VALUES ('{LEGACY_B}', '2024-01-01 09:00:00', '2024-01-01 09:00:00', 'legacy b')"
        ),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;

    // 2. Backup, setup, copy under load; verify shows the lag.
    let backup_to = dir.path().join("backup.db");
    let f = file.clone();
    let backup = blocking(move || migrate::backup(&f, &backup_to))
        .await
        .unwrap();
    assert!(backup.counts.messages > 0);
    // A second migration command while the copy runs is refused at once.
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let (f, u, r) = (file.clone(), pg_url.clone(), refused.clone());
    let opts = CopyOptions {
        batch_size: 50,
        progress: Some(Arc::new(move |_p: &migrate::Progress| {
            let mut r = r.lock().unwrap();
            if r.is_empty() {
                let err = migrate::sync(&f, &u, &SyncOptions::default()).unwrap_err();
                assert_eq!(err.category(), Category::Unavailable, "{err}");
                r.push(err.to_string());
            }
        })),
        ..Default::default()
    };
    let (f, u) = (file.clone(), pg_url.clone());
    let copied = blocking(move || migrate::copy(&f, &u, &opts))
        .await
        .unwrap();
    assert!(copied.tables[1].copied > 0);
    assert!(
        refused.lock().unwrap()[0].contains("another migration command is running"),
        "{refused:?}"
    );
    // The legacy writer edits after the copy: a summary without touching
    // updated_at, an updated_at moved into the past.
    legacy(
        &file,
        &format!(
            "UPDATE sessions SET summary = 'legacy edit, updated_at untouched' WHERE id = '{LEGACY_A}';
             UPDATE sessions SET updated_at = '2001-01-01 00:00:00' WHERE id = '{LEGACY_B}'"
        ),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (f, u) = (file.clone(), pg_url.clone());
    let lag = blocking(move || migrate::verify_and_record(&f, &u))
        .await
        .unwrap();
    assert!(!lag.is_equal(), "writes after the copy show as lag");
    assert!(lag.messages.differences > 0);

    // 3. Pause (through the first process only: the flag is in the file, so the second
    // process and the legacy writer are refused too), sync, switch (verify equal), restart
    // both processes on PostgreSQL, unpause.
    admin(&srv.base, true).await;
    traffic.paused.store(true, Ordering::SeqCst);
    let err = legacy_try(
        &file,
        &format!(
            "UPDATE sessions SET summary = 'written during the pause' WHERE id = '{LEGACY_B}'"
        ),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("writes are paused"),
        "the legacy writer is refused during the pause: {err}"
    );
    let pause_started = Instant::now();
    let pending = migrate::change_log_entries(&file).unwrap().unwrap();
    let (f, u) = (file.clone(), pg_url.clone());
    let synced = blocking(move || migrate::sync(&f, &u, &SyncOptions::default()))
        .await
        .unwrap();
    eprintln!(
        "change log: {pending} entries pending at the pause ({} distinct rows written), {} after the sync",
        synced.sessions_inserted + synced.sessions_updated + synced.messages + synced.drafts,
        migrate::change_log_entries(&file).unwrap().unwrap()
    );
    // The verify above (`--record`) recorded the position it found equal: the log keeps the
    // entries past it (a switch under traffic compares their rows) and trims the rest.
    let verified = migrate::status(&pg_url)
        .unwrap()
        .state
        .unwrap()
        .verified_change_seq
        .expect("verify records the position it found equal");
    assert!(verified < synced.change_seq);
    assert_eq!(
        migrate::change_log_entries(&file).unwrap(),
        Some(pending - synced.trimmed as i64)
    );
    assert_eq!(
        migrate::change_log_entries(&file).unwrap(),
        Some(synced.change_seq - verified),
        "entries past the verified position are kept, the others trimmed"
    );
    let (f, u) = (file.clone(), pg_url.clone());
    let equal = blocking(move || migrate::switch(&f, &u, Backend::Postgres))
        .await
        .unwrap();
    assert!(equal.verify.is_equal(), "{equal:#?}");
    srv.shut_down().await;
    srv2.shut_down().await;
    let legacy_rows: Vec<SessionText> = diesel::sql_query(format!(
        "SELECT summary, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS updated_at \
         FROM sessions WHERE id IN ('{LEGACY_A}', '{LEGACY_B}') ORDER BY id"
    ))
    .load(&mut PgConnection::establish(&pg_db.url).unwrap())
    .unwrap();
    assert_eq!(
        legacy_rows,
        [
            SessionText {
                summary: "legacy edit, updated_at untouched".into(),
                updated_at: "2024-01-01 09:00:00".into()
            },
            SessionText {
                summary: "legacy b".into(),
                updated_at: "2001-01-01 00:00:00".into()
            }
        ]
    );
    let pg_srv = start(open(&pg_db.url)).await;
    let pg_srv2 = start(open(&pg_db.url)).await;
    *traffic.bases.lock().unwrap() = vec![pg_srv.base.clone(), pg_srv2.base.clone()];
    traffic.paused.store(false, Ordering::SeqCst);
    let pause = pause_started.elapsed();
    eprintln!("cutover write pause: {pause:.2?}");
    assert!(pause < Duration::from_secs(30), "{pause:?}");

    // 4. The service writes to PostgreSQL for a while. A sync run again by
    // mistake is refused and changes nothing.
    let before = traffic.seen.lock().unwrap().messages.len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        traffic.seen.lock().unwrap().messages.len() > before,
        "writes go on, on postgres"
    );
    let state_before = migrate::status(&pg_url).unwrap().state;
    let (f, u) = (file.clone(), pg_url.clone());
    let err = blocking(move || migrate::sync(&f, &u, &SyncOptions::default()))
        .await
        .unwrap_err();
    assert_eq!(err.category(), Category::Input, "{err}");
    assert!(err.to_string().contains("rollback-sync"), "{err}");
    assert_eq!(migrate::status(&pg_url).unwrap().state, state_before);

    // 5. Rollback: pause (through the second process only), rollback-sync, switch back
    // (verify equal), restart both processes on SQLite, unpause.
    admin(&pg_srv2.base, true).await;
    traffic.paused.store(true, Ordering::SeqCst);
    let rollback_started = Instant::now();
    let (f, u) = (file.clone(), pg_url.clone());
    blocking(move || migrate::rollback_sync(&f, &u))
        .await
        .unwrap();
    let (f, u) = (file.clone(), pg_url.clone());
    let back = blocking(move || migrate::switch(&f, &u, Backend::Sqlite))
        .await
        .unwrap();
    assert!(back.verify.is_equal(), "{back:#?}");
    pg_srv.shut_down().await;
    pg_srv2.shut_down().await;
    let lite_srv = start(open(&lite_url)).await;
    let lite_srv2 = start(open(&lite_url)).await;
    // The pause of step 3 is held by the SQLite file itself and survived the restart.
    admin(&lite_srv.base, false).await;
    *traffic.bases.lock().unwrap() = vec![lite_srv.base.clone(), lite_srv2.base.clone()];
    traffic.paused.store(false, Ordering::SeqCst);
    eprintln!("rollback write pause: {:.2?}", rollback_started.elapsed());
    let before = traffic.seen.lock().unwrap().messages.len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    traffic.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    lite_srv.shut_down().await;
    lite_srv2.shut_down().await;
    let seen = traffic.seen.lock().unwrap();
    assert!(seen.messages.len() > before, "writes go on, back on sqlite");
    assert!(
        traffic.refused.load(Ordering::Relaxed) > 0,
        "the pauses refused writes"
    );
    assert_eq!(seen.accepted_while_paused, 0);

    // Every write a client saw succeed is in SQLite, once.
    let store = open(&lite_url);
    let counts = store.counts().unwrap();
    assert_eq!(counts.messages, seen.messages.len() as i64);
    assert_eq!(counts.drafts, seen.drafts.len() as i64);
    let mut by_session: HashMap<&str, Vec<i64>> = HashMap::new();
    for (id, (s, _)) in &seen.messages {
        by_session.entry(s).or_default().push(*id);
    }
    for (s, mut ids) in by_session {
        ids.sort();
        let stored = store.get_session(s.parse().unwrap()).unwrap();
        let stored_ids: Vec<i64> = stored.messages.iter().map(|m| m.id).collect();
        assert_eq!(stored_ids, ids, "session {s}");
        for m in &stored.messages {
            assert_eq!(m.text, seen.messages[&m.id].1);
        }
    }
}
