//! The API contract: the OpenAPI document the server serves, and what it
//! promises about ids, over real loopback HTTP.
#![cfg(feature = "server")]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::TestDb;
use interview_store::server::{self, AppState};
use interview_store::{Backend, Store};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The server on a loopback port, as `tests/server.rs` runs it.
struct TestServer {
    base: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    async fn start(store: Store) -> Self {
        let mut state = AppState::new(store);
        state.request_timeout = Duration::from_secs(5);
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
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
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

const REGENERATE: &str = "UPDATE_OPENAPI=1 cargo test --all-features --test openapi";

/// The served document is the committed `docs/openapi.json`, so a change to
/// the contract shows in review. `UPDATE_OPENAPI=1` rewrites the copy.
#[test]
fn served_document_is_the_committed_copy() {
    let db = TestDb::new(Backend::Sqlite);
    let served = runtime().block_on(async {
        let srv = TestServer::start(db.store()).await;
        let r = srv
            .http
            .get(format!("{}/openapi.json", srv.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/json");
        let served: Value = r.json().await.unwrap();
        srv.shutdown().await;
        served
    });
    assert_eq!(served["openapi"], "3.1.0");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
    if std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::write(&path, pretty).unwrap();
        eprintln!("rewrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; write it with `{REGENERATE}`", path.display()));
    let committed: Value = serde_json::from_str(&committed).unwrap_or_else(|e| {
        panic!(
            "{} is not JSON ({e}); rewrite it with `{REGENERATE}`",
            path.display()
        )
    });
    if committed != served {
        panic!(
            "the served /openapi.json differs from {}: the API contract changed.\n\
             If that is meant, regenerate the copy with `{REGENERATE}` and commit it \
             (the diff is the contract change for review).",
            path.display()
        );
    }
}

/// Every operation's answers carry the error body, `x-request-id` and (on
/// 503) `Retry-After`; the writes take an `Idempotency-Key`; admin needs the
/// bearer scheme; and `start` links to the calls that take its session id.
#[test]
fn document_covers_statuses_headers_and_links() {
    let doc = server::openapi();
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let what = format!("{method} {path}");
            let responses = op["responses"].as_object().unwrap();
            for status in ["408", "500", "503"] {
                assert!(responses.contains_key(status), "{what}: no {status}");
            }
            for (status, response) in responses {
                assert!(
                    response["headers"].get("x-request-id").is_some(),
                    "{what} {status}: no x-request-id header"
                );
                if status == "503" {
                    assert!(
                        response["headers"].get("retry-after").is_some(),
                        "{what} 503: no Retry-After"
                    );
                }
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"];
                    let mentions_error = schema.to_string().contains("#/components/schemas/Error");
                    assert!(
                        mentions_error,
                        "{what} {status}: not the error body: {schema}"
                    );
                }
            }
            let params = op["parameters"].as_array().unwrap();
            let has = |name: &str| params.iter().any(|p| p["name"] == name);
            assert!(has("x-request-id"), "{what}");
            if method == "post" && path.starts_with("/interview/") {
                assert!(has("Idempotency-Key"), "{what}");
                for status in ["409", "413", "422"] {
                    assert!(responses.contains_key(status), "{what}: no {status}");
                }
            }
        }
    }
    assert_eq!(operations, 9, "every route is in the document");
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_token"],
        json!({"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <INTERVIEW_ADMIN_TOKEN>` (the scheme in any case)."})
    );
    assert_eq!(
        doc["paths"]["/admin/maintenance"]["post"]["security"],
        json!([{"admin_token": []}])
    );
    let links = &doc["paths"]["/interview/start"]["post"]["responses"]["201"]["links"];
    for (name, target) in [
        ("GetSession", "get_session"),
        ("Chat", "chat"),
        ("SaveDraft", "save_draft"),
        ("GetLatestDraft", "get_latest_draft"),
    ] {
        assert_eq!(links[name]["operationId"], target, "{links}");
    }
}

fn error_category(body: &Value) -> &str {
    body["error"]["category"]
        .as_str()
        .unwrap_or("<no error body>")
}

// One session has one URL: an id with white space around it (raw or
// percent-encoded), braces, `urn:uuid:`, upper case or no hyphens is
// answered 400 with the error body, in paths and in bodies alike; the
// canonical lower-case hyphenated form works everywhere.
backend_test!(ids_have_one_spelling, |db: &TestDb| {
    runtime().block_on(async {
        let srv = TestServer::start(db.store()).await;
        let (status, started) = srv.post("/interview/start", json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{started}");
        let id = started["session_id"].as_str().unwrap().to_string();
        let simple = id.replace('-', "");
        let in_paths = [
            format!("%20{id}%20"),
            format!("{id}%20"),
            format!("%09{id}"),
            format!("{id}%0A"),
            format!("%0D%0A{id}"),
            format!("%7B{id}%7D"),
            format!("urn:uuid:{id}"),
            id.to_uppercase(),
            simple.clone(),
        ];
        for path in ["/interview/session", "/interview/draft/latest"] {
            for spelling in &in_paths {
                let (status, body) = srv.get(&format!("{path}/{spelling}")).await;
                assert_eq!(
                    (status, error_category(&body)),
                    (StatusCode::BAD_REQUEST, "input"),
                    "{path}/{spelling}: {body}"
                );
                assert!(!body["error"]["request_id"].as_str().unwrap().is_empty());
            }
        }
        let in_bodies = [
            format!(" {id} "),
            format!("\t{id}"),
            format!("{id}\n"),
            format!("{{{id}}}"),
            format!("urn:uuid:{id}"),
            id.to_uppercase(),
            simple,
        ];
        for spelling in &in_bodies {
            for (path, body) in [
                (
                    "/interview/chat",
                    json!({"session_id": spelling, "text": "hello"}),
                ),
                (
                    "/interview/draft",
                    json!({"session_id": spelling, "content": "d"}),
                ),
            ] {
                let (status, answer) = srv.post(path, body).await;
                assert_eq!(
                    (status, error_category(&answer)),
                    (StatusCode::BAD_REQUEST, "input"),
                    "{path} {spelling:?}: {answer}"
                );
            }
        }
        // Nothing was written through another spelling.
        let (status, session) = srv.get(&format!("/interview/session/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{session}");
        assert_eq!(session["messages"].as_array().unwrap().len(), 1);
        let (status, _) = srv.get(&format!("/interview/draft/latest/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "no draft was saved");

        let (status, chat) = srv
            .post(
                "/interview/chat",
                json!({"session_id": id, "text": "hello"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{chat}");
        let (status, draft) = srv
            .post(
                "/interview/draft",
                json!({"session_id": id, "content": "d"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{draft}");
        let (status, latest) = srv.get(&format!("/interview/draft/latest/{id}")).await;
        assert_eq!((status, &latest), (StatusCode::OK, &draft));
        let (status, session) = srv.get(&format!("/interview/session/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(session["messages"].as_array().unwrap().len(), 3);
        srv.shutdown().await;
    });
});
