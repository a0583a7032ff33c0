"""What each section of an inspection report reads from a guest whose filesystems libguestfs
has mounted read-only: packages, users, services, network, security, storage, databases and
kernels, through the :class:`Guest` helpers (absent or unreadable files become empty answers
and warnings, never failures).

A helper of the standalone script ``guestfs_probe.py``, which imports it from its own
directory when the system python runs it: standard library only, like the script.
"""

import contextlib
import posixpath
import re

MAX_TEXT = 2 * 1024 * 1024  # never read more than this from one guest file
NOLOGIN_SHELLS = {"", "/bin/false", "/usr/bin/false", "/sbin/nologin", "/usr/sbin/nologin",
                  "/bin/sync", "/usr/bin/sync", "/sbin/shutdown", "/sbin/halt"}
DATABASE_DIRS = (("mysql", "/var/lib/mysql"), ("postgresql", "/var/lib/postgresql"),
                 ("postgresql", "/var/lib/pgsql"), ("mongodb", "/var/lib/mongodb"),
                 ("mongodb", "/var/lib/mongo"), ("redis", "/var/lib/redis"),
                 ("couchdb", "/var/lib/couchdb"), ("cassandra", "/var/lib/cassandra"),
                 ("elasticsearch", "/var/lib/elasticsearch"))


def known(value):
    """libguestfs says 'unknown' for what it could not find: report that as None."""
    return None if value in ("unknown", "", None) else value


class Guest:
    """Read-only helpers over a launched handle with the guest's filesystems mounted."""

    def __init__(self, g):
        self.g = g
        self.warnings = []

    def warn(self, what, exc):
        self.warnings.append(f"{what}: {str(exc).strip()}")

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
    with contextlib.suppress(RuntimeError):
        manager = known(g.inspect_get_package_management(root))
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
    with contextlib.suppress(RuntimeError):
        hostname = known(g.inspect_get_hostname(root))
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
            interfaces.append({"name": words[1], "method": words[3],
                               "source": "/etc/network/interfaces"})
    for name in guest.ls("/etc/sysconfig/network-scripts"):
        if name.startswith("ifcfg-") and name != "ifcfg-lo":
            cfg = key_values(guest.text("/etc/sysconfig/network-scripts/" + name))
            interfaces.append({"name": cfg.get("DEVICE", name[6:]), "method": cfg.get("BOOTPROTO"),
                               "source": "/etc/sysconfig/network-scripts/" + name})
    return {"hostname": hostname, "dns_servers": dns, "search_domains": search,
            "dns_source": source, "interfaces": interfaces,
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
                    lines = text.splitlines()
                    count = sum(1 for row in lines if row.strip() and not row.startswith("#"))
                    keys.append({"user": acct["name"], "keys": count})
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
                with contextlib.suppress(RuntimeError):
                    entry[key] = fn(dev) or None
        out.append(entry)
    return out


def section_storage(g, guest):
    devices, partitions, lvs = [], [], []
    try:
        for dev in g.list_devices():
            entry = {"device": dev, "size_bytes": g.blockdev_getsize64(dev), "partition_table": None}
            with contextlib.suppress(RuntimeError):
                entry["partition_table"] = g.part_get_parttype(dev)
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


# the files a vulnerability scan reads, each with the most bytes copied out of the guest
PACKAGE_FILES = (("/etc/os-release", 64 * 1024), ("/usr/lib/os-release", 64 * 1024),
                 ("/var/lib/dpkg/status", 64 << 20), ("/lib/apk/db/installed", 64 << 20),
                 ("/usr/lib/sysimage/rpm/rpmdb.sqlite", 256 << 20),
                 ("/usr/lib/sysimage/rpm/rpmdb.sqlite-wal", 256 << 20),
                 ("/var/lib/rpm/rpmdb.sqlite", 256 << 20), ("/var/lib/rpm/rpmdb.sqlite-wal", 256 << 20),
                 ("/usr/lib/sysimage/rpm/Packages", 256 << 20), ("/var/lib/rpm/Packages", 256 << 20))
PACKAGE_FILES_TOTAL = 512 << 20


def _copy_one(guest, path, cap, local, budget):
    """Copy path to local when it is a regular file within cap and budget; (bytes, note)."""
    g = guest.g
    try:
        size = g.filesize(path)
    except RuntimeError as exc:
        return 0, f"{path}: {str(exc).strip()[:200]}"
    if size > min(cap, budget):
        return 0, f"{path}: {size} bytes, more than the {min(cap, budget)} a scan copies; not read"
    try:
        g.download(path, local)
    except RuntimeError as exc:
        return 0, f"{path}: {str(exc).strip()[:200]}"
    return size, None


def copy_package_files(guest, directory):
    """Copy os-release and the package databases into directory (size-capped, regular files
    only, each guest file once however many links lead to it) and write manifest.json there:
    ``{"files": {guest path: local name}, "notes": [...]}``; returns the manifest."""
    import json
    import os

    files, notes, seen, budget = {}, [], {}, PACKAGE_FILES_TOTAL
    for path, cap in PACKAGE_FILES:
        if not guest.is_file(path):
            continue
        real = path
        with contextlib.suppress(RuntimeError):
            real = guest.g.realpath(path)
        if real in seen:  # /var/lib/rpm -> /usr/lib/sysimage/rpm on Fedora
            files[path] = seen[real]
            continue
        name = path.strip("/").replace("/", "_")
        size, note = _copy_one(guest, path, cap, os.path.join(directory, name), budget)
        if note:
            notes.append(note)
            continue
        budget -= size
        files[path] = seen[real] = name
    manifest = {"files": files, "notes": notes}
    with open(os.path.join(directory, "manifest.json"), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh)
    return manifest
