//! The slow-request log line (`INTERVIEW_SLOW_REQUEST_MS`): a request at or
//! above the threshold is logged at warn with its route, backend, total time,
//! time held by a pause and time on the blocking pool; a faster one is not.
#![cfg(feature = "server")]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestDb;
use interview_store::server::{self, AppState, Interviewer, ScriptedInterviewer};
use interview_store::{maintenance, Message};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Every `slow request:` line logged in this test binary (its tests share the logger).
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        let line = r.args().to_string();
        if line.starts_with("slow request:") {
            LINES.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

fn capture_logs() {
    let _ = log::set_logger(&Capture).map(|()| log::set_max_level(log::LevelFilter::Warn));
}

/// The line logged for `request_id`, as `method`, `route` and its `key=value` fields.
fn logged(request_id: &str) -> Option<HashMap<String, String>> {
    let lines = LINES.lock().unwrap();
    let line = lines
        .iter()
        .find(|l| l.ends_with(&format!("request_id={request_id}")))?;
    let mut words = line.split_whitespace().skip(2);
    let mut fields = HashMap::new();
    fields.insert("method".to_string(), words.next()?.to_string());
    fields.insert("route".to_string(), words.next()?.to_string());
    for w in words {
        let (k, v) = w.split_once('=')?;
        fields.insert(k.to_string(), v.to_string());
    }
    Some(fields)
}

fn ms(fields: &HashMap<String, String>, key: &str) -> u64 {
    fields[key]
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number: {fields:?}"))
}

/// Serves `state` on a loopback port; returns its base URL (the server ends with the runtime).
async fn start(state: AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::serve(listener, state, std::future::pending()));
    base
}

/// POSTs `body` to `path` with its own `x-request-id`; returns the status and that id.
async fn post(base: &str, path: &str, body: Value) -> (StatusCode, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let status = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("x-request-id", &id)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status();
    (status, id)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

backend_test!(
    a_write_held_by_a_pause_is_logged_with_the_time_held,
    |db: &TestDb| {
        capture_logs();
        runtime().block_on(async {
            let mut state = AppState::new(db.store());
            state.pause_wait = Duration::from_millis(600);
            state.limits.slow_request = Duration::from_millis(200);
            let base = start(state).await;

            let (status, fast) = post(&base, "/interview/start", json!({})).await;
            assert_eq!(status, StatusCode::CREATED);
            assert_eq!(logged(&fast), None, "a fast request is not logged");

            let url: interview_store::DatabaseUrl = db.direct_url.parse().unwrap();
            maintenance::pause(&mut maintenance::connect(&url).unwrap()).unwrap();
            let (status, held) = post(&base, "/interview/start", json!({})).await;
            assert_eq!(
                status,
                StatusCode::SERVICE_UNAVAILABLE,
                "held, then refused"
            );

            let line = logged(&held).expect("the held write is logged");
            assert_eq!(line["method"], "POST");
            assert_eq!(line["route"], "/interview/start");
            assert_eq!(line["status"], "503");
            assert_eq!(line["backend"], db.backend.as_str());
            let (total, held_ms, db_ms) = (
                ms(&line, "total_ms"),
                ms(&line, "held_ms"),
                ms(&line, "db_ms"),
            );
            assert!(total >= 600, "held for the pause wait: {line:?}");
            // The hold is the sleeps between tries; the tries themselves are the database's.
            assert!(held_ms >= 400, "most of it held: {line:?}");
            assert!(db_ms > 0, "each try asked the database: {line:?}");
            assert!(
                held_ms + db_ms <= total + 1,
                "parts within the whole: {line:?}"
            );
        });
    }
);

/// The scripted interviewer, taking `delay` to think of each reply (inside the store call).
struct SlowInterviewer {
    delay: Duration,
}

impl Interviewer for SlowInterviewer {
    fn opening(&self) -> String {
        ScriptedInterviewer.opening()
    }
    fn reply(&self, history: &[Message]) -> String {
        std::thread::sleep(self.delay);
        ScriptedInterviewer.reply(history)
    }
    fn summarize(&self, history: &[Message]) -> String {
        ScriptedInterviewer.summarize(history)
    }
}

backend_test!(
    a_slow_store_call_is_logged_as_time_in_the_database,
    |db: &TestDb| {
        capture_logs();
        runtime().block_on(async {
            let mut state = AppState::new(db.store());
            state.interviewer = Arc::new(SlowInterviewer {
                delay: Duration::from_millis(300),
            });
            state.limits.slow_request = Duration::from_millis(250);
            let base = start(state).await;
            let start = reqwest::Client::new()
                .post(format!("{base}/interview/start"))
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let session: Value = start.json().await.unwrap();
            let (status, chat) = post(
                &base,
                "/interview/chat",
                json!({"session_id": session["session_id"], "text": "hello"}),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            let line = logged(&chat).expect("the slow chat is logged");
            assert_eq!(line["route"], "/interview/chat");
            assert_eq!(line["backend"], db.backend.as_str());
            assert_eq!(ms(&line, "held_ms"), 0, "nothing paused: {line:?}");
            assert!(ms(&line, "db_ms") >= 300, "the store call's time: {line:?}");
            assert!(ms(&line, "total_ms") >= ms(&line, "db_ms"), "{line:?}");
        });
    }
);
