"""The wheel ships exactly the package's modules: setuptools finds the packages itself
(pyproject.toml [tool.setuptools.packages.find]), so a new folder under guestkit_worker/
cannot be left out of an install, and nothing but the tree's modules goes in."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: what the build reads besides the package (the readme, the man page it installs)
BUILD_INPUTS = ("pyproject.toml", "README.md", "man")


def tree_modules(root):
    """guestkit_worker/.../NAME.py paths of every module under root's package directory."""
    found = set()
    for folder, dirs, files in os.walk(os.path.join(root, "guestkit_worker")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                found.add(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return found


def test_wheel_holds_every_module_of_the_tree(tmp_path):
    # built from a copy: a build/ left in the checkout by an older layout would add its modules
    src = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "guestkit_worker"), src / "guestkit_worker",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in BUILD_INPUTS:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, src / name)
        else:
            shutil.copy2(path, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    wheel = [p for p in os.listdir(tmp_path / "dist") if p.endswith(".whl")][0]
    names = zipfile.ZipFile(tmp_path / "dist" / wheel).namelist()
    shipped = {n for n in names if n.startswith("guestkit_worker/") and n.endswith(".py")}
    expected = tree_modules(ROOT)
    assert len(expected) > 50 and "guestkit_worker/engines/guestfs_probe.py" in expected
    assert sorted(expected - shipped) == [], "modules the wheel leaves out"
    assert sorted(shipped - expected) == [], "modules the wheel has that the tree has not"
    assert "guestkit_worker/py.typed" in names, "the PEP 561 marker of the typed package"
