"""guestkit.convert: convert a disk image between formats with ``qemu-img convert``.

Payload (``guestkit.convert.v1``)::

    image:         {path, format (default qcow2)}
    target_format: raw | qcow2 | vmdk | vdi | vhdx | vpc        (required)
    compression:   bool, qcow2 targets only (default false)
    output:        {destination?, overwrite? (default false)}

Source and target formats are always given explicitly, so no image is format-probed; the
source goes to qemu-img as the ``json:`` spec of its checked chain
(:mod:`guestkit_worker.engines.chain`: no backing file, data file or extent it was not
allowed to open).  qemu-img runs in a child process through ``context.run`` (own process group,
killed on timeout or shutdown) and writes into a private directory made beside the destination
(:class:`~guestkit_worker.engines.outputs.PrivateOutput`: unpredictable name, mode 0700, reached
through a held descriptor, so no link planted in a shared directory is ever followed); only a
finished, fsynced conversion is renamed into place, and the private directory is removed after
any failure.  An existing destination is refused (OUTPUT_EXISTS) unless
``output.overwrite`` is true.  The default destination is ``<work-dir>/<job_id>.<target_format>``.

``qemu-img convert -p`` progress is turned into ``convert`` progress events: one per step of
PROGRESS_STEP percent, or per PROGRESS_SECONDS when it moves slower, and the end; each
event's number is the whole percent its message shows.  Disk I/O accounting: the allocated
size of the source is added to the read counter and the allocated size of the result to the
write counter (qemu-img skips holes, so these are what it really moves).  The result holds
the output path, the target format and the virtual and actual sizes reported by
``qemu-img info --output=json``.
"""

import json
import logging
import os
import re
import shutil
import stat
import threading
import time

from ..engines.chain import checked_chain
from ..engines.images import (
    IMAGE_FORMATS,
    image_size,
    require_bool,
    require_dict,
    require_format,
    require_image_file,
    require_path,
)
from ..engines.outputs import PrivateOutput
from ..job.errors import EngineUnavailable, HandlerError, JobValidationError
from .base import HandlerResult, ImageHandler

log = logging.getLogger(__name__)

QEMU_IMG = "qemu-img"
INSTALL_HINT = "install the Debian package qemu-utils"
PROGRESS_RE = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")
#: a convert progress event per this many percent, or per this many seconds when slower
PROGRESS_STEP, PROGRESS_SECONDS = 5, 1.0


def _allocated(path):
    """Bytes allocated on disk for a regular file (capped at its size); a device's whole size."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        return image_size(path)
    return min(st.st_size, st.st_blocks * 512)


def _tail(stderr, lines=5):
    text = stderr.decode("utf-8", "replace").strip() if isinstance(stderr, bytes) else (stderr or "")
    return "; ".join(text.splitlines()[-lines:]) or "no diagnostics"


class ConvertHandler(ImageHandler):
    """Converts disk images with qemu-img (see the module docstring)."""

    name = "guestkit.convert"
    operations = ("guestkit.convert",)
    payload_types = ("guestkit.convert.v1",)

    def __init__(self):
        self._partials = {}  # job_id -> temporary output path
        self._lock = threading.Lock()

    def engine_status(self):
        path = shutil.which(QEMU_IMG)
        if path is None:
            return False, f"{QEMU_IMG} not found on PATH; {INSTALL_HINT}"
        return True, f"qemu-img at {path}"

    # -- validation ---------------------------------------------------------------------
    def _check_payload(self, data):
        """The payload's shape and values; looks at nothing on the file system."""
        data = require_dict(data, "payload.data")
        image = require_dict(data.get("image"), "payload.data.image")
        require_format(image.get("format"), "payload.data.image.format", default="qcow2")
        target = data.get("target_format")
        if target is None:
            raise JobValidationError("payload.data.target_format",
                                     f"is required: one of {', '.join(IMAGE_FORMATS)}")
        target = require_format(target, "payload.data.target_format")
        if require_bool(data.get("compression"), "payload.data.compression", False) and target != "qcow2":
            raise JobValidationError("payload.data.compression",
                                     f"compression is only supported for qcow2 targets, not {target}")
        self._check_output(data)
        require_path(image.get("path"), "payload.data.image.path")
        return data

    # -- execution ----------------------------------------------------------------------
    def execute(self, context, data):
        self._check_payload(data)  # the paths are checked below, resolved again now
        job_id = context.job_id
        src_fmt = require_format(data["image"].get("format"), "payload.data.image.format", default="qcow2")
        target = require_format(data["target_format"], "payload.data.target_format")
        compress = bool(data.get("compression"))

        context.progress("validation", 0, "checking paths and qemu-img")
        src = context.check_path(data["image"]["path"], "payload.data.image.path")
        require_image_file(src, "payload.data.image.path")
        dest, overwrite = self._destination(context, data, f"{job_id}.{target}", src)
        ok, detail = self.engine_status()
        if not ok:
            log.error("job %s: %s", job_id, detail)
            raise EngineUnavailable(f"guestkit.convert needs {detail}")
        context.progress("validation", 100, f"{src} ({src_fmt}) -> {dest} ({target})")

        chain = checked_chain(src, src_fmt, "payload.data.image.path", allowed=context.allowed_paths,
                              allow_backing=self.allow_backing_files)
        try:
            out = PrivateOutput(dest, job_id)
        except OSError as exc:
            chain.close()
            raise HandlerError("OUTPUT_WRITE_FAILED", f"cannot write {dest}: {exc}", phase="export") from exc
        with self._lock:
            self._partials[job_id] = out
        try:
            result = self._convert(context, chain, src, src_fmt, out.child_path, target, compress)
            context.progress("export", 0, f"moving the result to {dest}")
            out.fsync()
            st = out.stat()
            written = min(st.st_size, st.st_blocks * 512)
            out.publish(overwrite)
        except OSError as exc:
            raise HandlerError("OUTPUT_WRITE_FAILED", f"cannot write {dest}: {exc}", phase="export") from exc
        finally:
            out.close()
            chain.close()
            with self._lock:
                self._partials.pop(job_id, None)
        context.record_disk_io(write_bytes=written)
        context.progress("export", 100, f"wrote {dest}")
        result.update(output=dest, write_bytes=written)
        log.info("job %s: converted %s (%s) to %s (%s) in %.1f s", job_id, src, src_fmt, dest, target,
                 result["duration_seconds"])
        return HandlerResult(data=result, output=dest)

    def _convert(self, context, chain, src, src_fmt, tmp, target, compress):
        """Run qemu-img convert then info on tmp; return the result data (without output).

        The source is the checked chain's json: spec: its files and nothing else."""
        job_id = context.job_id
        argv = [QEMU_IMG, "convert", "-p", "-O", target]
        if compress:
            argv.append("-c")
        argv += [chain.qemu_spec(), tmp]
        on_stdout = self._progress_reporter(context)

        context.progress("convert", 0, f"qemu-img convert -f {src_fmt} -O {target}")
        started = time.monotonic()
        proc = context.run(argv, on_stdout_line=on_stdout)
        elapsed = time.monotonic() - started
        read = _allocated(src)
        context.record_disk_io(read_bytes=read)
        if proc.returncode != 0:
            msg = _tail(proc.stderr)
            log.error("job %s: qemu-img convert exited with %s: %s", job_id, proc.returncode, msg)
            raise HandlerError("CONVERSION_FAILED",
                               f"qemu-img convert failed (status {proc.returncode}): {msg}",
                               phase="convert", details={"source_format": src_fmt, "target_format": target})
        info_proc = context.run([QEMU_IMG, "info", "--output=json", "-f", target, tmp])
        try:
            info = json.loads(info_proc.stdout.decode("utf-8", "replace"))
        except ValueError:
            info = None
        if info_proc.returncode != 0 or not isinstance(info, dict):
            raise HandlerError("CONVERSION_FAILED",
                               f"qemu-img info failed on the result: {_tail(info_proc.stderr)}",
                               phase="convert")
        return {"source": {"path": src, "format": src_fmt}, "target_format": target,
                "compression": compress, "virtual_size": info.get("virtual-size"),
                "actual_size": info.get("actual-size"), "read_bytes": read,
                "duration_seconds": round(elapsed, 3)}

    def _progress_reporter(self, context):
        """A callback for qemu-img's output lines that reports its progress as ``convert``
        events, throttled (a 0.2 s conversion prints about 100 lines) and as whole percents."""
        last = {"pct": 0, "at": time.monotonic()}

        def on_stdout(line):
            m = PROGRESS_RE.search(line)
            if not m:
                return
            pct, now = int(float(m.group(1))), time.monotonic()
            step = pct - last["pct"]
            if step > 0 and (pct >= 100 or step >= PROGRESS_STEP or now - last["at"] >= PROGRESS_SECONDS):
                last.update(pct=pct, at=now)
                context.progress("convert", pct, f"qemu-img convert {pct}%")
        return on_stdout

    # -- cleanup ------------------------------------------------------------------------
    def cleanup(self, context):
        with self._lock:
            out = self._partials.pop(context.job_id, None)
        if out is not None:
            out.close()
