//! Two example-server processes and chatting clients, for the cutover tests
//! (tests/switch.rs, tests/crash.rs): what the clients saw, to check that
//! nothing acknowledged was lost or stored twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::bin::{self, Killed};

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs the example server on SQLite at `sqlite`, with PostgreSQL at `postgres` as the other backend.
pub fn spawn_server(sqlite: &str, postgres: &str) -> (Killed, String) {
    spawn_server_waiting(sqlite, postgres, 20_000)
}

/// [`spawn_server`] holding writes through a pause for up to `pause_wait_ms`.
pub fn spawn_server_waiting(sqlite: &str, postgres: &str, pause_wait_ms: u64) -> (Killed, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(bin::example_bin("server"))
        .env("INTERVIEW_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .env("INTERVIEW_DB_BACKEND", "sqlite")
        .env("INTERVIEW_SQLITE_PATH", sqlite)
        .env("INTERVIEW_POSTGRES_URL", postgres)
        // Generous: the test's copy runs inside the pause on a busy machine.
        .env("INTERVIEW_PAUSE_WAIT_MS", pause_wait_ms.to_string())
        .spawn()
        .unwrap();
    (Killed(child), format!("http://127.0.0.1:{port}"))
}

pub async fn wait_healthy(http: &reqwest::Client, base: &str) {
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            if r.status() == StatusCode::OK {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server at {base} did not come up");
}

/// What the clients saw.
#[derive(Default)]
pub struct Seen {
    /// (session, text) of every chat message acknowledged.
    pub acked: Vec<(String, String)>,
    /// Every answer that was not 2xx: (server, path, status, body).
    pub failed: Vec<String>,
    /// Writes sent before PostgreSQL was made live and acknowledged after: held, not refused.
    pub held: usize,
    /// The longest request that overlapped a switch.
    pub longest_during_switch: Duration,
}

pub struct Traffic {
    pub stop: AtomicBool,
    /// Set while the switch is under way (from the pause to `make_live`).
    pub switching: AtomicBool,
    pub seen: Mutex<Seen>,
}

/// One client: starts a session on one server, chats on both in turn.
pub async fn client(t: Arc<Traffic>, bases: Vec<String>, n: usize) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut session: Option<String> = None;
    let mut i = 0usize;
    while !t.stop.load(Ordering::SeqCst) {
        i += 1;
        let base = &bases[(n + i) % bases.len()];
        let during = t.switching.load(Ordering::SeqCst);
        let (path, body) = match &session {
            None => ("/interview/start".to_string(), json!({})),
            Some(s) => (
                "/interview/chat".to_string(),
                json!({"session_id": s, "text": format!("answer {n}/{i}")}),
            ),
        };
        let sent = Instant::now();
        let r = http.post(format!("{base}{path}")).json(&body).send().await;
        if during || t.switching.load(Ordering::SeqCst) {
            let mut seen = t.seen.lock().unwrap();
            seen.longest_during_switch = seen.longest_during_switch.max(sent.elapsed());
        }
        let (status, v) = match r {
            Ok(r) => (r.status(), r.json::<Value>().await.unwrap_or(Value::Null)),
            Err(e) => {
                t.seen
                    .lock()
                    .unwrap()
                    .failed
                    .push(format!("{base} {path}: {e}"));
                continue;
            }
        };
        {
            let mut seen = t.seen.lock().unwrap();
            if !status.is_success() {
                seen.failed.push(format!("{base} {path}: {status} {v}"));
                continue;
            }
            if during && !t.switching.load(Ordering::SeqCst) {
                seen.held += 1;
            }
            match &session {
                None => session = v["session_id"].as_str().map(str::to_string),
                Some(s) => seen.acked.push((s.clone(), format!("answer {n}/{i}"))),
            }
        }
        // Reads too, on the other server: they must never fail either.
        if let Some(s) = &session {
            let other = &bases[(n + i + 1) % bases.len()];
            match http
                .get(format!("{other}/interview/session/{s}"))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    let status = r.status();
                    t.seen
                        .lock()
                        .unwrap()
                        .failed
                        .push(format!("{other} GET session: {status}"));
                }
                Err(e) => t
                    .seen
                    .lock()
                    .unwrap()
                    .failed
                    .push(format!("{other} GET session: {e}")),
            }
        }
    }
}

/// Runs `migrate` with `args`; its exit status and standard output.
pub fn migrate_cli(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = std::process::Command::new(bin::example_bin("migrate"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "migrate {}: {}\n{stdout}{}",
        args[0],
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, stdout)
}

/// A server's `/health` body.
pub async fn health(http: &reqwest::Client, base: &str) -> Value {
    http.get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Every server process names `backend` in `/health` and takes writes.
pub async fn all_on(http: &reqwest::Client, bases: &[String], backend: &str) {
    for base in bases {
        let health = health(http, base).await;
        assert_eq!(health["backend"], backend, "{base}: {health}");
        assert_eq!(health["read_only"], false, "{base}: {health}");
    }
}
