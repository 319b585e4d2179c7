-- The write pause, held by the database so that every writer sees it: every process of
-- interview-store and any other client. One row; while `paused` is set the triggers below
-- refuse every statement that writes the service's tables (see interview_store::maintenance).
CREATE TABLE interview_maintenance (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    paused BOOLEAN NOT NULL DEFAULT FALSE,
    -- Set when the data moved for good to another database (masked URL or path).
    retired_to TEXT,
    changed_at TIMESTAMPTZ
);
INSERT INTO interview_maintenance (singleton, paused) VALUES (TRUE, FALSE);

-- The messages are what interview_store::Error recognises (Error::ReadOnly, Error::Retired);
-- SQLSTATE 25006 is read_only_sql_transaction, for other clients.
CREATE FUNCTION interview_refuse_while_paused() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    m interview_maintenance%ROWTYPE;
BEGIN
    SELECT * INTO m FROM interview_maintenance;
    IF m.paused THEN
        IF m.retired_to IS NOT NULL THEN
            RAISE EXCEPTION 'interview-store: this database is retired; its data moved to %', m.retired_to
                USING ERRCODE = '25006';
        END IF;
        RAISE EXCEPTION 'interview-store: writes are paused (read-only maintenance)'
            USING ERRCODE = '25006';
    END IF;
    RETURN NULL;
END
$$;

-- Per statement, not per row: one look at the flag per statement, whatever its row count
-- (COPY fires them too).
CREATE TRIGGER interview_pause BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION interview_refuse_while_paused();
CREATE TRIGGER interview_pause BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON messages
    FOR EACH STATEMENT EXECUTE FUNCTION interview_refuse_while_paused();
CREATE TRIGGER interview_pause BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON drafts
    FOR EACH STATEMENT EXECUTE FUNCTION interview_refuse_while_paused();
