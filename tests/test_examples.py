"""Every job under examples/ is a valid job document the worker admits (the image jobs once
their image exists), and the convert example runs as its README says."""

import glob
import json
import os
import subprocess

import pytest
from conftest import ROOT, cli, require_tool

from guestkit_worker.handlers import default_registry
from guestkit_worker.job.admission import problems

EXAMPLES = os.path.join(ROOT, "examples")
IMAGE_DIR = "/var/tmp/guestkit-demo"


def _examples():
    return sorted(glob.glob(os.path.join(EXAMPLES, "**", "*.json"), recursive=True))


def test_every_example_is_admitted_but_for_its_missing_image():
    registry = default_registry()
    registry.configure_paths([IMAGE_DIR])
    operations = set()
    for path in _examples():
        with open(path, "rb") as fh:
            raw = fh.read()
        found, job = problems(raw, registry, 1 << 20)
        rel = os.path.relpath(path, EXAMPLES)
        if rel.startswith("image-jobs" + os.sep):  # their images are the user's to provide
            assert len(found) == 1 and found[0].startswith(f"payload.data.image.path: {IMAGE_DIR}/") \
                and found[0].endswith(" does not exist"), (rel, found)
            operations.add(json.loads(raw)["operation"])
        else:
            assert found == [], (rel, found)
            operations.add(job.operation)
    assert {"system.echo", "guestkit.inspect", "guestkit.convert"} <= operations


@pytest.mark.integration
def test_the_convert_example_runs(dirs, tmp_path):
    qemu_img = require_tool("qemu-img")
    images = tmp_path / "images"
    images.mkdir()
    with open(os.path.join(EXAMPLES, "image-jobs", "10-convert.json"), encoding="utf-8") as fh:
        text = fh.read().replace(IMAGE_DIR, str(images))  # the README's directory, here a private one
    job = tmp_path / "10-convert.json"
    job.write_text(text)
    subprocess.run([qemu_img, "create", "-q", "-f", "raw", str(images / "disk.raw"), "64M"], check=True)
    where = ["--jobs-dir", dirs.jobs, "--results-dir", dirs.results, "--allow-path", str(images)]
    assert cli("submit", *where, str(job)).stdout == "example-convert-0010 pending\n"
    proc = cli("--once", *where, "--work-dir", dirs.work, "--metrics-enabled", "false", timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = dirs.result("example-convert-0010")
    assert result["status"] == "completed" and result["outputs"]["primary"] == str(images / "disk.qcow2")
