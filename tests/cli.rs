//! The migration CLI (`examples/migrate.rs`) as an operator runs it: exit codes, output, masked URLs.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::legacy::{clean_sql, Legacy};
#[allow(unused_imports)]
use common::TestDb;

fn run(args: &[&str]) -> Output {
    run_in(Path::new("."), args)
}

/// Runs the tool in `dir`, so a file it might create by mistake lands there.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(common::bin::example_bin("migrate"))
        .current_dir(dir)
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
fn check_exits_0_when_clean_and_2_listing_every_invalid_row() {
    let clean = Legacy::new(&clean_sql(2, 2));
    let o = run(&["check", "--sqlite", clean.path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("2 sessions, 4 messages, 2 drafts; 0 invalid"),
        "{}",
        text(&o)
    );

    clean.exec("INSERT INTO messages (session_id, role, text, created_at) VALUES ('00000000-0000-4000-8000-000000000000', 'user', 'x', 'yesterday')");
    let o = run(&["check", "--sqlite", clean.path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("messages 5: created_at = \"yesterday\": is not an ISO-8601 timestamp"),
        "{}",
        text(&o)
    );
}

#[test]
fn usage_errors_exit_2_and_an_unreachable_database_exits_3_with_the_password_masked() {
    assert_eq!(run(&["copy"]).status.code(), Some(2), "missing arguments");
    assert_eq!(run(&["no-such-command"]).status.code(), Some(2));

    let src = Legacy::new(&clean_sql(1, 1));
    let o = run(&[
        "copy",
        "--sqlite",
        src.path.to_str().unwrap(),
        "--postgres",
        "postgres://app:hunter2@127.0.0.1:1/interview",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("postgres://app:***@127.0.0.1:1/interview"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("hunter2"));
}

#[test]
fn copy_then_verify_exits_0_and_1_once_the_sides_differ() {
    let src = Legacy::new(&clean_sql(3, 2));
    let db = common::PgDatabase::create();
    let sqlite = src.path.to_str().unwrap();
    let o = run(&["copy", "--sqlite", sqlite, "--postgres", &db.url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("messages: 6 copied, 0 rejected"),
        "{}",
        text(&o)
    );

    let o = run(&[
        "verify",
        "--sqlite",
        sqlite,
        "--postgres",
        &db.url,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["messages"]["sqlite_rows"], 6);
    assert_eq!(
        report["messages"]["sqlite_checksum"],
        report["messages"]["postgres_checksum"]
    );

    src.exec("INSERT INTO messages (session_id, role, text, created_at) VALUES ('00000000-0000-4000-8000-000000000000', 'user', 'late', '2025-01-01T00:00:00Z')");
    let o = run(&["verify", "--sqlite", sqlite, "--postgres", &db.url]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("messages 7 *: missing on postgres"),
        "{}",
        text(&o)
    );

    let o = run(&["status", "--postgres", &db.url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("copied"), "{}", text(&o));
}

#[test]
fn setup_sync_and_backup_say_what_they_did() {
    let src = Legacy::new(&clean_sql(3, 2));
    let db = common::PgDatabase::create();
    let sqlite = src.path.to_str().unwrap();
    let ok = |args: &[&str]| {
        let o = run(args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = ok(&["setup", "--postgres", &db.url, "--sqlite", sqlite]);
    assert!(out.contains("schema up to date ("), "{out}");
    assert!(
        out.contains(&format!("{sqlite}: change log installed")),
        "{out}"
    );
    ok(&["copy", "--sqlite", sqlite, "--postgres", &db.url]);
    src.exec("INSERT INTO messages (session_id, role, text, created_at) VALUES ('00000000-0000-4000-8000-000000000000', 'user', 'late', '2025-01-01T00:00:00Z')");
    let out = ok(&["sync", "--sqlite", sqlite, "--postgres", &db.url]);
    assert!(out.contains("messages 1 written, 0 deleted"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.db");
    let out = ok(&[
        "backup",
        "--sqlite",
        sqlite,
        "--out",
        backup.to_str().unwrap(),
    ]);
    assert!(
        out.contains("integrity ok, 3 sessions, 7 messages, 3 drafts"),
        "{out}"
    );
}

#[test]
fn copy_truncate_without_yes_prints_what_it_would_delete_and_exits_2() {
    let src = Legacy::new(&clean_sql(3, 2));
    let db = common::PgDatabase::create();
    let sqlite = src.path.to_str().unwrap();
    let o = run(&["copy", "--sqlite", sqlite, "--postgres", &db.url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = run(&[
        "copy",
        "--sqlite",
        sqlite,
        "--postgres",
        &db.url,
        "--truncate",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("sessions 3 rows, messages 6 rows, drafts 3 rows"),
        "{}",
        text(&o)
    );
    let o = run(&["verify", "--sqlite", sqlite, "--postgres", &db.url]);
    assert_eq!(o.status.code(), Some(0), "nothing deleted: {}", text(&o));
    let o = run(&[
        "copy",
        "--sqlite",
        sqlite,
        "--postgres",
        &db.url,
        "--truncate",
        "--yes",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_refusal_exits_with_its_kinds_status_and_names_the_kind() {
    let src = Legacy::new(&clean_sql(2, 1));
    let other = Legacy::new(&clean_sql(1, 1));
    let db = common::PgDatabase::create();
    let sqlite = src.path.to_str().unwrap();
    // A report on a database never set up: not_ready (7), nothing created.
    let o = run(&["verify", "--sqlite", sqlite, "--postgres", &db.url]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(text(&o).contains("refused (not_ready)"), "{}", text(&o));
    // A sync before any copy: out_of_order (4).
    let o = run(&["setup", "--postgres", &db.url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = run(&["sync", "--sqlite", sqlite, "--postgres", &db.url]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(text(&o).contains("refused (out_of_order)"), "{}", text(&o));
    assert!(text(&o).contains("migrate copy"), "{}", text(&o));
    // Another file's copy into a database holding this one's: foreign (6).
    let o = run(&["copy", "--sqlite", sqlite, "--postgres", &db.url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = run(&[
        "copy",
        "--sqlite",
        other.path.to_str().unwrap(),
        "--postgres",
        &db.url,
    ]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("refused (foreign)"), "{}", text(&o));
    let o = run(&["verify", "--sqlite", sqlite, "--postgres", &db.url]);
    assert_eq!(o.status.code(), Some(0), "nothing changed: {}", text(&o));
}

#[test]
fn a_second_migration_command_exits_3_at_once() {
    let src = Legacy::new(&clean_sql(2, 2));
    let db = common::PgDatabase::create();
    let sqlite = src.path.to_str().unwrap();
    let o = run(&["copy", "--sqlite", sqlite, "--postgres", &db.url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Another command holds the lock for its whole run.
    let url: interview_store::connection::DatabaseUrl = db.url.parse().unwrap();
    let held = interview_store::migrate::MigrationLock::acquire(&url).unwrap();
    for args in [
        &["sync", "--sqlite", sqlite, "--postgres", &db.url][..],
        &["copy", "--sqlite", sqlite, "--postgres", &db.url],
        &["rollback-sync", "--sqlite", sqlite, "--postgres", &db.url],
        &["switch", "--sqlite", sqlite, "--postgres", &db.url],
        &["pause", "--postgres", &db.url],
        &["resume", "--postgres", &db.url],
    ] {
        let cmd = args[0];
        let o = run(args);
        assert_eq!(o.status.code(), Some(3), "{cmd}: {}", text(&o));
        assert!(
            text(&o).contains("another migration command is running"),
            "{cmd}: {}",
            text(&o)
        );
    }
    drop(held);
    let o = run(&["sync", "--sqlite", sqlite, "--postgres", &db.url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// A loopback port where nothing listens.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_keyword_value_string_is_postgres_and_its_password_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let conninfo = format!(
        "host=127.0.0.1 port={} user=app password='hunter2 x' dbname=interview",
        closed_port()
    );
    for args in [
        vec!["setup", "--postgres", &conninfo],
        vec!["status", "--postgres", &conninfo],
    ] {
        // With the info log on, which names the database being opened.
        let o = Command::new(common::bin::example_bin("migrate"))
            .current_dir(dir.path())
            .args(&args)
            .env_remove("INTERVIEW_POSTGRES_URL")
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        assert!(text(&o).contains("password=***"), "{}", text(&o));
        assert!(!text(&o).contains("hunter2"), "{}", text(&o));
    }
    // Not PostgreSQL: refused as usage (exit 2), the value never repeated.
    for bad in [
        "interview.db",
        "mysql://app:hunter2@db/x",
        "hots=db password=hunter2",
    ] {
        let o = run_in(dir.path(), &["setup", "--postgres", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o));
        assert!(!text(&o).contains("hunter2"), "{}", text(&o));
    }
    let o = Command::new(common::bin::example_bin("migrate"))
        .current_dir(dir.path())
        .args(["setup"])
        .env("INTERVIEW_POSTGRES_URL", "interview.db")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a PostgreSQL URL"), "{}", text(&o));
    assert_eq!(
        files_in(dir.path()),
        Vec::<String>::new(),
        "no file was created"
    );
}

#[test]
fn every_command_on_a_missing_sqlite_file_exits_3_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let m = missing.to_str().unwrap();
    let pg = format!(
        "postgres://app:hunter2@127.0.0.1:{}/interview",
        closed_port()
    );
    let out = dir.path().join("backup.db");
    let commands: [&[&str]; 7] = [
        &["check", "--sqlite", m],
        &["copy", "--sqlite", m, "--postgres", &pg],
        &["sync", "--sqlite", m, "--postgres", &pg],
        &["verify", "--sqlite", m, "--postgres", &pg],
        &["compare", "--sqlite", m, "--postgres", &pg],
        &["rollback-sync", "--postgres", &pg, "--sqlite", m],
        &["backup", "--sqlite", m, "--out", out.to_str().unwrap()],
    ];
    for args in commands {
        let o = run_in(dir.path(), args);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains(&format!("no such SQLite file: {m}")),
            "{args:?}: {}",
            text(&o)
        );
        assert_eq!(
            files_in(dir.path()),
            Vec::<String>::new(),
            "{args:?} created a file"
        );
    }
}

/// Serves the interview API for `store` on a loopback port from a thread of its own.
#[cfg(feature = "server")]
fn serve_in_background(
    store: interview_store::Store,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            ready_tx
                .send(format!("http://{}", listener.local_addr().unwrap()))
                .unwrap();
            let state = interview_store::server::AppState::new(store);
            interview_store::server::serve(listener, state, async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
    });
    (ready_rx.recv().unwrap(), stop_tx)
}

#[cfg(feature = "server")]
backend_test!(
    checklist_passes_on_the_live_backend_and_fails_naming_the_step,
    |db: &TestDb| {
        let (base, stop) = serve_in_background(db.store());
        let other = match db.backend {
            interview_store::Backend::Sqlite => "postgres",
            interview_store::Backend::Postgres => "sqlite",
        };

        let o = run(&[
            "checklist",
            "--server",
            &base,
            "--backend",
            db.backend.as_str(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        for step in [
            "health",
            "start",
            "chat",
            "session read",
            "draft",
            "latest draft",
        ] {
            assert!(
                text(&o).contains(&format!("PASS {step:<13}")),
                "{step}: {}",
                text(&o)
            );
        }
        assert!(text(&o).contains("6 of 6 steps passed"), "{}", text(&o));
        // The probe is one session, marked as such in its summary.
        let sessions = db
            .store()
            .list_sessions(interview_store::Page::default())
            .unwrap();
        assert_eq!(sessions.len(), 1);
        assert!(
            sessions[0].summary.contains("[checklist probe]"),
            "{:?}",
            sessions[0]
        );

        let o = run(&["checklist", "--server", &base, "--backend", other]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("FAIL health"), "{}", text(&o));
        assert!(
            text(&o).contains("did not pick up the switch"),
            "{}",
            text(&o)
        );

        let _ = stop.send(());
        let o = run(&[
            "checklist",
            "--server",
            &base,
            "--backend",
            db.backend.as_str(),
            "--timeout-secs",
            "2",
        ]);
        assert_eq!(
            o.status.code(),
            Some(1),
            "a stopped service fails every step: {}",
            text(&o)
        );
        assert!(text(&o).contains("0 of 6 steps passed"), "{}", text(&o));
    }
);

/// The `sqlite3` shell, if installed: another program writing the file, with its own (older) SQLite.
fn sqlite3_shell(path: &std::path::Path, sql: &str) -> Option<Output> {
    Command::new("sqlite3").arg(path).arg(sql).output().ok()
}

#[test]
fn pause_and_resume_hold_in_the_database_for_every_writer() {
    let src = Legacy::new(&clean_sql(1, 1));
    let sqlite = src.path.to_str().unwrap();
    let insert = "INSERT INTO drafts (session_id, content, created_at) VALUES ('00000000-0000-4000-8000-000000000000', 'x', '2025-01-01T00:00:00Z');";

    let o = run(&["pause", "--sqlite", sqlite]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("paused"), "{}", text(&o));
    if let Some(shell) = sqlite3_shell(&src.path, insert) {
        assert!(!shell.status.success(), "the sqlite3 shell was refused");
        assert!(
            text(&shell).contains("interview-store: writes are paused"),
            "{}",
            text(&shell)
        );
    }
    let refused = std::panic::catch_unwind(|| src.exec(insert));
    assert!(refused.is_err(), "a plain connection is refused too");

    let o = run(&["resume", "--sqlite", sqlite]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("live"), "{}", text(&o));
    src.exec(insert);

    let db = common::PgDatabase::create();
    let o = run(&["pause", "--postgres", &db.url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = run(&["status", "--postgres", &db.url, "--sqlite", sqlite]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("paused: writes refused") && text(&o).contains("sqlite: live"),
        "{}",
        text(&o)
    );
    let o = run(&["status", "--postgres", &db.url, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["maintenance"]["paused"], true, "{v}");
    let o = run(&["resume", "--postgres", &db.url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn every_command_prints_its_report_as_json_with_json() {
    let src = Legacy::new(&clean_sql(2, 1));
    let sqlite = src.path.to_str().unwrap();
    let json = |args: &[&str]| -> serde_json::Value {
        let o = run(args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
    };
    // The flag goes before or after the command.
    let v = json(&["--json", "pause", "--sqlite", sqlite]);
    assert_eq!(v["state"]["paused"], true, "{v}");
    let v = json(&["resume", "--sqlite", sqlite, "--json"]);
    assert_eq!(v["state"]["paused"], false, "{v}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("backup.db");
    let v = json(&[
        "backup",
        "--sqlite",
        sqlite,
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(v["counts"]["sessions"], 2, "{v}");
    // Without it, the same reports as text.
    let o = run(&["pause", "--sqlite", sqlite]);
    assert!(
        text(&o).contains(": paused: writes refused"),
        "{}",
        text(&o)
    );
}

#[test]
fn pause_needs_exactly_one_database_and_never_creates_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    for cmd in ["pause", "resume"] {
        let o = run(&[cmd, "--sqlite", missing.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        assert!(
            text(&o).contains(&format!("no such SQLite file: {}", missing.display())),
            "{}",
            text(&o)
        );
        assert!(!missing.exists(), "{cmd} created the file");
    }
    assert_eq!(run(&["pause"]).status.code(), Some(2), "no database");
    let o = run(&[
        "pause",
        "--sqlite",
        "a.db",
        "--postgres",
        "postgres://u@127.0.0.1:1/x",
    ]);
    assert_eq!(o.status.code(), Some(2), "two databases: {}", text(&o));
}
