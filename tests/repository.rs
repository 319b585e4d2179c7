//! The repository's behaviour, identical on SQLite and PostgreSQL.

mod common;

use common::TestDb;
use interview_store::{Category, Error, Page, Role, StoreConfig};

backend_test!(append_and_read_back_in_order, |db: &TestDb| {
    let store = db.store();
    let s = store.start_session().unwrap();
    assert_eq!(s.id.get_version_num(), 7, "session ids are UUIDv7");
    let texts = [
        "Hello, who are you?",
        "I'm Ada — «quotes» \"and\" 'apostrophes'\nnew line",
        "",
        "日本語 ✓ 🚀",
    ];
    for (i, t) in texts.iter().enumerate() {
        let role = if i % 2 == 0 {
            Role::Assistant
        } else {
            Role::User
        };
        store.append_message(s.id, role, t).unwrap();
    }
    let read = store.get_session(s.id).unwrap();
    assert_eq!(read.session.id, s.id);
    assert_eq!(
        read.session.created_at, s.created_at,
        "timestamps round-trip exactly"
    );
    assert!(
        read.session.updated_at > s.updated_at,
        "append bumps updated_at"
    );
    let got: Vec<&str> = read.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(got, texts);
    assert!(read.messages.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(read.messages[1].role, Role::User);
    assert_eq!(
        read.session.updated_at,
        read.messages.last().unwrap().created_at
    );
});

backend_test!(appended_message_equals_stored_message, |db: &TestDb| {
    let store = db.store();
    let s = store.start_session().unwrap();
    let m = store
        .append_message(s.id, Role::User, "same on the way in and out")
        .unwrap();
    assert_eq!(store.get_session(s.id).unwrap().messages, vec![m]);
});

backend_test!(unknown_session_is_not_found, |db: &TestDb| {
    let store = db.store();
    let id = uuid::Uuid::now_v7();
    for err in [
        store.get_session(id).unwrap_err(),
        store.append_message(id, Role::User, "x").unwrap_err(),
        store.update_summary(id, "x").unwrap_err(),
        store.save_draft(id, "x").unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::NotFound { what } if what.contains(&id.to_string())),
            "{err}"
        );
        assert_eq!(err.category(), Category::NotFound);
    }
    assert_eq!(store.latest_draft(id).unwrap(), None);
    assert_eq!(
        store.counts().unwrap().messages,
        0,
        "nothing written for the unknown session"
    );
});

backend_test!(summary_update_bumps_updated_at, |db: &TestDb| {
    let store = db.store();
    let s = store.start_session().unwrap();
    let updated = store
        .update_summary(s.id, "Led a migration; prefers Rust.")
        .unwrap();
    assert_eq!(updated.summary, "Led a migration; prefers Rust.");
    assert!(updated.updated_at > s.updated_at);
    assert_eq!(store.get_session(s.id).unwrap().session, updated);
});

backend_test!(drafts_latest_wins, |db: &TestDb| {
    let store = db.store();
    let s = store.start_session().unwrap();
    assert_eq!(store.latest_draft(s.id).unwrap(), None);
    let first = store.save_draft(s.id, "first draft").unwrap();
    let second = store
        .save_draft(s.id, "second draft\nwith ünïcode")
        .unwrap();
    assert!(second.id > first.id);
    assert_eq!(store.latest_draft(s.id).unwrap(), Some(second));
});

backend_test!(
    list_sessions_newest_updated_first_with_paging,
    |db: &TestDb| {
        let store = db.store();
        let ids: Vec<_> = (0..5).map(|_| store.start_session().unwrap().id).collect();
        // Touch the oldest: it becomes the most recently updated.
        store
            .append_message(ids[0], Role::User, "back again")
            .unwrap();
        let all = store
            .list_sessions(Page {
                offset: 0,
                limit: 10,
            })
            .unwrap();
        let listed: Vec<_> = all.iter().map(|s| s.id).collect();
        assert_eq!(listed, vec![ids[0], ids[4], ids[3], ids[2], ids[1]]);
        let page2 = store
            .list_sessions(Page {
                offset: 2,
                limit: 2,
            })
            .unwrap();
        assert_eq!(
            page2.iter().map(|s| s.id).collect::<Vec<_>>(),
            vec![ids[3], ids[2]]
        );
        let err = store
            .list_sessions(Page {
                offset: 0,
                limit: 0,
            })
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { field: "limit", .. }),
            "{err}"
        );
    }
);

backend_test!(
    invalid_text_is_refused_and_nothing_written,
    |db: &TestDb| {
        let store = db.store_with(StoreConfig {
            max_text_bytes: 16,
            ..Default::default()
        });
        let s = store.start_session().unwrap();
        let err = store
            .append_message(s.id, Role::User, &"x".repeat(17))
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput { field: "text", reason } if reason.contains("17 bytes")),
            "{err}"
        );
        let err = store
            .append_message(s.id, Role::User, "nul\0byte")
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput { field: "text", .. }),
            "{err}"
        );
        let err = store.save_draft(s.id, &"é".repeat(9)).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::InvalidInput {
                    field: "content",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.category(), Category::Input);
        store
            .append_message(s.id, Role::User, &"x".repeat(16))
            .unwrap();
        let counts = store.counts().unwrap();
        assert_eq!((counts.sessions, counts.messages, counts.drafts), (1, 1, 0));
    }
);

backend_test!(read_only_refuses_writes_and_serves_reads, |db: &TestDb| {
    let store = db.store();
    let s = store.start_session().unwrap();
    store
        .append_message(s.id, Role::User, "before the pause")
        .unwrap();
    let other_handle = store.clone();
    other_handle.set_read_only(true).unwrap();
    assert!(store.is_read_only().unwrap(), "clones share the switch");
    for err in [
        store.start_session().unwrap_err(),
        store
            .append_message(s.id, Role::User, "during")
            .unwrap_err(),
        store.update_summary(s.id, "during").unwrap_err(),
        store.save_draft(s.id, "during").unwrap_err(),
    ] {
        assert!(matches!(err, Error::ReadOnly), "{err}");
        assert_eq!(err.category(), Category::ReadOnly);
    }
    assert_eq!(store.get_session(s.id).unwrap().messages.len(), 1);
    assert!(store.health().read_only);
    store.set_read_only(false).unwrap();
    store.append_message(s.id, Role::User, "after").unwrap();
    assert_eq!(store.counts().unwrap().messages, 2);
});

backend_test!(health_reports_up_and_counts_match, |db: &TestDb| {
    let store = db.store();
    let h = store.health();
    assert!(h.db_up, "{:?}", h.error);
    assert_eq!(h.backend, db.backend);
    let s = store.start_session().unwrap();
    store.append_message(s.id, Role::Assistant, "q").unwrap();
    store.save_draft(s.id, "d").unwrap();
    let c = store.counts().unwrap();
    assert_eq!((c.sessions, c.messages, c.drafts), (1, 1, 1));
});

backend_test!(migrate_is_idempotent, |db: &TestDb| {
    let store = db.store();
    assert!(
        store.migrate().unwrap().is_empty(),
        "second run applies nothing"
    );
});

backend_test!(a_chat_turn_is_stored_whole_or_not_at_all, |db: &TestDb| {
    let store = db.store();
    let (s, first) = store
        .start_session_with(Role::Assistant, "What did you build?")
        .unwrap();
    assert_eq!(store.get_session(s.id).unwrap().messages, vec![first]);

    let turn = store
        .append_messages(
            s.id,
            &[(Role::User, "A store"), (Role::Assistant, "How?")],
            Some("builds stores"),
        )
        .unwrap();
    assert_eq!(turn.len(), 2);
    let read = store.get_session(s.id).unwrap();
    assert_eq!(read.messages[1..], turn[..]);
    assert_eq!(read.session.summary, "builds stores");

    // The second text is refused: nothing of the turn is stored.
    let huge = "x".repeat(store.config().max_text_bytes + 1);
    let err = store
        .append_messages(
            s.id,
            &[(Role::User, "kept?"), (Role::Assistant, &huge)],
            None,
        )
        .unwrap_err();
    assert_eq!(err.category(), Category::Input);
    // While paused, nothing of the turn is stored either.
    store.set_read_only(true).unwrap();
    let err = store
        .append_messages(s.id, &[(Role::User, "kept?")], Some("changed"))
        .unwrap_err();
    assert!(matches!(err, Error::ReadOnly));
    store.set_read_only(false).unwrap();
    let after = store.get_session(s.id).unwrap();
    assert_eq!(after.messages.len(), 3);
    assert_eq!(after.session.summary, "builds stores");
    assert!(matches!(
        store.append_messages(uuid::Uuid::now_v7(), &[(Role::User, "x")], None),
        Err(Error::NotFound { .. })
    ));
});

backend_test!(
    idempotency_key_records_its_response_with_the_write,
    |db: &TestDb| {
        use interview_store::{Claim, KeyPolicy, Recorded};
        let store = db.store();
        let (session, _) = store.start_session_with(Role::Assistant, "Q").unwrap();
        let answer = |status| Recorded {
            status,
            body: "{\"ok\":true}".into(),
        };
        let scope = "POST /interview/chat";
        let fresh = KeyPolicy::default();
        let Claim::Run(first) = store.claim_idempotency_key(scope, "k", "h", fresh).unwrap() else {
            panic!("a new key runs");
        };
        assert_eq!(
            store.claim_idempotency_key(scope, "k", "h", fresh).unwrap(),
            Claim::InProgress
        );
        assert_eq!(
            store
                .claim_idempotency_key(scope, "k", "other", fresh)
                .unwrap(),
            Claim::Mismatch
        );
        // The first holder is presumed gone once its lease has passed: a retry takes the key over ...
        let lapsed = KeyPolicy {
            lease: std::time::Duration::ZERO,
            ..fresh
        };
        let Claim::Run(second) = store
            .claim_idempotency_key(scope, "k", "h", lapsed)
            .unwrap()
        else {
            panic!("a lapsed claim is taken over");
        };
        // ... and the first holder's late write is rolled back with its response: nothing twice.
        let late =
            store.append_messages_once(&first, session.id, &[(Role::User, "late")], None, |_| {
                answer(200)
            });
        assert!(late.is_err(), "{late:?}");
        assert_eq!(store.get_session(session.id).unwrap().messages.len(), 1);
        store
            .append_messages_once(&second, session.id, &[(Role::User, "once")], None, |_| {
                answer(200)
            })
            .unwrap();
        assert_eq!(
            store.claim_idempotency_key(scope, "k", "h", fresh).unwrap(),
            Claim::Replay(answer(200))
        );
        assert_eq!(store.get_session(session.id).unwrap().messages.len(), 2);

        // A failed write records nothing, and a released key runs again.
        let Claim::Run(t) = store
            .claim_idempotency_key(scope, "k2", "h", fresh)
            .unwrap()
        else {
            panic!()
        };
        let unknown = uuid::Uuid::now_v7();
        let err = store
            .append_messages_once(&t, unknown, &[(Role::User, "x")], None, |_| answer(200))
            .unwrap_err();
        assert_eq!(err.category(), Category::NotFound);
        store.release_idempotency_key(&t).unwrap();
        assert!(matches!(
            store
                .claim_idempotency_key(scope, "k2", "h", fresh)
                .unwrap(),
            Claim::Run(_)
        ));

        // Keys are scoped per endpoint, and pruned after their retention.
        assert!(matches!(
            store
                .claim_idempotency_key("POST /interview/draft", "k", "h", fresh)
                .unwrap(),
            Claim::Run(_)
        ));
        assert_eq!(
            store
                .prune_idempotency_keys(std::time::Duration::from_secs(3600))
                .unwrap(),
            0
        );
        assert_eq!(
            store
                .prune_idempotency_keys(std::time::Duration::ZERO)
                .unwrap(),
            3
        );
    }
);

backend_test!(
    health_runs_one_check_at_a_time_while_the_database_hangs,
    |db: &TestDb| {
        use std::time::Duration;
        // One connection, held by a slow caller: to health the database hangs.
        let store = db.store_with(StoreConfig {
            pool: interview_store::PoolConfig {
                max_size: 1,
                min_idle: Some(1),
                connection_timeout: Duration::from_secs(2),
                ..Default::default()
            },
            health_timeout: Duration::from_millis(1500),
            ..Default::default()
        });
        let holder = {
            let store = store.clone();
            std::thread::spawn(move || {
                store
                    .with_connection(|_| {
                        std::thread::sleep(Duration::from_millis(2500));
                        Ok(())
                    })
                    .unwrap()
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || store.health())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let checks = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            // "interview-store-health", cut to the 15 bytes Linux keeps of a thread name.
            .filter(|name| name.trim() == "interview-store")
            .count();
        // Tests of this file run in parallel in one process (this one on the other
        // backend too), so a few checks may be theirs; one per caller would be 20.
        assert!(checks <= 3, "{checks} health check threads for 20 callers");
        for c in callers {
            let h = c.join().unwrap();
            assert!(!h.db_up, "the only connection is held");
            assert!(h.error.is_some());
        }
        holder.join().unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        assert!(store.health().db_up, "up again once the connection is free");
    }
);
