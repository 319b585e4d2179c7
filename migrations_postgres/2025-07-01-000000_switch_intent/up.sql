-- A switch records its intent before each step that spans both databases
-- (src/migrate/phase.rs), so a process killed between any two statements
-- leaves a row that says where it stood. The constraint keeps the pair
-- meaningful for every writer, not only for this crate's code: a switch
-- phase always names its step, and no other phase does.
ALTER TABLE interview_migration_state ADD COLUMN step TEXT;
ALTER TABLE interview_migration_state DROP CONSTRAINT IF EXISTS interview_migration_state_phase_check;
ALTER TABLE interview_migration_state ADD CONSTRAINT interview_migration_state_phase_check
    CHECK (phase IN ('copying', 'copied', 'switching_to_postgres', 'switched', 'switching_to_sqlite', 'rolled_back'));
ALTER TABLE interview_migration_state ADD CONSTRAINT interview_migration_state_step_check
    CHECK ((phase IN ('switching_to_postgres', 'switching_to_sqlite')) = (step IS NOT NULL));
