-- Zero-downtime cutover: a follower applies the change logs continuously, and a switch
-- under traffic verifies only what changed since the last full verify.
-- The SQLite change log position up to which a full verify found PostgreSQL equal
-- (rows named by later entries are checked by the switch). NULL: never verified.
ALTER TABLE interview_migration_state ADD COLUMN verified_change_seq BIGINT;
ALTER TABLE interview_migration_state ADD COLUMN verified_at TIMESTAMPTZ;
-- The way back reads PostgreSQL's log by transaction id, not by sequence (sequence
-- values are not commit order): every entry of a transaction older than this horizon
-- is applied to SQLite. 0: nothing applied yet.
ALTER TABLE interview_migration_state ADD COLUMN rollback_xid_horizon BIGINT NOT NULL DEFAULT 0;
-- The horizon up to which SQLite was last found equal to PostgreSQL (at the switch,
-- or by a full verify after it); entries from there on are kept for the switch back.
ALTER TABLE interview_migration_state ADD COLUMN rollback_verified_horizon BIGINT;
