-- Decisions, their rollbacks, and the transactional outbox the relay drains to Kafka.
--
-- A decision row is written once and never updated: what happened to it later
-- (rollback, delivery of its events) lives in rows of its own.

CREATE TABLE decisions (
    decision_id    uuid        PRIMARY KEY,
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
    CONSTRAINT decisions_caller_request_key UNIQUE (caller, request_id)
);

CREATE INDEX decisions_subject_idx
    ON decisions (subject_entity, subject_id, decided_at DESC);
CREATE INDEX decisions_model_idx
    ON decisions (model_name, decided_at DESC);

CREATE TABLE rollbacks (
    decision_id    uuid        PRIMARY KEY REFERENCES decisions (decision_id),
    reason         text        NOT NULL,
    rolled_back_by text        NOT NULL,
    rolled_back_at timestamptz NOT NULL,
    event_id       uuid        NOT NULL
);

CREATE TABLE outbox (
    seq             bigserial   PRIMARY KEY,
    event_id        uuid        NOT NULL UNIQUE,
    decision_id     uuid        NOT NULL,
    event_type      text        NOT NULL,
    topic           text        NOT NULL,
    message_key     text        NOT NULL,
    -- The Kafka record value, byte for byte: a resend publishes exactly this.
    payload         bytea       NOT NULL,
    event_time      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    status          text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'dead_lettered')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    "partition"     integer,
    "offset"        bigint,
    delivered_at    timestamptz
);

-- What the relay claims, in order.
CREATE INDEX outbox_pending_idx ON outbox (seq) WHERE status = 'pending';
-- The head of each key's queue: an event waits for every earlier one of its key.
CREATE INDEX outbox_key_queue_idx ON outbox (message_key, seq) WHERE status <> 'delivered';
-- Write-back state of one decision.
CREATE INDEX outbox_decision_idx ON outbox (decision_id, seq);
