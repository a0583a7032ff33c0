"""The container image (``Containerfile``): built with Debian's podman on a base made by
debootstrap (no registry can be reached here), then run as a container runtime would run it:
its entrypoint with an echo job, and a worker busy with an inspect job (libguestfs' appliance
started by qemu inside the container) drained by a SIGTERM sent to the container's PID 1.

``podman run`` is used where it works; where it cannot (crun failing to set rlimits in a
sandbox), ``buildah run --isolation chroot`` runs the image's entrypoint in a working container
of the image, and the SIGTERM goes to tini, what ``podman stop`` signals.

The debootstrapped tree is kept in ``~/.cache/guestkit-worker-tests`` (or ``$XDG_CACHE_HOME``)
and imported once as ``localhost/debian:bookworm-slim``; podman's layer cache then keeps the
apt layer, so a second run rebuilds only the worker's layer.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import ROOT, cli, make_job, require, wait_for, write_job
from redisfixture import require_redis_py, start_redis

from guestkit_worker.handlers.inspect_report import OPTION_FLAGS
from guestkit_worker.transports.redis.keys import Keys

# the first test also waits for the session's build: a cold one (apt inside) takes 4-8 min here
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

BASE = "localhost/debian:bookworm-slim"
IMAGE = "localhost/guestkit-worker:test"
UID = 10001  # the image's user (Containerfile)
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "guestkit-worker-tests"
MIRROR = os.environ.get("GUESTKIT_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
STATE, APPLIANCE, IMAGES = "/var/lib/guestkit-worker", "/var/cache/guestkit-worker", "/srv/images"


def _run(argv, timeout, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def container_tools():
    """podman, buildah and debootstrap as root: skipped without them, failed with CI=true."""
    for tool in ("podman", "buildah", "debootstrap"):
        require(shutil.which(tool) is not None, f"{tool} is not installed (Debian package {tool})")
    require(os.geteuid() == 0, "building and running the image needs root (tests/run runs as root)")


def _debootstrap() -> Path:
    """A minbase bookworm tree in the cache directory, made once (marker file at its end)."""
    tree = CACHE / "debootstrap-bookworm-minbase"
    if (tree / ".guestkit-complete").exists():
        return tree
    partial = CACHE / "debootstrap-bookworm-minbase.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    proc = _run(["debootstrap", "--variant=minbase", "bookworm", str(partial), MIRROR], timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (partial / ".guestkit-complete").touch()
    shutil.rmtree(tree, ignore_errors=True)
    partial.rename(tree)
    return tree


@pytest.fixture(scope="session")
def base_image(container_tools) -> str:
    """localhost/debian:bookworm-slim, imported from the debootstrapped tree unless present."""
    if _run(["podman", "image", "exists", BASE], timeout=60).returncode != 0:
        tree = _debootstrap()
        tar = subprocess.Popen(["tar", "-C", str(tree), "--exclude", "./.guestkit-complete", "-c", "."],
                               stdout=subprocess.PIPE)
        proc = _run(["podman", "import", "-", BASE], timeout=600, stdin=tar.stdout)
        tar.stdout.close()
        assert tar.wait(timeout=60) == 0 and proc.returncode == 0, proc.stderr[-2000:]
    return BASE


def _image_id(ref: str):
    proc = _run(["podman", "image", "inspect", "--format", "{{.Id}}", ref], timeout=60)
    return proc.stdout.strip() if proc.returncode == 0 else None


@pytest.fixture(scope="session")
def worker_image(base_image, tmp_path_factory) -> dict:
    """The image built from this checkout; returns its `podman image inspect` document.  The
    host's CA bundle goes in as the build secret pip-ca (pip behind a TLS-inspecting proxy)."""
    old = _image_id(IMAGE)
    log = tmp_path_factory.mktemp("build") / "build.log"
    argv = ["podman", "build", "--isolation", "chroot", "--network", "host", "--format", "docker",
            "--build-arg", f"BASE={base_image}", "-t", IMAGE]
    if os.path.exists(CA_BUNDLE):
        argv += ["--secret", f"id=pip-ca,src={CA_BUNDLE}"]
    start = time.monotonic()
    with open(log, "w") as fh:
        rc = subprocess.run([*argv, ROOT], stdout=fh, stderr=subprocess.STDOUT, timeout=1200).returncode
    print(f"podman build: exit {rc} in {time.monotonic() - start:.0f} s (log {log})")
    assert rc == 0, log.read_text()[-4000:]
    new = _image_id(IMAGE)
    if old and old != new:  # the previous build of this tag, now untagged
        _run(["podman", "rmi", old], timeout=120)
    return json.loads(_run(["podman", "image", "inspect", IMAGE], timeout=60).stdout)[0]


def _podman_run_works(image: str) -> tuple:
    proc = _run(["podman", "run", "--rm", "--network", "host", image, "--version"], timeout=120)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    return proc.returncode == 0, last


class Container:
    """One container of the image, its entrypoint started with podman run where that works,
    else with buildah run (chroot isolation: host network and PIDs, so tini is not PID 1 and is
    told to reap as a subreaper)."""

    def __init__(self, config: dict, use_podman: bool, mounts: dict, env: dict) -> None:
        self.entrypoint = config["Config"]["Entrypoint"]
        self.healthcheck = config["Healthcheck"]["Test"]  # ["CMD", argv...]
        self.name = f"gkw-test-{uuid.uuid4().hex[:10]}"
        self.use_podman = use_podman
        self.vols = [a for host, inside in mounts.items() for a in ("-v", f"{host}:{inside}")]
        self.env = {"TINI_SUBREAPER": "1", **env}
        self.proc = None
        if not use_podman:
            proc = _run(["buildah", "from", "--name", self.name, IMAGE], timeout=120)
            assert proc.returncode == 0, proc.stderr

    def _env(self, extra: dict) -> list:
        return [a for k, v in {**self.env, **extra}.items() for a in ("--env", f"{k}={v}")]

    def start(self, args: list, log: Path) -> None:
        """The image's entrypoint with args, its output to log."""
        if self.use_podman:
            argv = ["podman", "run", "--rm", "--name", self.name, "--network", "host", *self.vols,
                    *self._env({}), IMAGE, *args]
        else:
            argv = ["buildah", "run", "--isolation", "chroot", *self.vols, *self._env({}), self.name, "--",
                    *self.entrypoint, *args]
        with open(log, "w") as fh:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)

    def exec(self, argv: list, **env) -> subprocess.CompletedProcess:
        """argv in the running container (podman exec), or in the same working container."""
        if self.use_podman:
            return _run(["podman", "exec", *self._env(env), self.name, *argv], timeout=120)
        return _run(["buildah", "run", "--isolation", "chroot", *self.vols, *self._env(env), self.name, "--",
                     *argv], timeout=120)

    def terminate(self) -> None:
        """SIGTERM to the container's PID 1, as `podman stop` sends it."""
        if self.use_podman:
            assert _run(["podman", "kill", "--signal", "TERM", self.name], timeout=60).returncode == 0
        else:
            os.kill(_tini_pid(self.proc.pid), signal.SIGTERM)

    def remove(self) -> None:
        """Kill what is left of the container's processes, then remove the working container."""
        if self.proc and self.proc.poll() is None:
            for pid in _descendants(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(timeout=60)
        if not self.use_podman:
            _run(["buildah", "rm", self.name], timeout=120)


def _descendants(pid: int) -> list:
    """The PIDs of pid's process tree (children first found through /proc's stat lines)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        kids = [p for p, parent in parents.items() if parent == current]
        found += kids
        todo += kids
    return found


def _tini_pid(runner: int) -> int:
    """The tini that the container runner (buildah run, process runner) started."""
    for pid in _descendants(runner):
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if argv0.endswith(b"/tini"):
            return pid
    raise AssertionError(f"no tini under the container runner {runner}")


@pytest.fixture(scope="session")
def runtime(worker_image) -> bool:
    """True when podman run works here, else buildah run is used (and why is printed)."""
    works, why = _podman_run_works(IMAGE)
    print("containers run with " + ("podman run" if works else f"buildah run (podman run: {why})"))
    return works


@pytest.fixture
def volumes(tmp_path, debian_image) -> tuple:
    """Host directories for the container: the state (jobs, results, work) owned by the image's
    user, the appliance cache kept across sessions, and the test disk image read-only:
    (state directory, {host path: container path})."""
    state = tmp_path / "state"
    for sub in ("jobs", "results", "work"):
        (state / sub).mkdir(parents=True)
    appliance = CACHE / "appliance"
    appliance.mkdir(parents=True, exist_ok=True)
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(debian_image["qcow2"], images / "debian12.qcow2")
    for path in [state, *state.iterdir(), appliance]:
        os.chown(path, UID, UID)
    os.chmod(images, 0o755)
    os.chmod(images / "debian12.qcow2", 0o644)
    return state, {str(state): STATE, str(appliance): APPLIANCE, str(images): f"{IMAGES}:ro"}


def _container(worker_image, runtime, volumes, **env) -> Container:
    return Container(worker_image, runtime, volumes[1], {"LIBGUESTFS_BACKEND_SETTINGS": "force_tcg", **env})


def _result(state: Path, job_id: str) -> dict:
    path = state / "results" / f"{job_id}-result.json"
    return json.loads(path.read_text()) if path.exists() else None


def _give(state: Path, doc: dict) -> None:
    path = write_job(state / "jobs", doc)
    os.chown(path, UID, UID)


# -- the image's metadata ---------------------------------------------------------------------

def test_image_runs_the_worker_under_tini_as_an_unprivileged_user(worker_image):
    from guestkit_worker.settings.defaults import DEFAULT_METRICS_ADDR
    config = worker_image["Config"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "/opt/guestkit-worker/bin/guestkit-worker"]
    assert config["Cmd"] == ["run"] and config["User"] == f"{UID}:{UID}"
    assert config.get("StopSignal") == "SIGTERM"
    metrics_port = env["GUESTKIT_WORKER_METRICS_ADDR"].rsplit(":", 1)[1]
    assert metrics_port == DEFAULT_METRICS_ADDR.rsplit(":", 1)[1]
    assert set(config["ExposedPorts"]) == {f"{metrics_port}/tcp", "8080/tcp"}
    assert env["LIBGUESTFS_BACKEND"] == "direct" and env["LIBGUESTFS_CACHEDIR"] == APPLIANCE
    assert env["GUESTKIT_WORKER_JOBS_DIR"] == f"{STATE}/jobs"
    assert env["GUESTKIT_WORKER_ALLOW_PATH"].split(":") == [IMAGES, "/srv/output"]
    assert "/health" in " ".join(worker_image["Healthcheck"]["Test"])  # kept by --format docker


# -- the entrypoint with jobs -----------------------------------------------------------------

def test_entrypoint_runs_an_echo_job_once_and_exits_0(worker_image, runtime, volumes, tmp_path):
    state = volumes[0]
    _give(state, make_job("ctr-echo-0001", data={"greeting": "from a container"}))
    box = _container(worker_image, runtime, volumes)
    try:
        box.start(["run", "--once", "--metrics-enabled", "false", "--worker-id", box.name],
                  tmp_path / "once.log")
        assert box.proc.wait(timeout=180) == 0, (tmp_path / "once.log").read_text()[-3000:]
    finally:
        box.remove()
    result = _result(state, "ctr-echo-0001")
    assert result["status"] == "completed" and result["data"] == {"greeting": "from a container"}
    assert result["worker_id"] == box.name
    assert (state / "results" / "ctr-echo-0001-result.json").stat().st_uid == UID  # not root


def _secret_file(directory: Path, name: str, text: str) -> Path:
    """A file as a Kubernetes Secret volume with fsGroup holds it: root:10001, mode 0440."""
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(text + "\n")
    os.chown(path, 0, UID)
    os.chmod(path, 0o440)
    return path


def _manifest(name: str) -> list:
    import yaml
    with open(os.path.join(ROOT, "contrib", "kubernetes", name)) as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


@pytest.fixture
def fleet(tmp_path, pool):
    """A Redis with requirepass, the password as a Secret-like file, and the environment of
    contrib/kubernetes/config.yaml with the test's Redis URL and pool:
    (server, password file, {host dir: container dir} of that file, env)."""
    require_redis_py()
    password = "container-test-password"
    server = start_redis(tmp_path / "redis", extra_args=["--requirepass", password])
    try:
        env = dict(_manifest("config.yaml")[0]["data"], GUESTKIT_WORKER_REDIS_URL=server.url,
                   GUESTKIT_WORKER_POOL=pool)
        secret = _secret_file(tmp_path / "redis-secret", "password", password)
        mount = {str(secret.parent): os.path.dirname(env["GUESTKIT_WORKER_REDIS_PASSWORD_FILE"]) + ":ro"}
        yield server, secret, mount, env
    finally:
        server.stop()


def _redis_client(server, secret: Path):
    import redis
    return redis.Redis.from_url(server.url, password=secret.read_text().strip())


def test_a_fleet_worker_configured_as_the_manifests_say_runs_a_job_from_redis(worker_image, runtime, volumes,
                                                                              tmp_path, pool, fleet):
    """The image with contrib/kubernetes/config.yaml's variables (its Redis URL and pool
    replaced by the test's) and the password as a file where the manifests mount the Secret:
    a job submitted to a Redis with requirepass runs in the container, its result in Redis."""
    server, secret, mount, env = fleet
    job = tmp_path / "job.json"
    job.write_text(json.dumps(make_job("ctr-redis-0001", data={"via": "redis"})))
    cli("submit", str(job), "--transport", "redis", "--pool", pool, "--redis-url", server.url,
        "--redis-password-file", str(secret), check=0, timeout=60)
    box = Container(worker_image, runtime, {**volumes[1], **mount},
                    {**env, "GUESTKIT_WORKER_WORKER_ID": "ctr-redis-worker"})
    try:
        box.start(["run", "--once", "--metrics-enabled", "false"], tmp_path / "redis-worker.log")
        assert box.proc.wait(timeout=180) == 0, (tmp_path / "redis-worker.log").read_text()[-3000:]
    finally:
        box.remove()
    result = json.loads(_redis_client(server, secret).get(Keys(pool).result("ctr-redis-0001")))
    assert (result["status"], result["worker_id"], result["data"]) == (
        "completed", "ctr-redis-worker", {"via": "redis"})


def test_the_api_gateway_as_the_manifests_run_it_queues_a_job(worker_image, runtime, volumes, tmp_path, pool,
                                                              fleet):
    """api.yaml's command (its address on a free port of every interface, so the exposure
    checks apply: tokens and --allow-path are required) with config.yaml's variables: a job
    POSTed with a token is accepted (202) into the pool's stream, one without gets 401, and
    the gateway stops on SIGTERM with exit 0."""
    server, secret, mount, env = fleet
    args = _manifest("api.yaml")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    args = [("0.0.0.0:0" if a.startswith("0.0.0.0:") else a) for a in args]
    token_file = args[args.index("--api-token-file") + 1]
    tokens = _secret_file(tmp_path / "api-secret", os.path.basename(token_file), "gateway-test-token")
    log = tmp_path / "gateway.log"
    mounts = {**mount, str(tokens.parent): os.path.dirname(token_file) + ":ro"}
    env = {**env, "GUESTKIT_WORKER_WORKER_ID": "ctr-gateway", "GUESTKIT_WORKER_METRICS_ADDR": "127.0.0.1:0"}
    box = Container(worker_image, runtime, mounts, env)
    try:
        box.start(args, log)
        url = wait_for(lambda: _api_url(log) or box.proc.poll() is not None, timeout=120, what="the API")
        assert box.proc.poll() is None, log.read_text()[-3000:]
        body = json.dumps(make_job("ctr-gateway-0001")).encode()
        assert _post(url, body, None)[0] == 401
        assert _post(url, body, "gateway-test-token") == (202, "pending")
        box.terminate()
        assert box.proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        box.remove()
    state = _redis_client(server, secret).hgetall(Keys(pool).job("ctr-gateway-0001"))
    assert state[b"status"] == b"pending"
    # the README says so: a Secret file is group-readable (the pod's fsGroup), and the API warns
    assert f"--api-token-file {token_file} can be read by its group or others (mode 0440)" in log.read_text()


def _api_url(log: Path):
    found = re.search(r"serving the REST API on http://0\.0\.0\.0:(\d+)", log.read_text())
    return f"http://127.0.0.1:{found.group(1)}" if found else None


def _post(url: str, body: bytes, token) -> tuple:
    """POST a job; (HTTP status, the answer's data.status or None)."""
    import urllib.error
    import urllib.request
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(f"{url}/api/v1/jobs", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())["data"]["status"]
    except urllib.error.HTTPError as err:
        return err.code, None


def _phase_reached(state: Path, job_id: str, phases: tuple) -> bool:
    path = state / "results" / f"{job_id}-progress.jsonl"
    if not path.exists():
        return False
    return any(json.loads(line).get("phase") in phases for line in path.read_text().splitlines() if line)


def test_sigterm_to_pid_1_drains_a_worker_busy_with_an_inspect_job(worker_image, runtime, volumes, tmp_path,
                                                                     debian_image):
    """A daemon worker (the image's default command) takes an echo job and an inspect job; once
    the inspect has launched its appliance, SIGTERM goes to PID 1: tini passes it to the worker
    alone (qemu is left running), the worker claims nothing more and lets the inspect finish
    within --shutdown-timeout, stores its result and exits 0."""
    state, log = volumes[0], tmp_path / "daemon.log"
    _give(state, make_job("ctr-echo-0002", data={"n": 2}))
    quick = {flag: False for flag in OPTION_FLAGS}  # the guest's identity only: the appliance still boots
    _give(state, make_job("ctr-inspect-0001", "guestkit.inspect", {
        "image": {"path": f"{IMAGES}/debian12.qcow2", "format": "qcow2"}, "options": quick},
        execution={"timeout_seconds": 900}))
    box = _container(worker_image, runtime, volumes, GUESTKIT_WORKER_METRICS_ADDR="127.0.0.1:0")
    try:
        # a drain long enough for a loaded shared machine (TCG boots take minutes there)
        box.start(["run", "--worker-id", box.name, "--shutdown-timeout", "900"], log)
        wait_for(lambda: _result(state, "ctr-echo-0002") or box.proc.poll() is not None, timeout=120,
                 what="the echo job's result")
        _check_health(box, log)
        wait_for(lambda: _phase_reached(state, "ctr-inspect-0001", ("launch", "inspection"))
                 or box.proc.poll() is not None, timeout=300, what="the inspect job under way")
        assert box.proc.poll() is None, log.read_text()[-3000:]
        signalled = datetime.now(timezone.utc)
        box.terminate()
        wait_for(lambda: "SIGTERM received: stopping" in log.read_text(), timeout=60, what="SIGTERM logged")
        _give(state, make_job("ctr-echo-late", data={}))  # arrives while draining: left alone
        assert box.proc.wait(timeout=960) == 0, log.read_text()[-3000:]
    finally:
        box.remove()
    text = log.read_text()
    assert f"worker {box.name} stopped: completed 2" in text, text[-3000:]
    inspect = _result(state, "ctr-inspect-0001")
    assert inspect["status"] == "completed", inspect
    assert datetime.fromisoformat(inspect["completed_at"].replace("Z", "+00:00")) > signalled
    os_found = inspect["data"]["operating_system"]
    expected = debian_image["expected"]
    assert (os_found["distribution"], os_found["hostname"]) == ("debian", expected["hostname"])
    assert _result(state, "ctr-echo-late") is None and (state / "jobs" / "ctr-echo-late.json").exists()


def _check_health(box: Container, log: Path) -> None:
    """The image's HEALTHCHECK command, run in the container against the running worker's port."""
    found = re.search(r"serving /metrics and /health on https?://([\d.]+:\d+)", log.read_text())
    assert found, log.read_text()[-3000:]
    proc = box.exec(box.healthcheck[1:], GUESTKIT_WORKER_METRICS_ADDR=found.group(1))
    assert box.healthcheck[0] == "CMD" and proc.returncode == 0, proc.stdout + proc.stderr
