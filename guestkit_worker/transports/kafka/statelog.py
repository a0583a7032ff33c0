"""The pool's command log on Kafka: a producer that writes commands to the one-partition state
topic, a reader thread that applies every record of it, in order, to this worker's replica of
the :class:`~.state.PoolState`, and the round trip of one command (write it, wait until the
reader applied it, return its answer).

Reads that must see every change made before them (``sync``) wait until the replica has applied
everything the broker had written when they began (the partition's high watermark)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from typing import Any, Callable

from ..errors import OutcomeUnknown, TransportUnavailable
from .settings import KafkaSettings, Topics
from .state import PoolState

log = logging.getLogger(__name__)

#: the largest command record (a job document, or a result document, base64 or JSON text)
MAX_RECORD_BYTES = 16 * 1024 * 1024
#: seconds a call waits for the broker's metadata after a call found it unreachable
PROBE_SECONDS = 1.0
#: the state topic keeps every record: replicas rebuild the state by replaying all of it
STATE_TOPIC_CONFIG = {"message.timestamp.type": "LogAppendTime", "retention.ms": "-1",
                      "retention.bytes": "-1", "cleanup.policy": "delete",
                      "max.message.bytes": str(MAX_RECORD_BYTES)}


class KafkaUnavailable(TransportUnavailable, OSError):
    """The Kafka cluster cannot be reached or did not answer in time.  An OSError too, like the
    Redis transport's outage error, so that every path that handles storage trouble handles it."""


class KafkaOutcomeUnknown(OutcomeUnknown, OSError):
    """A command was written but its application was not seen in time: it may have been made."""


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


class StateLog:
    """One worker's writer and replica of a pool's state topic.  ``state`` is read and changed
    only with ``cond`` held; ``on_apply(cmd, answer)`` (optional) sees every applied command."""

    def __init__(self, settings: KafkaSettings, topics: Topics, *, timeout: float,
                 on_apply: Callable[[dict, Any], None] | None = None) -> None:
        self.settings, self.topics, self.timeout = settings, topics, float(timeout)
        self.on_apply = on_apply
        self.state = PoolState()
        self.cond = threading.Condition()
        self.applied = 0                   # offset of the next record to apply
        self.applied_at = time.monotonic()  # local time the state clock last moved
        self._waiters: dict[str, dict] = {}
        self._producer = self._reader = self._meta = None
        self._meta_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list = []
        self._down = False  # the last call found the broker unreachable: look quickly first

    # -- life ----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect, then replay the state topic up to its end (KafkaUnavailable when it cannot)."""
        from confluent_kafka import Consumer, Producer, TopicPartition
        base = self.settings.client_config()
        self._producer = Producer(dict(base, **{
            "acks": "all", "linger.ms": 1, "enable.idempotence": False,
            "message.timeout.ms": int(self.timeout * 1000), "message.max.bytes": MAX_RECORD_BYTES + 65536,
            "reconnect.backoff.max.ms": 1000}))
        consumer = dict(base, **{"group.id": f"{self.topics.group}.replica", "enable.auto.commit": False,
                                 "enable.partition.eof": False, "fetch.wait.max.ms": 5,
                                 "reconnect.backoff.max.ms": 1000})
        self._reader = Consumer(consumer)
        self._meta = Consumer(consumer)
        self._reader.assign([TopicPartition(self.topics.state, 0, 0)])
        for name, target in (("kafka-state", self._read_loop), ("kafka-producer", self._poll_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self.sync()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 5)
        if self._producer is not None:
            self._producer.flush(min(self.timeout, 5))
        if any(t.is_alive() for t in self._threads):
            return  # a client call still running: closing its client under it would crash
        with self._meta_lock:
            for c in (self._reader, self._meta):
                if c is not None:
                    with contextlib.suppress(Exception):  # closed, or the broker gone: nothing to release
                        c.close()
            self._reader = self._meta = None

    # -- the reader ----------------------------------------------------------------------
    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:  # poll answers at the first record; consume(…, 0) takes what else is there
                first = self._reader.poll(0.1)
                msgs = [] if first is None else [first, *self._reader.consume(500, 0)]
            except Exception:  # closed under us, or a client error: look again
                if self._stop.wait(0.2):
                    return
                continue
            good = [m for m in msgs if m.error() is None]
            if good:
                self._apply_all(good)

    def _apply_all(self, msgs: list) -> None:
        with self.cond:
            for m in msgs:
                if m.offset() < self.applied:
                    continue
                try:
                    cmd = json.loads(m.value())
                except (ValueError, UnicodeDecodeError, TypeError):
                    cmd = {}
                before = self.state.clock
                answer = self.state.apply(cmd, m.timestamp()[1] / 1000.0) if isinstance(cmd, dict) else None
                if self.state.clock != before:
                    self.applied_at = time.monotonic()
                self.applied = m.offset() + 1
                slot = self._waiters.get(cmd.get("rid")) if isinstance(cmd, dict) else None
                if slot is not None and not slot["done"]:
                    slot.update(done=True, answer=answer, dead=list(self.state.fresh_dead))
                if self.on_apply is not None and isinstance(cmd, dict):
                    self.on_apply(cmd, answer)
            self.cond.notify_all()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    # -- writing -------------------------------------------------------------------------
    def send(self, cmd: dict, on_error: Callable[[], None] | None = None) -> dict:
        """Write one command without waiting; its waiting slot (``done``, ``answer``, ``error``)."""
        cmd = dict(cmd, rid=uuid.uuid4().hex)
        slot = {"done": False, "answer": None, "error": None, "dead": []}

        def delivered(err, _msg, slot=slot):
            if err is not None:
                with self.cond:
                    if not slot["done"]:
                        slot.update(done=True, error=err)
                    self.cond.notify_all()
                if on_error is not None:
                    on_error()
        with self.cond:
            self._waiters[cmd["rid"]] = slot
        try:
            self._producer.produce(self.topics.state, _json(cmd), on_delivery=delivered)
        except (BufferError, Exception) as exc:  # queue full, record too large, client closed
            with self.cond:
                self._waiters.pop(cmd["rid"], None)
            raise KafkaUnavailable(f"{self.topics.state}: cannot write ({type(exc).__name__}: "
                                   f"{_short(exc)})") from None
        slot["rid"] = cmd["rid"]
        return slot

    def call(self, cmd: dict) -> Any:
        """Write one command and return its answer once this replica applied it."""
        return self.call_full(cmd)[0]

    def now(self) -> float:
        """An estimate of the state's clock now: its last time plus the local time since."""
        with self.cond:
            return self.state.clock + (time.monotonic() - self.applied_at)

    def call_full(self, cmd: dict) -> tuple:
        """Write one command; (its answer, the dead letters it made) once this replica applied it.

        Raises:
            KafkaUnavailable: the broker refused or did not take it (nothing was made).
            KafkaOutcomeUnknown: taken, but its application was not seen in time.
        """
        self.reachable()
        return self.wait(self.send(cmd))

    def wait(self, slot: dict) -> tuple:
        """(answer, dead letters) of a command :meth:`send` wrote, once this replica applied it;
        several sent commands waited for in turn share their round trips (one flush, one read).

        Raises:
            KafkaUnavailable: the broker refused or did not take it (nothing was made).
            KafkaOutcomeUnknown: taken, but its application was not seen in time.
        """
        end = time.monotonic() + self.timeout + 2
        with self.cond:
            try:
                while not slot["done"]:
                    left = end - time.monotonic()
                    if left <= 0:
                        self._down = True
                        raise KafkaOutcomeUnknown(f"{self.topics.state}: no answer in {self.timeout:g} s; "
                                                  "the change may or may not have been made")
                    self.cond.wait(left)
            finally:
                self._waiters.pop(slot["rid"], None)
        if slot["error"] is not None:
            self._down = True
            raise KafkaUnavailable(f"{self.topics.state}: the broker did not take the change "
                                   f"({slot['error']})")
        return slot["answer"], slot["dead"]

    def publish(self, topic: str, value: bytes, *, key: bytes | None = None,
                headers: list | None = None) -> None:
        """Write one record to another topic of the pool and wait until the broker has it."""
        done = threading.Event()
        result: dict = {}

        def delivered(err, _msg):
            result["error"] = err
            done.set()
        try:
            self._producer.produce(topic, value, key=key, headers=headers, on_delivery=delivered)
        except Exception as exc:
            raise KafkaUnavailable(f"{topic}: cannot write ({type(exc).__name__}: {exc})") from None
        if not done.wait(self.timeout + 2) or result.get("error") is not None:
            raise KafkaUnavailable(f"{topic}: the broker did not take the record ({result.get('error')})")

    # -- reading -------------------------------------------------------------------------
    def reachable(self) -> None:
        """After a call that found the broker unreachable, every call first asks for the state
        topic's metadata with a short timeout, so that calls fail in a second, not a full
        timeout each, until the broker answers again (KafkaUnavailable)."""
        if not self._down:
            return
        try:
            with self._meta_lock:
                if self._meta is None:
                    raise KafkaUnavailable("the Kafka transport is closed")
                self._meta.list_topics(self.topics.state, timeout=PROBE_SECONDS)
        except KafkaUnavailable:
            raise
        except Exception as exc:
            raise KafkaUnavailable(f"{self.topics.state}: the broker does not answer "
                                   f"({_short(exc)})") from None
        self._down = False

    def end_offset(self) -> int:
        """The state topic's end (its high watermark), asked of the broker; errors a new topic
        or a broker coming back answers for a moment (no leader yet) are tried again in time."""
        self.reachable()
        end = time.monotonic() + self.timeout
        while True:
            try:
                return self._ask_end(max(0.5, end - time.monotonic()))
            except KafkaUnavailable:
                if time.monotonic() >= end or self._meta is None:
                    self._down = True
                    raise
                time.sleep(0.1)

    def _ask_end(self, timeout: float) -> int:
        from confluent_kafka import TopicPartition
        try:
            with self._meta_lock:
                if self._meta is None:
                    raise KafkaUnavailable("the Kafka transport is closed")
                _low, high = self._meta.get_watermark_offsets(TopicPartition(self.topics.state, 0),
                                                              timeout=timeout, cached=False)
        except KafkaUnavailable:
            raise
        except Exception as exc:
            raise KafkaUnavailable(f"{self.topics.state}: cannot read its end ({_short(exc)})") from None
        return int(high)

    def sync(self) -> None:
        """Wait until this replica applied every record written before the call."""
        high = self.end_offset()
        end = time.monotonic() + self.timeout
        with self.cond:
            while self.applied < high:
                left = end - time.monotonic()
                if left <= 0:
                    raise KafkaUnavailable(f"{self.topics.state}: the state was not read up to its end in "
                                           f"{self.timeout:g} s")
                self.cond.wait(left)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."
