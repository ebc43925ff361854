"""A consumer-group runner: decode, dispatch concurrently, commit only finished work.

The poll loop never waits on processing: each message runs as its own task, up to
`max_in_flight`; past that the partitions are paused (the loop keeps polling, so the
group membership stays alive). Offsets are committed per partition when every message
before them has finished; a handler that raises NotSettled leaves its message unfinished
(its offset is never committed past, so the message is delivered again). A record that is
not a valid envelope goes to the dead-letter topic and the consumer carries on.

A rebalance that takes a partition away drops its offset tracker; handlers of its messages
that finish later no longer count (the partition's new owner gets them again), even when
the same consumer gets the partition back.

A Kafka error in the poll loop (the cluster unreachable, a partition without a leader) is
retried with backoff: the loop outlives any outage and goes on when Kafka is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from shared.bus import Meta, Publisher
from shared.contracts import Codec, DecodeErrors
from shared.offsets import PartitionOffsets

log = logging.getLogger(__name__)

RETRY_S = (0.5, 5.0)  # first and longest wait after a failed poll

T = TypeVar("T")
Handler = Callable[[T, Meta], Awaitable[None]]


class NotSettled(Exception):
    """Raised by a handler whose message must be delivered again (not committed past)."""


class GroupRunner(Generic[T]):
    def __init__(self, consumer: AIOKafkaConsumer, topic: str, codec: Codec[T], handler: Handler[T],
                 publisher: Publisher, deadletter_topic: str, *, name: str,
                 max_in_flight: int, on_dead_letter: Callable[[], None] | None = None,
                 on_assigned: Callable[[int], None] | None = None) -> None:
        self._consumer = consumer
        self._topic = topic
        self._codec = codec
        self._handler = handler
        self._publisher = publisher
        self._deadletter = deadletter_topic
        self._name = name
        self._max = max_in_flight
        self._on_dead_letter = on_dead_letter
        self._on_assigned = on_assigned  # told how many partitions we own after a rebalance
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._tasks: set[asyncio.Task] = set()
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._dirty = asyncio.Event()
        self._stopping = False
        self._loop_exited = asyncio.Event()
        self._started = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def subscribe(self) -> None:
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))

    async def run(self) -> None:
        self._started = True
        committer = asyncio.create_task(self._commit_loop(), name=f"{self._name}-commit")
        delay = RETRY_S[0]
        try:
            while not self._stopping:
                try:
                    if len(self._tasks) >= self._max:
                        await self._wait_for_capacity()
                        continue
                    batches = await self._consumer.getmany(
                        timeout_ms=500, max_records=self._max - len(self._tasks))
                except KafkaError as exc:
                    log.warning("%s: poll failed (%r); retrying in %gs", self._name, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_S[1])
                    continue
                delay = RETRY_S[0]
                for tp, records in batches.items():
                    for record in records:
                        await self._dispatch(tp, record)
        finally:
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)
            self._loop_exited.set()

    def stop(self) -> None:
        """Stop taking new messages; in-flight work continues until drain()."""
        self._stopping = True

    async def leave(self) -> None:
        """Leave the group now (after stop()), so that its partitions move to the other
        members while in-flight work goes on: commit what is finished, then give them up.
        Messages still in flight are delivered again to the partitions' new owners."""
        if self._started:
            await self._loop_exited.wait()
        await self._commit(list(self._offsets))
        self._offsets.clear()
        self._consumer.unsubscribe()

    async def drain(self, timeout: float) -> None:
        """Wait for in-flight work up to `timeout`, cancel the rest, commit what finished."""
        if self._started:
            # A poll under way when stop() was called still dispatches what it fetched.
            await self._loop_exited.wait()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%s: cancelled %d unfinished messages at shutdown", self._name, len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        await self._commit(list(self._offsets))

    async def _wait_for_capacity(self) -> None:
        assigned = self._consumer.assignment()
        self._consumer.pause(*assigned)
        try:
            await asyncio.wait_for(self._capacity.wait(), timeout=1.0)
        except TimeoutError:
            # Poll (paused: returns nothing) so the group does not evict us for inactivity.
            await self._consumer.getmany(timeout_ms=0)
        finally:
            self._consumer.resume(*self._consumer.paused())

    async def _dispatch(self, tp: TopicPartition, record) -> None:
        offsets = self._offsets.setdefault(tp, PartitionOffsets())
        offsets.start(record.offset)
        try:
            msg = self._codec.decode(record.value)
            meta = Meta.of_record(record)
        except (*DecodeErrors, ValueError, UnicodeDecodeError) as exc:
            await self._set_aside(record, repr(exc))
            self._finished(offsets, record.offset)
            return
        task = asyncio.create_task(self._handle(msg, meta), name=f"{self._name}-{meta.request_id}")
        self._tasks.add(task)
        if len(self._tasks) >= self._max:
            self._capacity.clear()
        # The tracker itself, not the partition: after a rebalance, a handler of the old
        # assignment must not finish an offset in the new one's tracker.
        task.add_done_callback(lambda t, o=offsets, off=record.offset: self._task_done(t, o, off))

    async def _handle(self, msg: T, meta: Meta) -> bool:
        """True when the message is settled (its offset may be committed past)."""
        try:
            await self._handler(msg, meta)
        except asyncio.CancelledError:
            raise
        except NotSettled:
            return False
        except Exception:
            # Handlers report errors to the client themselves; this is a bug, not bad input.
            log.exception("%s: handler failed for request %s", self._name, meta.request_id)
        return True

    async def _set_aside(self, record, error: str) -> None:
        log.warning("%s: invalid message at %s:%d:%d (%s); dead-lettered", self._name,
                    record.topic, record.partition, record.offset, error)
        if self._on_dead_letter is not None:
            self._on_dead_letter()
        try:
            await self._publisher.dead_letter(self._deadletter, record, error, self._name)
        except KafkaError:
            log.exception("%s: could not dead-letter %s:%d", self._name, record.topic, record.offset)

    def _task_done(self, task: asyncio.Task, offsets: PartitionOffsets, offset: int) -> None:
        self._tasks.discard(task)
        if len(self._tasks) < self._max:
            self._capacity.set()
        if not task.cancelled() and task.result():
            self._finished(offsets, offset)

    def _finished(self, offsets: PartitionOffsets, offset: int) -> None:
        offsets.finish(offset)  # a tracker dropped at a revoke no longer counts
        self._dirty.set()

    async def _commit_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._commit(list(self._offsets))
            except Exception:  # commits must go on; the next one covers this one's offsets
                log.exception("%s: commit failed", self._name)

    async def _commit(self, partitions: list[TopicPartition]) -> None:
        todo = {}
        for tp in partitions:
            offsets = self._offsets.get(tp)
            target = offsets.committable() if offsets else None
            if target is not None:
                todo[tp] = target
        if not todo:
            return
        try:
            await self._consumer.commit(todo)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("%s: commit failed (%s); the messages may be redelivered", self._name, exc)
            return
        for tp, target in todo.items():
            if tp in self._offsets:
                self._offsets[tp].mark_committed(target)

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        await self._commit([tp for tp in revoked if tp in self._offsets])
        for tp in revoked:
            self._offsets.pop(tp, None)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, runner: GroupRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked) -> None:
        await self._runner._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        if self._runner._on_assigned is not None:
            self._runner._on_assigned(len(assigned))
