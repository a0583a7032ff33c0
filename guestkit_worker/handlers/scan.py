"""guestkit.scan: which known vulnerabilities a disk image carries, from an offline OSV database.

Payload (``guestkit.scan.v1``)::

    image:  {path, format, checksum?, read_only?}   checked exactly as for guestkit.inspect
    output: {format: json, destination?, overwrite?}
    sbom:   {format: cyclonedx, destination?, overwrite?}   optional

One libguestfs appliance launch (the inspection probe, with no report sections) copies
os-release and the package databases out of the guest; the worker reads them
(:mod:`guestkit_worker.vulns`), matches the installed packages' *source* names and versions
against the database given by ``--vuln-db`` and writes the report to ``output.destination`` or
``<work-dir>/<job_id>-scan.json``.  With ``sbom`` a CycloneDX JSON inventory of every installed
package goes to ``sbom.destination`` or ``<work-dir>/<job_id>-sbom.cdx.json``.  Both files follow
the inspection report's rules (never replaced without ``overwrite``, except this job's own
earlier output; written through a private directory).  The result's ``data`` is the report's
summary; ``outputs.primary`` names the report.

Failures before the launch: VULN_DB_UNAVAILABLE (no ``--vuln-db``), VULN_DB_STALE (older than
``--vuln-db-max-age``), ENGINE_UNAVAILABLE (libguestfs, or the ``scan`` extra); after it:
PACKAGE_DB_UNREADABLE (a package database the readers refuse as a whole).
"""

from ..engines.images import require_path
from ..job.errors import HandlerError, JobValidationError
from ..job.timestamps import stamp
from .base import HandlerResult
from .inspect import InspectHandler
from .vulnscan import missing_extra, scan_summary

SBOM_FORMATS = ("cyclonedx",)


class ScanHandler(InspectHandler):
    """Scans a disk image for known vulnerabilities (see the module docstring)."""

    name = "guestkit.scan"
    operations = ("guestkit.scan",)
    payload_types = ("guestkit.scan.v1",)
    output_sections = ("output", "sbom")

    def _check_payload(self, data):
        """The payload's shape and values; looks at nothing on the file system."""
        data = self._check_image(data)
        output = self._check_json_output(data)
        sbom = self._check_output(data, "sbom")
        if sbom is not None:
            fmt = sbom.get("format", "cyclonedx")
            if fmt not in SBOM_FORMATS:
                raise JobValidationError("payload.data.sbom.format",
                                         f"only 'cyclonedx' is supported, got {fmt!r}")
            dest = sbom.get("destination")
            if dest is not None and dest == (output or {}).get("destination"):
                raise JobValidationError("payload.data.sbom.destination",
                                         "must differ from payload.data.output.destination")
        for key in sorted(set(data) - {"image", "output", "sbom"}):
            raise JobValidationError(f"payload.data.{key}", "unknown field; known: image, output, sbom")
        require_path(data["image"].get("path"), "payload.data.image.path")
        return data

    def execute(self, context, data):
        self._check_payload(data)
        job_id = context.job_id
        database = self._vuln_database()  # before anything else: VULN_DB_* without a launch
        image = self._open_image(context, data, f"{job_id}-scan.json")
        sbom_dest = None
        try:
            if data.get("sbom") is not None:
                sbom_dest, sbom_overwrite = self._destination(context, data, f"{job_id}-sbom.cdx.json",
                                                              image.path, section="sbom")
                if sbom_dest == image.dest:
                    raise HandlerError("OUTPUT_EXISTS", f"the SBOM and the report would both be {sbom_dest}",
                                       phase="validation", details={"path": sbom_dest})
        except BaseException:
            image.chain.close()
            raise
        with self._extracting(context, image, True) as extract:
            doc, elapsed = self._inspect(context, image, set(), False, extract)
            scan, inventory = self._scan_extracted(context, database, extract)
        context.progress("export", 0, f"writing {image.dest}")
        report = {"schema": "guestkit.scan.report.v1", "job_id": job_id, "generated_at": stamp(),
                  "image": image.block(),
                  "engine": dict(doc.get("engine") or {}, inspection_seconds=round(elapsed, 2)),
                  "report_path": image.dest, "sbom_path": sbom_dest, **scan}
        if sbom_dest:
            self._write_sbom(context, sbom_dest, sbom_overwrite, inventory)
        self._write_report(context, image.dest, report, image.overwrite)
        context.progress("export", 100, f"report written to {image.dest}")
        data_out = dict(scan_summary(report), report_path=image.dest, sbom_path=sbom_dest)
        artifacts = [sbom_dest] if sbom_dest else []
        return HandlerResult(data=data_out, output=image.dest, artifacts=artifacts)

    def _write_sbom(self, context, dest, overwrite, inventory):
        """The CycloneDX inventory of the guest's installed packages, written as an output."""
        try:
            from ..vulns import sbom

            text = sbom.cyclonedx_json(inventory.guest_os, inventory.packages)
        except ImportError as exc:
            raise missing_extra(exc) from None
        self._write_bytes(context, dest, text.encode("utf-8"), overwrite)
