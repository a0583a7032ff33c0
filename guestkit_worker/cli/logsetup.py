"""Log output of the worker: ``--log-format text`` (one line per record) or ``json`` (one JSON
object per line, for Loki, Elasticsearch or journald's JSON readers).

Both formats escape control characters in the message, once, here: values that come from a
job (a job id, an ``image.path`` holding a newline or an escape sequence) can never start a
line of their own that looks like a record of the worker.  A traceback keeps its lines in
text (each indented, so none reads as a record) and is one escaped string in JSON.

JSON records have ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``thread``, ``worker_id``,
``job_id`` (when the record is about a job), ``event`` (a stable name of what happened: the
``extra={"event": ...}`` of the call, else derived from the message template, so records of
one kind group together whatever their values) and ``message``.
"""

import json
import logging
import re
import sys
from typing import Optional, TextIO

from ..job.timestamps import stamp

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"

# C0 controls, DEL, C1 controls, and the Unicode line and paragraph separators
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as a visible escape (\\n, \\x1b, \\u2028)."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(0)) or (
        f"\\x{ord(m.group(0)):02x}" if ord(m.group(0)) < 0x100 else f"\\u{ord(m.group(0)):04x}"), text)


def _message(record: logging.LogRecord) -> str:
    try:
        return escape_controls(record.getMessage())
    except Exception:  # a bad format string must not lose the record
        return escape_controls(f"{record.msg!r} % {record.args!r}")


class TextFormatter(logging.Formatter):
    """The classic one-line format, with control characters escaped."""

    def __init__(self):
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = self.formatTime(record) + f" {record.levelname} [{escape_controls(str(record.threadName))}] " \
            f"{record.name}: {_message(record)}"
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "\n" + "\n".join("    " + escape_controls(part) for part in trace.splitlines())
        return line


_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[sdifrxXeEgGa%]")
_WORDS = re.compile(r"[a-z0-9]+")
_JOB_PREFIX = re.compile(r"^job (?:file )?%s:\s*")


def event_name(record: logging.LogRecord) -> str:
    """A stable name for the kind of record: the words of its template, values left out."""
    explicit = getattr(record, "event", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    template = str(record.msg)
    template = _JOB_PREFIX.sub("", template)
    words = [w for w in _WORDS.findall(_PLACEHOLDER.sub(" ", template).lower()) if len(w) > 1][:6]
    return "_".join(words) or "message"


def job_id_of(record: logging.LogRecord) -> Optional[str]:
    """The job a record is about: ``extra={"job_id": ...}``, or the value of a ``job %s:`` prefix."""
    explicit = getattr(record, "job_id", None)
    if explicit is not None:
        return str(explicit)
    if isinstance(record.msg, str) and record.msg.startswith("job %s") and record.args:
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        return str(args[0])
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, worker_id: Optional[str] = None):
        super().__init__()
        self.worker_id = worker_id

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": stamp(record.created),
               "level": record.levelname, "logger": record.name, "thread": record.threadName,
               "worker_id": self.worker_id, "job_id": job_id_of(record), "event": event_name(record),
               "message": _message(record)}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def setup(level: str = "INFO", fmt: str = "text", *, worker_id: Optional[str] = None,
          stream: TextIO = None) -> logging.Handler:
    """Send the root logger's records at ``level`` and above to ``stream`` (stderr) in ``fmt``."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(worker_id) if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    return handler
