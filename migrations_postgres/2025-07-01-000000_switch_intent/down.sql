ALTER TABLE interview_migration_state DROP CONSTRAINT interview_migration_state_step_check;
UPDATE interview_migration_state SET phase = 'copied' WHERE phase = 'switching_to_postgres';
UPDATE interview_migration_state SET phase = 'switched' WHERE phase = 'switching_to_sqlite';
ALTER TABLE interview_migration_state DROP CONSTRAINT interview_migration_state_phase_check;
ALTER TABLE interview_migration_state ADD CONSTRAINT interview_migration_state_phase_check
    CHECK (phase IN ('copying', 'copied', 'switched', 'rolled_back'));
ALTER TABLE interview_migration_state DROP COLUMN step;
