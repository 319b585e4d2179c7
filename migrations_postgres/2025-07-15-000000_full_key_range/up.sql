-- SQLite rowids may be zero or negative (down to -2^63): no number can stand for
-- "nothing copied yet", so the copy's cursor is NULL until its first batch commits.
ALTER TABLE interview_migration_progress ALTER COLUMN last_source_rowid DROP NOT NULL;
ALTER TABLE interview_migration_progress ALTER COLUMN last_source_rowid DROP DEFAULT;
-- A copy under way from before this migration read only rowids above 0, so a 0
-- with nothing handled means no batch committed.
UPDATE interview_migration_progress SET last_source_rowid = NULL
    WHERE last_source_rowid = 0 AND rows_copied = 0 AND rows_rejected = 0;
