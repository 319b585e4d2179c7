//! The HTTP API over real loopback HTTP, on both backends.
#![cfg(feature = "server")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestDb;
use interview_store::server::{self, AppState};
use interview_store::{PoolConfig, Store, StoreConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

struct TestServer {
    base: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    async fn start(store: Store, admin_token: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut state = AppState::new(store);
        state.admin_token = admin_token.map(str::to_string);
        state.request_timeout = Duration::from_secs(5);
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

/// A TCP proxy in front of PostgreSQL that the test can stop and restart on the same port.
struct Proxy {
    port: u16,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(port: u16, upstream: String) -> Proxy {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(format!("127.0.0.1:{port}").parse().unwrap())
            .unwrap();
        let listener = socket.listen(64).unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let registry = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                registry.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Proxy { port, tasks }
    }

    /// Closes the listener and every proxied connection: the database is gone.
    fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

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
