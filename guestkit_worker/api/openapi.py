"""The REST API's OpenAPI 3.1 document, built from the same constants the endpoints check
(statuses, page and wait bounds, the job id's pattern), so the contract cannot drift from them.

:func:`document` is the description as a dict; :func:`render` its bytes, which the API serves
at ``GET /api/v1/openapi.json`` and which ``docs/openapi.json`` holds (a test checks both are
the same bytes).  After changing a route, write the file again with
``python -m guestkit_worker.api.openapi > docs/openapi.json``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .. import PROTOCOL_VERSION, __version__
from ..job.protocol import JOB_ID_RE, OPERATION_RE, PAYLOAD_TYPE_RE
from ..job.states import JOB_STATUSES, RESULT_STATUSES
from .limits import DEFAULT_PAGE, MAX_PAGE, MAX_PROGRESS_AFTER, MAX_WAIT

#: The path this document is served at.
OPENAPI_PATH = "/api/v1/openapi.json"
_JSON = "application/json"
#: Longest query string the API reads (the router's MAX_QUERY; 414 beyond).
_MAX_QUERY = 4096


def _ref(kind: str, name: str) -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def _nullable(kind: str) -> dict:
    return {"type": [kind, "null"]}


def _success(data: dict) -> dict:
    """The schema of ``{"success": true, "data": DATA}``."""
    return {"type": "object", "required": ["success", "data"], "additionalProperties": False,
            "properties": {"success": {"const": True}, "data": data}}


def _answer(description: str, schema: dict, headers: dict | None = None) -> dict:
    answer: dict[str, Any] = {"description": description, "content": {_JSON: {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def _error(description: str, headers: dict | None = None) -> dict:
    return _answer(description, _ref("schemas", "Error"), headers)


def _header(name: str, description: str, schema: dict | None = None) -> dict:
    return {name: {"description": description, "required": True, "schema": schema or {"type": "string"}}}


_RETRY_AFTER = _header("Retry-After", "Seconds to wait before asking again.",
                       {"type": "string", "pattern": "^[0-9]+$"})
_LOCATION = _header("Location", "The job's resource, /api/v1/jobs/{job_id}.",
                    {"type": "string", "pattern": "^/api/v1/jobs/[^/]+$"})


def _schemas() -> dict:
    statuses = {"type": "string", "enum": list(JOB_STATUSES)}
    text_or_null = _nullable("string")
    job_status = {
        "type": "object", "required": ["job_id", "status"], "additionalProperties": False,
        "properties": {
            "job_id": {"type": "string"}, "status": statuses, "operation": text_or_null,
            "attempt": _nullable("integer"), "worker_id": text_or_null,
            "submitted_at": text_or_null, "started_at": text_or_null, "completed_at": text_or_null,
            "error": _ref("schemas", "JobErrorOrNull"),
            "worker_gone": {"const": True, "description": "Present while the job is running on a worker "
                            "known to be dead; another worker takes it over."}}}
    return {
        "Error": {
            "type": "object", "required": ["success", "error", "message"], "additionalProperties": False,
            "properties": {
                "success": {"const": False},
                "error": {"type": "string", "description": "A stable code, e.g. INVALID_JOB, NOT_FOUND."},
                "message": {"type": "string", "description": "One line naming the field and the fix."},
                "details": {"type": "object", "properties": {
                    "field": {"type": "string", "description": "The field, parameter or header at fault."},
                    "problems": {"type": "array", "items": {"type": "string"}},
                    "limit": {"type": "integer"}, "status": statuses}}}},
        "JobDocument": _job_document(),
        "JobStatus": job_status,
        "JobRef": {"type": "object", "required": ["job_id", "status"], "additionalProperties": False,
                   "properties": {"job_id": {"type": "string"}, "status": statuses,
                                  "cancel_requested": {"type": "boolean"}}},
        "JobError": {"type": "object", "required": ["code", "message"],
                     "description": "Why a job failed, timed out, was cancelled or rejected.",
                     "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                    "phase": {"type": "string"}, "recoverable": {"type": "boolean"},
                                    "retry_recommended": {"type": "boolean"}, "details": {"type": "object"}}},
        "JobErrorOrNull": {"anyOf": [_ref("schemas", "JobError"), {"type": "null"}]},
        "Result": _result(),
        "Page": {"type": "object", "required": ["jobs", "next_page_token"], "additionalProperties": False,
                 "properties": {"jobs": {"type": "array", "items": _ref("schemas", "JobStatus")},
                                "next_page_token": text_or_null}},
        "Progress": {"type": "object", "required": ["job_id", "after", "events", "next"],
                     "additionalProperties": False,
                     "properties": {"job_id": {"type": "string"},
                                    "after": {"type": "integer", "minimum": 0},
                                    "events": {"type": "array", "items": {"type": "object"}},
                                    "next": {"type": "integer", "minimum": 0}}},
        **_dead_schemas(),
        "Capabilities": _capabilities(),
        "Health": {"type": "object", "required": ["status", "checks"],
                   "properties": {"status": {"type": "string", "enum": ["healthy", "unhealthy"]},
                                  "worker_id": {"type": "string"}, "pool": {"type": "string"},
                                  "version": {"type": "string"},
                                  "checks": {"type": "object", "additionalProperties": {
                                      "type": "object", "required": ["ok"],
                                      "properties": {"ok": {"type": "boolean"}}}}}},
    }


def _result() -> dict:
    text_or_null = _nullable("string")
    summary = {"type": "object", "properties": {
        "started_at": text_or_null, "duration_seconds": {"type": "number", "minimum": 0},
        "attempt": {"type": "integer", "minimum": 1}, "idempotency_key": text_or_null}}
    outputs = {"type": "object", "properties": {"primary": {}, "artifacts": {"type": "array"}}}
    return {"type": "object", "required": ["job_id", "status", "worker_id", "error"],
            "description": "The stored result document, as the worker wrote it (completed_at when it "
                           "completed, else failed_at); a job refused when a worker took it (status "
                           "rejected) has a failed result whose error.phase is validation.",
            "properties": {"job_id": {"type": "string"},
                           "status": {"type": "string", "enum": list(RESULT_STATUSES)},
                           "completed_at": {"type": "string"}, "failed_at": {"type": "string"},
                           "worker_id": {"type": "string"}, "operation": text_or_null,
                           "execution_summary": summary, "outputs": outputs,
                           "error": _ref("schemas", "JobErrorOrNull"),
                           "observability": {"type": ["object", "null"]}, "data": {}}}


def _capabilities() -> dict:
    operation = {"type": "object", "required": ["name", "engine_available"],
                 "properties": {"name": {"type": "string"}, "engine_available": {"type": "boolean"},
                                "detail": _nullable("string")}}
    return {"type": "object", "additionalProperties": False,
            "required": ["worker_id", "pool", "version", "protocol_version", "operations", "max_job_size"],
            "properties": {"worker_id": {"type": "string"}, "pool": {"type": "string"},
                           "version": {"type": "string"}, "protocol_version": {"const": PROTOCOL_VERSION},
                           "operations": {"type": "array", "items": operation},
                           "max_concurrent_jobs": _nullable("integer"),
                           "max_job_size": {"type": "integer", "minimum": 1}}}


def _job_document() -> dict:
    """The job protocol's document; the API checks more than this (the operation's handler
    and its payload, the path policy) and answers 422 naming the field."""
    strings = {"type": "object", "additionalProperties": {"type": "string"}}
    execution = {"type": "object", "properties": {
        "attempt": {"type": "integer", "minimum": 1}, "max_attempts": {"type": "integer", "minimum": 1},
        "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 7 * 24 * 3600},
        "priority": {"type": "integer", "minimum": 1, "maximum": 10},
        "cancellable": {"type": "boolean"},
        "idempotency_key": {"type": ["string", "null"], "minLength": 1, "maxLength": 256},
        "deadline": {"type": ["string", "null"], "format": "date-time"}}}
    return {
        "type": "object", "additionalProperties": False,
        "required": ["version", "job_id", "created_at", "kind", "operation", "payload"],
        "properties": {
            "$schema": {"type": "string"},
            "version": {"const": PROTOCOL_VERSION},
            "job_id": {"type": "string", "pattern": f"^{JOB_ID_RE.pattern}$"},
            "created_at": {"type": "string", "format": "date-time"},
            "kind": {"const": "VMOperation"},
            "operation": {"type": "string", "pattern": f"^{OPERATION_RE.pattern}$", "maxLength": 128},
            "payload": {"type": "object", "required": ["type", "data"],
                        "properties": {"type": {"type": "string", "pattern": f"^{PAYLOAD_TYPE_RE.pattern}$"},
                                       "data": {}}},
            "execution": execution,
            "metadata": {"type": "object", "properties": {
                "name": {"type": "string"}, "namespace": {"type": "string"},
                "labels": strings, "annotations": strings}},
            "constraints": {"type": "object"}, "routing": {"type": "object"},
            "observability": {"type": "object"}, "audit": {"type": "object"}},
        "examples": [{
            "version": PROTOCOL_VERSION, "job_id": "example-hello-0001", "created_at": "2026-11-01T09:00:00Z",
            "kind": "VMOperation", "operation": "system.echo", "execution": {"timeout_seconds": 30},
            "payload": {"type": "system.echo.v1", "data": {"greeting": "hello from guestkit-worker"}}}]}


def _responses() -> dict:
    return {
        "Unauthorized": _error("No bearer token, or one that is not valid.", _header(
            "WWW-Authenticate", "The bearer challenge (RFC 6750).",
            {"type": "string", "pattern": "^Bearer "})),
        "NotFound": _error("No job with this id (details.field is job_id)."),
        "BadParameter": _error("A query parameter was refused (INVALID_PARAMETER; details.field names it)."),
        "QueryTooLong": _error(f"The query string is over {_MAX_QUERY} bytes."),
        "Unavailable": _error("The job store cannot be reached, or a bound was reached (too many waiting "
                              "requests or connections); nothing was changed.", _RETRY_AFTER),
        **_dead_responses(),
    }


def _common(*extra: tuple[str, str]) -> dict:
    """The answers every route can give, and ``extra`` (status, component response name)."""
    found = {"401": _ref("responses", "Unauthorized"), "414": _ref("responses", "QueryTooLong"),
             "503": _ref("responses", "Unavailable")}
    for status, name in extra:
        found[status] = _ref("responses", name)
    return found


def _op(summary: str, op_id: str, responses: dict, parameters: list | None = None,
        description: str | None = None) -> dict:
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": responses}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    return op


def _head_of(get: dict) -> dict:
    """HEAD of a GET route: the GET's status and headers without its body."""
    responses = {}
    for status, answer in get["responses"].items():
        if "$ref" in answer:
            answer = _responses()[answer["$ref"].rsplit("/", 1)[1]]
        responses[status] = {k: v for k, v in answer.items() if k != "content"}
    head = {"operationId": get["operationId"] + "Head", "summary": "The headers of " + get["operationId"],
            "responses": responses}
    if "parameters" in get:
        head["parameters"] = get["parameters"]
    return head


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_JOB_ID = {"name": "id", "in": "path", "required": True, "description": "The job's id.",
           "schema": {"type": "string", "minLength": 1, "maxLength": 256}, "example": "example-hello-0001"}


def _job_routes() -> dict:
    submitted = _success(_ref("schemas", "JobRef"))
    submit = _op("Submit a job document", "submitJob", {
        "202": _answer("Queued: the job is durably accepted.", submitted, _LOCATION),
        "200": _answer("The same document was submitted before: no second job; its current status.",
                       submitted, _LOCATION),
        "400": _error("The body is not a JSON job document (INVALID_JSON)."),
        "408": _error("The body did not arrive in time."),
        "409": _error("This job_id holds another document (JOB_ID_CONFLICT)."),
        "411": _error("No Content-Length (or a chunked body)."),
        "413": _error("The body is over --max-job-size (the body is not read)."),
        "415": _error("The body is not application/json."),
        "422": _error("The worker would refuse the job; details.field names the field."),
        "504": _error("OUTCOME_UNKNOWN: the job store took the request but its answer was lost; the job may "
                      "or may not exist: send the same document again, it never runs twice.", _RETRY_AFTER),
        **_common()})
    submit["requestBody"] = {"required": True, "content": {_JSON: {"schema": _ref("schemas", "JobDocument")}}}
    statuses = {"type": "string", "enum": [*JOB_STATUSES, ""]}
    listing = _op("One page of jobs, newest first", "listJobs", {
        "200": _answer("A page of jobs.", _success(_ref("schemas", "Page"))),
        **_common(("400", "BadParameter"))}, [
        _query("status", statuses, "Only jobs in this status (empty: any)."),
        _query("operation", {"type": "string"}, "Only jobs of this operation (empty: any)."),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
               f"Jobs on a page (default {DEFAULT_PAGE})."),
        _query("page_token", {"type": "string"}, "The next page, as next_page_token gave it.")])
    status = _op("A job's status", "getJob", {
        "200": _answer("The job's status.", _success(_ref("schemas", "JobStatus"))),
        **_common(("404", "NotFound"))}, [_JOB_ID])
    cancel = _op("Cancel a job", "cancelJob", {
        "200": _answer("It was waiting: it never runs; its result is cancelled.",
                       _success(_ref("schemas", "JobRef"))),
        "202": _answer("It runs and is cancellable: its handler is told to stop.",
                       _success(_ref("schemas", "JobRef"))),
        "409": _error("It already ended (JOB_FINISHED) or is not cancellable (NOT_CANCELLABLE)."),
        **_common(("404", "NotFound"))}, [_JOB_ID])
    result = _op("A job's result", "getResult", {
        "200": _answer("The stored result document.", _success(_ref("schemas", "Result"))),
        "202": _answer("Not finished yet (after waiting, when asked to): its status.",
                       _success(_ref("schemas", "JobRef"))),
        **_common(("400", "BadParameter"), ("404", "NotFound"))},
        [_JOB_ID, _query("wait", {"type": "number", "minimum": 0},
                         f"Seconds to wait for the job to finish (at most {MAX_WAIT:g} are honoured).")])
    progress = _op("A job's progress events", "getProgress", {
        "200": _answer("The events after the after-th.", _success(_ref("schemas", "Progress"))),
        **_common(("400", "BadParameter"), ("404", "NotFound"))},
        [_JOB_ID, _query("after", {"type": "integer", "minimum": 0, "maximum": MAX_PROGRESS_AFTER},
                         "Events already seen.")])
    return {
        "/api/v1/jobs": {"get": listing, "head": _head_of(listing), "post": submit},
        "/api/v1/jobs/{id}": {"get": status, "head": _head_of(status), "delete": cancel},
        "/api/v1/jobs/{id}/result": {"get": result, "head": _head_of(result)},
        "/api/v1/jobs/{id}/progress": {"get": progress, "head": _head_of(progress)},
    }


_ENTRY = {"name": "entry", "in": "path", "required": True,
          "description": "A dead letter's name as the listing gives it: a Redis stream entry id, or a file "
                         "name in jobs/failed/ (% and bytes outside printable ASCII as %XX).",
          "schema": {"type": "string", "minLength": 1, "maxLength": 256}, "example": "1796586008057-0"}


def _dead_schemas() -> dict:
    """The dead-letter endpoints' bodies (api/dead.py)."""
    text_or_null = _nullable("string")
    item = {"entry": {"type": "string"},
            "reason": {"type": "string",
                       "description": "Why it was moved aside: not_json, too_large, no_job_id, no_job_field, "
                                      "unreadable, duplicate_job_id, not_for_this_pool, max_deliveries, ..."},
            "detail": {"type": "string"}, "job_id": text_or_null,
            "dead_at": {"type": "string", "format": "date-time", "description": "RFC 3339, UTC."}}
    required = ["entry", "reason", "detail", "job_id", "dead_at"]
    shown = dict(item, size=_nullable("integer"), document=text_or_null)
    return {
        "DeadLetter": {"type": "object", "required": required, "additionalProperties": False,
                       "properties": item},
        "DeadLetterShown": {"type": "object", "required": [*required, "size", "document"],
                            "additionalProperties": False, "properties": shown,
                            "description": "document: the queued bytes as text (null when unreadable or "
                                           "over --max-job-size); size: their length."},
        "DeadPage": {"type": "object", "required": ["entries", "next_page_token"],
                     "additionalProperties": False,
                     "properties": {"entries": {"type": "array", "items": _ref("schemas", "DeadLetter")},
                                    "next_page_token": text_or_null}},
        "DeadRequeued": {"type": "object", "required": ["entry", "job_id", "status"],
                         "additionalProperties": False,
                         "properties": {"entry": {"type": "string"}, "job_id": text_or_null,
                                        "status": {"const": "pending"}}},
        "DeadPurged": {"type": "object", "required": ["entry", "purged"], "additionalProperties": False,
                       "properties": {"entry": {"type": "string"}, "purged": {"const": True}}},
    }


def _dead_responses() -> dict:
    return {
        "DeadNotFound": _error("No dead letter by this name (details.field is entry)."),
        "BadEntry": _error("A name no dead letter can have: over 256 characters, not printable ASCII "
                           "(INVALID_PARAMETER naming entry)."),
    }


def _dead_routes() -> dict:
    """GET /api/v1/dead, GET and DELETE /api/v1/dead/{entry}, POST /api/v1/dead/{entry}/requeue."""
    listing = _op("One page of dead letters, newest first", "listDeadLetters", {
        "200": _answer("A page of dead letters.", _success(_ref("schemas", "DeadPage"))),
        **_common(("400", "BadParameter"))}, [
        _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
               f"Dead letters on a page (default {DEFAULT_PAGE})."),
        _query("page_token", {"type": "string"}, "The next page, as next_page_token gave it.")])
    show = _op("One dead letter with its document", "getDeadLetter", {
        "200": _answer("The dead letter.", _success(_ref("schemas", "DeadLetterShown"))),
        **_common(("400", "BadEntry"), ("404", "DeadNotFound"))}, [_ENTRY])
    location = {"Location": dict(_LOCATION["Location"], required=False)}
    requeue = _op("Queue a dead letter's document again", "requeueDeadLetter", {
        "200": _answer("Queued again as a new delivery (durably); the dead letter is gone.",
                       _success(_ref("schemas", "DeadRequeued")), location),
        "409": _error("NOT_REQUEUEABLE: its job_id belongs to another job (details.reason)."),
        "422": _error("NOT_REQUEUEABLE: its document still cannot run: not JSON, too large, no job id "
                      "(details.reason)."),
        **_common(("400", "BadEntry"), ("404", "DeadNotFound"))}, [_ENTRY])
    purge = _op("Delete a dead letter for good", "purgeDeadLetter", {
        "200": _answer("Deleted (durably).", _success(_ref("schemas", "DeadPurged"))),
        **_common(("400", "BadEntry"), ("404", "DeadNotFound"))}, [_ENTRY])
    return {
        "/api/v1/dead": {"get": listing, "head": _head_of(listing)},
        "/api/v1/dead/{entry}": {"get": show, "head": _head_of(show), "delete": purge},
        "/api/v1/dead/{entry}/requeue": {"post": requeue},
    }


def _other_routes() -> dict:
    capabilities = _op("What this worker runs", "getCapabilities", {
        "200": _answer("Worker id, pool, version, operations and whether their engine is installed.",
                       _success(_ref("schemas", "Capabilities"))), **_common()})
    health = _op("The worker's health (as /health on the metrics port)", "getHealth", {
        "200": _answer("Healthy.", _ref("schemas", "Health")),
        "401": _ref("responses", "Unauthorized"), "414": _ref("responses", "QueryTooLong"),
        "503": _answer("Unhealthy (a health document), or the job store cannot be reached (an error).",
                       {"anyOf": [_ref("schemas", "Health"), _ref("schemas", "Error")]})})
    contract = _op("This document", "getOpenApi", {
        "200": _answer("The OpenAPI description of this API.", {"type": "object", "required": ["openapi"]}),
        "401": _ref("responses", "Unauthorized"), "414": _ref("responses", "QueryTooLong")})
    return {
        "/api/v1/capabilities": {"get": capabilities, "head": _head_of(capabilities)},
        "/api/v1/health": {"get": health, "head": _head_of(health)},
        OPENAPI_PATH: {"get": contract, "head": _head_of(contract)},
    }


def document() -> dict:
    """The OpenAPI 3.1 description of the REST API."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "guestkit-worker REST API", "version": __version__,
                 "description": "Submit, follow, fetch and cancel guestkit job protocol v"
                                f"{PROTOCOL_VERSION} jobs; list, show, requeue and purge dead letters.  A "
                                "success is {success: true, data}, an error "
                                "{success: false, error, message, details}.  Every GET route also answers "
                                "HEAD; another method gets 405 with Allow.  With --api-token-file every "
                                "request needs a bearer token."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {**_job_routes(), **_dead_routes(), **_other_routes()},
        "components": {"schemas": _schemas(), "responses": _responses(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "A token of --api-token-file."}}},
    }


def render() -> bytes:
    """The document's bytes: what the API serves and docs/openapi.json holds."""
    return (json.dumps(document(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


if __name__ == "__main__":
    sys.stdout.buffer.write(render())
