-- Reconciliation of the online store against the sources: one row per run, one per
-- entity the run checked.
--
-- A finding keeps the lineage id of the value the store held when it was checked, so
-- the auditor's read of a decision finds the checks of the very values it served:
-- (feature, entity_id) through the index, then the lineage id among that entity's
-- few findings. Runs older than the retention are deleted, their findings with them.

CREATE TABLE reconciliation_runs (
    run_id            uuid        PRIMARY KEY,
    feature           text        NOT NULL,
    source            text        NOT NULL,
    started_at        timestamptz NOT NULL,
    finished_at       timestamptz NOT NULL,
    repair            boolean     NOT NULL,
    sampled           integer     NOT NULL,
    checked           integer     NOT NULL,
    matched           integer     NOT NULL,
    mismatched        integer     NOT NULL,
    newer_at_source   integer     NOT NULL,
    missing_in_store  integer     NOT NULL,
    missing_at_source integer     NOT NULL,
    repaired          integer     NOT NULL,
    errors            integer     NOT NULL,
    source_calls      integer     NOT NULL,
    stopped_reason    text
);

CREATE INDEX reconciliation_runs_latest ON reconciliation_runs (feature, finished_at DESC);
CREATE INDEX reconciliation_runs_age ON reconciliation_runs (finished_at);

CREATE TABLE reconciliation_findings (
    run_id            uuid        NOT NULL REFERENCES reconciliation_runs ON DELETE CASCADE,
    feature           text        NOT NULL,
    entity            text        NOT NULL,
    entity_id         text        NOT NULL,
    kind              text        NOT NULL,
    stored_value      jsonb,
    source_value      jsonb,
    stored_event_time timestamptz,
    source_event_time timestamptz,
    stored_lineage_id text,
    source_ref        text,
    repaired          boolean     NOT NULL DEFAULT false,
    repair_outcome    text,
    found_at          timestamptz NOT NULL,
    PRIMARY KEY (run_id, entity_id)
);

CREATE INDEX reconciliation_findings_entity
    ON reconciliation_findings (feature, entity_id, found_at);
