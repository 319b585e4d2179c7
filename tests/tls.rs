//! PostgreSQL over verified TLS (`sslmode=verify-full`), what managed providers tell users to set.
//!
//! `scripts/test.sh` starts a throwaway cluster that only accepts TLS, with a CA
//! and a server certificate for `localhost`/`127.0.0.1` made at test time
//! (`scripts/test-helpers.sh`), and exports `INTERVIEW_TEST_TLS_URL`,
//! `INTERVIEW_TEST_TLS_CA` and `INTERVIEW_TEST_TLS_WRONG_CA`. The shared
//! cluster is never touched.

mod common;

use std::path::PathBuf;
#[cfg(feature = "server")]
use std::process::Child;
use std::process::{Command, Output};
#[cfg(feature = "server")]
use std::time::{Duration, Instant};

use common::legacy::{clean_sql, Legacy};
use common::scratch::with_database;
use common::PgDatabase;
use diesel::prelude::*;
use diesel::sql_types::Bool;
use interview_store::{Category, Error, Role, Store, StoreConfig};

/// The TLS cluster: its URL (database `postgres`), the right CA and a wrong one.
struct Tls {
    url: String,
    ca: String,
    wrong_ca: String,
}

fn tls() -> Option<Tls> {
    let what = "the TLS-only PostgreSQL cluster";
    Some(Tls {
        url: common::helper_env("INTERVIEW_TEST_TLS_URL", what)?,
        ca: common::helper_env("INTERVIEW_TEST_TLS_CA", what)?,
        wrong_ca: common::helper_env("INTERVIEW_TEST_TLS_WRONG_CA", what)?,
    })
}

impl Tls {
    fn verify_full(&self, url: &str, ca: &str) -> String {
        format!("{url}?sslmode=verify-full&sslrootcert={ca}")
    }

    /// A scratch database on the TLS cluster, and its verify-full URL.
    fn database(&self) -> (PgDatabase, String) {
        let admin = self.verify_full(&self.url, &self.ca);
        let db = PgDatabase::create_on(&admin, "interview_tls_test", "run bash scripts/test.sh");
        let url = with_database(&admin, &db.name);
        (db, url)
    }

    /// The cluster's host:port.
    fn authority(&self) -> &str {
        let rest = self.url.split_once('@').map_or(&*self.url, |(_, r)| r);
        rest.split('/').next().unwrap_or(rest)
    }
}

fn on_tls(store: &Store) -> bool {
    store
        .with_connection(|conn| {
            Ok(diesel::select(diesel::dsl::sql::<Bool>(
                "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
            ))
            .get_result::<bool>(conn)?)
        })
        .unwrap()
}

#[test]
fn the_store_works_over_verify_full() {
    let Some(tls) = tls() else { return };
    let (_db, url) = tls.database();
    let store = Store::connect(&url, StoreConfig::default()).expect("verify-full connects");
    store.migrate().unwrap();
    assert!(on_tls(&store), "the connection is encrypted");
    let s = store.start_session().unwrap();
    store.append_message(s.id, Role::User, "over TLS").unwrap();
    assert_eq!(store.get_session(s.id).unwrap().messages.len(), 1);
    assert!(store.health().db_up);
}

fn assert_tls_error(err: Error, problem: &str) {
    let text = err.to_string();
    assert!(matches!(err, Error::Tls { .. }), "{text}");
    assert_eq!(
        err.category(),
        Category::Db,
        "a TLS fault is the operator's to fix: {text}"
    );
    assert!(text.contains(problem), "names the TLS problem: {text}");
    assert!(text.contains(":***@"), "password masked: {text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn a_wrong_ca_is_a_db_error_naming_the_certificate() {
    let Some(tls) = tls() else { return };
    let (db, _) = tls.database();
    let url = tls.verify_full(
        &format!(
            "postgres://postgres:hunter2@{}/{}",
            tls.authority(),
            db.name
        ),
        &tls.wrong_ca,
    );
    let err = Store::connect(&url, StoreConfig::default()).unwrap_err();
    assert_tls_error(err, "certificate verify failed");
}

#[test]
fn a_wrong_host_name_is_a_db_error_naming_the_mismatch() {
    let Some(tls) = tls() else { return };
    let (db, _) = tls.database();
    let port = tls.authority().rsplit(':').next().unwrap();
    // hostaddr connects to the cluster; host is the name the certificate must carry.
    let url = format!(
        "postgres://postgres:hunter2@wrong-name.invalid:{port}/{}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
        db.name, tls.ca
    );
    let err = Store::connect(&url, StoreConfig::default()).unwrap_err();
    assert_tls_error(err, "does not match host name \"wrong-name.invalid\"");
}

fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let profile_dir = deps.parent().unwrap().parent().unwrap();
    profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

fn migrate(args: &[&str]) -> Output {
    Command::new(example("migrate"))
        .args(args)
        .env_remove("INTERVIEW_SQLITE_PATH")
        .env_remove("INTERVIEW_POSTGRES_URL")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_migration_tool_works_over_verify_full_and_names_a_wrong_ca() {
    let Some(tls) = tls() else { return };
    let (db, url) = tls.database();
    let legacy = Legacy::new(&clean_sql(5, 4));
    let sqlite = legacy.path.to_str().unwrap();
    for args in [
        vec!["copy", "--sqlite", sqlite, "--postgres", &url],
        vec!["verify", "--sqlite", sqlite, "--postgres", &url],
    ] {
        let o = migrate(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
    }

    let wrong = tls.verify_full(
        &format!(
            "postgres://postgres:hunter2@{}/{}",
            tls.authority(),
            db.name
        ),
        &tls.wrong_ca,
    );
    let o = migrate(&["status", "--postgres", &wrong]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("TLS to database postgres://postgres:***@"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("certificate verify failed"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("hunter2"), "{}", text(&o));
}

/// The example server, a process of its own, stopped on drop.
#[cfg(feature = "server")]
struct ServerProcess(Child);

#[cfg(feature = "server")]
impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request over a plain socket; returns the status line and body.
#[cfg(feature = "server")]
fn http(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(feature = "server")]
#[test]
fn the_server_works_over_verify_full() {
    let Some(tls) = tls() else { return };
    let (_db, url) = tls.database();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let _server = ServerProcess(
        Command::new(example("server"))
            .env("INTERVIEW_DB_BACKEND", "postgres")
            .env("INTERVIEW_POSTGRES_URL", &url)
            .env("INTERVIEW_ADDR", &addr)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let health = loop {
        match http(&addr, "GET", "/health", "") {
            Ok(r) => break r,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("the server did not come up on {addr}: {e}"),
        }
    };
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"db\":\"up\""), "{health}");
    let created = http(&addr, "POST", "/interview/start", "{}").unwrap();
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
}
