//! rollback-sync: writes made on PostgreSQL after a cutover come back to SQLite.

mod common;

use interview_store::migrate::{compare, rollback_sync, Selection};
use interview_store::{Backend, Error, Page, Role};

#[test]
fn writes_after_the_cutover_come_back_and_nothing_twice() {
    let lite_db = common::TestDb::new(Backend::Sqlite);
    let pg_db = common::TestDb::new(Backend::Postgres);
    let (lite, pg) = (lite_db.store(), pg_db.store());
    // The state at the switch: both sides hold the same rows.
    let ids: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::now_v7()).collect();
    common::seed_identical(&lite, &ids);
    common::seed_identical(&pg, &ids);

    // After the switch the service writes to PostgreSQL only.
    let new = pg.start_session().unwrap();
    pg.append_message(
        new.id,
        Role::Assistant,
        "Welcome back — «quotes», 'apostrophes'\nand lines",
    )
    .unwrap();
    pg.append_message(ids[0], Role::User, "an answer to an old session")
        .unwrap();
    pg.update_summary(ids[1], "changed after the switch")
        .unwrap();
    pg.save_draft(ids[2], "a draft written on postgres")
        .unwrap();
    pg.save_draft(new.id, "another").unwrap();

    let report = rollback_sync(&pg, &lite).unwrap();
    assert_eq!(
        (
            report.sessions_inserted,
            report.sessions_updated,
            report.messages,
            report.drafts
        ),
        (1, 2, 2, 2),
        "{report:?}"
    );
    assert_eq!(lite.counts().unwrap(), pg.counts().unwrap());
    let everything: Vec<uuid::Uuid> = pg
        .list_sessions(Page {
            offset: 0,
            limit: 100,
        })
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    let diff = compare(&pg, &lite, &Selection::Sessions(everything.clone())).unwrap();
    assert!(diff.is_equal(), "{:?}", diff.differences);
    assert_eq!(diff.sessions, 5);

    // Running it again copies nothing, and SQLite takes new writes after the rollback.
    let again = rollback_sync(&pg, &lite).unwrap();
    assert_eq!(
        (
            again.sessions_inserted,
            again.sessions_updated,
            again.messages,
            again.drafts
        ),
        (0, 0, 0, 0)
    );
    let m = lite
        .append_message(new.id, Role::User, "back on sqlite")
        .unwrap();
    assert!(
        m.id > report.marks.message_id + 2,
        "SQLite's ids continue after the copied ones"
    );
}

#[test]
fn refuses_the_wrong_direction() {
    let lite_db = common::TestDb::new(Backend::Sqlite);
    let pg_db = common::TestDb::new(Backend::Postgres);
    let err = rollback_sync(&lite_db.store(), &pg_db.store()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "stores",
                ..
            }
        ),
        "{err}"
    );
}
