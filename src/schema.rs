//! The schema, written once for both backends.
//!
//! Column types come from [`crate::types::sql`] where the backends differ.

diesel::table! {
    use diesel::sql_types::*;
    use crate::types::sql::{MultiTimestamp, MultiUuid};

    /// One interview.
    sessions (id) {
        id -> MultiUuid,
        created_at -> MultiTimestamp,
        updated_at -> MultiTimestamp,
        summary -> Text,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::types::sql::{MultiTimestamp, MultiUuid};

    /// One turn of an interview, from the user or the assistant.
    messages (id) {
        id -> BigInt,
        session_id -> MultiUuid,
        role -> Text,
        text -> Text,
        created_at -> MultiTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::types::sql::{MultiTimestamp, MultiUuid};

    /// A written-up answer composed from an interview.
    drafts (id) {
        id -> BigInt,
        session_id -> MultiUuid,
        content -> Text,
        created_at -> MultiTimestamp,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::types::sql::{MultiTimestamp, MultiUuid};

    /// Idempotency keys of the HTTP API and the responses recorded under them.
    idempotency_keys (scope, key) {
        scope -> Text,
        key -> Text,
        request_hash -> Text,
        token -> MultiUuid,
        status_code -> Nullable<Integer>,
        response_body -> Nullable<Text>,
        created_at -> MultiTimestamp,
        claimed_at -> MultiTimestamp,
        completed_at -> Nullable<MultiTimestamp>,
    }
}

diesel::joinable!(messages -> sessions (session_id));
diesel::joinable!(drafts -> sessions (session_id));
diesel::allow_tables_to_appear_in_same_query!(sessions, messages, drafts);

diesel::table! {
    use diesel::sql_types::*;
    use crate::types::sql::MultiTimestamp;

    /// The one-row maintenance state: the write pause and retirement (see [`crate::maintenance`]).
    interview_maintenance (singleton) {
        singleton -> Bool,
        paused -> Bool,
        retired_to -> Nullable<Text>,
        changed_at -> Nullable<MultiTimestamp>,
    }
}
