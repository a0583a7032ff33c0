"""Where a Kafka pool lives: the topic names derived from ``--pool`` and the client settings
(bootstrap servers, SASL and TLS) every client of the transport is made with.  The password
is read from a file and never appears in a log line, an error or :meth:`KafkaSettings.describe`."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from ...job.errors import ConfigError

#: SASL mechanisms librdkafka offers that take a user name and password
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

_SERVER = re.compile(r"^[A-Za-z0-9_.\-]+:\d{1,5}$|^\[[0-9A-Fa-f:]+\]:\d{1,5}$")


@dataclass(frozen=True)
class Topics:
    """The pool's topics: ``jobs`` (job documents from any producer), ``state`` (the pool's
    command log, one partition), ``dead`` (dead letters) and the consumer group of the jobs."""

    pool: str

    @property
    def jobs(self) -> str:
        return f"guestkit.{self.pool}.jobs"

    @property
    def state(self) -> str:
        return f"guestkit.{self.pool}.state"

    @property
    def dead(self) -> str:
        return f"guestkit.{self.pool}.dead"

    @property
    def group(self) -> str:
        return f"guestkit.{self.pool}.workers"


@dataclass(frozen=True)
class KafkaSettings:
    """The client settings of one transport (``--kafka-*``)."""

    bootstrap_servers: str
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password_file: str | None = None
    tls_ca_file: str | None = None

    def check(self) -> None:
        """ConfigError (one line naming the flag) for settings no client could use."""
        servers = [s.strip() for s in (self.bootstrap_servers or "").split(",") if s.strip()]
        if not servers or not all(_SERVER.match(s) for s in servers):
            raise ConfigError("--kafka-bootstrap-servers: give HOST:PORT[,HOST:PORT...], e.g. "
                              "kafka1.example.org:9092")
        if self.sasl_mechanism and self.sasl_mechanism.upper() not in SASL_MECHANISMS:
            raise ConfigError(f"--kafka-sasl-mechanism: one of {', '.join(SASL_MECHANISMS)}")
        if self.sasl_mechanism and not (self.sasl_username and self.sasl_password_file):
            raise ConfigError("--kafka-sasl-mechanism needs --kafka-sasl-username and "
                              "--kafka-sasl-password-file")

    def protocol(self) -> str:
        if self.security_protocol:
            return self.security_protocol.upper()
        tls = self.tls_ca_file is not None
        if self.sasl_mechanism:
            return "SASL_SSL" if tls else "SASL_PLAINTEXT"
        return "SSL" if tls else "PLAINTEXT"

    def client_config(self) -> dict:
        """The librdkafka settings shared by every client (the password read now)."""
        conf = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.protocol(),
                "client.id": "guestkit-worker",
                "socket.nagle.disable": True,
                "logger": logging.getLogger("guestkit_worker.transports.kafka.client")}
        if self.tls_ca_file:
            conf["ssl.ca.location"] = self.tls_ca_file
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism.upper()
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = read_password(self.sasl_password_file or "")
        return conf

    def describe(self) -> str:
        """The servers and protocol, without secrets."""
        auth = f", SASL {self.sasl_mechanism.upper()} as {self.sasl_username}" if self.sasl_mechanism else ""
        return f"kafka {self.bootstrap_servers} ({self.protocol()}{auth})"


def read_password(path: str) -> str:
    """The first line of ``path``; ConfigError naming the flag (never the content) otherwise."""
    try:
        with open(path, encoding="utf-8") as fh:
            line = fh.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--kafka-sasl-password-file {path}: cannot read it ({type(exc).__name__}); "
                          "give a readable file whose first line is the password") from None
    if not line:
        raise ConfigError(f"--kafka-sasl-password-file {path}: the first line is empty; put the password "
                          "there") from None
    return line
