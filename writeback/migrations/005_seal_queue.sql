-- Decisions waiting for their seal, queued as they are inserted, so the sealer takes
-- them in order without scanning recent decisions for ones not yet sealed.

CREATE TABLE decision_seal_queue (
    seq          bigserial   PRIMARY KEY,
    decision_id  uuid        NOT NULL,
    committed_at timestamptz NOT NULL
);

CREATE FUNCTION scoregate_queue_seal() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO decision_seal_queue (decision_id, committed_at)
    VALUES (NEW.decision_id, NEW.committed_at);
    RETURN NULL;
END;
$$;

CREATE TRIGGER decisions_queue_seal
    AFTER INSERT ON decisions
    FOR EACH ROW EXECUTE FUNCTION scoregate_queue_seal();

INSERT INTO decision_seal_queue (decision_id, committed_at)
SELECT d.decision_id, d.committed_at
FROM decisions AS d
WHERE NOT EXISTS (SELECT 1 FROM decision_seals AS s WHERE s.decision_id = d.decision_id)
ORDER BY d.committed_at, d.decision_id;
