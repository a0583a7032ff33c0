"""The README's inspect example reports what its prose promises (network, file systems, SELinux
...): every section unless its ``include_*`` flag is false, ``deep_scan`` only when true."""

import json
import os
import re

import pytest
from conftest import ROOT, cli, fake_probe_python, worker_env, write_job

from guestkit_worker.handlers.inspect_report import SECTIONS

pytestmark = pytest.mark.integration


def _readme_inspect_example():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    block = re.search(r"### guestkit\.inspect\n\n```json\n(.*?)```", text, re.S).group(1)
    return json.loads(block)


def test_the_readme_inspect_example_reports_every_section(dirs):
    doc = _readme_inspect_example()
    data = doc["payload"]["data"]
    assert set(data["options"].values()) == {True} and len(data["options"]) < len(SECTIONS)
    image = os.path.join(dirs.base, "web-01.raw")
    with open(image, "wb") as fh:
        fh.truncate(1 << 20)
    data["image"] = {"path": image, "format": "raw"}  # no checksum: this image is not the example's
    data["output"]["destination"] = os.path.join(dirs.base, "web-01.json")
    write_job(dirs.jobs, doc)
    env = worker_env(GUESTKIT_WORKER_GUESTFS_PYTHON=fake_probe_python(dirs.base), SUPERMIN_KERNEL="/dev/null")
    proc = cli("--once", *dirs.args(), "--metrics-enabled", "false", env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = dirs.result(doc["job_id"])
    assert result["status"] == "completed", result
    with open(data["output"]["destination"], encoding="utf-8") as fh:
        report = json.load(fh)
    assert report["sections"] == sorted(SECTIONS) == result["data"]["sections"]
    assert {"network", "storage", "security"} <= set(report["sections"])  # what the README promises
    assert report["deep_scan"] is False
