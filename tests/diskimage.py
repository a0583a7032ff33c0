"""Build a small Debian-12-like disk image for tests, without root, loop devices or network.

``build_debian_image(directory)`` lays out a root tree, turns it into an ext4 filesystem with
``mkfs.ext4 -d``, puts that filesystem into the first partition of an MBR-partitioned raw file
(partition table written by ``sfdisk``) and makes a qcow2 copy with ``qemu-img convert``.  The
returned dict holds both paths and the values an inspection must find (``EXPECTED``).

``require_tool(...)`` skips a test when a system tool is missing -- or fails it when the
environment says ``CI=true``, because CI must exercise the real engines.
"""

import os
import shutil
import subprocess

import pytest

SECTOR = 512
IMAGE_MIB = 48
PART_START_SECTOR = 2048  # 1 MiB, the usual alignment

FS_UUID = "6d1c8f0e-3a52-4b7e-9c1d-2f4e5a6b7c8d"
FS_LABEL = "gk-root"
HOSTNAME = "gk-test-vm"
DEBIAN_VERSION = "12.5"
DNS_SERVERS = ["192.0.2.53", "198.51.100.53"]
LOGIN_USER = {"name": "alice", "uid": 1000, "home": "/home/alice", "shell": "/bin/bash"}
SYSTEM_USER = {"name": "_apt", "uid": 42, "home": "/nonexistent", "shell": "/usr/sbin/nologin"}
ENABLED_UNIT = "ssh.service"
SELINUX_MODE = "permissive"

# (name, version, architecture) as they appear in /var/lib/dpkg/status
PACKAGES = [
    ("base-files", "12.4+deb12u5", "amd64"),
    ("bash", "5.2.15-2+b2", "amd64"),
    ("coreutils", "9.1-1", "amd64"),
    ("dpkg", "1.21.22", "amd64"),
    ("libc6", "2.36-9+deb12u4", "amd64"),
    ("openssh-server", "1:9.2p1-2+deb12u2", "amd64"),
    ("systemd", "252.22-1~deb12u1", "amd64"),
    ("tzdata", "2024a-0+deb12u1", "all"),
]

PASSWD = [
    ("root", 0, 0, "root", "/root", "/bin/bash"),
    ("daemon", 1, 1, "daemon", "/usr/sbin", "/usr/sbin/nologin"),
    ("bin", 2, 2, "bin", "/bin", "/usr/sbin/nologin"),
    ("sys", 3, 3, "sys", "/dev", "/usr/sbin/nologin"),
    ("sync", 4, 65534, "sync", "/bin", "/bin/sync"),
    (SYSTEM_USER["name"], SYSTEM_USER["uid"], 65534, "", SYSTEM_USER["home"], SYSTEM_USER["shell"]),
    ("nobody", 65534, 65534, "nobody", "/nonexistent", "/usr/sbin/nologin"),
    (LOGIN_USER["name"], LOGIN_USER["uid"], 1000, "Alice,,,", LOGIN_USER["home"], LOGIN_USER["shell"]),
]

EXPECTED = {
    "type": "linux",
    "distribution": "debian",
    "version": DEBIAN_VERSION,
    "major_version": 12,
    "minor_version": 5,
    "hostname": HOSTNAME,
    "arch": "x86_64",
    "package_format": "deb",
    "root_device": "/dev/sda1",
    "fs_type": "ext4",
    "fs_uuid": FS_UUID,
    "fs_label": FS_LABEL,
    "package_count": len(PACKAGES),
    "package_names": sorted(p[0] for p in PACKAGES),
    "user_count": len(PASSWD),
    "login_users": ["root", LOGIN_USER["name"]],
    "login_user": LOGIN_USER,
    "system_user": SYSTEM_USER,
    "enabled_unit": ENABLED_UNIT,
    "dns_servers": DNS_SERVERS,
    "selinux_mode": SELINUX_MODE,
}

GUESTFS_ENV = {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}

_TOOL_CHECKS = {
    "qemu-img": (["qemu-img", "--version"], "qemu-utils"),
    "sfdisk": (["sfdisk", "--version"], "fdisk"),
    "mkfs.ext4": (["mkfs.ext4", "-V"], "e2fsprogs"),
    "virt-inspector": (["virt-inspector", "--version"], "guestfs-tools"),
    "guestfs": (["{guestfs_python}", "-c", "import guestfs"], "python3-guestfs"),
}


def _tool_ok(argv):
    try:
        return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def require_tool(*names):
    """Skip (or, with CI=true, fail) the calling test unless every named tool works.

    Known names: qemu-img, sfdisk, mkfs.ext4, virt-inspector, guestfs (the system python can
    import the libguestfs binding); any other name is looked up on PATH.
    """
    for name in names:
        argv, package = _TOOL_CHECKS.get(name, ([name], name))
        python = os.environ.get("GUESTKIT_WORKER_GUESTFS_PYTHON") or "/usr/bin/python3"
        argv = [a.replace("{guestfs_python}", python) for a in argv]
        found = _tool_ok(argv) if name in _TOOL_CHECKS else shutil.which(name) is not None
        if found:
            continue
        reason = f"{name} is not available (install Debian package {package})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)


def write_file(root, rel, data, mode=0o644):
    """root/rel with data (text as UTF-8, or bytes), parents made; its path."""
    path = os.path.join(root, rel.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    os.chmod(path, mode)
    return path



def _dpkg_status():
    stanzas = []
    for name, version, arch in PACKAGES:
        stanzas.append(
            f"Package: {name}\nStatus: install ok installed\nPriority: optional\n"
            f"Section: misc\nInstalled-Size: 100\nMaintainer: Test <test@example.invalid>\n"
            f"Architecture: {arch}\nVersion: {version}\nDescription: {name} test package\n"
            f" Placeholder package written by the guestkit-worker tests.\n\n")
    return "".join(stanzas)  # dpkg ends every stanza, the last one too, with a blank line


def make_root_tree(root):
    """Write a minimal merged-/usr Debian 12 root into directory root (which must not exist)."""
    os.makedirs(root)
    for d in ("usr/bin", "usr/sbin", "usr/lib/systemd/system", "var/lib/dpkg", "var/log",
              "etc/systemd/system/multi-user.target.wants", "root", "home/alice", "tmp",
              "dev", "proc", "sys", "run", "boot"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")):
        os.symlink(target, os.path.join(root, link))
    # a real ELF binary lets libguestfs read the architecture
    for prog in ("ls", "bash", "echo"):
        src = shutil.which(prog) or f"/usr/bin/{prog}"
        if os.path.exists(src):
            shutil.copy2(src, os.path.join(root, "usr/bin", prog))
    write_file(root, "etc/os-release",
           'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
           'VERSION_ID="12"\nVERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n'
           'HOME_URL="https://www.debian.org/"\n')
    write_file(root, "etc/debian_version", DEBIAN_VERSION + "\n")
    write_file(root, "etc/hostname", HOSTNAME + "\n")
    write_file(root, "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n")
    write_file(root, "etc/fstab",
           f"# /etc/fstab: static file system information.\n"
           f"UUID={FS_UUID} / ext4 errors=remount-ro 0 1\n")
    write_file(root, "etc/passwd",
           "".join(f"{n}:x:{u}:{g}:{gecos}:{h}:{s}\n" for n, u, g, gecos, h, s in PASSWD))
    write_file(root, "etc/group", "root:x:0:\nnogroup:x:65534:\nalice:x:1000:\n")
    write_file(root, "etc/shadow", "".join(f"{p[0]}:*:19700:0:99999:7:::\n" for p in PASSWD), 0o640)
    write_file(root, "etc/resolv.conf",
           "# test resolver\nsearch example.invalid\n"
           + "".join(f"nameserver {ip}\n" for ip in DNS_SERVERS))
    write_file(root, "etc/selinux/config", f"# test\nSELINUX={SELINUX_MODE}\nSELINUXTYPE=default\n")
    write_file(root, "etc/machine-id", "0123456789abcdef0123456789abcdef\n")
    write_file(root, "var/lib/dpkg/status", _dpkg_status())
    write_file(root, f"usr/lib/systemd/system/{ENABLED_UNIT}",
           "[Unit]\nDescription=OpenBSD Secure Shell server\n\n[Service]\n"
           "ExecStart=/usr/sbin/sshd -D\n\n[Install]\nWantedBy=multi-user.target\n")
    write_file(root, "usr/lib/systemd/system/cron.service",
           "[Unit]\nDescription=cron (not enabled)\n\n[Service]\nExecStart=/usr/sbin/cron -f\n")
    os.symlink(f"/lib/systemd/system/{ENABLED_UNIT}",
               os.path.join(root, "etc/systemd/system/multi-user.target.wants", ENABLED_UNIT))
    return root


def _run(argv, **kw):
    subprocess.run(argv, check=True, capture_output=True, **kw)


def build_debian_image(directory):
    """Build ``debian12.raw`` and ``debian12.qcow2`` in directory; return paths and EXPECTED.

    Result: ``{"raw": path, "qcow2": path, "expected": EXPECTED, "raw_size": bytes}``.
    Needs sfdisk, mkfs.ext4 (e2fsprogs >= 1.43 for ``-d``) and qemu-img; no root privileges.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    root = make_root_tree(os.path.join(directory, "rootfs"))
    raw, qcow2 = image_from_root(root, directory, "debian12")
    return {"raw": raw, "qcow2": qcow2, "expected": dict(EXPECTED), "raw_size": IMAGE_MIB * 1024 * 1024}


def image_from_root(root, directory, stem):
    """``STEM.raw`` (MBR, one ext4 partition holding the tree root) and its ``STEM.qcow2`` copy
    in directory; returns (raw, qcow2)."""
    raw = os.path.join(directory, f"{stem}.raw")
    fs_img = os.path.join(directory, f"{stem}.ext4")
    qcow2 = os.path.join(directory, f"{stem}.qcow2")

    image_bytes = IMAGE_MIB * 1024 * 1024
    part_sectors = image_bytes // SECTOR - PART_START_SECTOR
    with open(raw, "wb") as fh:
        fh.truncate(image_bytes)
    _run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", raw],
         input=f"label: dos\nunit: sectors\n\nstart={PART_START_SECTOR}, size={part_sectors}, "
               f"type=83, bootable\n".encode())

    with open(fs_img, "wb") as fh:
        fh.truncate(part_sectors * SECTOR)
    env = dict(os.environ, E2FSPROGS_FAKE_TIME="1700000000")
    _run(["mkfs.ext4", "-q", "-F", "-L", FS_LABEL, "-U", FS_UUID, "-d", root, fs_img], env=env)

    # copy the filesystem into the partition, keeping holes sparse
    with open(fs_img, "rb") as src, open(raw, "r+b") as dst:
        dst.seek(PART_START_SECTOR * SECTOR)
        while True:
            block = src.read(1 << 20)
            if not block:
                break
            if block.count(0) == len(block):
                dst.seek(len(block), os.SEEK_CUR)
            else:
                dst.write(block)
    os.unlink(fs_img)
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2])
    return raw, qcow2
