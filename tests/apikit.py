"""Helpers for the REST API tests: JSON requests over real sockets, openssl-made certificates."""

import contextlib
import http.client
import json
import os
import socket
import subprocess

import pytest
from conftest import require_tool

TIMEOUT = 20


class Reply:
    """One HTTP answer: ``status``, ``headers`` (lower-case names), ``body`` bytes, ``json``."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Reply {self.status} {self.body[:300]!r}>"


def call(url, method, path, *, doc=None, body=None, token=None, headers=None, context=None,
         timeout=TIMEOUT):
    """One request to the API at ``url`` (http://host:port or https://...); ``doc`` is sent as
    a JSON body with Content-Type application/json."""
    scheme, _, hostport = url.partition("://")
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    send = dict(headers or {})
    if doc is not None:
        body = json.dumps(doc).encode()
        send.setdefault("Content-Type", "application/json")
    if token is not None:
        send["Authorization"] = f"Bearer {token}"
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=send)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def raw(url, data, *, timeout=TIMEOUT):
    """Send raw bytes, end our side (no further request), read the answer until the server closes."""
    host, _, port = url.partition("://")[2].rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        with contextlib.suppress(OSError):  # the server may have answered and closed already
            sock.shutdown(socket.SHUT_WR)
        with sock.makefile("rb") as stream:
            return stream.read()


def _openssl(*args):
    subprocess.run([require_tool("openssl"), *args], check=True, capture_output=True, timeout=60)


class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate signed by the CA, and
    a second client certificate signed by another CA; all made by openssl in ``directory``."""

    def __init__(self, directory):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.ca, self.ca_key = self._path("ca.pem"), self._path("ca.key")
        self._self_signed(self.ca, self.ca_key, "guestkit test CA")
        self.cert, self.key = self._signed("server", "/CN=localhost",
                                           "subjectAltName=IP:127.0.0.1,DNS:localhost")
        self.client_cert, self.client_key = self._signed("client", "/CN=api-client",
                                                         "extendedKeyUsage=clientAuth")
        self.other_ca, other_key = self._path("other-ca.pem"), self._path("other-ca.key")
        self._self_signed(self.other_ca, other_key, "some other CA")
        self.stranger_cert, self.stranger_key = self._signed("stranger", "/CN=stranger",
                                                             "extendedKeyUsage=clientAuth", self.other_ca,
                                                             other_key)

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _self_signed(self, cert, key, cn):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-subj", f"/CN={cn}", "-days", "2", "-keyout", key, "-out", cert)

    def _signed(self, name, subject, ext, ca=None, ca_key=None):
        cert, key, csr = self._path(f"{name}.pem"), self._path(f"{name}.key"), self._path(f"{name}.csr")
        extfile = self._path(f"{name}.ext")
        with open(extfile, "w") as fh:
            fh.write(ext + "\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-subj", subject, "-keyout", key, "-out", csr)
        _openssl("x509", "-req", "-in", csr, "-CA", ca or self.ca, "-CAkey", ca_key or self.ca_key,
                 "-CAcreateserial", "-days", "2", "-extfile", extfile, "-out", cert)
        return cert, key

    def client_context(self, cert=None, key=None):
        import ssl
        context = ssl.create_default_context(cafile=self.ca)
        if cert:
            context.load_cert_chain(cert, key)
        return context


class Served:
    """A ``guestkit-worker run|api ... --api-addr 127.0.0.1:0`` process; ``url`` is the API's base
    URL and ``metrics_url`` the /metrics port's (when served), both read back from its log."""

    def __init__(self, command, dirs, *args, env=None, metrics=False):
        import sys
        import tempfile

        from conftest import wait_for, worker_env
        self.log_path = tempfile.mktemp(prefix="gkw-api-", suffix=".log", dir=dirs.base)
        argv = [sys.executable, "-m", "guestkit_worker", command, "--jobs-dir", dirs.jobs,
                "--results-dir", dirs.results, "--api-addr", "127.0.0.1:0"]
        if command == "run":
            argv += ["--work-dir", dirs.work, "--poll-interval", "0.1"]
        argv += ["--metrics-addr", "127.0.0.1:0"] if metrics else ["--metrics-enabled", "false"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv + list(args), env=env or worker_env(),
                                         stdout=subprocess.DEVNULL, stderr=log)
        try:
            self.url = wait_for(lambda: self._logged("serving the REST API on "), timeout=60,
                                what=f"the API of {command} to listen")
            self.metrics_url = wait_for(lambda: self._logged("serving /metrics and /health on "), timeout=30,
                                        what="the metrics port") if metrics else None
        except BaseException:
            self.stop()  # never leave a process behind when it did not come up
            raise

    def _logged(self, marker):
        if self.proc.poll() is not None:
            raise AssertionError(f"exited {self.proc.returncode}: {self.log()}")
        for line in self.log().splitlines():
            if marker in line:
                return line.split(marker, 1)[1].split()[0]
        return None

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def scrape_values(base_url, timeout=10):
    """{'name{k="v",...}' (labels sorted; bare name without labels): value} from /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(base_url + "/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@pytest.fixture
def served(dirs):
    """Factory: ``served(COMMAND, *args, metrics=False)`` starts ``guestkit-worker COMMAND`` with
    the API on a free port over ``dirs`` (a :class:`Served`); every one is stopped at the end."""
    procs = []

    def start(command="run", *args, **kwargs):
        proc = Served(command, dirs, *args, **kwargs)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def write_tokens(directory, *tokens):
    """A token file (mode 0600) holding ``tokens`` after a comment line; its path."""
    path = os.path.join(str(directory), "tokens")
    with open(path, "w") as fh:
        fh.write("# API clients\n" + "".join(f"{t}\n" for t in tokens))
    os.chmod(path, 0o600)
    return path
