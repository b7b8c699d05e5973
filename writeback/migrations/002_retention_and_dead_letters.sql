-- Retention by partition, idempotency in its own table, the write-back timeline, and
-- what the relay needs to dead-letter and redrive events.
--
-- `decisions` and `writeback_timeline` become tables partitioned by month (UTC), so
-- retention drops whole partitions instead of deleting rows. A partitioned table
-- cannot hold a unique key that leaves out the partition key, so the (caller,
-- request_id) key that makes retries safe moves to `decision_requests`.

-- Creates the month partition of `parent` that starts at `month_start` (UTC), unless
-- it exists; rows of that month that landed in the parent's default partition move
-- into it. Returns whether it created the partition. Partitions are named
-- `<parent>_pYYYYMM`; the default partition `<parent>_default`.
CREATE FUNCTION scoregate_ensure_month_partition(parent text, month_start date)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    first_day timestamp := date_trunc('month', month_start::timestamp);
    partition_name text := parent || '_p' || to_char(first_day, 'YYYYMM');
    lower_bound timestamptz := first_day AT TIME ZONE 'UTC';
    upper_bound timestamptz := (first_day + interval '1 month') AT TIME ZONE 'UTC';
    key_column text;
BEGIN
    IF to_regclass(partition_name) IS NOT NULL THEN
        RETURN false;
    END IF;
    SELECT a.attname INTO STRICT key_column
    FROM pg_partitioned_table AS p
    JOIN pg_attribute AS a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
    WHERE p.partrelid = parent::regclass;
    -- Built apart and attached, so that rows already in the default partition for
    -- this month (written while no partition covered it) can move in first.
    EXECUTE format(
        'CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
        partition_name, parent);
    EXECUTE format(
        'WITH moved AS (DELETE FROM %I WHERE %I >= $1 AND %I < $2 RETURNING *) '
        'INSERT INTO %I SELECT * FROM moved',
        parent || '_default', key_column, key_column, partition_name)
        USING lower_bound, upper_bound;
    EXECUTE format(
        'ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        parent, partition_name, lower_bound, upper_bound);
    RETURN true;
END;
$$;

-- The old decisions table makes way for the partitioned one; its rows move over below.
ALTER TABLE rollbacks DROP CONSTRAINT rollbacks_decision_id_fkey;
ALTER TABLE decisions RENAME TO decisions_v1;
ALTER TABLE decisions_v1 RENAME CONSTRAINT decisions_pkey TO decisions_v1_pkey;
ALTER TABLE decisions_v1
    RENAME CONSTRAINT decisions_caller_request_key TO decisions_v1_caller_request_key;
ALTER INDEX decisions_subject_idx RENAME TO decisions_v1_subject_idx;
ALTER INDEX decisions_model_idx RENAME TO decisions_v1_model_idx;

CREATE TABLE decisions (
    decision_id    uuid        NOT NULL,
    caller         text        NOT NULL,
    request_id     text        NOT NULL,
    model_name     text        NOT NULL,
    model_version  text        NOT NULL,
    subject_entity text        NOT NULL,
    subject_id     text        NOT NULL,
    decided_at     timestamptz NOT NULL,
    committed_at   timestamptz NOT NULL DEFAULT now(),
    -- json, not jsonb: the record is kept byte for byte as it was committed.
    record         json        NOT NULL,
    PRIMARY KEY (decision_id, committed_at)
) PARTITION BY RANGE (committed_at);

CREATE INDEX decisions_subject_idx
    ON decisions (subject_entity, subject_id, decided_at DESC);
CREATE INDEX decisions_model_idx
    ON decisions (model_name, decided_at DESC);
-- Only written when no month partition covers a row; maintenance moves such rows out.
CREATE TABLE decisions_default PARTITION OF decisions DEFAULT;

-- One row per (caller, request_id): a retry finds the first decision here. Purged
-- together with the partition that holds the decision.
CREATE TABLE decision_requests (
    caller       text        NOT NULL,
    request_id   text        NOT NULL,
    decision_id  uuid        NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, request_id)
);
CREATE INDEX decision_requests_committed_idx ON decision_requests (committed_at);

-- Append-only history of every outcome event: committed, published, dead-lettered,
-- redriven. It outlives the outbox rows, which are purged once delivered.
CREATE TABLE writeback_timeline (
    seq          bigserial   NOT NULL,
    event_id     uuid        NOT NULL,
    decision_id  uuid        NOT NULL,
    event_type   text        NOT NULL,
    stage        text        NOT NULL
        CHECK (stage IN ('committed', 'published', 'dead_lettered', 'redriven')),
    at           timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0,
    -- The topic written to: the outcome topic, or the dead-letter topic.
    topic        text        NOT NULL,
    "partition"  integer,
    "offset"     bigint,
    error        text,
    actor        text,
    PRIMARY KEY (seq, at)
) PARTITION BY RANGE (at);

CREATE INDEX writeback_timeline_decision_idx ON writeback_timeline (decision_id, seq);
CREATE INDEX writeback_timeline_event_idx ON writeback_timeline (event_id);
CREATE TABLE writeback_timeline_default PARTITION OF writeback_timeline DEFAULT;

-- Month partitions from the oldest existing decision to three months ahead.
DO $$
DECLARE
    month_start date;
BEGIN
    FOR month_start IN
        SELECT generate_series(
            date_trunc('month', LEAST(
                (SELECT min(committed_at) FROM decisions_v1), now()) AT TIME ZONE 'UTC'),
            date_trunc('month', now() AT TIME ZONE 'UTC') + interval '3 months',
            interval '1 month')::date
    LOOP
        PERFORM scoregate_ensure_month_partition('decisions', month_start);
        PERFORM scoregate_ensure_month_partition('writeback_timeline', month_start);
    END LOOP;
END;
$$;

INSERT INTO decisions SELECT * FROM decisions_v1;
INSERT INTO decision_requests (caller, request_id, decision_id, committed_at)
    SELECT caller, request_id, decision_id, committed_at FROM decisions_v1;
DROP TABLE decisions_v1;

-- What the relay needs to dead-letter an event and an operator to redrive it.
ALTER TABLE outbox
    -- Failures that count towards the relay's attempt limit (not broker outages).
    ADD COLUMN failures           integer     NOT NULL DEFAULT 0,
    ADD COLUMN error_class        text,
    ADD COLUMN first_failed_at    timestamptz,
    ADD COLUMN last_failed_at     timestamptz,
    -- Set once the event is bound for the dead-letter topic; it stays pending, going
    -- only there, until the dead-letter topic takes it.
    ADD COLUMN dead_letter_reason text
        CHECK (dead_letter_reason IN ('non_retriable', 'attempts_exhausted')),
    ADD COLUMN dead_lettered_at   timestamptz,
    ADD COLUMN dlq_topic          text,
    ADD COLUMN dlq_partition      integer,
    ADD COLUMN dlq_offset         bigint,
    ADD COLUMN redrives           integer     NOT NULL DEFAULT 0;

CREATE INDEX outbox_dead_letter_idx ON outbox (seq) WHERE status = 'dead_lettered';

-- The history of events already in the outbox.
INSERT INTO writeback_timeline (event_id, decision_id, event_type, stage, at, attempts, topic)
    SELECT event_id, decision_id, event_type, 'committed', created_at, 0, topic FROM outbox;
INSERT INTO writeback_timeline
        (event_id, decision_id, event_type, stage, at, attempts, topic, "partition", "offset")
    SELECT event_id, decision_id, event_type, 'published', delivered_at, attempts, topic,
           "partition", "offset"
    FROM outbox WHERE status = 'delivered';
