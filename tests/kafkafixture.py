"""A real Apache Kafka broker for the tests: one KRaft node (broker and controller in one JVM)
from the Maven Central jars that tests/kafka/fetch caches, on free 127.0.0.1 ports, in a
temp dir, stopped by killing its process group.

Fixtures: ``kafka_broker`` (one :class:`KafkaBroker` per test session; each test takes its own
topic and group names, e.g. from the ``pool`` fixture) and ``kafka_bootstrap`` (its
``host:port``).  A failed test that used the broker gets the tail of the broker's log in its
report.  The broker lets tests set short share-group locks and session timeouts (its minimums
are lowered); share groups are on (``share.version=1`` at format time).

Helpers on the broker: ``create_topic``, ``produce``, ``console_produce`` (the broker's own
console producer), ``group_lag`` (classic and consumer groups), ``share_group_lag`` (share
groups, through the broker's share-group tool), ``set_group_config`` (a share group's lock
duration, delivery count limit, auto offset reset) and ``run_tool`` (any Kafka tool class).
"""

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from typing import Optional

import pytest
from conftest import IN_CI, ROOT, require, wait_for

FETCH = os.path.join(ROOT, "tests", "kafka", "fetch")
#: where tests/kafka/fetch puts the jars unless GUESTKIT_KAFKA_LIB says otherwise
LIB_ENV = "GUESTKIT_KAFKA_LIB"
CONSOLE_PRODUCER = "org.apache.kafka.tools.ConsoleProducer"
SHARE_GROUP_TOOL = "org.apache.kafka.tools.consumer.group.ShareGroupCommand"
START_TIMEOUT = 120 if IN_CI else 60  # a JVM start on a loaded 2-core machine

#: one node: every internal topic with one replica; minimums lowered so tests can ask for short
#: share-group locks and session timeouts; few partitions for the internal topics (start time)
BASE_PROPERTIES = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "inter.broker.listener.name": "PLAINTEXT",
    "num.partitions": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "share.coordinator.state.topic.num.partitions": "4",
    "group.initial.rebalance.delay.ms": "0",
    "group.min.session.timeout.ms": "1000",
    "group.consumer.min.session.timeout.ms": "3000",
    "group.consumer.min.heartbeat.interval.ms": "500",
    "group.share.min.record.lock.duration.ms": "1000",
    "group.share.min.session.timeout.ms": "3000",
    "group.share.min.heartbeat.interval.ms": "500",
    "group.share.min.delivery.count.limit": "2",
}


LOG4J2 = """rootLogger.level={level}
rootLogger.appenderRef.out.ref=out
appender.out.type=Console
appender.out.name=out
appender.out.target={target}
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
logger.request.name=kafka.request.logger
logger.request.level=WARN
"""


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent():
    """In the broker's child process before exec: SIGKILL it when the process that started it
    ends, however it ends (a pytest that crashes or is killed runs no fixture teardown, and a
    JVM in a session of its own would outlive it).  The signal follows the starting thread:
    start a broker from a thread that lives as long as the broker should (the main thread)."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def kafka_lib() -> str:
    """The directory of the broker's jars: fetched by tests/kafka/fetch (Maven) when not cached.
    Skips outside CI, fails in CI, when java, mvn or the jars cannot be had."""
    require(shutil.which("java") is not None, "java is not installed (Java 17+ runs the Kafka broker)")
    fetched = subprocess.run([FETCH], capture_output=True, text=True, timeout=600)
    lib = fetched.stdout.strip().splitlines()[-1] if fetched.stdout.strip() else ""
    require(fetched.returncode == 0 and os.path.isfile(os.path.join(lib, ".complete")),
            f"the Kafka jars could not be fetched (tests/kafka/fetch: {fetched.stderr.strip()[-300:]})")
    return lib


def require_confluent_kafka():
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        require(False, "the Python package confluent-kafka is not installed (pip install '.[kafka]')")


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class KafkaBroker:
    """One Kafka node in directory; ``bootstrap`` is its PLAINTEXT ``127.0.0.1:port``."""

    def __init__(self, directory, lib: str, properties: Optional[dict] = None):
        self.dir = str(directory)
        self.lib = lib
        self.port, self.controller_port = free_port(), free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log = os.path.join(self.dir, "kafka.log")
        self.properties = dict(BASE_PROPERTIES, **(properties or {}))
        self.proc = None
        self.log_start = 0

    # -- start and stop -------------------------------------------------------------------
    def write_config(self) -> str:
        listeners = {
            "listeners": f"PLAINTEXT://{self.bootstrap},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap}",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "log.dirs": os.path.join(self.dir, "data"),
        }
        path = os.path.join(self.dir, "server.properties")
        with open(path, "w") as fh:
            fh.writelines(f"{k}={v}\n" for k, v in {**self.properties, **listeners}.items())
        for name, level, target in (("log4j2.properties", "INFO", "SYSTEM_OUT"),
                                    ("log4j2-tools.properties", "WARN", "SYSTEM_ERR")):
            with open(os.path.join(self.dir, name), "w") as fh:
                fh.write(LOG4J2.format(level=level, target=target))
        return path

    def java(self, main_class: str, *args: str, heap: str = "256m", log4j: str = "log4j2-tools") -> list:
        """The argv running a Kafka class on this broker's jars (tools log warnings to stderr)."""
        log4j = os.path.join(self.dir, f"{log4j}.properties")
        return ["java", f"-Xmx{heap}", f"-Dlog4j2.configurationFile={log4j}", "-cp",
                os.path.join(self.lib, "*"), main_class, *args]

    def format(self, config: str):
        argv = self.java("kafka.tools.StorageTool", "format", "--standalone", "-t", new_cluster_id(),
                         "-c", config, "--feature", "share.version=1")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"kafka storage format failed: {done.stdout}{done.stderr}"

    def start(self) -> "KafkaBroker":
        os.makedirs(self.dir, exist_ok=True)
        config = self.write_config()
        if not os.path.isdir(os.path.join(self.dir, "data")):
            self.format(config)
        self.log_start = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        with open(self.log, "ab") as log:  # the JVM writes through its own copy of the descriptor
            argv = self.java("kafka.Kafka", config, heap="512m", log4j="log4j2")
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=die_with_parent)
        try:
            wait_for(self.ready, timeout=START_TIMEOUT, interval=0.5, what=f"kafka at {self.bootstrap}")
        except AssertionError as e:
            self.stop()
            raise AssertionError(f"{e}\n--- {self.log} (tail) ---\n{self.log_tail()}") from None
        return self

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"kafka exited with {self.proc.returncode}; see {self.log}")
        with open(self.log, errors="replace") as fh:
            fh.seek(self.log_start)  # this start's lines (a restart appends to the same log)
            if "Kafka Server started" not in fh.read():
                return False
        try:
            self.admin().list_topics(timeout=2)
            return True
        except Exception:
            return False

    def log_tail(self, lines: int = 60) -> str:
        try:
            with open(self.log, errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""

    def _signal_group(self, sig):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self):
        """SIGKILL the broker's process group (what survives is what reached its log)."""
        self._signal_group(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self):
        """SIGTERM its process group (a controlled shutdown), SIGKILL after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    restart = start  # after stop() or kill(): same ports, same data directory

    # -- clients and tools -----------------------------------------------------------------
    def admin(self):
        """A confluent_kafka AdminClient on this broker."""
        require_confluent_kafka()
        from confluent_kafka.admin import AdminClient
        return AdminClient({"bootstrap.servers": self.bootstrap})

    def create_topic(self, name: str, partitions: int = 1, config: Optional[dict] = None) -> str:
        """Create topic name with partitions (one replica) and topic config; wait until its
        leaders are known; return name."""
        from confluent_kafka.admin import NewTopic
        admin = self.admin()
        new = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})
        admin.create_topics([new], operation_timeout=30)[name].result(60)

        def leaders_known():
            topic = admin.list_topics(name, timeout=5).topics.get(name)
            return (topic is not None and topic.error is None and len(topic.partitions) == partitions
                    and all(p.leader >= 0 for p in topic.partitions.values()))
        wait_for(leaders_known, timeout=60, interval=0.2, what=f"leaders of topic {name}")
        return name

    def produce(self, topic: str, value, key=None, headers=None, partition: Optional[int] = None):
        """Produce one record (acks=all) and wait for it; the delivered Message."""
        require_confluent_kafka()
        from confluent_kafka import Producer
        done = {}
        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all"})
        kwargs = {"key": key, "headers": headers, "on_delivery": lambda err, msg: done.update(e=err, m=msg)}
        if partition is not None:
            kwargs["partition"] = partition
        producer.produce(topic, value, **kwargs)
        assert producer.flush(60) == 0, f"record to {topic} not delivered in 60 s"
        assert done["e"] is None, f"record to {topic} failed: {done['e']}"
        return done["m"]

    def run_tool(self, main_class: str, *args: str, input=None, timeout: float = 120):
        """Run a Kafka tool class (e.g. org.apache.kafka.tools.GetOffsetShell) on this broker's
        jars; its CompletedProcess (text)."""
        return subprocess.run(self.java(main_class, *args), input=input, capture_output=True,
                              text=True, timeout=timeout)

    def console_produce(self, topic: str, lines, key_separator: Optional[str] = None):
        """Send each of lines (str, one record each) with the broker's own console producer
        (acks=all, synchronous); with key_separator each line is KEY<sep>VALUE.  Its
        CompletedProcess; fails the test if it exits non-zero."""
        args = ["--bootstrap-server", self.bootstrap, "--topic", topic, "--sync",
                "--request-required-acks", "all"]
        if key_separator is not None:
            args += ["--reader-property", "parse.key=true",
                     "--reader-property", f"key.separator={key_separator}"]
        done = self.run_tool(CONSOLE_PRODUCER, *args, input="".join(f"{x}\n" for x in lines))
        assert done.returncode == 0, f"console producer exited {done.returncode}: {done.stderr[-2000:]}"
        return done

    def group_lag(self, group: str, topic: str) -> int:
        """Records of topic not yet committed by the classic or consumer group group: the sum
        over partitions of (end offset - committed offset, or - start offset when none).
        Read with a consumer that never joins the group (librdkafka 2.16's admin
        list_consumer_group_offsets crashed the process on a fresh broker's OffsetFetch)."""
        require_confluent_kafka()
        from confluent_kafka import Consumer, TopicPartition
        reader = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group,
                           "enable.auto.commit": False})
        try:
            meta = reader.list_topics(topic, timeout=10).topics[topic]
            parts = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
            lag = 0
            for tp in committed(reader, parts):
                low, high = reader.get_watermark_offsets(tp, timeout=30)
                lag += max(0, high - (tp.offset if tp.offset >= 0 else low))
            return lag
        finally:
            reader.close()

    def share_group_lag(self, group: str) -> Optional[int]:
        """The share group's lag (records not yet acknowledged), summed over its partitions,
        as the broker's share-group tool reports it; None while it knows no start offset for
        some partition (one no member has fetched from yet)."""
        done = self.run_tool(SHARE_GROUP_TOOL, "--bootstrap-server", self.bootstrap, "--describe",
                             "--group", group, "--offsets")
        assert done.returncode == 0, f"share group tool exited {done.returncode}: {done.stderr[-2000:]}"
        header, *rows = [line.split() for line in done.stdout.splitlines() if line.strip()]
        column = header.index("LAG")
        lags = [r[column] for r in rows]
        return sum(int(x) for x in lags) if all(re.fullmatch(r"-?\d+", x) for x in lags) else None

    def set_group_config(self, group: str, config: dict):
        """Set group configs (e.g. share.record.lock.duration.ms, share.delivery.count.limit,
        share.auto.offset.reset=earliest for a share group) with the admin API."""
        from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
        entries = [ConfigEntry(k, str(v), incremental_operation=AlterConfigOpType.SET)
                   for k, v in config.items()]
        resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=entries)
        admin = self.admin()  # kept alive until the futures are done
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(30)


def committed(reader, parts, timeout: float = 60) -> list:
    """reader.committed(parts), asked again while the group's coordinator is not ready (a new
    broker creates and loads its offsets topic on the first such request: NOT_COORDINATOR)."""
    from confluent_kafka import KafkaError, KafkaException
    not_ready = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                 KafkaError.COORDINATOR_NOT_AVAILABLE}
    end = time.monotonic() + timeout
    while True:
        try:
            return reader.committed(parts, timeout=30)
        except KafkaException as e:
            err = e.args[0]
            if not (err.retriable() or err.code() in not_ready) or time.monotonic() > end:
                raise
            time.sleep(0.2)


def read_topic(broker, topic: str, at_least: int, timeout: float = 60, group: Optional[str] = None) -> list:
    """At least at_least records of topic from its start, read by a consumer of group (by default
    a new one) that commits nothing: [(value, {header: value})]."""
    from confluent_kafka import Consumer
    consumer = Consumer({"bootstrap.servers": broker.bootstrap,
                         "group.id": group or f"test-read-{time.time()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got = []
    try:
        def read():
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append((msg.value(), {k: v.decode() for k, v in msg.headers() or ()}))
            return len(got) >= at_least
        wait_for(read, timeout=timeout, interval=0, what=f"{at_least} records of {topic}")
    finally:
        consumer.close()
    return got


def start_kafka(directory, properties: Optional[dict] = None) -> KafkaBroker:
    """A started KafkaBroker in directory (a few tries: a free port can be taken meanwhile)."""
    require_confluent_kafka()
    lib = kafka_lib()
    for attempt in range(3):
        broker = KafkaBroker(os.path.join(str(directory), f"try{attempt}"), lib, properties)
        try:
            return broker.start()
        except AssertionError:
            if attempt == 2:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    broker = start_kafka(tmp_path_factory.mktemp("kafka"))
    yield broker
    broker.stop()


@pytest.fixture
def kafka_bootstrap(kafka_broker) -> str:
    return kafka_broker.bootstrap


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used the broker shows the tail of the broker's log."""
    outcome = yield
    report = outcome.get_result()
    broker = getattr(item, "funcargs", {}).get("kafka_broker")
    if report.failed and isinstance(broker, KafkaBroker):
        report.sections.append((f"kafka broker log ({broker.log}, tail)", broker.log_tail()))
