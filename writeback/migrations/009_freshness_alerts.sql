-- Burn-rate alerts on the freshness objectives: each feature's alert state, the log of
-- its changes, and outbox rows that are not about a decision.
--
-- One evaluator at a time (a transaction-scoped advisory lock) reads the windows of
-- every alert from the served-staleness rollup, updates `freshness_alerts` and, for
-- each change, appends to `freshness_alert_changes` and queues the change's CloudEvent
-- in the outbox, all in one transaction: any number of gateway processes raise an
-- alert once, and the relay publishes it as it publishes decisions.

-- One row per feature and alert (the registry's `freshness.alerts`), rewritten on every
-- evaluation: `firing` and `since` change only on a transition, the rates each time.
CREATE TABLE freshness_alerts (
    feature             text             NOT NULL,
    alert               text             NOT NULL,
    firing              boolean          NOT NULL DEFAULT false,
    -- When it entered its state; NULL while it has never fired.
    since               timestamptz,
    -- When it last changed state; NULL while it has never fired.
    changed_at          timestamptz,
    evaluated_at        timestamptz      NOT NULL,
    owner               text             NOT NULL DEFAULT '',
    long_window_s       integer          NOT NULL,
    short_window_s      integer          NOT NULL,
    burn_rate_threshold double precision NOT NULL,
    -- NULL when the window had no serves.
    long_burn_rate      double precision,
    short_burn_rate     double precision,
    last_event_id       uuid,
    PRIMARY KEY (feature, alert)
);

-- Every change, for the page; changes older than the evaluator's horizon are deleted.
CREATE TABLE freshness_alert_changes (
    seq             bigserial        PRIMARY KEY,
    feature         text             NOT NULL,
    alert           text             NOT NULL,
    firing          boolean          NOT NULL,
    at              timestamptz      NOT NULL,
    event_id        uuid             NOT NULL,
    event_type      text             NOT NULL,
    long_burn_rate  double precision,
    short_burn_rate double precision
);

CREATE INDEX freshness_alert_changes_at ON freshness_alert_changes (at);

-- The CloudEvents subject of an outbox row that is not about a decision (a freshness
-- alert's is its feature); NULL for decision events, whose subject is the decision id.
-- Such a row still fills `decision_id`, which is NOT NULL and which the write-back
-- timeline, the dead-letter queue and redrive carry along: it holds the event's own
-- id (the same uuid as `event_id`), so it joins no decision and no decision's read
-- finds it, while every outbox mechanism (order per key, retries, dead letters,
-- redrive, retention of delivered rows) works on it unchanged.
ALTER TABLE outbox ADD COLUMN subject text;
