"""The handler plugin interface (the registry is :mod:`.registry`).

A handler is an object with:

* ``name`` -- its name, used as the ``handler`` metric label;
* ``operations`` -- the operation names it serves (``guestkit.inspect``);
* ``payload_types`` -- the accepted ``payload.type`` values (``guestkit.inspect.v1``);
* ``engine_status()`` -- ``(available, detail)`` for the system tool it needs;
* ``validate(data)`` -- checks ``payload.data`` before anything runs, raising
  :class:`~guestkit_worker.job.errors.JobValidationError` naming the field; paths the job names
  go through ``check_payload_path`` first, before anything looks at the file system (a
  path outside ``--allow-path`` is then rejected as PATH_NOT_ALLOWED with the same words
  whether or not it exists);
* ``execute(context, data)`` -- does the work and returns a :class:`HandlerResult`;
* ``cleanup(context)`` -- always called after ``execute``, even when it failed.
"""

import os
from dataclasses import dataclass, field

from ..engines.chain import check_chain
from ..engines.images import (
    check_destination,
    require_bool,
    require_dict,
    require_format,
    require_image_file,
    require_path,
)
from ..job.errors import HandlerError
from ..system.paths import validate_path


@dataclass
class HandlerResult:
    """What a handler returns: result ``data``, the primary output file and other artifacts."""

    data: object = None
    output: str = None
    artifacts: list = field(default_factory=list)


class Handler:
    """Base class for handlers; subclasses set the class attributes and override execute."""

    name = "base"
    operations = ()
    payload_types = ()
    #: --allow-path directories (None: every path allowed) and the worker's own directories
    #: (outputs never go there); set by the worker before its first job, see configure_paths
    allowed_paths = None
    protected_paths = ()
    #: --allow-backing-files: images may reference other files (inside allowed_paths)
    allow_backing_files = False

    def configure_paths(self, allowed=None, protected=(), allow_backing=None):
        """Take the worker's path policy, which validate() applies through check_payload_path
        (``allow_backing`` None keeps the current --allow-backing-files setting)."""
        self.allowed_paths = None if allowed is None else tuple(allowed)
        self.protected_paths = tuple(protected)
        if allow_backing is not None:
            self.allow_backing_files = bool(allow_backing)

    def check_payload_path(self, path, field, *, for_output=False):
        """The resolved path, or JobValidationError PATH_NOT_ALLOWED when the policy refuses it.

        Call it in validate() before anything else looks at the path (exists, regular file,
        size): the refusal never depends on what exists outside the allowed directories.
        """
        return validate_path(path, field, allowed=self.allowed_paths,
                             protected=self.protected_paths if for_output else ())

    def engine_status(self):
        return True, "built in"

    def validate(self, data):
        """Raise JobValidationError for a payload this handler cannot run."""

    def execute(self, context, data):
        raise NotImplementedError

    def cleanup(self, context):
        """Release what execute left behind; must not raise."""


class ImageHandler(Handler):
    """A handler whose payload names a disk image (``image.path``) and may name an output
    (``output.destination``); subclasses check the payload's shape in ``_check_payload``."""

    #: the payload objects that may name an output file (``destination``, ``overwrite``)
    output_sections = ("output",)

    def validate(self, data):
        data = self._check_payload(data)
        # the path policy before anything looks at the file system: a refused path gets the
        # same PATH_NOT_ALLOWED whether or not something exists there (and the job is rejected)
        real = self.check_payload_path(data["image"]["path"], "payload.data.image.path")
        for section in self.output_sections:
            target = data.get(section) or {}
            if target.get("destination") is not None:
                self.check_payload_path(target["destination"], f"payload.data.{section}.destination",
                                        for_output=True)
        require_image_file(data["image"]["path"], "payload.data.image.path")
        # what the image references (backing files, data files, extents), before anything opens it
        check_chain(real, require_format(data["image"].get("format"), "payload.data.image.format",
                                         default="qcow2"),
                    "payload.data.image.path", allowed=self.allowed_paths,
                    allow_backing=self.allow_backing_files).close()

    def _check_payload(self, data):
        """The payload's shape and values (returned as the dict to use); looks at nothing on
        the file system."""
        raise NotImplementedError

    @staticmethod
    def _check_output(data, section="output"):
        """``payload.data.<section>``'s shared fields (destination, overwrite); the dict or None."""
        output = require_dict(data.get(section), f"payload.data.{section}", required=False)
        if output is not None:
            if output.get("destination") is not None:
                require_path(output["destination"], f"payload.data.{section}.destination")
            require_bool(output.get("overwrite"), f"payload.data.{section}.overwrite", False)
        return output

    @staticmethod
    def _destination(context, data, default_name, source, section="output"):
        """(destination, overwrite) of a run: ``<section>.destination`` under the path policy, or
        ``<work-dir>/<default_name>``; OUTPUT_EXISTS when it is the source image, or when
        something is there, unless overwrite is set or it is this job's own earlier output (a
        re-run after its outcome was lost)."""
        output = data.get(section) or {}
        overwrite = bool(output.get("overwrite"))
        field = f"payload.data.{section}.destination"
        if output.get("destination"):
            dest = context.check_path(output["destination"], field, for_output=True)
        else:
            dest = os.path.join(os.path.realpath(context.work_dir), default_name)
        if dest == source:
            raise HandlerError("OUTPUT_EXISTS", f"the destination {dest} is the source image",
                               phase="validation", details={"path": dest})
        check_destination(dest, field, overwrite, job_id=context.job_id)
        return dest, overwrite
