-- What each idempotency key was used for: the fingerprint of the request (a SHA-256
-- of its model, entities and context, never of the request id), kept with the key.
-- A retry that reuses a request id for a different request is refused (409) instead
-- of answered with the first decision. Keys committed before this migration have
-- none; their retries get the first decision back, as before.
ALTER TABLE decision_requests ADD COLUMN fingerprint bytea;
