"""The jobs topic's consumer group: each worker of the pool is a member, and writes every
record of its partitions into the state log as an ``admit`` command (once per record: the
state drops a source position it has seen), then commits the record's offset.  Admitting is
quick, so a member never holds a record for long: no paused partitions, no poll interval to
outlast, and the group's lag is the records no worker has taken in yet.

A record is admitted as it is, whatever it holds: bytes that are no job (not JSON, over the
size limit, no job id) become an entry without a job id, which a worker rejects once and the
transport moves to the dead-letter topic."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable

from ...job.facts import job_facts
from ...job.timestamps import stamp as now_iso
from ..common import peek
from .settings import KafkaSettings, Topics
from .state import b64
from .statelog import MAX_RECORD_BYTES, StateLog

#: records up to this size are kept as they are (the dead-letter topic gets them back)
MAX_KEPT_BYTES = MAX_RECORD_BYTES // 2

log = logging.getLogger(__name__)


def facts_of(doc: Any, digest: str) -> dict:
    facts = job_facts(doc)
    return {"digest": digest, "operation": facts.operation, "cancellable": facts.cancellable,
            "attempt": facts.attempt}


class Intake:
    """One member of the jobs topic's group, on its own thread."""

    def __init__(self, settings: KafkaSettings, topics: Topics, statelog: StateLog, *, worker_id: str,
                 max_job_bytes: int, digest: Callable[[Any], str], on_error: Callable[[str], None],
                 on_dead: Callable[[list], None]) -> None:
        self.settings, self.topics, self.statelog = settings, topics, statelog
        self.worker_id, self.max_job_bytes, self.digest = worker_id, max_job_bytes, digest
        self.on_error, self.on_dead = on_error, on_dead
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from confluent_kafka import Consumer
        conf = dict(self.settings.client_config(), **{
            "group.id": self.topics.group, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 50,
            "reconnect.backoff.max.ms": 1000, "partition.assignment.strategy": "cooperative-sticky"})
        self._consumer = Consumer(conf)
        self._consumer.subscribe([self.topics.jobs])
        self._thread = threading.Thread(target=self._loop, name="kafka-intake", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.statelog.timeout * 2 + 10)
            if self._thread.is_alive():
                return  # still in a client call: closing its consumer under it would crash
            self._thread = None
            with contextlib.suppress(Exception):
                self._consumer.close()  # leaves the group: its partitions move at once

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._consumer.poll(0.1)
            except Exception:
                if self._stop.wait(0.5):
                    return
                continue
            if msg is None or msg.error() is not None:
                continue
            if not self._admit(msg):
                self._rewind(msg)
                self._stop.wait(1.0)

    def _admit(self, msg: Any) -> bool:
        """Admit one record and commit past it; False (nothing committed) on trouble."""
        raw = msg.value() or b""
        job_id, doc = peek(raw, self.max_job_bytes)
        cmd = {"op": "admit", "w": self.worker_id, "src": f"{msg.partition()}:{msg.offset()}",
               "size": len(raw), "raw": b64(raw) if len(raw) <= MAX_KEPT_BYTES else None,
               "job_id": job_id, "at": now_iso(),
               "facts": facts_of(doc, self.digest(doc)) if job_id is not None else None}
        try:
            _answer, dead = self.statelog.call_full(cmd)
            self._consumer.commit(message=msg, asynchronous=False)
        except Exception as exc:
            log.warning("%s: admitting record %s:%d failed (%s); trying again", self.topics.jobs,
                        msg.partition(), msg.offset(), exc)
            self.on_error("intake")
            return False
        self.on_dead(dead)  # a second record of a known job id
        return True

    def _rewind(self, msg: Any) -> None:
        from confluent_kafka import TopicPartition
        with contextlib.suppress(Exception):  # the partition moved away: its next owner starts there
            self._consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
