"""The README's curl transcript of a POST shows the status line and headers a live worker
sends (``Date`` left out, as the README says)."""

import os
import re
import subprocess

import pytest
from apikit import Served
from conftest import ROOT, Dirs, require_tool

pytestmark = pytest.mark.integration


def _readme_answer():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    block = re.search(r"\$ curl -si [^\n]*\n[^\n]*/api/v1/jobs\n(HTTP/.*?)\n\n(\{[^\n]*\})\n", text, re.S)
    return block.group(1).splitlines(), block.group(2)


def test_readme_post_transcript_matches_a_live_answer(tmp_path):
    curl = require_tool("curl")
    head, body = _readme_answer()
    api = Served("run", Dirs(tmp_path / "d"))
    try:
        proc = subprocess.run([curl, "-si", "-H", "Content-Type: application/json", "--data-binary",
                               "@" + os.path.join(ROOT, "examples", "jobs", "01-hello.json"),
                               api.url + "/api/v1/jobs"], capture_output=True, text=True, timeout=60)
    finally:
        api.stop()
    got_head, _, got_body = proc.stdout.replace("\r\n", "\n").partition("\n\n")
    assert [h for h in got_head.splitlines() if not h.startswith("Date:")] == head
    assert got_body.strip() == body
