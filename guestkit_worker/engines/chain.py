"""An image's chain (backing files, external data files, VMDK extents) checked before any engine
opens it, and the engine-side spec that opens nothing else.

An image file can name other files that qemu then opens on its own: a qcow2 backing file or
external data file, a VMDK descriptor's extents or parent.  Without a check, a job could read
any file the worker can (``/etc/shadow`` as a backing file, converted to raw), reach the
network (``http://``, ``nbd://`` ... backing names), or hang on a FIFO.  :func:`check_chain`
reads each file's own metadata with plain reads from one descriptor -- qcow2 headers and
header extensions, VMDK sparse headers and descriptor text -- one level at a time, so no file
is opened by qemu (or by us) before it has passed the policy:

* by default any reference is refused with ``BACKING_FILE_NOT_ALLOWED`` (the message says
  which kind and the name the image records);
* with ``allow_backing`` (``--allow-backing-files``) a reference must be a plain local name
  (never ``json:`` or ``PROTOCOL:``), resolve inside the allowed directories, be a regular file,
  and, for a backing file, have its format recorded in the image; then it is checked the same
  way, at most ``MAX_DEPTH`` levels deep.

:meth:`Chain.qemu_spec` then gives qemu a ``json:`` filename naming every file explicitly, with
``"backing": null`` at the end, and the top file through ``/proc/<pid>/fd/<n>`` of the
descriptor that was checked: a file renamed over the checked one changes nothing, and a
backing file written into the header after the check is never opened.  What remains: someone
who may write the image file itself could, between the check and qemu's open, add an external
data file to a qcow2 header; VMDK extents (only with ``allow_backing``) are opened by name.
"""

import json
import os
import re
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from ..job.errors import HandlerError, JobValidationError
from ..system.paths import refusal

CODE = "BACKING_FILE_NOT_ALLOWED"
#: Deepest chain followed with --allow-backing-files.
MAX_DEPTH = 16
_HEADER_BYTES = 1 << 16
_QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_EXT_BACKING_FORMAT = 0xE2792ACA
_QCOW2_EXT_DATA_FILE = 0x44415441
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2
_VMDK4_MAGIC = b"KDMV"
_VMDK3_MAGIC = b"COWD"
_EXTENT_RE = re.compile(r'^\s*(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)")?', re.M)
_PARENT_RE = re.compile(r'^\s*parentFileNameHint\s*=\s*"([^"]*)"', re.M)
_FLAT_EXTENTS = ("FLAT", "VMFS")
_SPARSE_EXTENTS = ("SPARSE", "VMFSSPARSE", "SESPARSE")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


@dataclass
class Link:
    """One checked file of a chain."""

    path: str
    fmt: str
    data_file: Optional[str] = None
    backing: Optional["Link"] = None
    extents: list[str] = field(default_factory=list)


class Chain:
    """The checked chain of one image; holds the top file open until :meth:`close`."""

    def __init__(self, top: Link, fd: int):
        self.top = top
        self._fd = fd

    @property
    def files(self) -> list[str]:
        """Every file of the chain, top first."""
        out, link = [], self.top
        while link is not None:
            out += [link.path] + ([link.data_file] if link.data_file else []) + link.extents
            link = link.backing
        return out

    def qemu_spec(self, backing: bool = True) -> str:
        """A ``json:`` filename for qemu naming every file of the chain, and nothing else
        (``backing=False``: the top file alone, for ``qemu-img info``, which never opens backing
        files and refuses their options)."""
        return "json:" + json.dumps(self._node(self.top, pinned=True, backing=backing), sort_keys=True)

    def _node(self, link: Link, pinned: bool = False, backing: bool = True) -> dict:
        path = f"/proc/{os.getpid()}/fd/{self._fd}" if pinned and not link.extents else link.path
        node = {"driver": link.fmt, "file": {"driver": "file", "filename": path},
                "backing": self._node(link.backing) if link.backing and backing else None}
        if link.data_file:
            node["data-file"] = {"driver": "file", "filename": link.data_file}
        return node

    def close(self) -> None:
        """Release the top file's descriptor (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _refuse(field_name: str, message: str, **_details) -> JobValidationError:
    return JobValidationError(field_name, message, code=CODE)


def _read_at(fd: int, offset: int, size: int) -> bytes:
    return os.pread(fd, size, offset)


def _qcow2_refs(fd: int):
    """(backing name, backing format, data file name, data-file flag) from a qcow2 header."""
    head = _read_at(fd, 0, _HEADER_BYTES)
    if len(head) < 72 or head[:4] != _QCOW2_MAGIC:
        raise ValueError("not a qcow2 image")
    version, backing_offset, backing_size = struct.unpack_from(">IQI", head, 4)
    cluster_bits = struct.unpack_from(">I", head, 20)[0]
    backing = None
    if backing_offset and backing_size:
        if backing_size > 1023:
            raise ValueError("backing file name longer than 1023 bytes")
        backing = _read_at(fd, backing_offset, backing_size).decode("utf-8", "replace")
    incompatible, ext_start = 0, 72
    if version >= 3:
        if len(head) < 104:
            raise ValueError("truncated qcow2 v3 header")
        incompatible = struct.unpack_from(">Q", head, 72)[0]
        ext_start = struct.unpack_from(">I", head, 100)[0]
    backing_fmt = data_file = None
    end = min(len(head), 1 << cluster_bits if 9 <= cluster_bits <= 21 else len(head))
    pos = ext_start
    while pos + 8 <= end:
        ext_type, length = struct.unpack_from(">II", head, pos)
        if ext_type == 0:
            break
        data = head[pos + 8:pos + 8 + length]
        if ext_type == _QCOW2_EXT_BACKING_FORMAT:
            backing_fmt = data.decode("utf-8", "replace")
        elif ext_type == _QCOW2_EXT_DATA_FILE:
            data_file = data.decode("utf-8", "replace")
        pos += 8 + ((length + 7) & ~7)
    return backing, backing_fmt, data_file, bool(incompatible & _QCOW2_INCOMPAT_DATA_FILE)


def _vmdk_refs(fd: int):
    """(parent name, [(extent type, extent file name)]) of a VMDK: the text descriptor, or a
    sparse file's embedded one (whose extents qemu uses only when its capacity is 0)."""
    head = _read_at(fd, 0, 512)
    if head[:4] == _VMDK3_MAGIC:
        return None, []
    if head[:4] == _VMDK4_MAGIC:
        capacity, _grain, desc_offset, desc_size = struct.unpack_from("<QQQQ", head, 12)
        text = b""
        if desc_offset and desc_size:
            text = _read_at(fd, desc_offset * 512, min(desc_size * 512, _HEADER_BYTES))
        text = text.split(b"\0", 1)[0].decode("utf-8", "replace")
        parent = _PARENT_RE.search(text)
        extents = ([(m.group(3).upper(), m.group(4)) for m in _EXTENT_RE.finditer(text)]
                   if capacity == 0 else [])
        return (parent.group(1) if parent else None), extents
    text = _read_at(fd, 0, 1 << 20).split(b"\0", 1)[0].decode("utf-8", "replace")
    parent = _PARENT_RE.search(text)
    extents = [(m.group(3).upper(), m.group(4)) for m in _EXTENT_RE.finditer(text)]
    if not extents:
        raise ValueError("neither a sparse VMDK nor a descriptor with extents")
    return (parent.group(1) if parent else None), extents


def _has_protocol(name: str) -> bool:
    """qemu reads ``json:...`` and ``PROTOCOL:...`` (a colon before any slash) as non-files."""
    head = name.split("/", 1)[0]
    return name.startswith("json:") or ":" in head


class _Checker:
    def __init__(self, field_name: str, allowed: Optional[Sequence[str]], allow_backing: bool):
        self.field = field_name
        self.allowed = allowed
        self.allow_backing = allow_backing

    def referenced(self, owner: str, name: str, kind: str) -> str:
        """The resolved path of a file ``owner`` names, once it passes the policy."""
        shown = name if len(name) <= 300 else name[:300] + "..."
        if not self.allow_backing:
            raise _refuse(self.field, f"the image names {kind} {shown!r}; images that reference other "
                                      "files are refused (an operator may allow local ones with "
                                      "--allow-backing-files)", reference=kind)
        if not name or _has_protocol(name) or "\0" in name:
            raise _refuse(self.field, f"the image names {kind} {shown!r}, which is not a plain local "
                                      "file name (json: and protocols are never allowed)", reference=kind)
        path = os.path.join(os.path.dirname(owner), name)
        real, reason = refusal(path, allowed=self.allowed)
        if reason:
            raise _refuse(self.field, f"{kind} of the image: {reason}", reference=kind)
        try:
            st = os.stat(real)
        except OSError as exc:
            raise _refuse(self.field, f"{kind} {shown!r} of the image: {exc.strerror}",
                          reference=kind) from None
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(self.field, f"{kind} {shown!r} of the image is not a regular file", reference=kind)
        return real

    def link(self, path: str, fmt: str, fd: int, depth: int = 0) -> Link:
        if depth > MAX_DEPTH:
            raise _refuse(self.field, f"the chain is deeper than {MAX_DEPTH} files")
        link = Link(path, fmt)
        try:
            if fmt == "qcow2":
                backing, backing_fmt, data_file, has_data_file = _qcow2_refs(fd)
                if has_data_file or data_file:
                    if not data_file:
                        raise _refuse(self.field, "the image needs an external data file it does not name")
                    link.data_file = self.referenced(path, data_file, "an external data file")
                if backing:
                    real = self.referenced(path, backing, "a backing file")
                    if backing_fmt not in ("raw", "qcow2", "vmdk", "vdi", "vhdx", "vpc"):
                        raise _refuse(self.field, f"the backing file {backing!r} has no format recorded "
                                                  "(it would be probed); record it with qemu-img rebase -F")
                    link.backing = self.open_link(real, backing_fmt, depth + 1)
            elif fmt == "vmdk":
                parent, extents = _vmdk_refs(fd)
                for kind, name in extents:
                    if kind == "ZERO" or not name:
                        continue
                    if kind not in _FLAT_EXTENTS + _SPARSE_EXTENTS:
                        raise _refuse(self.field, f"the image has a {kind} extent, which is not supported")
                    real = self.referenced(path, name, "an extent")
                    if kind in _SPARSE_EXTENTS:
                        self.open_link(real, "vmdk", depth + 1)
                    link.extents.append(real)
                if parent:
                    link.backing = self.open_link(self.referenced(path, parent, "a parent image"),
                                                  "vmdk", depth + 1)
        except (ValueError, struct.error) as exc:
            raise JobValidationError(self.field, f"{path} is not a valid {fmt} image ({exc}); "
                                                 "is image.format right?", code="INVALID_IMAGE") from None
        return link

    def open_link(self, path: str, fmt: str, depth: int) -> Link:
        fd = os.open(path, _OPEN_FLAGS)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _refuse(self.field, "a file of the chain is not a regular file")
            return self.link(path, fmt, fd, depth)
        finally:
            os.close(fd)


def check_chain(path: str, fmt: str, field_name: str, *, allowed: Optional[Sequence[str]],
                allow_backing: bool = False) -> Chain:
    """Check ``path`` (already resolved and allowed) and what it references; see the module
    docstring.  Returns a :class:`Chain` holding the top file open (close it), or raises
    JobValidationError with code BACKING_FILE_NOT_ALLOWED, INVALID_IMAGE or INVALID_JOB."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise JobValidationError(field_name, f"cannot open {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise JobValidationError(field_name, f"{path} is not a regular file or block device")
        top = _Checker(field_name, allowed, allow_backing).link(path, fmt, fd)
        return Chain(top, fd)
    except BaseException:
        os.close(fd)
        raise


def checked_chain(path: str, fmt: str, field_name: str, *, allowed: Optional[Sequence[str]],
                  allow_backing: bool = False) -> Chain:
    """:func:`check_chain` for a running handler: a refusal is a HandlerError (phase validation)."""
    try:
        return check_chain(path, fmt, field_name, allowed=allowed, allow_backing=allow_backing)
    except JobValidationError as exc:
        raise HandlerError(exc.code, str(exc), phase="validation", details={"field": field_name}) from None
