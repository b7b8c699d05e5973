-- Served staleness, rolled up from the decision records so freshness reports and
-- burn-rate alerts read a few rows per feature and time slot instead of the records.
--
-- A trigger queues every inserted decision (as for seals); the rollup job, one at a
-- time across processes, takes a batch off the queue, reads each stored feature's
-- status and staleness out of the record, and adds them to the slot the decision was
-- made in, at two grains: a fine one (seconds, the deployment's resolution) and the
-- hour. Counts from any number of gateway processes add up in the same rows.

CREATE TABLE freshness_queue (
    seq          bigserial   PRIMARY KEY,
    decision_id  uuid        NOT NULL,
    committed_at timestamptz NOT NULL
);

CREATE FUNCTION scoregate_queue_freshness() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO freshness_queue (decision_id, committed_at)
    VALUES (NEW.decision_id, NEW.committed_at);
    RETURN NULL;
END;
$$;

CREATE TRIGGER decisions_queue_freshness
    AFTER INSERT ON decisions
    FOR EACH ROW EXECUTE FUNCTION scoregate_queue_freshness();

-- Serves of stored features (request-time context is not counted) per slot:
-- ``within_sla`` counts those whose staleness was at most the feature's SLA
-- (``max_staleness_ms`` as recorded), and the rest count how each was served.
CREATE TABLE freshness_serves (
    feature     text        NOT NULL,
    grain_s     integer     NOT NULL,
    slot_start  timestamptz NOT NULL,
    served      bigint      NOT NULL,
    within_sla  bigint      NOT NULL,
    fresh       bigint      NOT NULL,
    fallback    bigint      NOT NULL,
    stale       bigint      NOT NULL,
    defaulted   bigint      NOT NULL,
    missing     bigint      NOT NULL,
    PRIMARY KEY (feature, grain_s, slot_start)
);

CREATE INDEX freshness_serves_slots ON freshness_serves (grain_s, slot_start);

-- Served staleness per slot in the log-scaled buckets of gateway.freshness.histogram
-- (bucket = floor(ln(1 + staleness_ms) * 20)), at the minute (or the fine grain, if
-- coarser) and the hour.
CREATE TABLE freshness_staleness (
    feature     text        NOT NULL,
    grain_s     integer     NOT NULL,
    slot_start  timestamptz NOT NULL,
    bucket      smallint    NOT NULL,
    n           bigint      NOT NULL,
    PRIMARY KEY (feature, grain_s, slot_start, bucket)
);

CREATE INDEX freshness_staleness_slots ON freshness_staleness (grain_s, slot_start);

-- Decisions of the last day count from the start; older ones only fill hourly
-- history, which a report of the last day does not read.
INSERT INTO freshness_queue (decision_id, committed_at)
SELECT decision_id, committed_at
FROM decisions
WHERE committed_at > now() - interval '1 day'
ORDER BY committed_at, decision_id;
