"""Job document parsing and validation (protocol v1.0)."""

import glob
import json
import os
from pathlib import Path

import pytest
from conftest import UPSTREAM_JOBS, make_job

from guestkit_worker.job.decode import decode_job_bytes
from guestkit_worker.job.errors import JobFileError, JobValidationError
from guestkit_worker.job.protocol import pool_accepts, validate_document

SHARED = UPSTREAM_JOBS
EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples", "jobs")


def error_of(doc):
    with pytest.raises(JobValidationError) as info:
        validate_document(doc)
    return str(info.value)


def test_bundled_examples_are_valid():
    paths = sorted(glob.glob(os.path.join(EXAMPLES, "*.json")))
    assert len(paths) == 3
    jobs = [validate_document(decode_job_bytes(Path(p).read_bytes())) for p in paths]
    assert [j.job_id for j in jobs] == ["example-hello-0001", "example-idempotent-0002",
                                        "example-routed-0003"]
    assert jobs[1].idempotency_key == "example-nightly-2026-11-01"
    assert jobs[1].max_attempts == 3


def test_upstream_examples():
    verdicts = {}
    for path in sorted(glob.glob(os.path.join(SHARED, "*.json"))):
        try:
            job = validate_document(decode_job_bytes(Path(path).read_bytes()))
            verdicts[os.path.basename(path)] = job.operation
        except JobValidationError as exc:
            verdicts[os.path.basename(path)] = str(exc)
    assert verdicts["echo-test.json"] == "system.echo"
    assert verdicts["guestkit-inspect-full.json"] == "guestkit.inspect"
    # the agent examples carry no created_at, which protocol v1.0 requires
    assert verdicts["guestkit-agent-call-basic.json"] == "created_at: required field is missing"


def test_defaults_filled_in():
    job = validate_document(make_job("defaults-0001"))
    assert job.execution == {"attempt": 1, "max_attempts": 1, "timeout_seconds": 3600, "priority": 5,
                             "cancellable": True, "idempotency_key": None, "deadline": None}
    assert job.created_at.isoformat() == "2026-11-01T00:00:00+00:00"


@pytest.mark.parametrize("change, message", [
    ({"execution": {"priority": 12}}, "execution.priority: must be 1-10, got 12"),
    ({"execution": {"priority": "5"}}, "execution.priority: must be an integer, got string \"5\""),
    ({"execution": {"timeout_seconds": 0}}, "execution.timeout_seconds: must be 1-604800, got 0"),
    ({"execution": {"timeout_seconds": -5}}, "execution.timeout_seconds: must be 1-604800, got -5"),
    ({"execution": {"timeout_seconds": 10 ** 12}},
     "execution.timeout_seconds: must be 1-604800, got 1000000000000"),
    ({"execution": {"timeout_seconds": True}},
     "execution.timeout_seconds: must be an integer, got boolean true"),
    ({"execution": {"attempt": 3, "max_attempts": 2}},
     "execution.attempt: attempt (3) cannot exceed max_attempts (2)"),
    ({"execution": {"deadline": "tomorrow"}}, "execution.deadline: must be an RFC 3339 timestamp"),
    ({"version": "2.0"}, "version: unsupported protocol version \"2.0\""),
    ({"version": 1.0}, "version: must be a string, got number 1.0"),
    ({"kind": "Pod"}, "kind: must be 'VMOperation', got \"Pod\""),
    ({"operation": "inspect"}, "operation: must be namespaced like 'guestkit.inspect'"),
    ({"operation": 7}, "operation: must be a string, got integer 7"),
    ({"created_at": "not a date"}, "created_at: must be an RFC 3339 timestamp"),
    ({"created_at": "2026-13-45T99:00:00Z"}, "created_at: not a valid date/time"),
    ({"payload": {"type": "system.echo", "data": {}}},
     "payload.type: must be namespaced with a version suffix"),
    ({"payload": {"type": "system.echo.v1"}}, "payload.data: required field is missing"),
    ({"payload": []}, "payload: must be an object, got array"),
    ({"metadata": {"labels": {"a": 1}}}, "metadata.labels.a: must be a string, got integer 1"),
    ({"constraints": {"required_capabilities": "system.echo"}},
     "constraints.required_capabilities: must be an array"),
    ({"surprise": 1}, "surprise: unknown top-level field"),
])
def test_field_errors_name_field_and_reason(change, message):
    doc = make_job("fielderr-0001")
    doc.update(change)
    assert error_of(doc).startswith(message)


@pytest.mark.parametrize("field", ["version", "job_id", "created_at", "kind", "operation", "payload"])
def test_a_missing_required_field_is_named(field):
    # version and kind were accepted when missing (the quick pass for valid documents skipped
    # the check of an absent required field, and nothing afterwards needed its value)
    doc = {k: v for k, v in make_job("missing-0001").items() if k != field}
    assert error_of(doc) == f"{field}: required field is missing"


@pytest.mark.parametrize("job_id, reason", [
    ("short", "must be at least 8 characters, got 5"),
    ("../../etc/passwd", "may only contain letters, digits"),
    ("/abs/olute-path", "may only contain letters, digits"),
    ("a/b-cdefghij", "may only contain letters, digits"),
    ("nul\x00-in-the-id", "may only contain letters, digits"),
    ("newline\n-in-id", "may only contain letters, digits"),
    ("........", "may only contain letters, digits"),
    ("x" * 10000, "must be at most 128 characters, got 10000"),
    (12345678, "must be a string, got integer 12345678"),
])
def test_hostile_job_ids(job_id, reason):
    error = error_of(make_job(job_id))
    assert error == f"job_id: {reason}" or error.startswith(f"job_id: {reason}")


@pytest.mark.parametrize("raw, reason", [
    (b"", "empty file"),
    (b"{not json", "invalid JSON"),
    (b"\xef\xbb\xbf{}", "byte order mark"),
    (b'{"a": "\xff\xfe"}', "not valid UTF-8 (byte offset 7)"),
    (b"[1, 2]", "must hold a JSON object, got array"),
    (b"[" * 100000 + b"]" * 100000, "JSON nested too deeply"),
    (b" " * (1024 * 1024 + 1), "larger than the limit of 1048576 bytes"),
])
def test_undecodable_files(raw, reason):
    with pytest.raises(JobFileError) as info:
        decode_job_bytes(raw)
    assert reason in str(info.value)


def test_pool_routing():
    doc = make_job("routing-0001", routing={"worker_pool": "gpu"})
    assert not pool_accepts(doc, "default") and pool_accepts(doc, "gpu")
    doc = make_job("routing-0002", constraints={"allowed_worker_pools": ["a", "b"]})
    assert pool_accepts(doc, "b") and not pool_accepts(doc, "default")
    assert json.loads(json.dumps(doc))  # untouched


@pytest.mark.parametrize("text,field,literal", [
    (b'"audit": {"score": NaN}', "audit.score", "NaN"),
    (b'"audit": {"history": [1, 2, Infinity]}', "audit.history[2]", "Infinity"),
    (b'"metadata": {"annotations": {"x": -Infinity}}', "metadata.annotations.x", "-Infinity"),
    (b'"audit": {"big": 1e999}', "audit.big", "1e999"),
])
def test_nonfinite_numbers_refused_anywhere_with_the_field_named(text, field, literal):
    raw = json.dumps(make_job("nan-refused-01")).encode()[:-1] + b", " + text + b"}"
    with pytest.raises(JobFileError) as info:
        decode_job_bytes(raw)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: {literal} is not a JSON number")


def test_finite_floats_and_nan_strings_still_decode():
    doc = decode_job_bytes(b'{"a": 1.5, "b": "NaN", "c": [-2e10], "Infinity": 0}')
    assert doc == {"a": 1.5, "b": "NaN", "c": [-2e10], "Infinity": 0}
