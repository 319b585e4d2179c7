UPDATE interview_migration_progress SET last_source_rowid = 0 WHERE last_source_rowid IS NULL;
ALTER TABLE interview_migration_progress ALTER COLUMN last_source_rowid SET DEFAULT 0;
ALTER TABLE interview_migration_progress ALTER COLUMN last_source_rowid SET NOT NULL;
