CREATE TABLE IF NOT EXISTS sessions (
    id UUID PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    summary TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS messages (
    id BIGSERIAL PRIMARY KEY,
    session_id UUID NOT NULL REFERENCES sessions (id),
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS drafts (
    id BIGSERIAL PRIMARY KEY,
    session_id UUID NOT NULL REFERENCES sessions (id),
    content TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
-- A session's messages and drafts in id order.
CREATE INDEX IF NOT EXISTS messages_session_id_id_idx ON messages (session_id, id);
CREATE INDEX IF NOT EXISTS drafts_session_id_id_idx ON drafts (session_id, id);
-- Listing sessions newest-updated first, and finding sessions changed since a mark.
CREATE INDEX IF NOT EXISTS sessions_updated_at_id_idx ON sessions (updated_at, id);
