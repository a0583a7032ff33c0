"""The guestkit job protocol v1.0: validating job documents (their bytes are decoded by
:mod:`guestkit_worker.job.decode`).

Every failure raises :class:`~guestkit_worker.job.errors.JobValidationError` naming the field and
the reason, e.g. ``execution.priority: must be 1-10, got 12``.
"""

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .. import PROTOCOL_VERSION
from .decode import json_type_name as _type_name
from .errors import JobValidationError

#: The longest per-job timeout a document may ask for (7 days).
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600

JOB_ID_RE = re.compile(r"[A-Za-z0-9._-]{8,128}")
PAYLOAD_TYPE_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+\.v[0-9]+")
OPERATION_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+")
RFC3339_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")

TOP_LEVEL_FIELDS = {"$schema", "version", "job_id", "created_at", "kind", "operation", "metadata",
                    "execution", "constraints", "routing", "payload", "observability", "audit"}
REQUIRED_FIELDS = ("version", "job_id", "created_at", "kind", "operation", "payload")

EXECUTION_DEFAULTS = {"attempt": 1, "max_attempts": 1, "timeout_seconds": 3600, "priority": 5,
                      "cancellable": True, "idempotency_key": None, "deadline": None}


@dataclass
class Job:
    """A validated job document, with protocol defaults filled in."""

    job_id: str
    operation: str
    payload_type: str
    data: object
    created_at: datetime
    execution: dict
    doc: dict
    metadata: dict = field(default_factory=dict)
    constraints: dict = field(default_factory=dict)
    routing: dict = field(default_factory=dict)
    observability: dict = None

    @property
    def attempt(self):
        return self.execution["attempt"]

    @property
    def max_attempts(self):
        return self.execution["max_attempts"]

    @property
    def timeout_seconds(self):
        return self.execution["timeout_seconds"]

    @property
    def idempotency_key(self):
        return self.execution["idempotency_key"]

    @property
    def deadline(self):
        return self.execution["deadline"]

    def expired(self, now=None):
        """True when execution.deadline lies in the past."""
        d = self.deadline
        return d is not None and d <= (now or datetime.now(timezone.utc))


_KIND_TYPES = {"string": str, "object": dict, "array": list, "boolean": bool}


def _want(value, kind, where):
    """Check JSON type; bool is never accepted as an integer."""
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, _KIND_TYPES[kind])
    if not ok:
        article = "an" if kind[0] in "aeiou" else "a"
        got = _type_name(value)
        raise JobValidationError(where, f"must be {article} {kind}, got {got}"
                                        + ("" if got in ("object", "array") else f" {_short(value)}"))
    return value


def _short(value, limit=40):
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, (dict, list)) else _type_name(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_timestamp(value, where):
    """Parse an RFC 3339 timestamp into an aware datetime."""
    _want(value, "string", where)
    if not RFC3339_RE.fullmatch(value):
        raise JobValidationError(where, "must be an RFC 3339 timestamp like 2026-01-30T16:00:00Z, "
                                        f"got {_short(value)}")
    text = value[:-1] + "+00:00" if value[-1] in "Zz" else value
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise JobValidationError(where, f"not a valid date/time ({exc}), got {_short(value)}") from None


def check_job_id(value, where="job_id"):
    _want(value, "string", where)
    if len(value) < 8:
        raise JobValidationError(where, f"must be at least 8 characters, got {len(value)}")
    if len(value) > 128:
        raise JobValidationError(where, f"must be at most 128 characters, got {len(value)}")
    if not JOB_ID_RE.fullmatch(value) or set(value) <= {"."}:
        raise JobValidationError(where, "may only contain letters, digits, '.', '_' and '-' "
                                        f"(it becomes part of file names), got {_short(value)}")
    return value


def _validate_execution(ex):
    out = dict(EXECUTION_DEFAULTS)
    if ex is None:
        return out
    _want(ex, "object", "execution")
    for key in ("attempt", "max_attempts", "timeout_seconds", "priority"):
        if key in ex:
            out[key] = _want(ex[key], "integer", f"execution.{key}")
    if "cancellable" in ex:
        out["cancellable"] = _want(ex["cancellable"], "boolean", "execution.cancellable")
    if ex.get("idempotency_key") is not None:
        key = _want(ex["idempotency_key"], "string", "execution.idempotency_key")
        if not key or len(key) > 256:
            raise JobValidationError("execution.idempotency_key", "must be 1-256 characters")
        out["idempotency_key"] = key
    if ex.get("deadline") is not None:
        out["deadline"] = parse_timestamp(ex["deadline"], "execution.deadline")
    if not 1 <= out["priority"] <= 10:
        raise JobValidationError("execution.priority", f"must be 1-10, got {out['priority']}")
    if out["max_attempts"] < 1:
        raise JobValidationError("execution.max_attempts", f"must be at least 1, got {out['max_attempts']}")
    if out["attempt"] < 1:
        raise JobValidationError("execution.attempt", f"must be at least 1, got {out['attempt']}")
    if out["attempt"] > out["max_attempts"]:
        raise JobValidationError("execution.attempt", f"attempt ({out['attempt']}) cannot exceed "
                                                      f"max_attempts ({out['max_attempts']})")
    t = out["timeout_seconds"]
    if not 1 <= t <= MAX_TIMEOUT_SECONDS:
        raise JobValidationError("execution.timeout_seconds", f"must be 1-{MAX_TIMEOUT_SECONDS}, got {t}")
    return out


def _optional_object(doc, key):
    value = doc.get(key)
    if value is None:
        return {}
    return _want(value, "object", key)


def _string_list(value, where):
    _want(value, "array", where)
    for i, item in enumerate(value):
        _want(item, "string", f"{where}[{i}]")
    return value


def _check_version(doc):
    version = _want(doc["version"], "string", "version")
    if version != PROTOCOL_VERSION:
        raise JobValidationError("version",
                                 f"unsupported protocol version {_short(version)}, expected \"1.0\"")


def _check_kind(doc):
    kind = _want(doc["kind"], "string", "kind")
    if kind != "VMOperation":
        raise JobValidationError("kind", f"must be 'VMOperation', got {_short(kind)}")


def _check_operation(doc):
    operation = _want(doc["operation"], "string", "operation")
    if not OPERATION_RE.fullmatch(operation) or len(operation) > 128:
        raise JobValidationError("operation",
                                 f"must be namespaced like 'guestkit.inspect', got {_short(operation)}")
    return operation


def _check_payload(doc):
    payload = _want(doc["payload"], "object", "payload")
    for key in ("type", "data"):
        if key not in payload:
            raise JobValidationError(f"payload.{key}", "required field is missing")
    ptype = _want(payload["type"], "string", "payload.type")
    if not PAYLOAD_TYPE_RE.fullmatch(ptype):
        raise JobValidationError("payload.type", "must be namespaced with a version suffix like "
                                                 f"'guestkit.inspect.v1', got {_short(ptype)}")
    return ptype


def _check_metadata(doc):
    metadata = _optional_object(doc, "metadata")
    for key in ("name", "namespace"):
        if metadata.get(key) is not None:
            _want(metadata[key], "string", f"metadata.{key}")
    for key in ("labels", "annotations"):
        if metadata.get(key) is not None:
            for k, v in _want(metadata[key], "object", f"metadata.{key}").items():
                _want(v, "string", f"metadata.{key}.{k}")
    return metadata


def _check_constraints(doc):
    constraints = _optional_object(doc, "constraints")
    for key in ("required_capabilities", "required_features", "allowed_worker_pools"):
        if constraints.get(key) is not None:
            _string_list(constraints[key], f"constraints.{key}")
    return constraints


def _check_routing(doc):
    routing = _optional_object(doc, "routing")
    for key in ("worker_id", "worker_pool"):
        if routing.get(key) is not None:
            _want(routing[key], "string", f"routing.{key}")
    return routing


def _check_observability(doc):
    observability = doc.get("observability")
    if observability is not None:
        for k, v in _want(observability, "object", "observability").items():
            if v is not None:
                _want(v, "string", f"observability.{k}")
    return observability


def _check_audit(doc):
    if doc.get("audit") is not None:
        _want(doc["audit"], "object", "audit")


#: (field, check) in the order problems are reported; each check takes the whole document
_FIELD_CHECKS = (
    ("job_id", lambda doc: check_job_id(doc["job_id"])),
    ("$schema", lambda doc: _want(doc["$schema"], "string", "$schema")),
    ("version", _check_version),
    ("kind", _check_kind),
    ("created_at", lambda doc: parse_timestamp(doc["created_at"], "created_at")),
    ("operation", _check_operation),
    ("payload", _check_payload),
    ("execution", lambda doc: _validate_execution(doc.get("execution"))),
    ("metadata", _check_metadata),
    ("constraints", _check_constraints),
    ("routing", _check_routing),
    ("observability", _check_observability),
    ("audit", _check_audit),
)
_SKIP_WHEN_ABSENT = frozenset(REQUIRED_FIELDS + ("$schema",))


def validate_document(doc):
    """Validate a decoded job document; return a :class:`Job`.

    Every field is checked; the JobValidationError raised names the first problem and
    carries all of them in ``.problems`` (``guestkit-worker validate`` prints each).
    """
    if type(doc) is dict and doc.keys() <= TOP_LEVEL_FIELDS:
        try:
            return _validate_valid(doc)
        except (JobValidationError, KeyError):
            pass  # not valid: the full pass below names every problem
    _want(doc, "object", "document")
    problems = [JobValidationError(k, "unknown top-level field") for k in sorted(set(doc) - TOP_LEVEL_FIELDS)]
    problems += [JobValidationError(k, "required field is missing") for k in REQUIRED_FIELDS if k not in doc]
    values = {}
    for key, run in _FIELD_CHECKS:
        if key not in doc and key in _SKIP_WHEN_ABSENT:
            continue
        try:
            values[key] = run(doc)
        except JobValidationError as exc:
            problems.append(exc)
    if problems:
        first = problems[0]
        first.problems = problems
        raise first
    return _job(doc, values)


def _validate_valid(doc):
    """The checks of the full pass, in the same order, stopping at the first problem
    (KeyError for a missing field): the quick way through for valid documents."""
    for key in REQUIRED_FIELDS:  # even those whose value the Job does not keep (version, kind)
        if key not in doc:
            raise KeyError(key)
    return _job(doc, {key: run(doc) for key, run in _FIELD_CHECKS
                      if key in doc or key not in _SKIP_WHEN_ABSENT})


def _job(doc, values):
    return Job(job_id=values["job_id"], operation=values["operation"], payload_type=values["payload"],
               data=doc["payload"]["data"], created_at=values["created_at"], execution=values["execution"],
               doc=doc, metadata=values["metadata"], constraints=values["constraints"],
               routing=values["routing"], observability=values["observability"])


def peek_job_id(doc):
    """The document's job_id if it is a safe one, else None (used to name result files)."""
    try:
        return check_job_id(doc.get("job_id")) if isinstance(doc, dict) else None
    except JobValidationError:
        return None


def pool_accepts(job_doc, pool):
    """False when routing.worker_pool / constraints.allowed_worker_pools exclude this pool.

    Looks at the raw document so that a job for another pool is left alone even when the
    rest of it would not validate here.
    """
    if not isinstance(job_doc, dict):
        return True
    routing = job_doc.get("routing")
    if isinstance(routing, dict) and isinstance(routing.get("worker_pool"), str) \
            and routing["worker_pool"] != pool:
        return False
    constraints = job_doc.get("constraints")
    return not (isinstance(constraints, dict) and isinstance(constraints.get("allowed_worker_pools"), list)
                and pool not in constraints["allowed_worker_pools"])
