-- The tables may predate this migration and hold the service's data: only the indexes go.
DROP INDEX IF EXISTS messages_session_id_id_idx;
DROP INDEX IF EXISTS drafts_session_id_id_idx;
DROP INDEX IF EXISTS sessions_updated_at_id_idx;
