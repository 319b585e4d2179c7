DROP TRIGGER IF EXISTS interview_pause ON drafts;
DROP TRIGGER IF EXISTS interview_pause ON messages;
DROP TRIGGER IF EXISTS interview_pause ON sessions;
DROP FUNCTION IF EXISTS interview_refuse_while_paused();
DROP TABLE IF EXISTS interview_maintenance;
