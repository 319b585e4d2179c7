-- Idempotency-Key support of the HTTP API: one row per (endpoint, key).
-- A row is claimed (status_code NULL) before the request runs, and its response
-- is written in the same transaction as the write it describes, so a retry
-- either finds that response or finds nothing stored.
-- Timestamps are canonical UTC text (see src/timestamp.rs), so they compare as text.
CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    -- SHA-256 (hex) of the request body: the same key with another body is refused.
    request_hash TEXT NOT NULL,
    -- Who holds the claim; the response is recorded only by its holder.
    token TEXT NOT NULL,
    status_code INTEGER,
    response_body TEXT,
    -- First claim (retention counts from here) and latest claim (the lease).
    created_at TEXT NOT NULL,
    claimed_at TEXT NOT NULL,
    completed_at TEXT,
    PRIMARY KEY (scope, key),
    CHECK ((status_code IS NULL) = (response_body IS NULL))
);
-- Pruning keys past their retention.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
