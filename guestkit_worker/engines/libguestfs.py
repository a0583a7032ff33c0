"""Whether libguestfs can inspect images here: the interpreter with the ``guestfs`` binding
(``GUESTKIT_WORKER_GUESTFS_PYTHON``, default ``/usr/bin/python3``) and a kernel for its
appliance.  The answer is cached (a negative one for ENGINE_CACHE_SECONDS_NEGATIVE) and never
costs an appliance launch."""

import glob
import logging
import os
import subprocess
import threading
import time

log = logging.getLogger(__name__)

DEFAULT_GUESTFS_PYTHON = "/usr/bin/python3"
ENGINE_CACHE_SECONDS_NEGATIVE = 300.0
INSTALL_HINT = ("install the Debian packages python3-guestfs and libguestfs-tools "
                "(and a kernel for the appliance: linux-image-amd64)")

_engine_cache = {}
_engine_lock = threading.Lock()


def guestfs_python() -> str:
    """The interpreter that runs the probe (must be able to import guestfs)."""
    return os.environ.get("GUESTKIT_WORKER_GUESTFS_PYTHON") or DEFAULT_GUESTFS_PYTHON


def _probe_engine(python: str) -> tuple[bool, str]:
    """(ok, detail): can python import guestfs, and is there a kernel for the appliance?"""
    code = ("import guestfs; v = guestfs.GuestFS(python_return_dict=True).version(); "
            "print('%d.%d.%d' % (v['major'], v['minor'], v['release']))")
    try:
        proc = subprocess.run([python, "-c", code], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=30, text=True)
    except FileNotFoundError:
        return False, f"{python} not found; {INSTALL_HINT}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot run {python}: {exc}; {INSTALL_HINT}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"{python} cannot import guestfs ({last}); {INSTALL_HINT}"
    version = proc.stdout.strip()
    if not (os.environ.get("SUPERMIN_KERNEL") or os.environ.get("LIBGUESTFS_PATH")):
        kernels = [k for k in glob.glob("/boot/vmlinuz-*") if os.access(k, os.R_OK)]
        if not kernels:
            return False, (f"libguestfs {version} found, but no readable kernel in /boot for its "
                           "appliance; install linux-image-amd64 (or set SUPERMIN_KERNEL)")
    return True, f"libguestfs {version} via {python}"


def engine_status() -> tuple[bool, str]:
    """Cached (available, detail) for libguestfs; never launches an appliance."""
    python = guestfs_python()
    now = time.monotonic()
    with _engine_lock:
        cached = _engine_cache.get(python)
        if cached and (cached[0] or now - cached[2] < ENGINE_CACHE_SECONDS_NEGATIVE):
            return cached[0], cached[1]
    ok, detail = _probe_engine(python)
    with _engine_lock:
        _engine_cache[python] = (ok, detail, now)
    log.info("libguestfs engine: %s", detail)
    return ok, detail
