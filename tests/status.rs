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
