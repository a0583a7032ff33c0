"""Dead letters on every transport (see conftest.py for how transports join): what a worker
rejects without a result is listed, shown with its bytes, queued again as a new delivery and
purged, through the transport's primitive operations only."""

import json
import re
import uuid

import pytest

from guestkit_worker.job import outcomes
from guestkit_worker.job.decode import decode_job_bytes
from guestkit_worker.job.errors import JobValidationError
from guestkit_worker.transports.base import InvalidPageToken, Outcome

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
HOSTILE = ["../../etc/passwd", "", "x" * 5000, "\u00e9t\u00e9", "a/b", "0-0", "entry-99999", ".reason.json",
           "..", "failed/../x"]


def _reject_next(t, max_bytes):
    """Fetch one delivery and reject it as a worker does (no job id: no result)."""
    [d] = t.fetch(1, 5.0)
    try:
        decode_job_bytes(t.read(d), max_bytes)
        raise AssertionError("the document was meant to be refused")
    except JobValidationError as exc:
        error = outcomes.rejection_error(exc)
    reason = outcomes.reason_document(d.name, None, "rejected", "contract-dead", error)
    o = Outcome(d, "rejected", reason=reason, failed=True)
    t.commit([o])
    assert o.error is None, o.error
    return d


def test_a_rejected_entry_is_listed_shown_and_purged(transport_factory):
    t = transport_factory.make("contract-dead", max_job_bytes=4096)
    t.open()
    data = b'{"job_id": "contract-dead-1", '
    transport_factory.inject_raw(data, "contract-dead-1")
    _reject_next(t, 4096)
    page = t.dead_list()
    assert page.next_page_token is None and len(page.entries) == 1
    [letter] = page.entries
    assert letter.reason == "not_json" and letter.job_id is None and letter.raw is None
    assert "invalid JSON" in letter.detail and RFC3339_UTC.fullmatch(letter.dead_at), letter
    shown = t.dead_get(letter.entry)
    assert shown.raw == data and shown.to_dict() == letter.to_dict()
    assert t.dead_purge(letter.entry) is True
    assert t.dead_list().entries == [] and t.dead_get(letter.entry) is None
    assert t.dead_purge(letter.entry) is False
    assert t.dead_requeue(letter.entry).outcome == "not_found"


def test_requeue_puts_the_original_document_back_as_a_new_delivery(transport_factory):
    small = transport_factory.make("contract-dead-small", max_job_bytes=300)
    small.open()
    job_id = f"contract-dead-{uuid.uuid4().hex[:8]}"
    doc = {"version": "1.0", "job_id": job_id, "created_at": "2026-11-01T00:00:00Z", "kind": "VMOperation",
           "operation": "system.echo", "payload": {"type": "system.echo.v1", "data": {"pad": "p" * 300}}}
    data = json.dumps(doc).encode()
    transport_factory.inject_raw(data, job_id)
    _reject_next(small, 300)
    [letter] = small.dead_list().entries
    assert letter.reason == "too_large", letter
    small.close()
    big = transport_factory.make("contract-dead-big")
    big.open()
    done = big.dead_requeue(letter.entry)
    assert done.outcome == "queued" and done.location, done
    assert big.dead_list().entries == [] and big.dead_get(letter.entry) is None
    [d] = big.fetch(1, 5.0)
    assert big.read(d) == data
    d.job_id, d.attempt = job_id, 1
    result = {"job_id": job_id, "status": "completed", "completed_at": "2026-11-01T00:00:01Z",
              "worker_id": "contract-dead-big", "execution_summary": {"attempt": 1}, "error": None}
    o = Outcome(d, "completed", result=result)
    big.commit([o])
    assert o.error is None
    assert big.get_result(job_id)["status"] == "completed"
    assert big.dead_requeue(letter.entry).outcome == "not_found"


def test_dead_letters_page_newest_first(transport_factory):
    t = transport_factory.make("contract-dead-pages", max_job_bytes=4096)
    t.open()
    for i in range(5):
        transport_factory.inject_raw(b"not json %d" % i, f"contract-dead-page-{i}")
        _reject_next(t, 4096)
    seen, token = [], None
    for _ in range(5):
        page = t.dead_list(limit=2, page_token=token)
        assert len(page.entries) <= 2
        seen += [t.dead_get(e.entry).raw for e in page.entries]
        token = page.next_page_token
        if token is None:
            break
    assert seen == [b"not json %d" % i for i in range(4, -1, -1)]
    with pytest.raises(InvalidPageToken):
        t.dead_list(page_token="../not-a-token")


def test_hostile_entry_names_find_nothing_and_change_nothing(transport_factory):
    t = transport_factory.make("contract-dead-hostile", max_job_bytes=4096)
    t.open()
    transport_factory.inject_raw(b"[1, 2]", "contract-dead-hostile")
    _reject_next(t, 4096)
    for name in HOSTILE:
        assert t.dead_get(name) is None, name
        assert t.dead_purge(name) is False, name
        assert t.dead_requeue(name).outcome == "not_found", name
    [letter] = t.dead_list().entries
    assert t.dead_get(letter.entry).raw == b"[1, 2]"
