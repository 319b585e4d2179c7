ALTER TABLE interview_migration_state ADD COLUMN mark_sessions_updated_at TEXT;
ALTER TABLE interview_migration_state DROP COLUMN rolled_back_at;
ALTER TABLE interview_migration_state DROP COLUMN switched_at;
ALTER TABLE interview_migration_state DROP COLUMN rollback_change_seq;
ALTER TABLE interview_migration_state DROP COLUMN mark_change_seq;
ALTER TABLE interview_migration_state DROP CONSTRAINT IF EXISTS interview_migration_state_phase_check;
UPDATE interview_migration_state SET phase = 'copied' WHERE phase NOT IN ('copying', 'copied');
ALTER TABLE interview_migration_state ADD CONSTRAINT interview_migration_state_phase_check
    CHECK (phase IN ('copying', 'copied'));
