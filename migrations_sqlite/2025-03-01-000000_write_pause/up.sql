-- The write pause, held by the database so that every writer sees it: this crate's
-- processes, the legacy service, a sqlite3 shell. One row; while `paused` is set the
-- triggers below refuse every insert, update and delete on the service's tables
-- (see interview_store::maintenance). Adopting a legacy file adds them without touching
-- its rows. The trigger text must stay exactly what maintenance.rs writes
-- (`sqlite_triggers`): retiring the file rewrites the message to name where the data went.
CREATE TABLE IF NOT EXISTS interview_maintenance (
    singleton BOOLEAN PRIMARY KEY NOT NULL DEFAULT 1 CHECK (singleton = 1),
    paused BOOLEAN NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    retired_to TEXT,
    changed_at TEXT
);
INSERT OR IGNORE INTO interview_maintenance (singleton, paused) VALUES (1, 0);
CREATE TRIGGER interview_pause_sessions_insert BEFORE INSERT ON sessions WHEN (SELECT paused FROM interview_maintenance) BEGIN SELECT RAISE(ABORT, 'interview-store: writes are paused (read-only maintenance)'); END;
CREATE TRIGGER interview_pause_sessions_update BEFORE UPDATE ON sessions WHEN (SELECT paused FROM interview_maintenance) BEGIN SELECT RAISE(ABORT, 'interview-store: writes are paused (read-only maintenance)'); END;
CREATE TRIGGER interview_pause_sessions_delete BEFORE DELETE ON sessions WHEN (SELECT paused FROM interview_maintenance) BEGIN SELECT RAISE(ABORT, 'interview-store: writes are paused (read-only maintenance)'); END;
CREATE TRIGGER interview_pause_messages_insert BEFORE INSERT ON messages WHEN (SELECT paused FROM interview_maintenance) BEGIN SELECT RAISE(ABORT, 'interview-store: writes are paused (read-only maintenance)'); END;
CREATE TRIGGER interview_pause_messages_update BEFORE UPDATE ON messages WHEN (SELECT paused FROM interview_maintenance) BEGIN SELECT RAISE(ABORT, 'interview-store: writes are paused (read-only maintenance)'); END;
CREATE TRIGGER interview_pause_messages_delete BEFORE DELETE ON messages WHEN (SELECT paused FROM interview_maintenance) BEGIN SELECT RAISE(ABORT, 'interview-store: writes are paused (read-only maintenance)'); END;
CREATE TRIGGER interview_pause_drafts_insert BEFORE INSERT ON drafts WHEN (SELECT paused FROM interview_maintenance) BEGIN SELECT RAISE(ABORT, 'interview-store: writes are paused (read-only maintenance)'); END;
CREATE TRIGGER interview_pause_drafts_update BEFORE UPDATE ON drafts WHEN (SELECT paused FROM interview_maintenance) BEGIN SELECT RAISE(ABORT, 'interview-store: writes are paused (read-only maintenance)'); END;
CREATE TRIGGER interview_pause_drafts_delete BEFORE DELETE ON drafts WHEN (SELECT paused FROM interview_maintenance) BEGIN SELECT RAISE(ABORT, 'interview-store: writes are paused (read-only maintenance)'); END;
