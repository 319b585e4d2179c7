//! `migrate status` is the command an operator reaches for after a crash: it
//! must change nothing on either side, say where the cutover stands, and name
//! the one command that moves it on.

mod common;

use common::legacy::{clean_sql, Legacy};
use common::PgDatabase;
use diesel::prelude::*;
use diesel::sql_types::Bool;
use interview_store::migrate::{self, Phase};
use interview_store::{Backend, DatabaseUrl};

#[derive(QueryableByName)]
struct Present {
    #[diesel(sql_type = Bool)]
    present: bool,
}

fn has_table(pg_url: &str, table: &str) -> bool {
    diesel::sql_query(format!(
        "SELECT to_regclass('{table}') IS NOT NULL AS present"
    ))
    .get_result::<Present>(&mut PgConnection::establish(pg_url).unwrap())
    .unwrap()
    .present
}

fn file_bytes(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn status_on_a_legacy_file_and_an_empty_database_creates_and_writes_nothing() {
    let legacy = Legacy::new(&clean_sql(3, 2));
    let before = file_bytes(&legacy.path);
    let pg = PgDatabase::create();
    let url = DatabaseUrl::postgres(&pg.url).unwrap();

    let status = migrate::status_of(&url, Some(&legacy.path)).unwrap();

    assert_eq!(status.phase, None);
    assert!(status.next.contains("migrate copy"), "{}", status.next);
    let shown = status.to_string();
    assert!(shown.contains("nothing copied yet"), "{shown}");
    assert!(shown.contains("next: `migrate copy`"), "{shown}");
    // Nothing adopted the file (no maintenance table, no triggers) and no
    // schema migration ran on PostgreSQL.
    assert_eq!(file_bytes(&legacy.path), before, "the legacy file changed");
    assert!(!has_table(&pg.url, "__diesel_schema_migrations"));
    assert!(!has_table(&pg.url, "interview_migration_state"));
}

#[test]
fn status_after_a_finished_switch_names_nothing_interrupted_and_a_rerun_says_already() {
    let legacy = Legacy::new(&clean_sql(3, 2));
    let pg = PgDatabase::create();
    let url = DatabaseUrl::postgres(&pg.url).unwrap();
    migrate::copy(&legacy.path, &url, &Default::default()).unwrap();
    let mut m = interview_store::maintenance::connect(&DatabaseUrl::sqlite(
        legacy.path.display().to_string(),
    ))
    .unwrap();
    interview_store::maintenance::pause(&mut m).unwrap();
    let first = migrate::switch(&legacy.path, &url, Backend::Postgres).unwrap();
    assert!(!first.already_switched);

    let before = file_bytes(&legacy.path);
    let status = migrate::status_of(&url, Some(&legacy.path)).unwrap();
    assert_eq!(status.phase, Some(Phase::Switched));
    assert_eq!(status.interrupted, None);
    assert!(
        status.next.starts_with("nothing interrupted"),
        "{}",
        status.next
    );
    assert!(status.sqlite_maintenance.unwrap().retired_to.is_some());
    assert_eq!(file_bytes(&legacy.path), before, "status wrote to SQLite");

    // A rerun of the finished switch changes nothing and says so.
    let again = migrate::switch(&legacy.path, &url, Backend::Postgres).unwrap();
    assert!(again.already_switched);
    let said = again.to_string();
    assert!(
        said.starts_with("already switched to PostgreSQL at ") && said.ends_with("nothing to do"),
        "{said}"
    );
}

/// What a reporting command could change on PostgreSQL: the relations, the
/// cutover's bookkeeping row (verify used to record its position there) and
/// the migrations applied.
fn pg_fingerprint(pg_url: &str) -> String {
    #[derive(QueryableByName)]
    struct Shown {
        #[diesel(sql_type = diesel::sql_types::Text)]
        shown: String,
    }
    diesel::sql_query(
        "SELECT concat_ws(' | ',
            (SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class
              WHERE relnamespace = 'public'::regnamespace),
            (SELECT string_agg(row_to_json(s)::text, ',') FROM interview_migration_state s),
            (SELECT string_agg(version, ',' ORDER BY version) FROM __diesel_schema_migrations),
            (SELECT count(*)::text FROM sessions)) AS shown",
    )
    .get_result::<Shown>(&mut PgConnection::establish(pg_url).unwrap())
    .unwrap()
    .shown
}

/// Folds SQLite's WAL into the file, so the bytes compared are the content.
fn checkpoint(path: &std::path::Path) {
    use diesel::connection::SimpleConnection;
    SqliteConnection::establish(&path.display().to_string())
        .unwrap()
        .batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
}

#[test]
fn check_status_verify_and_compare_write_nothing_on_either_side() {
    let legacy = Legacy::new(&clean_sql(3, 2));
    let pg = PgDatabase::create();
    let url = DatabaseUrl::postgres(&pg.url).unwrap();
    migrate::copy(&legacy.path, &url, &Default::default()).unwrap();
    checkpoint(&legacy.path);
    let (file, db) = (file_bytes(&legacy.path), pg_fingerprint(&pg.url));

    assert!(migrate::check(&legacy.path).unwrap().is_clean());
    migrate::status_of(&url, Some(&legacy.path)).unwrap();
    let verified = migrate::verify(&legacy.path, &url).unwrap();
    assert!(verified.is_equal(), "{verified}");
    let sample = migrate::Selection::Sample(10);
    let compared = migrate::compare_databases(&legacy.path, &url, &sample).unwrap();
    assert!(compared.is_equal(), "{compared}");

    checkpoint(&legacy.path);
    assert_eq!(file_bytes(&legacy.path), file, "a report wrote to SQLite");
    assert_eq!(pg_fingerprint(&pg.url), db, "a report wrote to PostgreSQL");

    // The cutover step that records is asked for by name, and it does record.
    migrate::verify_and_record(&legacy.path, &url).unwrap();
    assert_ne!(
        pg_fingerprint(&pg.url),
        db,
        "verify --record recorded nothing"
    );
}

#[test]
fn verify_and_compare_on_a_database_never_set_up_refuse_and_create_nothing() {
    let legacy = Legacy::new(&clean_sql(3, 2));
    let pg = PgDatabase::create();
    let url = DatabaseUrl::postgres(&pg.url).unwrap();

    let verify = migrate::verify(&legacy.path, &url).unwrap_err();
    assert!(verify.to_string().contains("migrate setup"), "{verify}");
    let sample = migrate::Selection::Sample(10);
    let compare = migrate::compare_databases(&legacy.path, &url, &sample).unwrap_err();
    assert!(compare.to_string().contains("migrate setup"), "{compare}");

    assert!(!has_table(&pg.url, "__diesel_schema_migrations"));
    assert!(!has_table(&pg.url, "sessions"));
}
