-- The W3C trace context of the request that queued each event, so that the relay's
-- publish span continues that trace and the Kafka record carries it on.
ALTER TABLE outbox ADD COLUMN traceparent text;
