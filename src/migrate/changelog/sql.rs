//! The SQL texts that install and remove the change logs: SQLite's and
//! PostgreSQL's tables, trigger functions and triggers.
//!
//! Apart from [`super`] because they are data, not logic: long scripts that
//! are read (and reviewed) as SQL, while the module above holds the Rust that
//! runs them and reads the entries they write.

/// The SQLite log and its triggers. `IF NOT EXISTS` throughout: installing
/// twice is a no-op. An UPDATE that changes a session's id logs both ids; one
/// that changes no value (the store's no-op `SET updated_at = updated_at` row lock before an
/// append) logs nothing.
pub(super) const SQLITE_INSTALL: &str = "
CREATE TABLE IF NOT EXISTS interview_change_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name TEXT NOT NULL,
    row_key TEXT NOT NULL,
    op TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS interview_change_log_sessions_insert AFTER INSERT ON sessions BEGIN
    INSERT INTO interview_change_log (table_name, row_key, op) VALUES ('sessions', coalesce(CAST(NEW.id AS TEXT), ''), 'insert');
END;
CREATE TRIGGER IF NOT EXISTS interview_change_log_sessions_update AFTER UPDATE ON sessions
    WHEN OLD.id IS NOT NEW.id OR OLD.created_at IS NOT NEW.created_at OR OLD.updated_at IS NOT NEW.updated_at OR OLD.summary IS NOT NEW.summary
BEGIN
    INSERT INTO interview_change_log (table_name, row_key, op)
        SELECT 'sessions', coalesce(CAST(OLD.id AS TEXT), ''), 'update' WHERE OLD.id IS NOT NEW.id;
    INSERT INTO interview_change_log (table_name, row_key, op) VALUES ('sessions', coalesce(CAST(NEW.id AS TEXT), ''), 'update');
END;
CREATE TRIGGER IF NOT EXISTS interview_change_log_sessions_delete AFTER DELETE ON sessions BEGIN
    INSERT INTO interview_change_log (table_name, row_key, op) VALUES ('sessions', coalesce(CAST(OLD.id AS TEXT), ''), 'delete');
END;
CREATE TRIGGER IF NOT EXISTS interview_change_log_messages_insert AFTER INSERT ON messages BEGIN
    INSERT INTO interview_change_log (table_name, row_key, op) VALUES ('messages', NEW.rowid, 'insert');
END;
CREATE TRIGGER IF NOT EXISTS interview_change_log_messages_update AFTER UPDATE ON messages
    WHEN OLD.rowid IS NOT NEW.rowid OR OLD.session_id IS NOT NEW.session_id OR OLD.role IS NOT NEW.role OR OLD.text IS NOT NEW.text OR OLD.created_at IS NOT NEW.created_at
BEGIN
    INSERT INTO interview_change_log (table_name, row_key, op)
        SELECT 'messages', OLD.rowid, 'update' WHERE OLD.rowid IS NOT NEW.rowid;
    INSERT INTO interview_change_log (table_name, row_key, op) VALUES ('messages', NEW.rowid, 'update');
END;
CREATE TRIGGER IF NOT EXISTS interview_change_log_messages_delete AFTER DELETE ON messages BEGIN
    INSERT INTO interview_change_log (table_name, row_key, op) VALUES ('messages', OLD.rowid, 'delete');
END;
CREATE TRIGGER IF NOT EXISTS interview_change_log_drafts_insert AFTER INSERT ON drafts BEGIN
    INSERT INTO interview_change_log (table_name, row_key, op) VALUES ('drafts', NEW.rowid, 'insert');
END;
CREATE TRIGGER IF NOT EXISTS interview_change_log_drafts_update AFTER UPDATE ON drafts
    WHEN OLD.rowid IS NOT NEW.rowid OR OLD.session_id IS NOT NEW.session_id OR OLD.content IS NOT NEW.content OR OLD.created_at IS NOT NEW.created_at
BEGIN
    INSERT INTO interview_change_log (table_name, row_key, op)
        SELECT 'drafts', OLD.rowid, 'update' WHERE OLD.rowid IS NOT NEW.rowid;
    INSERT INTO interview_change_log (table_name, row_key, op) VALUES ('drafts', NEW.rowid, 'update');
END;
CREATE TRIGGER IF NOT EXISTS interview_change_log_drafts_delete AFTER DELETE ON drafts BEGIN
    INSERT INTO interview_change_log (table_name, row_key, op) VALUES ('drafts', OLD.rowid, 'delete');
END;
";

/// The keys' triggers, installed beside [`SQLITE_INSTALL`] once the file has
/// the keys table (a legacy file gets it when the store adopts it). Only
/// finished keys are logged: a claim and its release never travel. Keys are
/// named by `json_array(scope, key)`, which any text survives.
pub(super) const SQLITE_INSTALL_KEYS: &str = "
CREATE TRIGGER IF NOT EXISTS interview_change_log_keys_insert AFTER INSERT ON idempotency_keys
    WHEN NEW.status_code IS NOT NULL
BEGIN
    INSERT INTO interview_change_log (table_name, row_key, op) VALUES ('idempotency_keys', json_array(CAST(NEW.scope AS TEXT), CAST(NEW.key AS TEXT)), 'insert');
END;
CREATE TRIGGER IF NOT EXISTS interview_change_log_keys_update AFTER UPDATE ON idempotency_keys
    WHEN OLD.status_code IS NOT NULL OR NEW.status_code IS NOT NULL
BEGIN
    INSERT INTO interview_change_log (table_name, row_key, op)
        SELECT 'idempotency_keys', json_array(CAST(OLD.scope AS TEXT), CAST(OLD.key AS TEXT)), 'update'
        WHERE OLD.scope IS NOT NEW.scope OR OLD.key IS NOT NEW.key;
    INSERT INTO interview_change_log (table_name, row_key, op) VALUES ('idempotency_keys', json_array(CAST(NEW.scope AS TEXT), CAST(NEW.key AS TEXT)), 'update');
END;
CREATE TRIGGER IF NOT EXISTS interview_change_log_keys_delete AFTER DELETE ON idempotency_keys
    WHEN OLD.status_code IS NOT NULL
BEGIN
    INSERT INTO interview_change_log (table_name, row_key, op) VALUES ('idempotency_keys', json_array(CAST(OLD.scope AS TEXT), CAST(OLD.key AS TEXT)), 'delete');
END;
";

/// The names of the keys' triggers.
pub(super) const SQLITE_KEY_TRIGGERS: [&str; 3] = [
    "interview_change_log_keys_insert",
    "interview_change_log_keys_update",
    "interview_change_log_keys_delete",
];

pub(super) const SQLITE_UNINSTALL: &str = "
DROP TRIGGER IF EXISTS interview_change_log_keys_insert;
DROP TRIGGER IF EXISTS interview_change_log_keys_update;
DROP TRIGGER IF EXISTS interview_change_log_keys_delete;
DROP TRIGGER IF EXISTS interview_change_log_sessions_insert;
DROP TRIGGER IF EXISTS interview_change_log_sessions_update;
DROP TRIGGER IF EXISTS interview_change_log_sessions_delete;
DROP TRIGGER IF EXISTS interview_change_log_messages_insert;
DROP TRIGGER IF EXISTS interview_change_log_messages_update;
DROP TRIGGER IF EXISTS interview_change_log_messages_delete;
DROP TRIGGER IF EXISTS interview_change_log_drafts_insert;
DROP TRIGGER IF EXISTS interview_change_log_drafts_update;
DROP TRIGGER IF EXISTS interview_change_log_drafts_delete;
DROP TABLE IF EXISTS interview_change_log;
";

/// The PostgreSQL log for the way back: one trigger function for the three
/// tables (each has an `id` column). TRUNCATE is not logged: the service never
/// truncates, and the migration tool's own `--truncate` drops the log.
pub(super) const PG_INSTALL: &str = "
CREATE TABLE IF NOT EXISTS interview_change_log (
    seq BIGSERIAL PRIMARY KEY,
    table_name TEXT NOT NULL,
    row_key TEXT NOT NULL,
    op TEXT NOT NULL,
    xid BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint)
);
ALTER TABLE interview_change_log ADD COLUMN IF NOT EXISTS xid BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX IF NOT EXISTS interview_change_log_xid ON interview_change_log (xid, seq);
CREATE OR REPLACE FUNCTION interview_change_log_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO interview_change_log (table_name, row_key, op) VALUES (TG_TABLE_NAME, NEW.id::text, 'insert');
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO interview_change_log (table_name, row_key, op) VALUES (TG_TABLE_NAME, OLD.id::text, 'delete');
    ELSE
        IF OLD.id IS DISTINCT FROM NEW.id THEN
            INSERT INTO interview_change_log (table_name, row_key, op) VALUES (TG_TABLE_NAME, OLD.id::text, 'update');
        END IF;
        INSERT INTO interview_change_log (table_name, row_key, op) VALUES (TG_TABLE_NAME, NEW.id::text, 'update');
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS interview_change_log_sessions ON sessions;
CREATE TRIGGER interview_change_log_sessions AFTER INSERT OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION interview_change_log_record();
DROP TRIGGER IF EXISTS interview_change_log_sessions_update ON sessions;
CREATE TRIGGER interview_change_log_sessions_update AFTER UPDATE ON sessions
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION interview_change_log_record();
DROP TRIGGER IF EXISTS interview_change_log_messages ON messages;
CREATE TRIGGER interview_change_log_messages AFTER INSERT OR DELETE ON messages
    FOR EACH ROW EXECUTE FUNCTION interview_change_log_record();
DROP TRIGGER IF EXISTS interview_change_log_messages_update ON messages;
CREATE TRIGGER interview_change_log_messages_update AFTER UPDATE ON messages
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION interview_change_log_record();
DROP TRIGGER IF EXISTS interview_change_log_drafts ON drafts;
CREATE TRIGGER interview_change_log_drafts AFTER INSERT OR DELETE ON drafts
    FOR EACH ROW EXECUTE FUNCTION interview_change_log_record();
DROP TRIGGER IF EXISTS interview_change_log_drafts_update ON drafts;
CREATE TRIGGER interview_change_log_drafts_update AFTER UPDATE ON drafts
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION interview_change_log_record();
CREATE OR REPLACE FUNCTION interview_change_log_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO interview_change_log (table_name, row_key, op) VALUES (TG_TABLE_NAME, json_build_array(NEW.scope, NEW.key)::text, 'insert');
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO interview_change_log (table_name, row_key, op) VALUES (TG_TABLE_NAME, json_build_array(OLD.scope, OLD.key)::text, 'delete');
    ELSE
        IF OLD.scope IS DISTINCT FROM NEW.scope OR OLD.key IS DISTINCT FROM NEW.key THEN
            INSERT INTO interview_change_log (table_name, row_key, op) VALUES (TG_TABLE_NAME, json_build_array(OLD.scope, OLD.key)::text, 'update');
        END IF;
        INSERT INTO interview_change_log (table_name, row_key, op) VALUES (TG_TABLE_NAME, json_build_array(NEW.scope, NEW.key)::text, 'update');
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS interview_change_log_keys_insert ON idempotency_keys;
CREATE TRIGGER interview_change_log_keys_insert AFTER INSERT ON idempotency_keys
    FOR EACH ROW WHEN (NEW.status_code IS NOT NULL) EXECUTE FUNCTION interview_change_log_key();
DROP TRIGGER IF EXISTS interview_change_log_keys_update ON idempotency_keys;
CREATE TRIGGER interview_change_log_keys_update AFTER UPDATE ON idempotency_keys
    FOR EACH ROW WHEN ((OLD.status_code IS NOT NULL OR NEW.status_code IS NOT NULL) AND OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION interview_change_log_key();
DROP TRIGGER IF EXISTS interview_change_log_keys_delete ON idempotency_keys;
CREATE TRIGGER interview_change_log_keys_delete AFTER DELETE ON idempotency_keys
    FOR EACH ROW WHEN (OLD.status_code IS NOT NULL) EXECUTE FUNCTION interview_change_log_key();
";

pub(super) const PG_UNINSTALL: &str = "
DROP TRIGGER IF EXISTS interview_change_log_keys_insert ON idempotency_keys;
DROP TRIGGER IF EXISTS interview_change_log_keys_update ON idempotency_keys;
DROP TRIGGER IF EXISTS interview_change_log_keys_delete ON idempotency_keys;
DROP FUNCTION IF EXISTS interview_change_log_key();
DROP TRIGGER IF EXISTS interview_change_log_sessions ON sessions;
DROP TRIGGER IF EXISTS interview_change_log_sessions_update ON sessions;
DROP TRIGGER IF EXISTS interview_change_log_messages ON messages;
DROP TRIGGER IF EXISTS interview_change_log_messages_update ON messages;
DROP TRIGGER IF EXISTS interview_change_log_drafts ON drafts;
DROP TRIGGER IF EXISTS interview_change_log_drafts_update ON drafts;
DROP FUNCTION IF EXISTS interview_change_log_record();
DROP TABLE IF EXISTS interview_change_log;
";

/// The transaction id column, for a log installed before it existed. The
/// entries already there take the upgrading transaction's id: they are read
/// by the next pass, like any entry past the horizon. The triggers need no
/// change: the column fills itself.
pub(super) const PG_ADD_XID: &str = "
ALTER TABLE interview_change_log ADD COLUMN IF NOT EXISTS xid BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX IF NOT EXISTS interview_change_log_xid ON interview_change_log (xid, seq);
";
