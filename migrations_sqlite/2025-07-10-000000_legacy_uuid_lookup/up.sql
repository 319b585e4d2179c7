-- Finds a row by its UUID however the legacy file spells the id: canonical, upper case,
-- 32 hex digits (SQLAlchemy 2's Uuid, Django's UUIDField), braced, urn:uuid:.
-- Expression indexes on the normalised text, so no stored id is ever rewritten (the legacy
-- service may still read the file by its own spelling) and no column is added to its tables.
-- The expression must stay exactly interview_store::types::SQLITE_UUID_KEY around the column:
-- SQLite uses an expression index only for the identical expression (tests/legacy_ids.rs checks).
-- Built-in functions only, so the legacy service's own SQLite (3.9 or later) keeps writing the file.
CREATE INDEX IF NOT EXISTS sessions_id_uuid_key_idx ON sessions (replace(replace(replace(replace(lower(id), 'urn:uuid:', ''), '-', ''), '{', ''), '}', ''));
CREATE INDEX IF NOT EXISTS messages_session_uuid_key_id_idx ON messages (replace(replace(replace(replace(lower(session_id), 'urn:uuid:', ''), '-', ''), '{', ''), '}', ''), id);
CREATE INDEX IF NOT EXISTS drafts_session_uuid_key_id_idx ON drafts (replace(replace(replace(replace(lower(session_id), 'urn:uuid:', ''), '-', ''), '{', ''), '}', ''), id);
