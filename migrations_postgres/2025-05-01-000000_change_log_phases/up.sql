-- The migration's bookkeeping follows a change log instead of wall-clock marks,
-- and records the cutover's phase, so that no command can skip one:
--   copying -> copied (copy), copied -> switched (switch), switched -> rolled_back (switch --to sqlite).
ALTER TABLE interview_migration_state DROP CONSTRAINT IF EXISTS interview_migration_state_phase_check;
ALTER TABLE interview_migration_state ADD CONSTRAINT interview_migration_state_phase_check
    CHECK (phase IN ('copying', 'copied', 'switched', 'rolled_back'));
-- The SQLite change log's sequence number applied so far: set by copy from its
-- snapshot, advanced by each sync in the transaction that applies the entries.
-- NULL for a copy made before the change log existed (sync then asks for a new copy).
ALTER TABLE interview_migration_state ADD COLUMN mark_change_seq BIGINT;
-- PostgreSQL's own change log (installed by switch) applied to SQLite so far by rollback-sync.
ALTER TABLE interview_migration_state ADD COLUMN rollback_change_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE interview_migration_state ADD COLUMN switched_at TIMESTAMPTZ;
ALTER TABLE interview_migration_state ADD COLUMN rolled_back_at TIMESTAMPTZ;
-- Wall-clock change detection is gone.
ALTER TABLE interview_migration_state DROP COLUMN mark_sessions_updated_at;
