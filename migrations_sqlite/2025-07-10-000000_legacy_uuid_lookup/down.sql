DROP INDEX IF EXISTS drafts_session_uuid_key_id_idx;
DROP INDEX IF EXISTS messages_session_uuid_key_id_idx;
DROP INDEX IF EXISTS sessions_id_uuid_key_idx;
