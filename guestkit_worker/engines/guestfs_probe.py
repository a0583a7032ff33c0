#!/usr/bin/python3
"""Inspect one disk image with libguestfs and print one JSON document on stdout.

Standalone on purpose: it needs only the standard library and the ``guestfs`` Python binding
(Debian package python3-guestfs), so the worker runs it with the *system* python even when the
worker itself lives in another interpreter.  One appliance is launched; the drive is always
added read-only with its format given explicitly (a raw image is never format-probed).

Usage::

    guestfs_probe.py --image PATH --format FMT [--sections packages,users,...] [--deep-scan]
                     [--extract-dir DIR]

Sections: packages, services, users, network, security, storage, databases (what each reads
is ``guestfs_sections.py`` beside this file, imported from this file's directory).  The
operating system block and the mountpoints are always reported.  ``--extract-dir`` copies
os-release and the package databases (dpkg, rpm, apk; each size-capped) into DIR, an empty
directory of the worker's, with ``manifest.json`` naming them, for a vulnerability scan that
parses them in the worker (the report's ``package_files`` gives the count and notes).

Output: ``{"probe_version": 1, "engine": {...}, "operating_system": {...}, ...}``; an
expected failure prints ``{"error": {"code": ..., "message": ...}}`` instead (exit status 0 in
both cases).  Progress goes to stderr as ``@progress {"phase": ..., "percent": ..., "message": ...}``
lines, and ``@sockdir PATH`` names the socket directory libguestfs made outside TMPDIR (the
worker removes it should it have to kill the probe); anything else on stderr is libguestfs
chatter (set LIBGUESTFS_DEBUG=1 for a lot of it).
"""

import argparse
import json
import os
import re
import sys
import threading
import time

# the sections module beside this file: found however the script is run (python -P and
# PYTHONSAFEPATH leave the script's directory off sys.path)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from guestfs_sections import (  # noqa: E402
    Guest,
    copy_package_files,
    kernels,
    known,
    section_databases,
    section_filesystems,
    section_network,
    section_packages,
    section_security,
    section_services,
    section_storage,
    section_users,
)

PROBE_VERSION = 1
ALL_SECTIONS = ("packages", "services", "users", "network", "security", "storage", "databases")


def progress(phase, percent=None, message=""):
    """Tell the worker where we are (one line on stderr)."""
    event = {"phase": phase, "message": message}
    if percent is not None:
        event["percent"] = round(float(percent), 1)
    sys.stderr.write("@progress " + json.dumps(event) + "\n")
    sys.stderr.flush()


def report_sockdir(timeout=120.0, poll=0.05):
    """Print ``@sockdir DIR`` once qemu (our child) shows its guestfsd socket directory.

    For root, libguestfs makes its socket directory in /tmp whatever TMPDIR says, and leaves it
    behind when it is killed; the worker removes what this line names.
    """
    me = str(os.getpid())
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat", "rb") as fh:
                    stat = fh.read()
                if stat[stat.rfind(b")") + 2:].split()[1].decode() != me:
                    continue
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    args = fh.read().split(b"\0")
            except (OSError, IndexError):
                continue
            for arg in args:
                m = re.search(rb"path=([^,]+)/guestfsd\.sock", arg)
                if m:
                    sys.stderr.write("@sockdir {}\n".format(m.group(1).decode("utf-8", "replace")))
                    sys.stderr.flush()
                    return
        time.sleep(poll)


def first_line(exc):
    """libguestfs appends a paragraph of debugging advice to errors: keep the first line."""
    return (str(exc).strip().splitlines() or ["unknown error"])[0]


def operating_system(g, root):
    def call(name):
        try:
            return getattr(g, "inspect_get_" + name)(root)
        except (RuntimeError, AttributeError):
            return None

    distro = known(call("distro"))
    major, minor = call("major_version") or 0, call("minor_version") or 0
    if not major and not minor:
        version = None
    elif distro == "ubuntu":
        version = f"{major:d}.{minor:02d}"
    else:
        version = f"{major:d}.{minor:d}"
    return {
        "root": root,
        "type": known(call("type")),
        "distribution": distro,
        "product_name": known(call("product_name")),
        "product_variant": known(call("product_variant")),
        "version": version,
        "major_version": major,
        "minor_version": minor,
        "hostname": known(call("hostname")),
        "arch": known(call("arch")),
        "package_format": known(call("package_format")),
        "package_management": known(call("package_management")),
        "osinfo": known(call("osinfo")),
    }


def mount_all(g, root, guest):
    """Mount the root's filesystems read-only, shortest mountpoint first; return what mounted."""
    try:
        mps = g.inspect_get_mountpoints(root)
    except RuntimeError as exc:
        guest.warn("mountpoints", exc)
        mps = {"/": root}
    if isinstance(mps, list):  # binding without python_return_dict
        mps = dict(mps)
    mounted = []
    for mp in sorted(mps, key=lambda m: (len(m), m)):
        try:
            g.mount_ro(mps[mp], mp)
            mounted.append({"mountpoint": mp, "device": mps[mp]})
        except RuntimeError as exc:
            guest.warn(f"mount {mps[mp]} on {mp}", exc)
    return mounted


def inspect(image, fmt, sections, deep, extract_dir=None):
    import guestfs  # imported here so --help works without the binding

    g = guestfs.GuestFS(python_return_dict=True)
    doc = {"probe_version": PROBE_VERSION}
    try:
        v = g.version()
        engine_version = "{}.{}.{}{}".format(v["major"], v["minor"], v["release"], v.get("extra", ""))
        doc["engine"] = {"name": "libguestfs", "version": engine_version, "backend": g.get_backend()}
        try:
            g.add_drive_opts(image, format=fmt, readonly=True)
        except RuntimeError as exc:
            return {"error": {"code": "IMAGE_OPEN_FAILED", "message": first_line(exc)}}
        watcher = threading.Thread(target=report_sockdir, name="sockdir", daemon=True)
        watcher.start()
        progress("launch", 0, "launching the libguestfs appliance")
        try:
            g.launch()
        except RuntimeError as exc:
            return {"error": {"code": "ENGINE_LAUNCH_FAILED", "message": first_line(exc)}}
        progress("launch", 100, "appliance running")
        progress("inspection", 0, "looking for operating systems")
        roots = g.inspect_os()
        if not roots:
            fss = section_filesystems(g, Guest(g))
            return {"error": {"code": "NO_OPERATING_SYSTEM",
                              "message": f"no operating system found in {image} "
                                         f"({len(fss)} filesystem(s) seen)",
                              "filesystems": fss}}
        root = sorted(roots)[0]
        guest = Guest(g)
        doc["operating_system"] = operating_system(g, root)
        doc["other_roots"] = [operating_system(g, r) for r in sorted(roots)[1:]]
        doc["mountpoints"] = mount_all(g, root, guest)
        steps = [s for s in ALL_SECTIONS if s in sections]
        users = None
        for i, name in enumerate(steps):
            progress("inspection", 10 + 90.0 * i / max(1, len(steps)), "reading " + name)
            try:
                if name == "packages":
                    doc["packages"] = section_packages(g, root, guest, deep)
                elif name == "users":
                    users = doc["users"] = section_users(guest)
                elif name == "services":
                    doc["services"] = section_services(guest)
                elif name == "network":
                    doc["network"] = section_network(g, root, guest)
                elif name == "security":
                    if users is None and deep:
                        users = section_users(guest)
                    doc["security"] = section_security(guest, deep, users)
                elif name == "storage":
                    doc["filesystems"] = section_filesystems(g, guest)
                    doc["storage"] = section_storage(g, guest)
                elif name == "databases":
                    doc["databases"] = section_databases(guest)
            except RuntimeError as exc:  # one broken section must not lose the others
                guest.warn(name, exc)
        if deep:
            doc["kernels"] = kernels(guest)
        if extract_dir:
            progress("inspection", 95, "copying the package databases")
            manifest = copy_package_files(guest, extract_dir)
            doc["package_files"] = {"copied": sorted(manifest["files"]), "notes": manifest["notes"]}
        doc["warnings"] = guest.warnings
        progress("inspection", 100, "inspection complete")
        try:
            g.umount_all()
            g.shutdown()
        except RuntimeError:
            pass
        return doc
    finally:
        g.close()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Inspect a disk image with libguestfs (JSON on stdout).")
    parser.add_argument("--image", required=True)
    parser.add_argument("--format", required=True)
    parser.add_argument("--sections", default=",".join(ALL_SECTIONS))
    parser.add_argument("--deep-scan", action="store_true")
    parser.add_argument("--extract-dir", help="copy the package databases into this directory")
    args = parser.parse_args(argv)
    sections = {s for s in args.sections.split(",") if s}
    unknown = sections - set(ALL_SECTIONS)
    if unknown:
        parser.error("unknown sections: " + ", ".join(sorted(unknown)))
    try:
        doc = inspect(args.image, args.format, sections, args.deep_scan, args.extract_dir)
    except ImportError as exc:
        doc = {"error": {"code": "ENGINE_UNAVAILABLE", "message": f"cannot import guestfs: {exc}"}}
    except RuntimeError as exc:
        doc = {"error": {"code": "INSPECTION_FAILED", "message": first_line(exc)}}
    sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
