"""``scoregate ingest``: keeping the online store fresh from Kafka.

Feature-update events (scoregate's own CloudEvents) and Debezium change events are
decoded against the registry (:mod:`gateway.ingest.decoding`), written to Redis through
the online store's compare-and-set in pipelined batches, and their offsets committed
only once the batch is in Redis (:mod:`gateway.ingest.worker`). What fails its contract
goes to ``<topic>.dlq`` with error headers, and the partition moves on.
"""
