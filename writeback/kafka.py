"""Publishing outcome events to Kafka with aiokafka.

The producer starts lazily, so a broker that is down when the process starts only
delays publishing; every call is bounded by ``publish_timeout_ms``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.structs import RecordMetadata

from writeback.config import WritebackConfig

logger = logging.getLogger(__name__)

# More replicas than this buys little for an event topic; fewer brokers cap it.
_MAX_REPLICATION = 3


FailureKind = Literal["transient", "non_retriable", "counted"]
"""How a failed publish is handled.

``transient``: the broker or the network, not the event (unreachable, timed out,
leader moving); retried without limit, since dead-lettering would move a whole
outage's backlog. ``non_retriable``: the event can never be taken as it is (too
large, not serialisable, not authorised, invalid topic); dead-lettered at once.
``counted``: anything else; retried, and counted towards the relay's attempt limit.
"""

# Errors about the record or the permission to write it: no retry changes them.
_NON_RETRIABLE: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.CorruptRecordException,
    kafka_errors.InvalidTimestampError,
    kafka_errors.UnsupportedForMessageFormatError,
    kafka_errors.PolicyViolationError,
    # What the producer raises for a key, value or header it cannot serialise.
    TypeError,
    ValueError,
    msgspec.EncodeError,
)
# aiokafka marks most outage errors `retriable`; these it does not, but they are too.
_TRANSIENT: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaTimeoutError,
    kafka_errors.KafkaUnavailableError,
    kafka_errors.ProducerClosed,
    TimeoutError,
    OSError,
    asyncio.CancelledError,
)


def failure_kind(error: BaseException) -> FailureKind:
    """Whether a publish failure is the broker's, the event's for good, or unclear.

    Args:
        error: What ``KafkaPublisher.publish`` reported for one message.

    Returns:
        The failure's :data:`FailureKind`.
    """
    if isinstance(error, _NON_RETRIABLE):
        return "non_retriable"
    if isinstance(error, _TRANSIENT):
        return "transient"
    if isinstance(error, kafka_errors.KafkaError) and error.retriable:
        return "transient"
    return "counted"


def is_too_large(error: BaseException) -> bool:
    """Whether a publish failed because the record exceeds a size limit."""
    return isinstance(
        error,
        kafka_errors.MessageSizeTooLargeError
        | kafka_errors.RecordListTooLargeError
        | kafka_errors.RecordTooLargeError,
    )


class OutgoingMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One Kafka record to publish.

    Attributes:
        topic: Destination topic.
        key: Record key (the partition is chosen from it).
        value: Record value.
        headers: Record headers, in order.
    """

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def _retrieve_outcome(future: asyncio.Future[Any]) -> None:
    # Deliveries given up on by `publish` may still fail later; reading the
    # outcome keeps asyncio from reporting a never-retrieved exception.
    if not future.cancelled():
        future.exception()


class KafkaPublisher:
    """An aiokafka producer that publishes batches and reports per-message outcomes.

    Args:
        config: Bootstrap servers, idempotence and the publish timeout.
    """

    def __init__(self, config: WritebackConfig) -> None:
        self._config = config
        self._timeout = config.publish_timeout_ms / 1000
        self._producer: Any = None
        self._start_lock = asyncio.Lock()

    @property
    def started(self) -> bool:
        """Whether the producer is connected and running."""
        return self._producer is not None

    async def start(self) -> None:
        """Start the producer.

        Raises:
            aiokafka.errors.KafkaError: The broker could not be reached; call again later.
            TimeoutError: It did not answer within the publish timeout.
        """
        await self.ensure_started()

    async def ensure_started(self) -> None:
        """Start the producer unless it runs already (after :meth:`stop`, start it again).

        Raises:
            aiokafka.errors.KafkaError: The broker could not be reached; call again later.
            TimeoutError: It did not answer within the publish timeout.
        """
        if self._producer is not None:
            return
        async with self._start_lock:
            if self._producer is not None:
                return
            producer = AIOKafkaProducer(
                bootstrap_servers=self._config.kafka_bootstrap,
                acks="all",
                enable_idempotence=self._config.idempotent_producer,
                # Deliveries expire in step with `publish`, not minutes after it gave up.
                request_timeout_ms=self._config.publish_timeout_ms,
                max_request_size=self._config.max_message_bytes,
            )
            try:
                async with asyncio.timeout(self._timeout):
                    await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
            logger.info("Kafka producer started (%s)", self._config.kafka_bootstrap)

    async def stop(self) -> None:
        """Flush and stop the producer (waits at most for its delivery timeout)."""
        async with self._start_lock:
            producer, self._producer = self._producer, None
            if producer is not None:
                await producer.stop()

    async def ensure_topic(self, name: str, partitions: int) -> None:
        """Create a topic unless it exists.

        The replication factor is the number of brokers, up to three.

        Args:
            name: Topic name.
            partitions: Partitions to create it with (an existing topic is left as it is).

        Raises:
            aiokafka.errors.KafkaError: The broker refused or could not be reached.
            TimeoutError: It did not answer within the publish timeout.
        """
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._config.kafka_bootstrap,
            request_timeout_ms=self._config.publish_timeout_ms,
        )
        try:
            async with asyncio.timeout(self._timeout):
                await admin.start()
                cluster = await admin.describe_cluster()
                replication = max(1, min(_MAX_REPLICATION, len(cluster["brokers"])))
                response = await admin.create_topics([NewTopic(name, partitions, replication)])
        finally:
            await admin.close()
        for topic, code, message in response.topic_errors:
            if code == TopicAlreadyExistsError.errno:
                continue
            if code != 0:
                raise for_code(code)(f"creating topic {topic}: {message}")
            logger.info("created topic %s with %d partitions", topic, partitions)

    async def publish(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[RecordMetadata | BaseException]:
        """Send messages and wait for their acknowledgements.

        All messages are handed to the producer first, then awaited together, all
        within the publish timeout.

        Args:
            messages: What to publish.

        Returns:
            For each message, in order, its ``RecordMetadata`` (topic, partition,
            offset) or the exception that kept it from being acknowledged. A message
            that timed out may still sit in the producer and be delivered later, so
            a resend can duplicate it: resend under the same CloudEvents id.
        """
        if not messages:
            return []
        try:
            await self.ensure_started()
        except Exception as exc:
            return [exc] * len(messages)
        producer = self._producer
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        outcomes: list[RecordMetadata | BaseException] = []
        deliveries: dict[int, asyncio.Future[Any]] = {}
        for index, message in enumerate(messages):
            try:
                # `send` waits for topic metadata and buffer space: bound it too.
                async with asyncio.timeout_at(deadline):
                    delivery = await producer.send(
                        message.topic, message.value, key=message.key, headers=message.headers
                    )
            except Exception as exc:
                outcomes.append(exc)
                continue
            delivery.add_done_callback(_retrieve_outcome)
            deliveries[index] = delivery
            outcomes.append(TimeoutError("no acknowledgement within the publish timeout"))
        if deliveries:
            await asyncio.wait(deliveries.values(), timeout=max(0.0, deadline - loop.time()))
        for index, delivery in deliveries.items():
            if not delivery.done():
                continue
            if delivery.cancelled():
                outcomes[index] = asyncio.CancelledError("the delivery was cancelled")
            else:
                error = delivery.exception()
                outcomes[index] = error if error is not None else delivery.result()
        return outcomes

    # The health endpoint hands in its own budget; the bound is applied inside.
    async def ready(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Whether a broker answers a metadata request within ``timeout`` seconds.

        Uses a short-lived client of its own, so it works before the producer starts
        and never waits on the producer's state.

        Args:
            timeout: Seconds to wait at most.

        Returns:
            True if the cluster answered.
        """
        client = AIOKafkaClient(
            bootstrap_servers=self._config.kafka_bootstrap,
            request_timeout_ms=max(1, int(timeout * 1000)),
        )
        try:
            async with asyncio.timeout(timeout):
                await client.bootstrap()
        except Exception as exc:
            logger.debug("Kafka is not ready: %r", exc)
            return False
        finally:
            await client.close()
        return True
