-- Audit: every read of a decision's context, the hash chain that makes edits to
-- decision records evident, and the indexes that keep decision search fast.

CREATE TABLE decision_reads (
    seq          bigserial   PRIMARY KEY,
    decision_id  uuid        NOT NULL,
    key_id       text        NOT NULL,
    read_at      timestamptz NOT NULL DEFAULT now(),
    via          text        NOT NULL CHECK (via IN ('api', 'ui', 'replay')),
    purpose      text
);
CREATE INDEX decision_reads_decision_idx ON decision_reads (decision_id, seq);

-- Seal n links decision n of the chain to seal n-1:
-- hash = sha256(prev_hash || the record's JSON text, byte for byte as committed).
CREATE TABLE decision_seals (
    seq          bigint      PRIMARY KEY,
    decision_id  uuid        NOT NULL UNIQUE,
    committed_at timestamptz NOT NULL,
    prev_hash    bytea       NOT NULL,
    hash         bytea       NOT NULL,
    sealed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX decision_seals_committed_idx ON decision_seals (committed_at);

-- Keyset search: newest first, by subject, by model, or over everything.
CREATE INDEX decisions_search_idx ON decisions (decided_at DESC, decision_id DESC);
CREATE INDEX decisions_search_subject_idx
    ON decisions (subject_id, decided_at DESC, decision_id DESC);
CREATE INDEX decisions_search_model_idx
    ON decisions (model_name, decided_at DESC, decision_id DESC);
-- The sealer looks for unsealed decisions by commit time.
CREATE INDEX decisions_committed_idx ON decisions (committed_at, decision_id);
