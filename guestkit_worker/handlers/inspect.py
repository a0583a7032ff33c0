"""guestkit.inspect: what operating system, packages, users and services a disk image holds.

Payload (``guestkit.inspect.v1``)::

    image:   {path, format, checksum?, read_only?}   format is required: raw, qcow2, vmdk,
                                                    vdi, vhdx or vpc (a raw image is never probed)
    options: {include_packages, include_services, include_users, include_network,
              include_security, include_storage, include_databases, deep_scan,
              vulnerabilities}
    output:  {format: json, destination?, overwrite?}

Options: every section is reported unless its ``include_*`` flag is false (each costs a few
file reads in the appliance the job starts anyway); ``deep_scan``, the one costly option, is
off unless true.  The operating-system block and the mountpoints are always reported.
``include_storage`` adds filesystems (device, type, UUID, label), block devices, partitions
and LVM volumes; ``deep_scan`` adds package summaries, kernels found in /boot and counts of
SSH authorized keys per login account; ``vulnerabilities`` (off unless true) adds the section
``vulnerabilities``, the known-vulnerability scan of :mod:`.scan` from the package databases the
same appliance launch copies out (:mod:`.vulnscan`).  ``read_only`` is accepted, but the image is always
opened read-only.

Steps, each reported as a progress phase: ``validation`` (paths, --allow-path, engine),
``checksum`` (SHA-256 when ``image.checksum`` is given; a mismatch fails with
CHECKSUM_MISMATCH before any appliance starts), ``launch`` and ``inspection`` (one libguestfs
appliance run by :mod:`guestkit_worker.engines.guestfs_probe` in a child process through
``context.run``, so timeouts and shutdown kill it together with its qemu), ``export`` (the full
report written atomically to ``output.destination`` or ``<work-dir>/<job_id>-inspection.json``,
created in a private directory beside it and renamed into place, never through a link:
:class:`~guestkit_worker.engines.outputs.PrivateOutput`).
The job result's ``data`` is a summary (:mod:`.inspect_report`): the OS block, counts and at
most SAMPLE_LIMIT entries per list; ``HandlerResult.output`` names the full report.

Environment:

* ``GUESTKIT_WORKER_GUESTFS_PYTHON`` -- interpreter that has the ``guestfs`` binding
  (default ``/usr/bin/python3``; Debian package python3-guestfs;
  :mod:`guestkit_worker.engines.libguestfs` checks it).
* The worker's environment is passed to the probe, so the libguestfs knobs apply:
  ``LIBGUESTFS_BACKEND=direct`` and ``LIBGUESTFS_BACKEND_SETTINGS=force_tcg`` on machines
  where nested KVM is broken (an appliance launch then takes 12-25 s), ``LIBGUESTFS_DEBUG=1``
  to log the appliance's chatter at debug level.
* Each job gets its own TMPDIR under the work dir (libguestfs puts the read-only overlay
  there); it is removed, with the appliance's socket directory, even after a kill.  The appliance
  cache stays in ``LIBGUESTFS_CACHEDIR`` (default: the inherited TMPDIR or /var/tmp).

Disk I/O accounting: only the checksum pass is counted as disk reads; reads made by qemu
inside the appliance are not measured.
"""

import collections
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time

from ..engines import probe_script
from ..engines.chain import checked_chain
from ..engines.images import (
    image_size,
    remove_quietly,
    require_bool,
    require_dict,
    require_format,
    require_image_file,
    require_path,
)
from ..engines.libguestfs import INSTALL_HINT, engine_status, guestfs_python
from ..engines.outputs import PrivateOutput
from ..job.errors import EngineUnavailable, HandlerError, JobValidationError
from ..job.timestamps import stamp
from ..system.checksum import parse_checksum, verify_sha256
from .base import HandlerResult, ImageHandler
from .inspect_report import OPTION_FLAGS, SECTIONS, effective_sections, summarize
from .vulnscan import OpenedImage, VulnScanning, scan_summary

__all__ = ["InspectHandler"]

log = logging.getLogger(__name__)

QEMU_IMG = "qemu-img"

# the socket directory libguestfs makes outside TMPDIR (in /tmp or $XDG_RUNTIME_DIR)
SOCKDIR_RE = re.compile(r"/[^\0]*/libguestfs[A-Za-z0-9]{6}")


class InspectHandler(VulnScanning, ImageHandler):
    """Inspects a disk image with libguestfs (see the module docstring)."""

    name = "guestkit.inspect"
    operations = ("guestkit.inspect",)
    payload_types = ("guestkit.inspect.v1",)

    def __init__(self):
        self._leftovers = {}  # job_id -> [paths to remove in cleanup]
        self._lock = threading.Lock()

    def engine_status(self):
        return engine_status()

    # -- validation ---------------------------------------------------------------------
    def _check_payload(self, data):
        """The payload's shape and values; looks at nothing on the file system."""
        data = self._check_image(data)
        options = require_dict(data.get("options"), "payload.data.options", required=False)
        if options is not None:
            for key in list(OPTION_FLAGS) + ["deep_scan", "vulnerabilities"]:
                require_bool(options.get(key), f"payload.data.options.{key}", False)
        self._check_json_output(data)
        require_path(data["image"].get("path"), "payload.data.image.path")
        return data

    @staticmethod
    def _check_image(data):
        """``payload.data`` and its ``image`` (format, checksum, read_only); the data dict."""
        data = require_dict(data, "payload.data")
        image = require_dict(data.get("image"), "payload.data.image")
        require_format(image.get("format"), "payload.data.image.format")
        if image.get("checksum") is not None:
            parse_checksum(image["checksum"], "payload.data.image.checksum")
        require_bool(image.get("read_only"), "payload.data.image.read_only", True)
        return data

    def _check_json_output(self, data):
        """``payload.data.output``: the shared fields, format json, no compression."""
        output = self._check_output(data)
        if output is not None:
            fmt = output.get("format")
            if fmt is not None and fmt != "json":
                raise JobValidationError("payload.data.output.format",
                                         f"only 'json' is supported, got {fmt!r}")
            if output.get("compression") not in (None, False, "none"):
                raise JobValidationError("payload.data.output.compression", "compression is not supported")
        return output

    # -- execution ----------------------------------------------------------------------
    def execute(self, context, data):
        self._check_payload(data)  # the paths are checked below, resolved again now
        job_id = context.job_id
        options = data.get("options")
        sections = effective_sections(options)
        deep = bool(options and options.get("deep_scan"))
        vulns = bool(options and options.get("vulnerabilities"))
        database = self._vuln_database() if vulns else None  # before the launch: fails fast
        image = self._open_image(context, data, f"{job_id}-inspection.json")
        with self._extracting(context, image, vulns) as extract:
            doc, elapsed = self._inspect(context, image, sections, deep, extract)
            scan = self._scan_extracted(context, database, extract)[0] if vulns else None

        context.progress("export", 0, f"writing {image.dest}")
        report = {
            "schema": "guestkit.inspect.report.v1",
            "job_id": job_id,
            "generated_at": stamp(),
            "image": image.block(),
            "engine": dict(doc.get("engine") or {}, inspection_seconds=round(elapsed, 2)),
            "sections": sorted(sections),
            "deep_scan": deep,
            "report_path": image.dest,
        }
        for key, value in doc.items():
            if key not in ("engine", "probe_version", "package_files"):
                report[key] = value
        if scan is not None:
            report["vulnerabilities"] = scan
        if options is not None:
            ignored = sorted(set(options) - set(OPTION_FLAGS) - {"deep_scan", "vulnerabilities"})
            if ignored:
                report["ignored_options"] = ignored
        self._write_report(context, image.dest, report, image.overwrite)
        context.progress("export", 100, f"report written to {image.dest}")
        summary = summarize(report)
        if scan is not None:
            summary["vulnerabilities"] = scan_summary(scan)
        return HandlerResult(data=summary, output=image.dest)

    def _open_image(self, context, data, default_name):
        """The validation and checksum phases: the checked path, format, size and chain (held
        open; closed by :meth:`_inspect`), the report's destination; an :class:`OpenedImage`."""
        job_id = context.job_id
        image = data["image"]
        fmt = require_format(image.get("format"), "payload.data.image.format")
        context.progress("validation", 0, "checking paths and engine")
        path = context.check_path(image["path"], "payload.data.image.path")
        require_image_file(path, "payload.data.image.path")
        dest, overwrite = self._destination(context, data, default_name, path)
        ok, detail = self.engine_status()
        if not ok:
            log.error("job %s: libguestfs unavailable: %s", job_id, detail)
            raise EngineUnavailable(f"{self.name} needs libguestfs: {detail}")
        size = image_size(path)
        # what the image references, before anything opens it; held open until the probe ends
        chain = checked_chain(path, fmt, "payload.data.image.path", allowed=context.allowed_paths,
                              allow_backing=self.allow_backing_files)
        context.progress("validation", 100, f"{path} ({fmt}, {size} bytes)")
        opened = OpenedImage(path, fmt, size, chain, dest, overwrite)
        if image.get("checksum"):
            context.progress("checksum", 0, f"verifying sha256 of {path}")
            try:
                verify_sha256(path, image["checksum"], context)
            except BaseException:
                chain.close()
                raise
            opened.checksum = "verified"
            context.progress("checksum", 100, "checksum verified")
        else:
            context.record_checksum_verification("skipped")
            log.info("job %s: no checksum given for %s, verification skipped", job_id, path)
        return opened

    def _inspect(self, context, image, sections, deep, extract=None):
        """The one appliance launch; (probe document, seconds it took).  Closes the chain."""
        started = time.monotonic()
        try:
            doc = self._run_probe(context, image.chain, image.path, image.fmt, sections, deep, extract)
        finally:
            image.chain.close()
        return doc, time.monotonic() - started

    def _pinned_overlay(self, context, chain, fmt, tmpdir):
        """A qcow2 overlay in the job's private tmpdir whose backing is the checked chain's json:
        spec (pinned top file, "backing": null at the end), so libguestfs's qemu opens nothing
        else; returns its path."""
        spec = chain.qemu_spec()
        info = context.run([QEMU_IMG, "info", "--output=json", chain.qemu_spec(backing=False)])
        try:
            virtual_size = int(json.loads(info.stdout.decode("utf-8", "replace"))["virtual-size"])
        except (ValueError, KeyError, TypeError):
            raise HandlerError("IMAGE_OPEN_FAILED", f"qemu-img could not open the image as {fmt}: "
                               + (info.stderr.decode("utf-8", "replace").strip()[-500:] or "no diagnostics"),
                               phase="inspection") from None
        overlay = os.path.join(tmpdir, "pinned.qcow2")
        made = context.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-u", "-b", spec, "-F", fmt,
                            overlay, str(virtual_size)])
        if made.returncode != 0:
            raise HandlerError("IMAGE_OPEN_FAILED", "qemu-img could not make the read-only overlay: "
                               + (made.stderr.decode("utf-8", "replace").strip()[-500:] or "no diagnostics"),
                               phase="inspection")
        return overlay

    def _run_probe(self, context, chain, path, fmt, sections, deep, extract=None):
        """Launch the appliance once (child process through the context); return the JSON doc."""
        job_id = context.job_id
        tmpdir = tempfile.mkdtemp(prefix=f".{job_id}.guestfs-", dir=context.work_dir)
        self._remember(job_id, tmpdir)
        env = dict(os.environ)
        env.setdefault("LIBGUESTFS_CACHEDIR", os.environ.get("TMPDIR") or "/var/tmp")
        env["TMPDIR"] = tmpdir
        try:
            overlay = self._pinned_overlay(context, chain, fmt, tmpdir)
        except BaseException:
            self._remove_tree(job_id, tmpdir)
            raise
        argv = [guestfs_python(), probe_script(), "--image", overlay, "--format", "qcow2",
                "--sections", ",".join(s for s in SECTIONS if s in sections)]
        if deep:
            argv.append("--deep-scan")
        if extract:
            argv += ["--extract-dir", extract]
        tail = collections.deque(maxlen=40)

        def on_stderr(line):
            if line.startswith("@sockdir "):
                sockdir = line[len("@sockdir "):].strip()
                if SOCKDIR_RE.fullmatch(sockdir) and os.path.dirname(sockdir) in (
                        "/tmp", os.environ.get("XDG_RUNTIME_DIR")):
                    self._remember(job_id, sockdir)
                return
            if line.startswith("@progress "):
                try:
                    ev = json.loads(line[len("@progress "):])
                    context.progress(ev.get("phase", "inspection"), ev.get("percent"), ev.get("message", ""))
                    return
                except ValueError:
                    pass
            tail.append(line)
            log.debug("job %s: libguestfs: %s", job_id, line)

        log.info("job %s: inspecting %s (%s) with sections %s", job_id, path, fmt, ",".join(sorted(sections)))
        try:
            proc = context.run(argv, env=env, on_stderr_line=on_stderr)
        finally:
            self._remove_tree(job_id, tmpdir)
            for sockdir in self._forget(job_id, SOCKDIR_RE):
                self._remove_tree(job_id, sockdir)
        try:
            doc = json.loads(proc.stdout.decode("utf-8", "replace"))
        except ValueError:
            doc = None
        if proc.returncode != 0 or not isinstance(doc, dict):
            msg = "; ".join(list(tail)[-5:]) or "no diagnostics"
            log.error("job %s: probe exited with status %s: %s", job_id, proc.returncode, msg)
            raise HandlerError("INSPECTION_FAILED",
                               f"libguestfs probe exited with status {proc.returncode}: {msg}",
                               phase="inspection")
        err = doc.get("error")
        if err:
            code, message = err.get("code", "INSPECTION_FAILED"), err.get("message", "inspection failed")
            log.error("job %s: inspection of %s failed: %s %s", job_id, path, code, message)
            if code == "ENGINE_UNAVAILABLE":
                raise EngineUnavailable(f"{message}; {INSTALL_HINT}")
            if code in ("ENGINE_LAUNCH_FAILED", "IMAGE_OPEN_FAILED"):
                message = (f"libguestfs could not open {path} as {fmt} (is image.format right?): "
                           f"{message}")
            raise HandlerError(code, message, phase="inspection",
                               details={k: v for k, v in err.items() if k not in ("code", "message")} or None)
        return doc

    def _write_report(self, context, dest, report, overwrite):
        self._write_bytes(context, dest, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode(),
                          overwrite)

    def _write_bytes(self, context, dest, data, overwrite):
        """data published at dest through a private directory (see PrivateOutput)."""
        try:
            with PrivateOutput(dest, context.job_id) as out:
                fd = out.create(0o640)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                out.publish(overwrite)
        except OSError as exc:
            raise HandlerError("OUTPUT_WRITE_FAILED", f"cannot write {dest}: {exc}", phase="export") from exc

    # -- cleanup ------------------------------------------------------------------------
    def _remember(self, job_id, path):
        with self._lock:
            self._leftovers.setdefault(job_id, []).append(path)

    def _forget(self, job_id, pattern):
        with self._lock:
            return [p for p in self._leftovers.get(job_id, []) if pattern.fullmatch(p)]

    def _remove_tree(self, job_id, path):
        shutil.rmtree(path, ignore_errors=True)
        with self._lock:
            paths = self._leftovers.get(job_id, [])
            if path in paths:
                paths.remove(path)

    def cleanup(self, context):
        with self._lock:
            paths = self._leftovers.pop(context.job_id, [])
        for path in paths:
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    remove_quietly(path, context.job_id)
            except Exception as exc:  # cleanup must not raise
                log.warning("job %s: cleanup of %s failed: %s", context.job_id, path, exc)
