"""contrib/kubernetes/ cannot drift from the worker: every flag and GUESTKIT_WORKER_* variable
the manifests give is parsed by the worker's own parser and option types, the ports are the
ones the image serves, the stream and consumer group KEDA scales on are the Redis transport's,
the drain fits in the pod's grace period, and the README's fleet section says the same.  No
cluster: the YAML is read and checked as data."""

import os
import re
from urllib.parse import urlsplit

import pytest
from conftest import IN_CI, ROOT

from guestkit_worker import __version__
from guestkit_worker.cli import get_parser
from guestkit_worker.cli.options import API_COMMAND_OPTIONS, RUN_OPTIONS, env_name, path_list
from guestkit_worker.runtime.watchdog import ABANDON_GRACE_SECONDS
from guestkit_worker.runtime.worker import STORE_GRACE_SECONDS
from guestkit_worker.settings import defaults
from guestkit_worker.transports.redis.keys import GROUP, Keys

try:
    import yaml  # PyYAML: the test extra
except ImportError:
    if IN_CI:
        raise
    pytest.skip("PyYAML is not installed (pip install -e '.[test]')", allow_module_level=True)

K8S = os.path.join(ROOT, "contrib", "kubernetes")
README = os.path.join(ROOT, "README.md")
CONTAINERFILE = os.path.join(ROOT, "Containerfile")
EXTRA_RUN_VARIABLES = {"once", "allow_backing_files"}  # flags outside RUN_OPTIONS that read a variable


def _load(name: str) -> list:
    with open(os.path.join(K8S, name)) as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


@pytest.fixture(scope="module")
def docs() -> dict:
    """Every document of the kustomization's resources, by (kind, name)."""
    kustomization = _load("kustomization.yaml")[0]
    found = {}
    for name in kustomization["resources"]:
        for d in _load(name):
            found[(d["kind"], d["metadata"]["name"])] = d
    return found


def _container(docs, name: str) -> dict:
    return docs[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]


def _env(docs, container: dict) -> dict:
    """The container's environment: its ConfigMaps' data, then its own env (values or sources)."""
    env = {}
    for source in container.get("envFrom", []):
        env.update(docs[("ConfigMap", source["configMapRef"]["name"])]["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def _image_env() -> dict:
    """The ENV defaults of the Containerfile (KEY=value pairs of its ENV instruction)."""
    with open(CONTAINERFILE) as fh:
        text = fh.read().replace("\\\n", " ")
    line = re.search(r"^ENV (.*)$", text, re.M).group(1)
    return dict(pair.split("=", 1) for pair in line.split())


def _args(container: dict):
    """The container's args as the worker parses them (argparse's own error names a bad flag)."""
    try:
        return get_parser().parse_args(container["args"])
    except SystemExit:
        pytest.fail(f"the worker's parser refuses {container['args']} (its message is above)")


def _setting(docs, container: dict, dest: str):
    """An option as the worker in this container resolves it: flag, else variable, else default."""
    args = _args(container)
    if getattr(args, dest, None) is not None:
        return getattr(args, dest)
    option = next(o for o in RUN_OPTIONS if o[1] == dest)
    value = {**_image_env(), **_env(docs, container)}.get(env_name(dest))
    return option[3] if value is None else option[2](value)


def test_the_kustomization_lists_every_manifest_and_names_the_image_of_this_version():
    listed = set(_load("kustomization.yaml")[0]["resources"])
    assert listed == {f for f in os.listdir(K8S) if f.endswith(".yaml")} - {"kustomization.yaml"}
    (image,) = _load("kustomization.yaml")[0]["images"]
    assert image["newTag"] == __version__


@pytest.mark.parametrize("deployment, command", [("guestkit-worker", "run"), ("guestkit-api", "api")])
def test_args_and_variables_are_the_workers_own(docs, deployment, command):
    """The args parse with the worker's parser; each GUESTKIT_WORKER_* variable is one the
    command reads, and its value passes the option's own type."""
    container = _container(docs, deployment)
    assert container["image"] == _load("kustomization.yaml")[0]["images"][0]["name"]
    assert _args(container).command == command
    dests = {o[1] for o in RUN_OPTIONS} | EXTRA_RUN_VARIABLES if command == "run" else API_COMMAND_OPTIONS
    options = {env_name(o[1]): o for o in RUN_OPTIONS}
    for name, value in _env(docs, container).items():
        if not name.startswith("GUESTKIT_WORKER_"):
            continue
        assert name in {env_name(d) for d in dests}, f"{deployment}: {name} is not read by {command}"
        if isinstance(value, str) and name in options:
            (path_list if options[name][1] == "allow_path" else options[name][2])(value)


@pytest.mark.parametrize("deployment", ["guestkit-worker", "guestkit-api"])
def test_one_worker_id_per_pod_from_the_pod_name(docs, deployment):
    env = _env(docs, _container(docs, deployment))
    assert env[env_name("worker_id")] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_the_grace_period_outlasts_the_workers_drain(docs):
    """SIGKILL must not come before the worker has drained (--shutdown-timeout), stopped what
    is left and stored the outcomes: the longest exit the worker allows itself."""
    pod = docs[("Deployment", "guestkit-worker")]["spec"]["template"]["spec"]
    shutdown = _setting(docs, pod["containers"][0], "shutdown_timeout")
    assert shutdown == 300.0
    assert pod["terminationGracePeriodSeconds"] > shutdown + ABANDON_GRACE_SECONDS + STORE_GRACE_SECONDS


@pytest.mark.parametrize("deployment", ["guestkit-worker", "guestkit-api"])
def test_probes_ask_health_on_the_metrics_port(docs, deployment):
    container = _container(docs, deployment)
    port = int(_setting(docs, container, "metrics_addr").rsplit(":", 1)[1])
    assert port == int(defaults.DEFAULT_METRICS_ADDR.rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    probes = [k for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container]
    assert {"readinessProbe", "livenessProbe"} <= set(probes)
    for probe in probes:
        assert container[probe]["httpGet"] == {"path": "/health", "port": "metrics"}, probe


def _mounted_secret(docs, deployment: str, path: str) -> tuple:
    """(Secret name, key) of the file at path in the deployment's container."""
    pod = docs[("Deployment", deployment)]["spec"]["template"]["spec"]
    for mount in pod["containers"][0]["volumeMounts"]:
        if os.path.dirname(path) == mount["mountPath"]:
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            return volume["secret"]["secretName"], os.path.basename(path)
    raise AssertionError(f"{deployment}: nothing mounted at {os.path.dirname(path)}")


@pytest.mark.parametrize("deployment", ["guestkit-worker", "guestkit-api"])
def test_the_redis_password_is_a_secret_file(docs, deployment):
    container = _container(docs, deployment)
    env = _env(docs, container)
    assert [n for n in env if "PASSWORD" in n] == [env_name("redis_password_file")]
    assert urlsplit(env[env_name("redis_url")]).password is None
    secret = _mounted_secret(docs, deployment, _setting(docs, container, "redis_password_file"))
    auth = docs[("TriggerAuthentication", "guestkit-redis")]["spec"]["secretTargetRef"][0]
    assert secret == (auth["name"], auth["key"]) and auth["parameter"] == "password"


def test_the_api_gateway_has_tokens_and_a_service_on_its_port(docs):
    container = _container(docs, "guestkit-api")
    args = _args(container)
    assert _mounted_secret(docs, "guestkit-api", args.api_token_file) == ("guestkit-api-tokens", "tokens")
    port = int(args.api_addr.rsplit(":", 1)[1])
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["api"] == port
    service = docs[("Service", "guestkit-api")]["spec"]
    labels = docs[("Deployment", "guestkit-api")]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"][0]["targetPort"] == "api"


def test_keda_scales_the_workers_on_the_lag_of_the_pools_stream(docs):
    worker = _container(docs, "guestkit-worker")
    scaled = docs[("ScaledObject", "guestkit-worker")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "guestkit-worker" and scaled["minReplicaCount"] >= 1
    (trigger,) = scaled["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis-streams" and "lagCount" in meta
    assert meta["stream"] == Keys(_setting(docs, worker, "pool")).jobs == "guestkit:{default}:jobs"
    assert meta["consumerGroup"] == GROUP
    url = urlsplit(_setting(docs, worker, "redis_url"))
    assert meta["address"] == f"{url.hostname}:{url.port}" and meta["databaseIndex"] == url.path.strip("/")


def test_every_allowed_path_is_shared_storage_mounted_at_the_same_path(docs):
    """A job's image and output paths must mean the same file in every pod: each --allow-path
    directory is a ReadWriteMany claim, mounted at that path in the workers and the gateway."""
    worker = _container(docs, "guestkit-worker")
    allowed = _setting(docs, worker, "allow_path")
    allowed = path_list(allowed) if isinstance(allowed, str) else allowed
    assert allowed == ["/srv/images", "/srv/output"]
    for deployment in ("guestkit-worker", "guestkit-api"):
        pod = docs[("Deployment", deployment)]["spec"]["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        for path in allowed:
            claim = docs[("PersistentVolumeClaim", claims[mounts[path]])]
            assert claim["spec"]["accessModes"] == ["ReadWriteMany"], (deployment, path)


def test_the_readme_fleet_section_matches_the_manifests(docs):
    with open(README) as fh:
        text = fh.read()
    assert "\n## Running a fleet on many hosts\n" in text
    section = text.split("\n## Running a fleet on many hosts\n", 1)[1].split("\n## ", 1)[0]
    pod = docs[("Deployment", "guestkit-worker")]["spec"]["template"]["spec"]
    for fact in ("contrib/kubernetes/", "guestkit:{POOL}:jobs", GROUP, "terminationGracePeriodSeconds",
                 f"--shutdown-timeout {_setting(docs, pod['containers'][0], 'shutdown_timeout'):g}",
                 f"{pod['terminationGracePeriodSeconds']} s", "ReadWriteMany", "/srv/images", "/srv/output",
                 "podman build", "BASE=", "metadata.name"):
        assert fact in section, fact
    for secret, key in (("guestkit-redis", "password"), ("guestkit-api-tokens", "tokens")):
        command = f"kubectl create secret generic {secret} --from-file={key}="
        assert command in section and command in " ".join(_load_text("kustomization.yaml").split())


def _load_text(name: str) -> str:
    with open(os.path.join(K8S, name)) as fh:
        return fh.read()
