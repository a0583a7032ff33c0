#!/usr/bin/python3
"""Inspect one disk image with libguestfs and print one JSON document on stdout.

Standalone on purpose: it needs only the standard library and the ``guestfs`` Python binding
(Debian package python3-guestfs), so the worker runs it with the *system* python even when the
worker itself lives in another interpreter.  One appliance is launched; the drive is always
added read-only with its format given explicitly (a raw image is never format-probed).

Usage::

    guestfs_probe.py --image PATH --format FMT [--sections packages,users,...] [--deep-scan]

Sections: packages, services, users, network, security, storage, databases.  The operating
system block and the mountpoints are always reported.

Output: ``{"probe_version": 1, "engine": {...}, "operating_system": {...}, ...}``; an
expected failure prints ``{"error": {"code": ..., "message": ...}}`` instead (exit status 0 in
both cases).  Progress goes to stderr as ``@progress {"phase": ..., "percent": ..., "message": ...}``
lines, and ``@sockdir PATH`` names the socket directory libguestfs made outside TMPDIR (the
worker removes it should it have to kill the probe); anything else on stderr is libguestfs chatter (set LIBGUESTFS_DEBUG=1 for a lot of it).
"""

import argparse
import json
import os
import posixpath
import re
import sys
import threading
import time

PROBE_VERSION = 1
ALL_SECTIONS = ("packages", "services", "users", "network", "security", "storage", "databases")
MAX_TEXT = 2 * 1024 * 1024  # never read more than this from one guest file
NOLOGIN_SHELLS = {"", "/bin/false", "/usr/bin/false", "/sbin/nologin", "/usr/sbin/nologin",
                  "/bin/sync", "/usr/bin/sync", "/sbin/shutdown", "/sbin/halt"}
DATABASE_DIRS = (("mysql", "/var/lib/mysql"), ("postgresql", "/var/lib/postgresql"),
                 ("postgresql", "/var/lib/pgsql"), ("mongodb", "/var/lib/mongodb"),
                 ("mongodb", "/var/lib/mongo"), ("redis", "/var/lib/redis"),
                 ("couchdb", "/var/lib/couchdb"), ("cassandra", "/var/lib/cassandra"),
                 ("elasticsearch", "/var/lib/elasticsearch"))


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
                with open("/proc/%s/stat" % pid, "rb") as fh:
                    stat = fh.read()
                if stat[stat.rfind(b")") + 2:].split()[1].decode() != me:
                    continue
                with open("/proc/%s/cmdline" % pid, "rb") as fh:
                    args = fh.read().split(b"\0")
            except (OSError, IndexError):
                continue
            for arg in args:
                m = re.search(rb"path=([^,]+)/guestfsd\.sock", arg)
                if m:
                    sys.stderr.write("@sockdir %s\n" % m.group(1).decode("utf-8", "replace"))
                    sys.stderr.flush()
                    return
        time.sleep(poll)


def first_line(exc):
    """libguestfs appends a paragraph of debugging advice to errors: keep the first line."""
    return (str(exc).strip().splitlines() or ["unknown error"])[0]


def known(value):
    """libguestfs says 'unknown' for what it could not find: report that as None."""
    return None if value in ("unknown", "", None) else value


class Guest:
    """Read-only helpers over a launched handle with the guest's filesystems mounted."""

    def __init__(self, g):
        self.g = g
        self.warnings = []

    def warn(self, what, exc):
        self.warnings.append("%s: %s" % (what, str(exc).strip()))

    def is_file(self, path):
        try:
            return bool(self.g.is_file(path, followsymlinks=True))
        except RuntimeError:
            return False

    def is_dir(self, path):
        try:
            return bool(self.g.is_dir(path, followsymlinks=True))
        except RuntimeError:
            return False

    def text(self, path):
        """The file's text (UTF-8, errors replaced), None when it is absent or unreadable."""
        if not self.is_file(path):
            return None
        try:
            size = self.g.filesize(path)
            data = self.g.pread(path, MAX_TEXT, 0) if size > MAX_TEXT else self.g.read_file(path)
        except RuntimeError as exc:
            self.warn("read " + path, exc)
            return None
        if isinstance(data, str):
            return data
        return data.decode("utf-8", "replace")

    def ls(self, path):
        if not self.is_dir(path):
            return []
        try:
            return sorted(self.g.ls(path))
        except RuntimeError as exc:
            self.warn("list " + path, exc)
            return []

    def readlink(self, path):
        try:
            return self.g.readlink(path)
        except RuntimeError:
            return None


def key_values(text, sep="="):
    """KEY=value lines (comments and blanks ignored, quotes stripped) as a dict."""
    out = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or sep not in line:
            continue
        key, _, value = line.partition(sep)
        out[key.strip()] = value.strip().strip("'\"")
    return out


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
        version = "%d.%02d" % (major, minor)
    else:
        version = "%d.%d" % (major, minor)
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
            guest.warn("mount %s on %s" % (mps[mp], mp), exc)
    return mounted


def section_packages(g, root, guest, deep):
    apps = []
    try:
        apps = g.inspect_list_applications2(root)
    except RuntimeError as exc:
        guest.warn("packages", exc)
    out = []
    for app in apps:
        entry = {"name": app.get("app2_name"), "version": app.get("app2_version") or None,
                 "release": app.get("app2_release") or None, "arch": app.get("app2_arch") or None}
        if app.get("app2_epoch"):
            entry["epoch"] = app["app2_epoch"]
        if deep and app.get("app2_summary"):
            entry["summary"] = app["app2_summary"]
        out.append(entry)
    out.sort(key=lambda p: (p["name"] or "", p["version"] or ""))
    manager = None
    try:
        manager = known(g.inspect_get_package_management(root))
    except RuntimeError:
        pass
    return {"count": len(out), "manager": manager, "packages": out}


def section_users(guest):
    text = guest.text("/etc/passwd")
    if text is None:
        return {"count": 0, "login_count": 0, "accounts": [], "source": None}
    uid_min = 1000
    m = re.search(r"^\s*UID_MIN\s+(\d+)", guest.text("/etc/login.defs") or "", re.M)
    if m:
        uid_min = int(m.group(1))
    accounts = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 7 or line.startswith(("#", "+", "-")):
            continue
        try:
            uid, gid = int(fields[2]), int(fields[3])
        except ValueError:
            continue
        shell = fields[6].strip()
        login = shell not in NOLOGIN_SHELLS and not shell.endswith(("/nologin", "/false"))
        accounts.append({"name": fields[0], "uid": uid, "gid": gid, "gecos": fields[4],
                         "home": fields[5], "shell": shell, "login": login,
                         "system": uid < uid_min or uid == 65534})
    return {"count": len(accounts), "login_count": sum(a["login"] for a in accounts),
            "uid_min": uid_min, "accounts": accounts, "source": "/etc/passwd"}


def section_services(guest):
    base = "/etc/systemd/system"
    if not guest.is_dir(base):
        return {"manager": None, "count": 0, "enabled": []}
    units = {}
    for entry in guest.ls(base):
        m = re.fullmatch(r"(.+)\.(wants|requires)", entry)
        if not m:
            continue
        for unit in guest.ls(posixpath.join(base, entry)):
            link = posixpath.join(base, entry, unit)
            target = guest.readlink(link)
            info = units.setdefault(unit, {"name": unit, "wanted_by": [], "unit_file": target})
            info["wanted_by"].append(m.group(1))
    default = guest.readlink(posixpath.join(base, "default.target"))
    enabled = sorted(units.values(), key=lambda u: u["name"])
    return {"manager": "systemd", "count": len(enabled),
            "default_target": posixpath.basename(default) if default else None, "enabled": enabled}


def section_network(g, root, guest):
    hostname = None
    try:
        hostname = known(g.inspect_get_hostname(root))
    except RuntimeError:
        pass
    dns, search, source = [], [], None
    resolv = guest.text("/etc/resolv.conf")
    if resolv is not None:
        source = "/etc/resolv.conf"
        for line in resolv.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                dns.append(words[1])
            elif words and words[0] in ("search", "domain"):
                search.extend(words[1:])
    if not dns:
        resolved = key_values(guest.text("/etc/systemd/resolved.conf"))
        if resolved.get("DNS"):
            dns, source = resolved["DNS"].split(), "/etc/systemd/resolved.conf"
    interfaces = []
    for line in (guest.text("/etc/network/interfaces") or "").splitlines():
        words = line.split()
        if len(words) >= 4 and words[0] == "iface":
            interfaces.append({"name": words[1], "method": words[3], "source": "/etc/network/interfaces"})
    for name in guest.ls("/etc/sysconfig/network-scripts"):
        if name.startswith("ifcfg-") and name != "ifcfg-lo":
            cfg = key_values(guest.text("/etc/sysconfig/network-scripts/" + name))
            interfaces.append({"name": cfg.get("DEVICE", name[6:]), "method": cfg.get("BOOTPROTO"),
                               "source": "/etc/sysconfig/network-scripts/" + name})
    return {"hostname": hostname, "dns_servers": dns, "search_domains": search, "dns_source": source,
            "interfaces": interfaces,
            "netplan_files": [n for n in guest.ls("/etc/netplan") if n.endswith(".yaml")],
            "networkmanager_connections": guest.ls("/etc/NetworkManager/system-connections")}


def section_security(guest, deep, users):
    out = {}
    cfg = guest.text("/etc/selinux/config")
    if cfg is not None:
        kv = key_values(cfg)
        out["selinux"] = {"present": True, "mode": kv.get("SELINUX"), "type": kv.get("SELINUXTYPE")}
    else:
        out["selinux"] = {"present": False, "mode": None, "type": None}
    out["apparmor"] = {"present": guest.is_dir("/etc/apparmor.d")}
    sshd = guest.text("/etc/ssh/sshd_config")
    if sshd is not None:
        kv = {}
        for line in sshd.splitlines():  # sshd uses the first value given for a keyword
            words = line.split(None, 1)
            if len(words) == 2 and not words[0].startswith("#"):
                kv.setdefault(words[0].lower(), words[1].strip())
        out["ssh"] = {"permit_root_login": kv.get("permitrootlogin"),
                      "password_authentication": kv.get("passwordauthentication")}
    if deep and users:
        keys = []
        for acct in users.get("accounts", []):
            if acct["login"]:
                text = guest.text(posixpath.join(acct["home"], ".ssh/authorized_keys"))
                if text:
                    keys.append({"user": acct["name"],
                                 "keys": sum(1 for l in text.splitlines() if l.strip() and not l.startswith("#"))})
        out["ssh_authorized_keys"] = keys
    return out


def section_filesystems(g, guest):
    out = []
    try:
        fss = g.list_filesystems()
    except RuntimeError as exc:
        guest.warn("filesystems", exc)
        return out
    if isinstance(fss, list):
        fss = dict(fss)
    for dev in sorted(fss):
        entry = {"device": dev, "type": known(fss[dev]), "uuid": None, "label": None}
        if entry["type"] not in (None, "swap"):
            for key, fn in (("uuid", g.vfs_uuid), ("label", g.vfs_label)):
                try:
                    entry[key] = fn(dev) or None
                except RuntimeError:
                    pass
        out.append(entry)
    return out


def section_storage(g, guest):
    devices, partitions, lvs = [], [], []
    try:
        for dev in g.list_devices():
            entry = {"device": dev, "size_bytes": g.blockdev_getsize64(dev), "partition_table": None}
            try:
                entry["partition_table"] = g.part_get_parttype(dev)
            except RuntimeError:
                pass
            devices.append(entry)
        for part in g.list_partitions():
            partitions.append({"device": part, "size_bytes": g.blockdev_getsize64(part)})
        lvs = list(g.lvs())
    except RuntimeError as exc:
        guest.warn("storage", exc)
    return {"devices": devices, "partitions": partitions, "logical_volumes": lvs}


def section_databases(guest):
    found = []
    for engine, path in DATABASE_DIRS:
        if guest.is_dir(path):
            entries = guest.ls(path)
            entry = {"engine": engine, "data_dir": path, "entries": len(entries)}
            if engine == "postgresql":
                entry["versions"] = [e for e in entries if re.fullmatch(r"\d+(\.\d+)?", e)]
            found.append(entry)
    return {"count": len(found), "detected": found}


def kernels(guest):
    return [n for n in guest.ls("/boot") if n.startswith(("vmlinuz", "vmlinux", "kernel"))]


def inspect(image, fmt, sections, deep):
    import guestfs  # imported here so --help works without the binding

    g = guestfs.GuestFS(python_return_dict=True)
    doc = {"probe_version": PROBE_VERSION}
    try:
        v = g.version()
        doc["engine"] = {"name": "libguestfs", "version": "%s.%s.%s%s" % (
            v["major"], v["minor"], v["release"], v.get("extra", "")),
            "backend": g.get_backend()}
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
                              "message": "no operating system found in %s (%d filesystem(s) seen)"
                                         % (image, len(fss)),
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
    parser = argparse.ArgumentParser(description="Inspect a disk image with libguestfs (JSON on stdout).")
    parser.add_argument("--image", required=True)
    parser.add_argument("--format", required=True)
    parser.add_argument("--sections", default=",".join(ALL_SECTIONS))
    parser.add_argument("--deep-scan", action="store_true")
    args = parser.parse_args(argv)
    sections = {s for s in args.sections.split(",") if s}
    unknown = sections - set(ALL_SECTIONS)
    if unknown:
        parser.error("unknown sections: " + ", ".join(sorted(unknown)))
    try:
        doc = inspect(args.image, args.format, sections, args.deep_scan)
    except ImportError as exc:
        doc = {"error": {"code": "ENGINE_UNAVAILABLE", "message": "cannot import guestfs: %s" % exc}}
    except RuntimeError as exc:
        doc = {"error": {"code": "INSPECTION_FAILED", "message": first_line(exc)}}
    sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
