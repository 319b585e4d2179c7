-- Adopts a database written by the legacy interview service: the tables are
-- exactly the legacy ones, created only where missing, so existing rows are
-- left as they are. Only indexes are added.
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    created_at TEXT,
    updated_at TEXT,
    summary TEXT DEFAULT ''
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT REFERENCES sessions(id),
    role TEXT,
    text TEXT,
    created_at TEXT
);
CREATE TABLE IF NOT EXISTS drafts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT REFERENCES sessions(id),
    content TEXT,
    created_at TEXT
);
-- A session's messages and drafts in id order.
CREATE INDEX IF NOT EXISTS messages_session_id_id_idx ON messages (session_id, id);
CREATE INDEX IF NOT EXISTS drafts_session_id_id_idx ON drafts (session_id, id);
-- Listing sessions newest-updated first, and finding sessions changed since a mark.
CREATE INDEX IF NOT EXISTS sessions_updated_at_id_idx ON sessions (updated_at, id);
