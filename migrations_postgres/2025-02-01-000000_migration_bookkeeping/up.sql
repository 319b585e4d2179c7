-- Bookkeeping of the SQLite -> PostgreSQL migration tool (interview_store::migrate).
-- One row: which source was copied, where its snapshot stood, and when.
CREATE TABLE interview_migration_state (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    source TEXT NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('copying', 'copied')),
    started_at TIMESTAMPTZ NOT NULL,
    copied_at TIMESTAMPTZ,
    synced_at TIMESTAMPTZ,
    -- High-water marks of the first copy snapshot, advanced by each sync.
    mark_session_rowid BIGINT NOT NULL,
    mark_message_id BIGINT NOT NULL,
    mark_draft_id BIGINT NOT NULL,
    -- Latest session updated_at seen (canonical text, as the service writes it).
    mark_sessions_updated_at TEXT
);
-- Per table: the last source rowid handled, written in the same transaction as its batch.
CREATE TABLE interview_migration_progress (
    table_name TEXT PRIMARY KEY,
    last_source_rowid BIGINT NOT NULL DEFAULT 0,
    rows_total BIGINT NOT NULL DEFAULT 0,
    rows_copied BIGINT NOT NULL DEFAULT 0,
    rows_rejected BIGINT NOT NULL DEFAULT 0,
    null_summaries BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Source rows that could not be loaded, so that verify and status account for them.
CREATE TABLE interview_migration_rejects (
    table_name TEXT NOT NULL,
    source_id TEXT NOT NULL,
    column_name TEXT NOT NULL,
    value TEXT,
    reason TEXT NOT NULL,
    found_by TEXT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, source_id)
);
