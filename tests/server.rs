//! The HTTP API over real loopback HTTP, on both backends.
#![cfg(feature = "server")]

mod common;

use common::bin::Killed;

use std::sync::Arc;
use std::time::Duration;

use common::proxy::Proxy;
use common::TestDb;
use interview_store::server::{self, AppState, Interviewer, ScriptedInterviewer};
use interview_store::{Message, PoolConfig, Store, StoreConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

struct TestServer {
    base: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    async fn start(store: Store, admin_token: Option<&str>) -> Self {
        let mut state = AppState::new(store);
        state.admin_token = admin_token.map(str::to_string);
        state.request_timeout = Duration::from_secs(5);
        Self::start_with(state).await
    }

    async fn start_with(state: AppState) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(server::serve(listener, state, async {
            let _ = rx.await;
        }));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        TestServer {
            base,
            http,
            stop: Some(tx),
            task: Some(task),
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.post_raw(path, body.to_string()).await
    }

    async fn post_raw(&self, path: &str, body: String) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn start_session(&self) -> String {
        let (status, body) = self.post("/interview/start", json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["session_id"].as_str().unwrap().to_string()
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn category(body: &Value) -> &str {
    body["error"]["category"]
        .as_str()
        .unwrap_or("<no error body>")
}

backend_test!(validation_checklist, |db: &TestDb| {
    runtime().block_on(async {
        let srv = TestServer::start(db.store(), None).await;
        let (status, health) = srv.get("/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(health, json!({"status": "ok", "db": "up", "backend": db.backend.as_str(), "read_only": false, "retired": false}));

        let (status, started) = srv.post("/interview/start", json!({})).await;
        assert_eq!(status, StatusCode::CREATED);
        let id = started["session_id"].as_str().unwrap().to_string();
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().hyphenated().to_string(), id, "canonical UUID");
        assert_eq!(started["reply"]["role"], "assistant");
        assert!(started["created_at"].as_str().unwrap().ends_with('Z'));

        let answers = ["I rebuilt our billing system.", "Idempotent retries — the \"hard\" part.", "日本語 and emoji 🚀"];
        let mut expected = vec![started["reply"].clone()];
        for a in answers {
            let (status, chat) = srv.post("/interview/chat", json!({"session_id": id, "text": a})).await;
            assert_eq!(status, StatusCode::OK, "{chat}");
            assert_eq!(chat["message"]["text"], a);
            assert_eq!(chat["message"]["role"], "user");
            assert_eq!(chat["reply"]["role"], "assistant");
            expected.push(chat["message"].clone());
            expected.push(chat["reply"].clone());
        }
        let (status, session) = srv.get(&format!("/interview/session/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(session["id"], id.as_str());
        assert_eq!(session["messages"], Value::Array(expected), "every message, in order, as answered");
        assert!(session["summary"].as_str().unwrap().contains("3 answers"));

        let (status, _) = srv.get(&format!("/interview/draft/latest/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "no draft yet");
        let (status, composed) = srv.post("/interview/draft", json!({"session_id": id})).await;
        assert_eq!(status, StatusCode::CREATED);
        assert!(composed["content"].as_str().unwrap().contains("I rebuilt our billing system."));
        let (status, written) = srv.post("/interview/draft", json!({"session_id": id, "content": "Mine"})).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(written["session_id"], id.as_str());
        let (status, latest) = srv.get(&format!("/interview/draft/latest/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(latest, written);

        let metrics = srv.http.get(format!("{}/metrics", srv.base)).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("interview_http_requests_total{method=\"POST\",route=\"/interview/chat\",status=\"200\"}"), "{metrics}");
        assert!(metrics.contains("interview_store_operation_seconds_bucket"), "latency histograms");
        assert!(metrics.contains("interview_db_pool_connections"));
        srv.shutdown().await;
    });
});

backend_test!(every_error_is_json_with_its_status, |db: &TestDb| {
    runtime().block_on(async {
        let srv = TestServer::start(db.store(), None).await;
        let id = srv.start_session().await;
        let unknown = uuid::Uuid::now_v7().to_string();
        let cases: Vec<(&str, String, StatusCode, &str)> = vec![
            (
                "/interview/chat",
                "{not json".into(),
                StatusCode::BAD_REQUEST,
                "input",
            ),
            (
                "/interview/chat",
                json!({"session_id": id}).to_string(),
                StatusCode::BAD_REQUEST,
                "input",
            ),
            (
                "/interview/chat",
                json!({"session_id": "123", "text": "x"}).to_string(),
                StatusCode::BAD_REQUEST,
                "input",
            ),
            (
                "/interview/chat",
                json!({"session_id": id, "text": "x".repeat(33 * 1024)}).to_string(),
                StatusCode::BAD_REQUEST,
                "input",
            ),
            (
                "/interview/chat",
                json!({"session_id": id, "text": "x".repeat(70 * 1024)}).to_string(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "input",
            ),
            (
                "/interview/chat",
                json!({"session_id": unknown, "text": "x"}).to_string(),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                "/interview/draft",
                json!({"session_id": unknown, "content": "x"}).to_string(),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                "/interview/start",
                "[1]".into(),
                StatusCode::BAD_REQUEST,
                "input",
            ),
        ];
        for (path, body, status, cat) in cases {
            let shown: String = body.chars().take(60).collect();
            let (got, answer) = srv.post_raw(path, body).await;
            assert_eq!(got, status, "{path} {shown}: {answer}");
            assert_eq!(category(&answer), cat, "{path} {shown}: {answer}");
            assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
        }
        for (path, status, cat) in [
            (
                format!("/interview/session/{unknown}"),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                "/interview/session/not-a-uuid".to_string(),
                StatusCode::BAD_REQUEST,
                "input",
            ),
            (
                format!("/interview/draft/latest/{id}"),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                "/interview/draft/latest/zzz".to_string(),
                StatusCode::BAD_REQUEST,
                "input",
            ),
        ] {
            let (got, answer) = srv.get(&path).await;
            assert_eq!((got, category(&answer)), (status, cat), "{path}: {answer}");
        }
        // Nothing was written by any of the refused requests.
        let (_, session) = srv.get(&format!("/interview/session/{id}")).await;
        assert_eq!(session["messages"].as_array().unwrap().len(), 1);
        srv.shutdown().await;
    });
});

backend_test!(
    write_pause_refuses_writes_and_serves_reads,
    |db: &TestDb| {
        runtime().block_on(async {
            let store = db.store();
            let off = TestServer::start(store.clone(), None).await;
            let (status, _) = off
                .post("/admin/maintenance", json!({"read_only": true}))
                .await;
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "admin is off without a token"
            );
            off.shutdown().await;

            let srv = TestServer::start(store, Some("s3cret")).await;
            let id = srv.start_session().await;
            let pause = |token: &'static str, on: bool| {
                srv.http
                    .post(format!("{}/admin/maintenance", srv.base))
                    .bearer_auth(token)
                    .json(&json!({"read_only": on}))
                    .send()
            };
            assert_eq!(
                pause("wrong", true).await.unwrap().status(),
                StatusCode::UNAUTHORIZED
            );
            let r = srv
                .http
                .post(format!("{}/admin/maintenance", srv.base))
                .json(&json!({"read_only": true}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "missing token");
            assert_eq!(
                pause("s3cret", true).await.unwrap().status(),
                StatusCode::OK
            );

            let r = srv
                .http
                .post(format!("{}/interview/chat", srv.base))
                .json(&json!({"session_id": id, "text": "x"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(r.headers()["retry-after"], "5");
            assert_eq!(category(&r.json().await.unwrap()), "read_only");
            for (path, body) in [
                ("/interview/start", json!({})),
                (
                    "/interview/draft",
                    json!({"session_id": id, "content": "d"}),
                ),
            ] {
                let (status, answer) = srv.post(path, body).await;
                assert_eq!(
                    (status, category(&answer)),
                    (StatusCode::SERVICE_UNAVAILABLE, "read_only")
                );
            }
            let (status, session) = srv.get(&format!("/interview/session/{id}")).await;
            assert_eq!(status, StatusCode::OK, "reads go on");
            assert_eq!(
                session["messages"].as_array().unwrap().len(),
                1,
                "no write got through"
            );
            assert_eq!(srv.get("/health").await.1["read_only"], true);

            assert_eq!(
                pause("s3cret", false).await.unwrap().status(),
                StatusCode::OK
            );
            let (status, _) = srv
                .post("/interview/chat", json!({"session_id": id, "text": "back"}))
                .await;
            assert_eq!(status, StatusCode::OK);
            srv.shutdown().await;
        });
    }
);

backend_test!(fifty_concurrent_chats_are_all_stored, |db: &TestDb| {
    runtime().block_on(async {
        let srv = Arc::new(TestServer::start(db.store(), None).await);
        let mut ids = Vec::new();
        for _ in 0..10 {
            ids.push(srv.start_session().await);
        }
        let tasks: Vec<_> = (0..50)
            .map(|n| {
                let (srv, id) = (srv.clone(), ids[n % 10].clone());
                tokio::spawn(async move {
                    srv.post(
                        "/interview/chat",
                        json!({"session_id": id, "text": format!("answer {n}")}),
                    )
                    .await
                })
            })
            .collect();
        for t in tasks {
            let (status, body) = t.await.unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        for (i, id) in ids.iter().enumerate() {
            let (_, session) = srv.get(&format!("/interview/session/{id}")).await;
            let messages = session["messages"].as_array().unwrap();
            assert_eq!(messages.len(), 1 + 5 * 2, "{id}");
            let mut mine: Vec<String> = messages
                .iter()
                .filter(|m| m["role"] == "user")
                .map(|m| m["text"].as_str().unwrap().to_string())
                .collect();
            mine.sort();
            let mut want: Vec<String> = (0..50)
                .filter(|n| n % 10 == i)
                .map(|n| format!("answer {n}"))
                .collect();
            want.sort();
            assert_eq!(mine, want);
        }
        Arc::try_unwrap(srv).ok().unwrap().shutdown().await;
    });
});

/// PostgreSQL behind a proxy the test owns: health goes down, the API answers 503, and both recover.
/// (An embedded SQLite file has no server to lose.)
#[test]
fn stopped_database_answers_503_and_recovers() {
    let pg = common::PgDatabase::create();
    runtime().block_on(async {
        let upstream = {
            let rest = pg.url.split("://").nth(1).unwrap();
            let hostport = rest
                .split('@')
                .next_back()
                .unwrap()
                .split('/')
                .next()
                .unwrap();
            if hostport.contains(':') {
                hostport.to_string()
            } else {
                format!("{hostport}:5432")
            }
        };
        let proxy = Proxy::start(0, upstream.clone()).await;
        let via_proxy = pg
            .url
            .replacen(&upstream, &format!("127.0.0.1:{}", proxy.port), 1);
        assert_ne!(via_proxy, pg.url);
        let config = StoreConfig {
            pool: PoolConfig {
                max_size: 4,
                connection_timeout: Duration::from_millis(800),
                ..Default::default()
            },
            health_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let store = tokio::task::spawn_blocking(move || {
            let s = Store::connect(&via_proxy, config).unwrap();
            s.migrate().unwrap();
            s
        })
        .await
        .unwrap();
        let srv = TestServer::start(store, None).await;
        let id = srv.start_session().await;

        proxy.stop();
        let started = std::time::Instant::now();
        let (status, health) = srv.get("/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
        assert_eq!(health["db"], "down");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "health answered in bounded time"
        );
        for _ in 0..3 {
            // The first calls may each find a dead pooled connection; all must answer 503, never hang or 500.
            let (status, answer) = srv
                .post(
                    "/interview/chat",
                    json!({"session_id": id, "text": "during the outage"}),
                )
                .await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
            assert_eq!(category(&answer), "unavailable");
        }

        let back = Proxy::start(proxy.port, upstream).await;
        let mut recovered = false;
        for _ in 0..20 {
            if srv.get("/health").await.0 == StatusCode::OK {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(recovered, "health recovers once the database is back");
        let (status, answer) = srv
            .post(
                "/interview/chat",
                json!({"session_id": id, "text": "after"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let (_, session) = srv.get(&format!("/interview/session/{id}")).await;
        let texts: Vec<&str> = session["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        assert!(
            !texts.contains(&"during the outage"),
            "nothing half-written during the outage"
        );
        assert!(texts.contains(&"after"));
        srv.shutdown().await;
        back.stop();
    });
}

/// The scripted interviewer, taking `delay` to think of each reply (as an LLM would).
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

fn slow_state(store: Store, delay: Duration) -> AppState {
    let mut state = AppState::new(store);
    state.interviewer = Arc::new(SlowInterviewer { delay });
    state
}

async fn post_keyed(srv: &TestServer, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
    let r = srv
        .http
        .post(format!("{}{path}", srv.base))
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

backend_test!(
    idempotency_key_replays_refuses_and_stores_once,
    |db: &TestDb| {
        runtime().block_on(async {
            let store = db.store();
            let srv =
                TestServer::start_with(slow_state(store.clone(), Duration::from_millis(1500)))
                    .await;
            let first = post_keyed(&srv, "/interview/start", "start-1", json!({})).await;
            assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
            assert_eq!(
                post_keyed(&srv, "/interview/start", "start-1", json!({})).await,
                first,
                "same answer"
            );
            assert_eq!(
                store.counts().unwrap().sessions,
                1,
                "one session for two requests"
            );
            let id = first.1["session_id"].as_str().unwrap().to_string();

            // A retry while the first is still thinking: 409, nothing stored twice.
            let turn = json!({"session_id": id, "text": "I built a compiler."});
            let running = {
                let (base, http, turn) = (srv.base.clone(), srv.http.clone(), turn.clone());
                tokio::spawn(async move {
                    let r = http
                        .post(format!("{base}/interview/chat"))
                        .header("idempotency-key", "chat-1")
                        .json(&turn)
                        .send()
                        .await
                        .unwrap();
                    (r.status(), r.json::<Value>().await.unwrap())
                })
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (status, body) = post_keyed(&srv, "/interview/chat", "chat-1", turn.clone()).await;
            assert_eq!(
                (status, category(&body)),
                (StatusCode::CONFLICT, "conflict"),
                "{body}"
            );
            let answered = running.await.unwrap();
            assert_eq!(answered.0, StatusCode::OK, "{}", answered.1);
            // The retry after the timeout gets the first answer, byte for byte.
            assert_eq!(
                post_keyed(&srv, "/interview/chat", "chat-1", turn.clone()).await,
                answered
            );
            let messages = store.get_session(id.parse().unwrap()).unwrap().messages;
            assert_eq!(messages.len(), 3, "the user's message is stored once");

            // Same key, another body: 422, nothing stored.
            let other = json!({"session_id": id, "text": "Something else."});
            let (status, body) = post_keyed(&srv, "/interview/chat", "chat-1", other).await;
            assert_eq!(
                (status, category(&body)),
                (StatusCode::UNPROCESSABLE_ENTITY, "input"),
                "{body}"
            );
            assert_eq!(
                store
                    .get_session(id.parse().unwrap())
                    .unwrap()
                    .messages
                    .len(),
                3
            );

            let draft = json!({"session_id": id, "content": "Mine"});
            let first = post_keyed(&srv, "/interview/draft", "draft-1", draft.clone()).await;
            assert_eq!(first.0, StatusCode::CREATED);
            assert_eq!(
                post_keyed(&srv, "/interview/draft", "draft-1", draft).await,
                first
            );
            assert_eq!(store.counts().unwrap().drafts, 1);

            // A request that failed stored nothing, so its retry runs.
            let unknown = json!({"session_id": uuid::Uuid::now_v7(), "text": "x"});
            let (status, _) = post_keyed(&srv, "/interview/chat", "chat-2", unknown.clone()).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
            let (status, _) = post_keyed(&srv, "/interview/chat", "chat-2", unknown).await;
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "not 409: the failed claim was released"
            );

            let (status, body) = post_keyed(&srv, "/interview/start", "bad key ✗", json!({})).await;
            assert_eq!(
                (status, category(&body)),
                (StatusCode::BAD_REQUEST, "input"),
                "{body}"
            );
            srv.shutdown().await;
        });
    }
);

backend_test!(
    over_the_concurrency_limit_answers_503_at_once,
    |db: &TestDb| {
        runtime().block_on(async {
            let store = db.store();
            let id = store.start_session().unwrap().id;
            let mut state = slow_state(store, Duration::from_millis(1500));
            state.limits.max_concurrent_requests = 1;
            let srv = TestServer::start_with(state).await;
            let busy = {
                let (base, http) = (srv.base.clone(), srv.http.clone());
                tokio::spawn(async move {
                    http.post(format!("{base}/interview/chat"))
                        .json(&json!({"session_id": id, "text": "slow"}))
                        .send()
                        .await
                        .unwrap()
                        .status()
                })
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
            let r = srv
                .http
                .get(format!("{}/health", srv.base))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(r.headers()["retry-after"], "5");
            assert_eq!(category(&r.json().await.unwrap()), "unavailable");
            assert_eq!(busy.await.unwrap(), StatusCode::OK);
            assert_eq!(
                srv.get("/health").await.0,
                StatusCode::OK,
                "served again once below the limit"
            );
            srv.shutdown().await;
        });
    }
);

backend_test!(
    an_empty_position_header_is_no_position_and_a_malformed_one_is_refused,
    |db: &TestDb| {
        runtime().block_on(async {
            let srv = TestServer::start(db.store(), None).await;
            let id = srv.start_session().await;
            for path in [
                format!("/interview/session/{id}"),
                format!("/interview/draft/latest/{id}"),
            ] {
                for (sent, status) in [
                    // A client echoing a write's answer headers sends an empty
                    // one when the write carried no position (SQLite, no replicas).
                    ("", StatusCode::OK),
                    ("0/1", StatusCode::OK),
                    ("16/B374D848", StatusCode::OK),
                    ("0/1; DROP TABLE sessions", StatusCode::BAD_REQUEST),
                    ("-1/0", StatusCode::BAD_REQUEST),
                    ("0/", StatusCode::BAD_REQUEST),
                    ("123456789/0", StatusCode::BAD_REQUEST),
                ] {
                    let r = srv
                        .http
                        .get(format!("{}{path}", srv.base))
                        .header("Interview-Position", sent)
                        .send()
                        .await
                        .unwrap();
                    let got = r.status();
                    let body: Value = r.json().await.unwrap();
                    // No draft yet is a 404 in the one error shape, not a refusal.
                    let got = if got == StatusCode::NOT_FOUND && category(&body) == "not_found" {
                        StatusCode::OK
                    } else {
                        got
                    };
                    assert_eq!(got, status, "{path} with {sent:?}: {body}");
                    if status == StatusCode::BAD_REQUEST {
                        assert_eq!(category(&body), "input", "{body}");
                    }
                }
            }
            srv.shutdown().await;
        });
    }
);

backend_test!(
    error_bodies_name_the_request_not_the_database,
    |db: &TestDb| {
        runtime().block_on(async {
            let store = db.store();
            let id = store.start_session().unwrap().id;
            store
                .with_connection(|c| {
                    use diesel::connection::SimpleConnection;
                    Ok(c.batch_execute("DROP TABLE drafts")?)
                })
                .unwrap();
            let srv = TestServer::start(store, None).await;
            let r = srv
                .http
                .post(format!("{}/interview/draft", srv.base))
                .json(&json!({"session_id": id, "content": "x"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let header_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
            let body: Value = r.json().await.unwrap();
            assert_eq!(category(&body), "db");
            assert_eq!(body["error"]["request_id"], header_id.as_str(), "{body}");
            let text = body.to_string().to_lowercase();
            for leak in [
                "drafts",
                "no such table",
                "does not exist",
                "insert",
                "postgres",
                "sqlite",
                "127.0.0.1",
                "interview_store_test",
                "interview.db",
            ] {
                assert!(!text.contains(leak), "{leak:?} in {body}");
            }
            // Unknown routes and methods answer in the same shape, with an id.
            let r = srv
                .http
                .delete(format!("{}/health", srv.base))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
            assert!(r.headers().contains_key("x-request-id"));
            // A plain client id is kept; one a client could use to write into
            // logs and error bodies is replaced by a fresh one.
            for (sent, kept) in [
                ("client-42.a:b_c", true),
                ("has spaces and \"quotes\"", false),
                (&*"x".repeat(129), false),
            ] {
                let r = srv
                    .http
                    .delete(format!("{}/health", srv.base))
                    .header("x-request-id", sent)
                    .send()
                    .await
                    .unwrap();
                let echoed = r.headers()["x-request-id"].to_str().unwrap().to_string();
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["request_id"], echoed.as_str(), "{body}");
                assert_eq!(echoed == sent, kept, "{sent:?} -> {echoed:?}");
                if !kept {
                    assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "{echoed}");
                }
            }
            let body: Value = r.json().await.unwrap();
            assert_eq!(category(&body), "input", "{body}");
            srv.shutdown().await;
        });
    }
);

backend_test!(metrics_labels_come_from_fixed_sets, |db: &TestDb| {
    runtime().block_on(async {
        let srv = TestServer::start(db.store(), None).await;
        for n in 0..5 {
            let method = reqwest::Method::from_bytes(format!("MADEUP{n}").as_bytes()).unwrap();
            srv.http
                .request(method, format!("{}/health", srv.base))
                .send()
                .await
                .unwrap();
            srv.http
                .get(format!("{}/no/such/path{n}", srv.base))
                .send()
                .await
                .unwrap();
        }
        let metrics = srv
            .http
            .get(format!("{}/metrics", srv.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!metrics.contains("MADEUP"), "{metrics}");
        assert!(!metrics.contains("/no/such"), "{metrics}");
        assert!(metrics.contains("method=\"other\""), "{metrics}");
        assert!(metrics.contains("route=\"unmatched\""), "{metrics}");
        srv.shutdown().await;
    });
});

backend_test!(admin_bearer_scheme_is_case_insensitive, |db: &TestDb| {
    runtime().block_on(async {
        let srv = TestServer::start(db.store(), Some("s3cret")).await;
        for (auth, status) in [
            ("bearer s3cret", StatusCode::OK),
            ("BEARER s3cret", StatusCode::OK),
            ("Bearer s3cre", StatusCode::UNAUTHORIZED),
            ("Bearer s3cret-and-more", StatusCode::UNAUTHORIZED),
            ("Basic s3cret", StatusCode::UNAUTHORIZED),
        ] {
            let r = srv
                .http
                .post(format!("{}/admin/maintenance", srv.base))
                .header("authorization", auth)
                .json(&json!({"read_only": false}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), status, "{auth}");
        }
        srv.shutdown().await;
    });
});

backend_test!(
    slow_header_clients_do_not_stall_the_server,
    |db: &TestDb| {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        runtime().block_on(async {
        let store = db.store();
        let id = store.start_session().unwrap().id;
        let mut state = AppState::new(store);
        state.limits.header_read_timeout = Duration::from_secs(1);
        let srv = TestServer::start_with(state).await;
        let addr = srv.base.trim_start_matches("http://").to_string();
        // 200 connections sending their request head one byte a second.
        let trickles: Vec<JoinHandle<bool>> = (0..200)
            .map(|_| {
                let addr = addr.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = TcpStream::connect(&addr).await else { return false };
                    let head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
                    for b in head {
                        if s.write_all(&[*b]).await.is_err() {
                            return true; // closed by the server
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    // The whole head sent: the server must have closed before it was complete.
                    let mut buf = [0u8; 256];
                    matches!(tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let quick = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
        let r = quick.get(format!("{}/health", srv.base)).send().await.expect("health within a second");
        assert_eq!(r.status(), StatusCode::OK);
        let r = quick
            .post(format!("{}/interview/chat", srv.base))
            .json(&json!({"session_id": id, "text": "still here"}))
            .send()
            .await
            .expect("chat within a second");
        assert_eq!(r.status(), StatusCode::OK);
        // Every slow connection is closed by the server, well before its head is complete.
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut closed = 0;
            for t in trickles {
                closed += usize::from(t.await.unwrap_or(false));
            }
            closed
        })
        .await
        .expect("the server closes slow connections by itself");
        assert_eq!(closed, 200);
        srv.shutdown().await;
    });
    }
);

backend_test!(shutdown_has_a_deadline, |db: &TestDb| {
    use tokio::io::AsyncWriteExt;
    runtime().block_on(async {
        let mut state = AppState::new(db.store());
        state.limits.shutdown_timeout = Duration::from_millis(500);
        let mut srv = TestServer::start_with(state).await;
        let addr = srv.base.trim_start_matches("http://").to_string();
        // A request whose body never comes: it stays in flight.
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /interview/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = srv.stop.take().unwrap().send(());
        let ended = tokio::time::timeout(Duration::from_secs(10), srv.task.take().unwrap()).await;
        assert!(ended.is_ok(), "serve returns after its shutdown deadline");
        drop(s);
    });
});

/// SQLite's writer queue waits at most the pool timeout, then answers 503.
#[test]
fn sqlite_writer_queue_wait_is_bounded() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let db = TestDb::new(interview_store::Backend::Sqlite);
    let store = db.store_with(StoreConfig {
        pool: PoolConfig {
            connection_timeout: Duration::from_millis(300),
            busy_timeout: Duration::from_secs(5),
            ..Default::default()
        },
        ..Default::default()
    });
    let id = store.start_session().unwrap().id;
    // Another process holds SQLite's write lock for a while.
    let path = db.url.trim_start_matches("sqlite://").to_string();
    let mut other = diesel::SqliteConnection::establish(&path).unwrap();
    other.batch_execute("BEGIN IMMEDIATE").unwrap();
    // The first writer waits on the lock (SQLite's busy timeout), at the head of the queue.
    let first = {
        let store = store.clone();
        std::thread::spawn(move || store.append_message(id, interview_store::Role::User, "first"))
    };
    std::thread::sleep(Duration::from_millis(300));
    runtime().block_on(async {
        let srv = TestServer::start(store.clone(), None).await;
        let r = srv
            .http
            .post(format!("{}/interview/chat", srv.base))
            .json(&json!({"session_id": id, "text": "queued"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "5");
        assert_eq!(category(&r.json().await.unwrap()), "unavailable");
        other.batch_execute("COMMIT").unwrap();
        first.join().unwrap().unwrap();
        let (status, _) = srv
            .post(
                "/interview/chat",
                json!({"session_id": id, "text": "later"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        srv.shutdown().await;
    });
}

/// While PostgreSQL refuses connections, requests get 503 at once instead of each
/// waiting the pool's timeout; acknowledged writes survive; service resumes when it is back.
#[test]
fn unreachable_database_fails_fast_and_recovers() {
    let pg = common::PgDatabase::create();
    runtime().block_on(async {
        let rest = pg.url.split("://").nth(1).unwrap();
        let hostport = rest
            .split('@')
            .next_back()
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        let upstream = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:5432")
        };
        let proxy = Proxy::start(0, upstream.clone()).await;
        let via_proxy = pg
            .url
            .replacen(&upstream, &format!("127.0.0.1:{}", proxy.port), 1);
        let db_name = pg
            .url
            .rsplit('/')
            .next()
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_string();
        let config = StoreConfig {
            pool: PoolConfig {
                max_size: 4,
                // Long on purpose: no request may wait it out while the database is down.
                connection_timeout: Duration::from_secs(5),
                ..Default::default()
            },
            health_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let store = tokio::task::spawn_blocking(move || {
            let s = Store::connect(&via_proxy, config).unwrap();
            s.migrate().unwrap();
            s
        })
        .await
        .unwrap();
        let srv = TestServer::start(store, None).await;
        let id = srv.start_session().await;
        let mut acked = Vec::new();
        for n in 0..5 {
            let text = format!("acknowledged {n}");
            let (status, _) = srv
                .post("/interview/chat", json!({"session_id": id, "text": text}))
                .await;
            assert_eq!(status, StatusCode::OK);
            acked.push(text);
        }

        proxy.stop();
        for n in 0..10 {
            let started = std::time::Instant::now();
            let r = srv
                .http
                .post(format!("{}/interview/chat", srv.base))
                .json(&json!({"session_id": id, "text": format!("during the outage {n}")}))
                .send()
                .await
                .unwrap();
            let took = started.elapsed();
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(r.headers()["retry-after"], "5");
            let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
            let body: Value = r.json().await.unwrap();
            assert_eq!(category(&body), "unavailable");
            assert_eq!(body["error"]["request_id"], request_id.as_str());
            let text = body.to_string();
            for leak in ["127.0.0.1", &proxy.port.to_string(), &db_name, "postgres"] {
                assert!(!text.contains(leak), "{leak:?} in {body}");
            }
            // Far below the pool's 5 s: nobody waits for a database known to be down.
            assert!(took < Duration::from_secs(2), "request {n} took {took:?}");
        }
        let (status, health) = srv.get("/health").await;
        assert_eq!(
            (status, health["db"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("down"))
        );

        let back = Proxy::start(proxy.port, upstream).await;
        let returned = std::time::Instant::now();
        let mut served = false;
        while returned.elapsed() < Duration::from_secs(5) {
            let (status, _) = srv
                .post(
                    "/interview/chat",
                    json!({"session_id": id, "text": "after"}),
                )
                .await;
            if status == StatusCode::OK {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(served, "serving again once the database is back");
        let (_, session) = srv.get(&format!("/interview/session/{id}")).await;
        let texts: Vec<&str> = session["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        for a in &acked {
            assert!(texts.contains(&a.as_str()), "acknowledged {a:?} survived");
        }
        assert!(!texts.iter().any(|t| t.starts_with("during the outage")));
        assert_eq!(texts.iter().filter(|t| **t == "after").count(), 1);
        srv.shutdown().await;
        back.stop();
    });
}

/// Runs the example server on `db` until the handle is dropped.
fn spawn_server(db: &TestDb) -> (Killed, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = std::process::Command::new(common::bin::example_bin("server"));
    cmd.env("INTERVIEW_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .env("INTERVIEW_DB_BACKEND", db.backend.as_str())
        // Off for the run through PgBouncer (transaction mode), as an operator sets it there.
        .env(
            "INTERVIEW_PG_STATEMENT_CACHE",
            if db.pg_statement_cache { "on" } else { "off" },
        );
    match db.backend {
        interview_store::Backend::Sqlite => cmd.env(
            "INTERVIEW_SQLITE_PATH",
            db.url.trim_start_matches("sqlite://"),
        ),
        interview_store::Backend::Postgres => cmd.env("INTERVIEW_POSTGRES_URL", &db.url),
    };
    (
        Killed(cmd.spawn().unwrap()),
        format!("http://127.0.0.1:{port}"),
    )
}

async fn wait_healthy(http: &reqwest::Client, base: &str) {
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            if r.status() == StatusCode::OK {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server at {base} did not come up");
}

backend_test!(
    acknowledged_writes_survive_kill_9_of_the_server,
    |db: &TestDb| {
        runtime().block_on(async {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let (child, base) = spawn_server(db);
            wait_healthy(&http, &base).await;
            let started: Value = http
                .post(format!("{base}/interview/start"))
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = started["session_id"].as_str().unwrap().to_string();
            let mut acked = Vec::new();
            for n in 0..20 {
                let text = format!("acknowledged {n}");
                let r = http
                    .post(format!("{base}/interview/chat"))
                    .json(&json!({"session_id": id, "text": text}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                acked.push(text);
            }
            drop(child); // kill -9

            let (again, base) = spawn_server(db);
            wait_healthy(&http, &base).await;
            let session: Value = http
                .get(format!("{base}/interview/session/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let texts: Vec<&str> = session["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["text"].as_str().unwrap())
                .collect();
            for a in &acked {
                assert!(texts.contains(&a.as_str()), "{a:?} lost by kill -9");
            }
            assert_eq!(texts.len(), 1 + 2 * acked.len());
            drop(again);
        });
    }
);

backend_test!(
    a_pause_through_one_server_holds_for_a_second_server_on_the_same_database,
    |db: &TestDb| {
        runtime().block_on(async {
            // Two stores with pools of their own: two server processes on one database.
            let one = TestServer::start(db.store(), Some("s3cret")).await;
            let two = TestServer::start(db.store(), Some("s3cret")).await;
            let id = two.start_session().await;
            let admin = |srv: &TestServer, on: bool| {
                srv.http
                    .post(format!("{}/admin/maintenance", srv.base))
                    .bearer_auth("s3cret")
                    .json(&json!({"read_only": on}))
                    .send()
            };
            let r = admin(&one, true).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.json::<Value>().await.unwrap(), json!({"read_only": true}));

            let r = two
                .http
                .post(format!("{}/interview/chat", two.base))
                .json(&json!({"session_id": id, "text": "during the pause"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(r.headers()["retry-after"], "5");
            assert_eq!(category(&r.json().await.unwrap()), "read_only");
            assert_eq!(two.get("/health").await.1["read_only"], true);
            let (status, session) = two.get(&format!("/interview/session/{id}")).await;
            assert_eq!(status, StatusCode::OK, "reads go on");
            assert_eq!(session["messages"].as_array().unwrap().len(), 1);

            // Lifted through the second server, it is lifted for the first.
            assert_eq!(admin(&two, false).await.unwrap().status(), StatusCode::OK);
            let (status, body) = one
                .post(
                    "/interview/chat",
                    json!({"session_id": id, "text": "after"}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(one.get("/health").await.1["read_only"], false);
            one.shutdown().await;
            two.shutdown().await;
        });
    }
);

backend_test!(
    a_retired_database_answers_503_without_saying_where_the_data_went,
    |db: &TestDb| {
        runtime().block_on(async {
            let store = db.store();
            let srv = TestServer::start(store.clone(), Some("s3cret")).await;
            let id = srv.start_session().await;
            tokio::task::spawn_blocking(move || {
                store.with_connection(|c| {
                    interview_store::maintenance::retire(
                        c,
                        "postgres://app:pw@db.internal/interview",
                    )
                })
            })
            .await
            .unwrap()
            .unwrap();
            let r = srv
                .http
                .post(format!("{}/interview/chat", srv.base))
                .json(&json!({"session_id": id, "text": "x"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(r.headers()["retry-after"], "5");
            let body: Value = r.json().await.unwrap();
            assert_eq!(category(&body), "read_only");
            assert!(!body.to_string().contains("db.internal"), "{body}");
            let (_, health) = srv.get("/health").await;
            assert_eq!(
                (health["read_only"].clone(), health["retired"].clone()),
                (json!(true), json!(true))
            );
            assert!(!health.to_string().contains("db.internal"), "{health}");
            // Resuming through the admin endpoint is refused: only the switch makes it live.
            let r = srv
                .http
                .post(format!("{}/admin/maintenance", srv.base))
                .bearer_auth("s3cret")
                .json(&json!({"read_only": false}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            srv.shutdown().await;
        });
    }
);

/// A chat answered on SQLite under a key, then the cutover (copy, sync, switch):
/// the client's retry, now served from PostgreSQL, gets the first answer and
/// stores nothing twice.
#[test]
fn a_retry_after_the_cutover_replays_the_answer_given_on_sqlite() {
    use interview_store::connection::DatabaseUrl;
    use interview_store::migrate::{self, CopyOptions, SyncOptions};
    let src = common::legacy::Legacy::new(&common::legacy::clean_sql(2, 2));
    let pg_db = common::PgDatabase::create();
    let pg_url: DatabaseUrl = pg_db.url.parse().unwrap();
    let lite = src.store();
    let id = "00000000-0000-4000-8000-000000000001";
    let turn = json!({"session_id": id, "text": "I kept the keys."});
    let first = runtime().block_on(async {
        let srv = TestServer::start(lite.clone(), None).await;
        let first = post_keyed(&srv, "/interview/chat", "retry-1", turn.clone()).await;
        assert_eq!(first.0, StatusCode::OK, "{}", first.1);
        first
    });
    let copied = migrate::copy(&src.path, &pg_url, &CopyOptions::default()).unwrap();
    assert_eq!(copied.idempotency_keys, 1, "{copied:?}");
    let url = DatabaseUrl::sqlite(src.path.display().to_string());
    interview_store::maintenance::pause(&mut interview_store::maintenance::connect(&url).unwrap())
        .unwrap();
    migrate::sync(&src.path, &pg_url, &SyncOptions::default()).unwrap();
    migrate::switch(&src.path, &pg_url, interview_store::Backend::Postgres).unwrap();

    let pg = Store::open(pg_url.clone(), StoreConfig::default()).unwrap();
    let before = pg.counts().unwrap();
    runtime().block_on(async {
        let srv = TestServer::start(pg.clone(), None).await;
        let r = srv
            .http
            .post(format!("{}/interview/chat", srv.base))
            .header("idempotency-key", "retry-1")
            .json(&turn)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()
                .get("idempotent-replayed")
                .map(|v| v.to_str().unwrap().to_string()),
            Some("true".to_string())
        );
        let again = (r.status(), r.json::<Value>().await.unwrap());
        assert_eq!(again, first, "the answer given on SQLite");
    });
    assert_eq!(pg.counts().unwrap(), before, "nothing stored twice");
}
