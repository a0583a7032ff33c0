"""The REST API's OpenAPI document: a valid OpenAPI 3.1 description, kept in docs/openapi.json
byte for byte as the code renders it, naming every route and method the router answers."""

import json
import os

import pytest
from apikit import call, served, write_tokens  # noqa: F401 (fixture)
from conftest import ROOT, require

from guestkit_worker.api.app import ROUTES
from guestkit_worker.api.openapi import OPENAPI_PATH, document, render

KEPT = os.path.join(ROOT, "docs", "openapi.json")


def _validator():
    try:
        from openapi_spec_validator import validate
    except ImportError:  # pragma: no cover - the test extra installs it
        validate = None
    require(validate is not None, "openapi-spec-validator is not installed (pip install -e '.[test]')")
    return validate


def test_document_is_valid_openapi_3_1():
    _validator()(document())
    assert document()["openapi"].startswith("3.1.")


def test_kept_copy_is_the_rendered_document():
    with open(KEPT, "rb") as fh:
        kept = fh.read()
    assert kept == render(), ("docs/openapi.json is stale: python -m guestkit_worker.api.openapi "
                              "> docs/openapi.json")
    _validator()(json.loads(kept))


def test_every_route_and_method_is_described():
    paths = document()["paths"]
    for template, _pattern, methods in ROUTES:
        described = {m for m in paths.get(template, {}) if m != "parameters"}
        wanted = {m.lower() for m in methods} | ({"head"} if "GET" in methods else set())
        assert described == wanted, template
    assert set(paths) == {template for template, _p, _m in ROUTES}
    assert OPENAPI_PATH in paths


def test_every_operation_documents_the_bearer_answer():
    doc = document()
    assert doc["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "A token of --api-token-file."}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert "401" in op["responses"], f"{method} {path}"
            assert "414" in op["responses"], f"{method} {path}"


@pytest.mark.integration
def test_served_document_is_the_kept_one_behind_the_tokens(dirs, served, tmp_path):
    api = served("api", "--api-token-file", write_tokens(tmp_path, "doc-token-0001"))
    reply = call(api.url, "GET", OPENAPI_PATH, token="doc-token-0001")
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    with open(KEPT, "rb") as fh:
        assert reply.body == fh.read()
    refused = call(api.url, "GET", OPENAPI_PATH)
    assert refused.status == 401 and refused.headers["www-authenticate"].startswith("Bearer ")
    head = call(api.url, "HEAD", OPENAPI_PATH, token="doc-token-0001")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(len(reply.body))


def test_every_status_the_endpoints_raise_is_described():
    """Each ``ApiError(STATUS`` of the API's modules is an answer of some operation (405 is the
    answer to methods the document leaves out, 500 the one no operation promises)."""
    import glob
    import re
    raised = set()
    for path in glob.glob(os.path.join(ROOT, "guestkit_worker", "api", "*.py")):
        with open(path, encoding="utf-8") as fh:
            raised |= set(re.findall(r"ApiError\((\d{3})", fh.read()))
    described = {status for item in document()["paths"].values() for op in item.values()
                 for status in op["responses"]}
    assert raised - {"405", "500"} <= described, sorted(raised - described)
    assert {"400", "401", "404", "409", "413", "422", "503", "504"} <= raised
