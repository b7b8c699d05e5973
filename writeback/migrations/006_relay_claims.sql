-- Relay claims as leases: a relay marks the rows it takes in one short transaction,
-- publishes them with no transaction or connection held, and records the outcomes
-- only on the rows it still holds. A lease that runs out (the relay died or hung
-- mid-publish) makes its rows claimable again.
ALTER TABLE outbox
    -- Which claim holds the row: one token per relay cycle.
    ADD COLUMN claimed_by    text,
    ADD COLUMN claimed_until timestamptz;
