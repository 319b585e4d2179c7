//! Opening stores: URL handling, unreachable servers, TLS and pool saturation.

mod common;

use std::time::Duration;

use common::TestDb;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use interview_store::{Backend, Category, Error, PoolConfig, Store, StoreConfig};

/// A loopback port where nothing listens.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn unreachable_postgres_is_a_connect_error_with_the_password_masked() {
    let url = format!(
        "postgres://app:hunter2@127.0.0.1:{}/interview",
        closed_port()
    );
    let err = Store::connect(&url, StoreConfig::default()).unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert_eq!(err.category(), Category::Unavailable);
    let text = err.to_string();
    assert!(text.contains("postgres://app:***@127.0.0.1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn unknown_scheme_is_refused_not_taken_for_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("mysql://{}/x", dir.path().display());
    let err = Store::connect(&url, StoreConfig::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "database url",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file was created"
    );
}

#[test]
fn sqlite_urls_and_plain_paths_open_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("same.db");
    let a = Store::connect(path.to_str().unwrap(), StoreConfig::default()).unwrap();
    a.migrate().unwrap();
    let s = a.start_session().unwrap();
    let b = Store::connect(
        &format!("sqlite://{}", path.display()),
        StoreConfig::default(),
    )
    .unwrap();
    assert_eq!(b.backend(), Backend::Sqlite);
    assert_eq!(b.get_session(s.id).unwrap().session, s);
}

backend_test!(
    saturated_pool_times_out_instead_of_hanging,
    |db: &TestDb| {
        let store = db.store_with(StoreConfig {
            pool: PoolConfig {
                max_size: 1,
                connection_timeout: Duration::from_millis(300),
                ..Default::default()
            },
            ..Default::default()
        });
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let store = store.clone();
            std::thread::spawn(move || {
                store
                    .with_connection(|_| {
                        held_tx.send(()).unwrap();
                        hold_rx.recv().unwrap();
                        Ok(())
                    })
                    .unwrap()
            })
        };
        held_rx.recv().unwrap();
        let err = store.start_session().unwrap_err();
        assert!(matches!(err, Error::PoolTimeout { .. }), "{err}");
        assert_eq!(err.category(), Category::Unavailable);
        assert!(
            !store.health().db_up,
            "health reports the saturated pool as down"
        );
        hold_tx.send(()).unwrap();
        holder.join().unwrap();
        store
            .start_session()
            .expect("works again once the connection is back");
        assert!(store.pool_state().timeouts >= 1);
    }
);

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    ssl: String,
}

/// TLS works in this build (with `bundled`, libpq and OpenSSL are built from source).
#[test]
fn postgres_over_tls_with_sslmode_require() {
    let db = common::PgDatabase::create();
    let mut admin = diesel::PgConnection::establish(&db.url).unwrap();
    let setting = diesel::sql_query("SHOW ssl")
        .get_result::<Setting>(&mut admin)
        .unwrap();
    if setting.ssl != "on" {
        eprintln!("NOTE: this PostgreSQL server has ssl=off, so TLS cannot be exercised here; enable ssl to run this check");
        return;
    }
    let store = Store::connect(
        &format!("{}?sslmode=require", db.url),
        StoreConfig::default(),
    )
    .expect("sslmode=require connects");
    let on_tls = store
        .with_connection(|conn| {
            Ok(diesel::select(diesel::dsl::sql::<Bool>(
                "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
            ))
            .get_result::<bool>(conn)?)
        })
        .unwrap();
    assert!(on_tls, "the connection is encrypted");
}

#[test]
fn statement_timeout_cancels_a_long_statement() {
    let pg = common::PgDatabase::create();
    let config = StoreConfig {
        pool: PoolConfig {
            statement_timeout: Some(Duration::from_millis(200)),
            ..Default::default()
        },
        ..Default::default()
    };
    let store = Store::connect(&pg.url, config).unwrap();
    let err = store
        .with_connection(|c| {
            diesel::sql_query("SELECT pg_sleep(5)").execute(c)?;
            Ok(())
        })
        .unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
    // Saturation, not a broken database: the server answers 503 and clients retry.
    assert_eq!(
        err.category(),
        interview_store::Category::Unavailable,
        "{err}"
    );
    // The connection stays usable.
    store
        .with_connection(|c| Ok(diesel::sql_query("SELECT 1").execute(c)?))
        .unwrap();
}

#[test]
fn connect_timeout_bounds_a_server_that_never_answers() {
    // Accepts TCP and then says nothing, like a hung server or a black-holed route.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!("postgres://app@127.0.0.1:{port}/interview");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let config = StoreConfig {
            pool: PoolConfig {
                connect_timeout: Duration::from_secs(1),
                ..Default::default()
            },
            ..Default::default()
        };
        let _ = tx.send(Store::connect(&url, config).map(|_| ()));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("connecting to a silent server must give up by itself");
    let err = result.unwrap_err();
    assert_eq!(err.category(), Category::Unavailable, "{err}");
    drop(silent);
}
