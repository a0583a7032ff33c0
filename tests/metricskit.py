"""Helpers for metric tests: scrape, parse, find the ports of servers started on port 0."""

import os
import re
import subprocess
import urllib.request

from conftest import wait_for
from prometheus_client.parser import text_string_to_metric_families


def parse(text):
    """{(sample name, frozenset(labels.items())): value} from an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


def series(samples, name):
    return {k: v for k, v in samples.items() if k[0] == name}


def get(url, timeout=10, headers=None):
    """(status, headers, body text) of a GET; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def scrape(base_url):
    status, _, body = get(base_url + "/metrics")
    assert status == 200
    return body


def worker_url(proc):
    """Read the worker's stderr until it logs where it serves; return that base URL."""
    for line in proc.stderr:
        m = re.search(r"serving /metrics and /health on (\S+)", line)
        if m:
            return m.group(1)
    raise AssertionError("worker exited without serving metrics")


def listening_ports(pid):
    """TCP ports a process listens on (from /proc), for servers started on port 0."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # state LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def start_and_find_port(argv, what, timeout=60):
    """Start a third-party server bound to 127.0.0.1:0 and return (Popen, port)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def port():
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited: {proc.stderr.read()[-2000:]}")
        ports = listening_ports(proc.pid)
        return min(ports) if ports else None
    return proc, wait_for(port, timeout=timeout, what=f"{what} listening")


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
