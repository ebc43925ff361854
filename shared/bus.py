"""The Kafka bus: producers, consumers, topic creation and message metadata (headers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from shared.contracts import Codec, Wire
from shared.settings import KafkaSettings, TopicSpec

log = logging.getLogger(__name__)

H_REQUEST_ID = "sluice-request-id"
H_REPLY_TO = "sluice-reply-to"
H_TYPE = "sluice-type"
H_TRACEPARENT = "traceparent"
H_ERROR = "sluice-error"
H_ORIGIN = "sluice-origin"

Headers = list[tuple[str, bytes]]


def transient(exc: BaseException) -> bool:
    """A Kafka failure that passes when the cluster is reachable again (retry later), as
    opposed to one that will fail the same way (a message too large, say)."""
    return isinstance(exc, KafkaError) and (exc.retriable or isinstance(exc, KafkaTimeoutError))


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where replies for a request go: one partition of the reply topic."""

    topic: str
    partition: int

    def encode(self) -> bytes:
        return f"{self.topic}:{self.partition}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> ReplyTo:
        topic, _, part = raw.decode().rpartition(":")
        if not topic or not part.isdigit():
            raise ValueError(f"bad reply address {raw!r}")
        return cls(topic, int(part))


@dataclass(frozen=True, slots=True)
class RecordLoc:
    """Where a record is in Kafka (a request record, so that whoever takes it over can read it)."""

    topic: str
    partition: int
    offset: int

    def encode(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    @classmethod
    def decode(cls, raw: str) -> RecordLoc | None:
        head, _, offset = raw.rpartition(":")
        topic, _, partition = head.rpartition(":")
        if not topic or not partition.isdigit() or not offset.isdigit():
            return None
        return cls(topic, int(partition), int(offset))


@dataclass(frozen=True, slots=True)
class Meta:
    """Routing metadata carried in Kafka headers, next to the message body. `origin` is where
    a consumer read the message (not a header)."""

    request_id: str
    reply_to: ReplyTo | None = None
    traceparent: str | None = None
    origin: RecordLoc | None = None

    def headers(self, msg_type: str) -> Headers:
        out: Headers = [(H_REQUEST_ID, self.request_id.encode()), (H_TYPE, msg_type.encode())]
        if self.reply_to is not None:
            out.append((H_REPLY_TO, self.reply_to.encode()))
        if self.traceparent:
            out.append((H_TRACEPARENT, self.traceparent.encode()))
        return out

    @classmethod
    def of_record(cls, record) -> Meta:
        return cls.from_headers(record.headers, RecordLoc(record.topic, record.partition, record.offset))

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes]] | None,
                     origin: RecordLoc | None = None) -> Meta:
        values = {k: v for k, v in headers or () if v is not None}
        if H_REQUEST_ID not in values:
            raise ValueError(f"missing header {H_REQUEST_ID}")
        reply = values.get(H_REPLY_TO)
        trace = values.get(H_TRACEPARENT)
        return cls(
            request_id=values[H_REQUEST_ID].decode(),
            reply_to=ReplyTo.decode(reply) if reply else None,
            traceparent=trace.decode() if trace else None,
            origin=origin,
        )


class Publisher:
    """Encodes wire messages at the edge and sends them with their headers."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._codecs: dict[type, Codec] = {}

    def _encode(self, msg: Wire) -> bytes:
        codec = self._codecs.get(type(msg))
        if codec is None:
            codec = self._codecs[type(msg)] = Codec(type(msg))
        return codec.encode(msg)

    async def send(self, topic: str, msg: Wire, meta: Meta, *, partition: int | None = None,
                   ) -> asyncio.Future:
        """Queue a message; returns the delivery future (await it to know it is stored)."""
        tag = type(msg).__struct_config__.tag
        return await self._producer.send(
            topic, self._encode(msg), key=meta.request_id.encode(), partition=partition,
            headers=meta.headers(str(tag)),
        )

    async def send_and_wait(self, topic: str, msg: Wire, meta: Meta, *,
                            partition: int | None = None) -> None:
        await (await self.send(topic, msg, meta, partition=partition))

    async def ping(self) -> None:
        """Round trip to the cluster (for readiness checks)."""
        await self._producer.client.fetch_all_metadata()

    async def reply(self, meta: Meta, msg: Wire) -> asyncio.Future | None:
        if meta.reply_to is None:
            log.warning("request %s has no reply address; dropping %s", meta.request_id,
                        type(msg).__name__)
            return None
        return await self.send(meta.reply_to.topic, msg, meta, partition=meta.reply_to.partition)

    async def dead_letter(self, topic: str, record, error: str, origin: str) -> None:
        """Set aside a record that is not a valid envelope, with why and where it came from."""
        headers = [(k, v) for k, v in record.headers or () if v is not None]
        headers.append((H_ERROR, error.encode()[:1000]))
        headers.append((H_ORIGIN, f"{record.topic}:{record.partition}:{record.offset}:{origin}".encode()))
        fut = await self._producer.send(topic, record.value, key=record.key, headers=headers)
        await fut


@asynccontextmanager
async def kafka_producer(settings: KafkaSettings, client_id: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.linger_ms,
        request_timeout_ms=settings.request_timeout_ms,
        max_request_size=settings.max_message_bytes,
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@asynccontextmanager
async def kafka_consumer(settings: KafkaSettings, *topics: str, client_id: str,
                         group_id: str | None, **options) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer that never auto-commits. Without topics, the caller assigns partitions."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.bootstrap_servers,
        client_id=client_id,
        group_id=group_id,
        enable_auto_commit=False,
        request_timeout_ms=settings.request_timeout_ms,
        **options,
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def ensure_topics(settings: KafkaSettings, specs: Sequence[TopicSpec], *,
                        timeout: float = 60.0) -> None:
    """Create missing topics with their partition counts and configs (idempotent); give
    existing ones the configs they lack (retention, say, on a deployment that predates it)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                    request_timeout_ms=settings.request_timeout_ms)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [NewTopic(s.name, s.partitions, settings.replication_factor,
                                topic_configs=dict(s.configs))
                       for s in specs if s.name not in existing]
            if missing:
                await _create(admin, missing)
            await _reconcile(admin, [s for s in specs if s.name in existing and s.configs])
            return
        except KafkaConnectionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)  # broker still starting: retry with a deadline
        finally:
            await admin.close()


async def _create(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> None:
    try:
        response = await admin.create_topics(topics)
    except TopicAlreadyExistsError:
        return
    except KafkaError as exc:
        # create_topics reports per-topic errors; a concurrent creator is fine.
        if "TopicAlreadyExists" not in repr(exc):
            raise
        return
    for topic, code, *rest in response.topic_errors:
        if code not in (0, TopicAlreadyExistsError.errno):
            detail = rest[0] if rest else ""
            raise RuntimeError(f"could not create topic {topic}: error {code} {detail}")


_DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs config_source: set on the topic itself


async def _reconcile(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]) -> None:
    """Set the configs an existing topic lacks. AlterConfigs replaces a topic's whole set
    of overrides, so the ones it has are sent back with ours."""
    if not specs:
        return
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs])
        current: dict[str, dict[str, str]] = {}
        for response in responses:
            for _code, _msg, _type, name, entries in response.resources:
                current[name] = {e[0]: e[1] for e in entries
                                 if len(e) > 3 and e[3] == _DYNAMIC_TOPIC_CONFIG}
        changes = []
        for spec in specs:
            have = current.get(spec.name, {})
            if any(have.get(k) != v for k, v in spec.configs.items()):
                changes.append(ConfigResource(ConfigResourceType.TOPIC, spec.name,
                                              configs={**have, **spec.configs}))
        if changes:
            await admin.alter_configs(changes)
            log.info("set configs on existing topics: %s", [c.name for c in changes])
    except KafkaError as exc:  # not fatal: the topics work, with the broker's defaults
        log.warning("could not check or set the configs of existing topics: %r", exc)


async def assign_from_end(consumer: AIOKafkaConsumer, spec: TopicSpec) -> None:
    """Read every partition of a topic without a group (no rebalances), from its end."""
    tps = [TopicPartition(spec.name, p) for p in range(spec.partitions)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)  # resolve now, so nothing published after this is missed
