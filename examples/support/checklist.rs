//! The validation checklist that ends a cutover and a rollback, run against a live service.
//!
//! A client of the interview HTTP API, not of the store: it proves what users
//! will see, through the same process, settings and database the service uses.
//! It writes one probe session whose chat text (and so its summary) says it is
//! a probe, so it can be told from real interviews afterwards.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use interview_store::{migrate, Backend, DatabaseUrl};

use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The text of the probe's one answer; the scripted interviewer's summary quotes it.
pub const PROBE_TEXT: &str = "[checklist probe] interview-store validation, not an interview";

/// One step's outcome.
#[derive(serde::Serialize)]
pub struct Step {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
    pub elapsed: Duration,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:<13} {} ({} ms)",
            if self.passed { "PASS" } else { "FAIL" },
            self.name,
            self.detail,
            self.elapsed.as_millis()
        )
    }
}

/// Every step's outcome, as `migrate checklist` prints it.
#[derive(serde::Serialize)]
pub struct Checklist {
    pub steps: Vec<Step>,
}

impl Checklist {
    /// How many steps failed.
    pub fn failed(&self) -> usize {
        self.steps.iter().filter(|s| !s.passed).count()
    }
}

impl fmt::Display for Checklist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            writeln!(f, "{s}")?;
        }
        let total = self.steps.len();
        write!(f, "{} of {total} steps passed", total - self.failed())
    }
}

/// The row-count step: the live side holds at least every row of the retired one.
pub fn row_counts(sqlite: &Path, postgres: &DatabaseUrl, live: Backend) -> Step {
    let started = Instant::now();
    let (passed, detail) = match migrate::row_counts(sqlite, postgres, live) {
        Ok(counts) if counts.holds_all() => (true, counts.to_string()),
        Ok(counts) => (false, format!("rows missing on the live side: {counts}")),
        Err(e) => (false, e.to_string()),
    };
    Step {
        name: "row counts",
        passed,
        detail,
        elapsed: started.elapsed(),
    }
}

/// Runs every step in order against `base` (e.g. `http://127.0.0.1:8080`).
///
/// A step that cannot run because an earlier one failed (no session to read)
/// fails with that reason, so the list always has every step.
pub fn run(base: &str, backend: &str, timeout: Duration) -> Vec<Step> {
    let base = base.trim_end_matches('/');
    let client = match Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => {
            return vec![Step {
                name: "http client",
                passed: false,
                detail: e.to_string(),
                elapsed: Duration::ZERO,
            }]
        }
    };
    let mut steps = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> Result<String, String>| {
        let started = Instant::now();
        let outcome = f();
        let passed = outcome.is_ok();
        steps.push(Step {
            name,
            passed,
            detail: outcome.unwrap_or_else(|e| e),
            elapsed: started.elapsed(),
        });
        passed
    };

    step("health", &mut || {
        let (status, body) = get(&client, &format!("{base}/health"))?;
        expect(status, StatusCode::OK, &body)?;
        if body["db"] != "up" {
            return Err(format!("db is {}, expected up", body["db"]));
        }
        if body["backend"] != backend {
            return Err(format!(
                "backend is {}, expected {backend:?}: the service did not pick up the switch",
                body["backend"]
            ));
        }
        if body["read_only"] != false {
            return Err("writes are paused (read_only is true): resume first".into());
        }
        Ok(format!("db up, backend {backend}, writes on"))
    });

    let mut session: Option<String> = None;
    step("start", &mut || {
        let (status, body) = post(&client, &format!("{base}/interview/start"), json!({}))?;
        expect(status, StatusCode::CREATED, &body)?;
        let id = body["session_id"]
            .as_str()
            .ok_or_else(|| format!("no session_id in {body}"))?;
        session = Some(id.to_string());
        Ok(format!("probe session {id}"))
    });
    let id = session.unwrap_or_default();
    let need_session = || {
        if id.is_empty() {
            Err("skipped: no probe session (start failed)".to_string())
        } else {
            Ok(())
        }
    };

    let mut reply_text = String::new();
    step("chat", &mut || {
        need_session()?;
        let (status, body) = post(
            &client,
            &format!("{base}/interview/chat"),
            json!({"session_id": id, "text": PROBE_TEXT}),
        )?;
        expect(status, StatusCode::OK, &body)?;
        if body["message"]["text"] != PROBE_TEXT {
            return Err(format!("stored message differs: {}", body["message"]));
        }
        reply_text = body["reply"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok("answer stored, reply received".into())
    });

    step("session read", &mut || {
        need_session()?;
        let (status, body) = get(&client, &format!("{base}/interview/session/{id}"))?;
        expect(status, StatusCode::OK, &body)?;
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let texts: Vec<&str> = messages.iter().filter_map(|m| m["text"].as_str()).collect();
        if !texts.contains(&PROBE_TEXT) || !texts.contains(&reply_text.as_str()) {
            return Err(format!("the chat turn is not in the session: {texts:?}"));
        }
        let summary = body["summary"].as_str().unwrap_or_default();
        if !summary.contains("[checklist probe]") {
            return Err(format!("summary does not mark the probe: {summary:?}"));
        }
        Ok(format!(
            "{} messages, summary marks the probe",
            messages.len()
        ))
    });

    let mut draft: Value = Value::Null;
    step("draft", &mut || {
        need_session()?;
        let (status, body) = post(
            &client,
            &format!("{base}/interview/draft"),
            json!({"session_id": id, "content": "[checklist probe] draft"}),
        )?;
        expect(status, StatusCode::CREATED, &body)?;
        draft = body;
        Ok("draft saved".into())
    });

    step("latest draft", &mut || {
        need_session()?;
        let (status, body) = get(&client, &format!("{base}/interview/draft/latest/{id}"))?;
        expect(status, StatusCode::OK, &body)?;
        if body != draft {
            return Err(format!(
                "latest draft {body} is not the one saved ({draft})"
            ));
        }
        Ok("the saved draft reads back".into())
    });

    steps
}

fn get(client: &Client, url: &str) -> Result<(StatusCode, Value), String> {
    read(client.get(url).send())
}

fn post(client: &Client, url: &str, body: Value) -> Result<(StatusCode, Value), String> {
    read(client.post(url).json(&body).send())
}

fn read(sent: reqwest::Result<Response>) -> Result<(StatusCode, Value), String> {
    // reqwest's errors name the URL, which holds no secret here (the server's address).
    let response = sent.map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let text = response
        .text()
        .map_err(|e| format!("reading the answer: {e}"))?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

fn expect(status: StatusCode, want: StatusCode, body: &Value) -> Result<(), String> {
    if status == want {
        Ok(())
    } else {
        Err(format!("HTTP {status}, expected {want}: {body}"))
    }
}
