"""The same flows through the command-line client (``status``, ``result``, ``list``,
``cancel``, ``submit --api``), through Debian's curl, and the refusals of the real CLI."""

import json
import os
import subprocess

import pytest
from apikit import Pki, call, served, write_tokens  # noqa: F401 (fixture)
from conftest import cli, make_job, require_tool, worker_env

pytestmark = pytest.mark.integration

JOBS = "/api/v1/jobs"
TOKEN = "cli-token-0123456789abcdef"


@pytest.fixture
def token_file(tmp_path):
    return write_tokens(tmp_path, TOKEN)


def job_file(tmp_path, doc):
    path = tmp_path / f"{doc['job_id']}.json"
    path.write_text(json.dumps(doc))
    return str(path)


# -- the CLI client over the API ----------------------------------------------------------

def test_cli_client_over_the_api_with_a_token(dirs, served, token_file, tmp_path):
    worker = served("run", "--api-token-file", token_file)
    api = ["--api", worker.url, "--api-token-file", token_file]
    good, bad = make_job("job-cli-good1"), make_job("job-cli-bad01", operation="test.raise")
    parked = make_job("job-cli-parked", routing={"worker_pool": "elsewhere"})
    proc = cli("submit", *api, job_file(tmp_path, good), job_file(tmp_path, bad), "--wait", "60")
    assert proc.returncode == 1, proc.stderr  # one of the two failed
    assert proc.stdout.splitlines() == ["job-cli-good1 pending", "job-cli-bad01 pending",
                                        "job-cli-good1 completed", "job-cli-bad01 failed"]
    again = cli("submit", *api, job_file(tmp_path, good), "--wait", "10", check=0)
    assert again.stdout.splitlines() == ["job-cli-good1 completed (already submitted)",
                                         "job-cli-good1 completed"]
    status = cli("status", "job-cli-good1", *api, check=0)
    assert json.loads(status.stdout)["status"] == "completed"
    result = cli("result", "job-cli-good1", *api, check=0)
    assert json.loads(result.stdout) == dirs.result("job-cli-good1")
    assert cli("result", "job-cli-bad01", *api).returncode == 1
    assert cli("status", "no-such-job-1", *api).returncode == 3
    assert cli("cancel", "job-cli-good1", *api).returncode == 5
    cli("submit", *api, job_file(tmp_path, parked), check=0)
    not_yet = cli("result", "job-cli-parked", *api, "--wait", "1")
    assert not_yet.returncode == 4 and "not finished (pending)" in not_yet.stderr
    listing = cli("list", *api, "--status", "pending", check=0)
    assert listing.stdout.split("\t")[:2] == ["job-cli-parked", "pending"]
    assert cli("cancel", "job-cli-parked", *api, check=0).stdout.strip() == "job-cli-parked cancelled"
    assert cli("result", "job-cli-parked", *api).returncode == 1
    page = json.loads(cli("list", *api, "--json", "--limit", "2", check=0).stdout)
    assert len(page["jobs"]) == 2 and page["next_page_token"]
    # without the token, or with a wrong one: unavailable (6), and the token never printed
    assert cli("status", "job-cli-good1", "--api", worker.url).returncode == 6
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token\n")
    proc = cli("status", "job-cli-good1", "--api", worker.url, "--api-token-file", str(wrong))
    assert proc.returncode == 6 and "UNAUTHORIZED" in proc.stderr and "not-the-token" not in proc.stderr
    assert TOKEN not in worker.log() and "not-the-token" not in worker.log()


def test_cli_client_environment_and_unreachable_api(dirs, served, token_file):
    worker = served("api", "--api-token-file", token_file)
    env = worker_env(GUESTKIT_WORKER_API_URL=worker.url, GUESTKIT_WORKER_API_TOKEN_FILE=token_file)
    assert cli("status", "no-such-job-2", env=env).returncode == 3
    worker.stop()
    proc = cli("status", "no-such-job-2", "--api", worker.url)
    assert proc.returncode == 6 and "unavailable" in proc.stderr
    assert cli("status", "x" * 10, "--api", "ftp://nowhere").returncode == 2


def test_cli_client_on_the_local_directories(dirs, tmp_path):
    local = ["--jobs-dir", dirs.jobs, "--results-dir", dirs.results]
    doc, parked = make_job("job-local-0001"), make_job("job-local-0002")
    proc = cli("submit", job_file(tmp_path, doc), job_file(tmp_path, parked), "--jobs-dir", dirs.jobs,
               check=0)
    assert sorted(proc.stdout.splitlines()) == ["job-local-0001 pending", "job-local-0002 pending"]
    assert json.loads(cli("status", "job-local-0001", *local, check=0).stdout)["status"] == "pending"
    assert cli("result", "job-local-0001", *local).returncode == 4
    assert cli("cancel", "job-local-0002", *local, check=0).stdout.strip() == "job-local-0002 cancelled"
    cli("run", "--once", *dirs.args(), "--metrics-enabled", "false", check=0)
    assert json.loads(cli("result", "job-local-0001", *local, check=0).stdout)["status"] == "completed"
    assert cli("result", "job-local-0002", *local).returncode == 1
    lines = cli("list", *local, check=0).stdout.splitlines()
    assert sorted(line.split("\t")[1] for line in lines) == ["cancelled", "completed"]
    assert cli("status", "no-such-job-3", *local).returncode == 3
    proc = cli("submit", job_file(tmp_path, make_job("job-local-0003")), *local, "--wait", "1")
    assert proc.returncode == 4 and proc.stdout.splitlines() == ["job-local-0003 pending",
                                                                 "job-local-0003 not finished (pending)"]


def _b64(raw):
    import base64
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("where", ["api", "files", "redis"])
def test_cli_list_refuses_a_bad_page_token_in_one_line(dirs, served, where, request):
    """list --page-token with a token no listing printed: exit 2 and one line naming
    --page-token, over the API and on the local files or Redis keys."""
    if where == "api":
        args = ["--api", served("api").url]
    elif where == "files":
        args = ["--jobs-dir", dirs.jobs, "--results-dir", dirs.results]
    else:
        from redisfixture import require_redis_py
        require_redis_py()
        args = ["--transport", "redis", "--redis-url", request.getfixturevalue("redis_url"),
                "--pool", request.getfixturevalue("pool")]
    outcomes = {}
    for token in (_b64(b"[" * 3000), _b64(b'[1e400,"a"]'), _b64(b"[-1,\"a\"]"), "%%%", "-5:job-x", "\u00e9"):
        proc = cli("list", f"--page-token={token}", *args, timeout=60)
        lines = proc.stderr.strip().splitlines()
        outcomes[token[:20]] = (proc.returncode, len(lines), "--page-token" in proc.stderr,
                                "Traceback" in proc.stderr)
    assert set(outcomes.values()) == {(2, 1, True, False)}, outcomes


#: --api values that are no API base URL, each refused before any connection
BAD_API_URLS = ["127.0.0.1:8080", "ftp://127.0.0.1:8080", "http://", "http://127.0.0.1:99999",
                "http://127.0.0.1:0", "http://127.0.0.1:port", "http://[::1", "http://[::1:8080/",
                "http://a b:8080", " http://127.0.0.1:8080", "http://127.0.0.1:8080/a\nb",
                "http://127.0.0.1:8080/api?x=1", "http://127.0.0.1:8080/#top", "http://user:pw@127.0.0.1:8080"]


def test_cli_bad_api_url_is_one_line_exit_2(dirs, tmp_path):
    """Every client command with an --api that is no base URL: exit 2 and one line naming
    --api and the form it wants (the first value through every command, the others rotate)."""
    job = job_file(tmp_path, make_job("job-bad-api-01"))
    commands = [["status", "job-bad-api-01"], ["result", "job-bad-api-01"], ["cancel", "job-bad-api-01"],
                ["list"], ["submit", job]]
    runs = [(c, "http://[::1") for c in commands] + [(commands[i % len(commands)], url)
                                                     for i, url in enumerate(BAD_API_URLS)]
    outcomes = {}
    for command, url in runs:
        proc = cli(*command, f"--api={url}", "--jobs-dir", dirs.jobs, timeout=60)
        lines = proc.stderr.strip().splitlines()
        outcomes[(command[0], url)] = (proc.returncode, len(lines), "--api" in proc.stderr,
                                       "e.g. http://" in proc.stderr, "Traceback" in proc.stderr)
    wrong = {k: v for k, v in outcomes.items() if v != (2, 1, True, True, False)}
    assert not wrong, f"{len(wrong)} of {len(outcomes)}: {wrong}"
    assert os.listdir(dirs.jobs) == [], "nothing was queued"


class _NotFoundEverywhere:
    """A plain HTTP server on 127.0.0.1:0 (a thread of this process) answering 404 text/html to
    every GET, POST and DELETE: some other web server where the API was expected."""

    def __enter__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def _404(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_error(404)

            do_GET = do_POST = do_DELETE = _404

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def _one_line(proc):
    lines = proc.stderr.strip().splitlines()
    return (proc.returncode, len(lines), lines[0] if lines else "", "Traceback" in proc.stderr)


def test_cli_wrong_api_base_url_is_a_configuration_error_not_a_missing_job(dirs, served, tmp_path):
    """A base URL with a wrong path, or a server that is not the API: exit 2 naming --api and
    the path that was 404, for every client command; a missing job stays exit 3."""
    from apikit import scrape_values
    api = served("api", metrics=True)
    job = job_file(tmp_path, make_job("job-where-0001"))
    commands = [["status", "job-where-0001"], ["result", "job-where-0001"], ["cancel", "job-where-0001"],
                ["list"], ["submit", job]]
    outcomes = {}
    with _NotFoundEverywhere() as other:
        for base in (f"{api.url}/wrong/prefix", f"{api.url}/api/v1", other.url):
            for command in commands:
                code, count, line, traceback = _one_line(cli(*command, "--api", base, timeout=60))
                outcomes[(base, command[0])] = (code, count, line.startswith(f"guestkit-worker: error: --api "
                                                                               f"'{base}'"),
                                                "not a guestkit-worker API (404 for /" in line,
                                                "e.g. http://" in line, traceback)
    wrong = {k: v for k, v in outcomes.items() if v != (2, 1, True, True, True, False)}
    assert not wrong, f"{len(wrong)} of {len(outcomes)}: {wrong}"
    assert [n for n in os.listdir(dirs.jobs) if n.endswith(".json")] == [], "nothing was queued"
    missing = cli("status", "no-such-job-4", "--api", api.url + "/")
    assert _one_line(missing)[:2] == (3, 1) and "NOT_FOUND" in missing.stderr
    before = scrape_values(api.metrics_url)
    assert not [k for k in before if 'code="5' in k], "no request was a server error"


@pytest.mark.parametrize("job_id", ["../../etc/passwd", "a/b/c/d/e", "short", "x" * 129, "job id with spaces",
                                    "..........", "job-%2e%2e-01"])
def test_cli_invalid_job_id_is_refused_before_any_request(dirs, served, job_id):
    """status/result/cancel with an id no job can have: exit 2 and the job id rules in one
    line, and no request reaches the API (its request counter stays where it was)."""
    from apikit import scrape_values
    api = served("api", metrics=True)

    def requests():
        return sum(v for k, v in scrape_values(api.metrics_url).items()
                   if k.startswith("guestkit_api_requests_total{"))
    before = requests()
    outcomes = {}
    for where in (["--api", api.url], ["--jobs-dir", dirs.jobs, "--results-dir", dirs.results]):
        for command in ("status", "result", "cancel"):
            code, count, line, traceback = _one_line(cli(command, *where, "--", job_id, timeout=60))
            outcomes[(where[0], command)] = (code, count, "job_id: " in line, traceback)
    assert set(outcomes.values()) == {(2, 1, True, False)}, outcomes
    assert requests() == before, "the API was never asked"


# -- curl ---------------------------------------------------------------------------------

def curl(*args):
    proc = subprocess.run([require_tool("curl"), "-sS", "--max-time", "60", *args], capture_output=True,
                          text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_curl_flow_with_token_and_tls_client_certificate(dirs, served, token_file, tmp_path):
    pki = Pki(tmp_path / "pki")
    worker = served("run", "--api-token-file", token_file, "--api-tls-cert", pki.cert,
                    "--api-tls-key", pki.key, "--api-client-ca", pki.ca)
    tls = ["--cacert", pki.ca, "--cert", pki.client_cert, "--key", pki.client_key]
    auth = ["-H", f"Authorization: Bearer {TOKEN}"]
    path = job_file(tmp_path, make_job("job-curl-00001"))
    post = ["-H", "Content-Type: application/json", "--data-binary", f"@{path}", f"{worker.url}{JOBS}"]
    out = curl(*tls, *auth, "-i", *post)
    head, _, body = out.partition("\n\n")  # text mode: \r\n read as \n
    assert head.startswith("HTTP/1.1 202") and f"Location: {JOBS}/job-curl-00001" in head
    assert json.loads(body)["data"] == {"job_id": "job-curl-00001", "status": "pending"}
    result = json.loads(curl(*tls, *auth, f"{worker.url}{JOBS}/job-curl-00001/result?wait=30"))
    assert result["data"]["status"] == "completed" and result["data"] == dirs.result("job-curl-00001")
    assert curl(*tls, *auth, "-o", "/dev/null", "-w", "%{http_code}", *post) == "200"
    assert len(os.listdir(os.path.join(dirs.jobs, "done"))) == 1, "the retried POST made no second job"
    no_token = curl(*tls, "-i", f"{worker.url}/api/v1/capabilities")
    assert no_token.startswith("HTTP/1.1 401") and "WWW-Authenticate: Bearer" in no_token
    # keep-alive over TLS: curl sends both requests on one connection (one handshake)
    both = subprocess.run(["curl", "-sS", "-v", "--max-time", "20", *tls, *auth,
                           f"{worker.url}/api/v1/health", f"{worker.url}/api/v1/capabilities"],
                          capture_output=True, text=True, timeout=60)
    assert both.returncode == 0 and "Re-using existing connection" in both.stderr, both.stderr
    health, capabilities = (json.loads(line) for line in both.stdout.splitlines())
    assert "status" in health and capabilities["data"]["protocol_version"]
    proc = subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", pki.ca, *auth,
                           f"{worker.url}/api/v1/capabilities"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0, "no client certificate: the TLS handshake fails"


def test_curl_invalid_job_and_cancel(dirs, served, tmp_path):
    gateway = served("api")
    out = json.loads(curl("-H", "Content-Type: application/json", "-d", '{"version": "1.0"}',
                          f"{gateway.url}{JOBS}"))
    assert out["success"] is False and out["details"]["field"] == "job_id"
    path = job_file(tmp_path, make_job("job-curl-00002"))
    curl("-H", "Content-Type: application/json", "--data-binary", f"@{path}", f"{gateway.url}{JOBS}")
    job_url = f"{gateway.url}{JOBS}/job-curl-00002"
    assert json.loads(curl("-X", "DELETE", job_url))["data"]["status"] == "cancelled"
    assert curl("-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", job_url) == "409"


# -- refusals of the real CLI ---------------------------------------------------------------

@pytest.mark.parametrize("extra, needle", [([], "--api-token-file"),
                                           (["--api-token-file", "TOKENS"], "--allow-path")])
@pytest.mark.parametrize("command", ["run", "api"])
def test_api_beyond_loopback_refuses_to_start(dirs, token_file, command, extra, needle):
    extra = [token_file if e == "TOKENS" else e for e in extra]
    proc = cli(command, *dirs.args()[:4], "--metrics-enabled", "false", "--api-addr", "0.0.0.0:0", *extra,
               env=worker_env(GUESTKIT_WORKER_ALLOW_PATH=None), timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert (len(lines) == 1 and needle in lines[0]
            and lines[0].startswith("guestkit-worker: error: --api-addr"))
    assert not os.listdir(dirs.jobs), "nothing was created or claimed"


def test_api_beyond_loopback_with_tokens_and_allow_path_starts(dirs, served, token_file, tmp_path):
    worker = served("api", "--api-addr", "0.0.0.0:0", "--api-token-file", token_file,
                    "--allow-path", str(tmp_path))
    port = worker.url.rpartition(":")[2]
    assert call(f"http://127.0.0.1:{port}", "GET", "/api/v1/capabilities", token=TOKEN).status == 200


@pytest.mark.parametrize("args, needle", [
    (["--api-addr", "127.0.0.1:0", "--api-tls-cert", "/nonexistent"], "go together"),
    (["--api-addr", "nonsense"], "--api-addr"),
    (["--api-addr", "127.0.0.1:0", "--api-token-file", "/nonexistent"], "--api-token-file"),
    ([], "--api-addr")])
def test_api_option_errors_exit_2(dirs, args, needle):
    proc = cli("api", *dirs.args()[:4], "--metrics-enabled", "false", *args)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr


def test_cli_result_wait_rides_out_a_busy_api(dirs, served):
    import socket

    from apikit import scrape_values
    worker = served("run", "--api-max-waits", "1", metrics=True)
    call(worker.url, "POST", JOBS, doc=make_job("job-busy-parked", routing={"worker_pool": "elsewhere"}))
    call(worker.url, "POST", JOBS,
         doc=make_job("job-busy-sleep8", operation="test.sleep", data={"seconds": 8}))
    host, _, port = worker.url.partition("://")[2].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=30) as holder:  # takes the only wait slot
        holder.sendall(b"GET /api/v1/jobs/job-busy-parked/result?wait=6 HTTP/1.1\r\nHost: x\r\n\r\n")
        proc = cli("result", "job-busy-sleep8", "--api", worker.url, "--wait", "60")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "completed"
    busy = scrape_values(worker.metrics_url)
    assert busy['guestkit_api_requests_total{code="503",method="GET",route="/api/v1/jobs/{id}/result"}'] >= 1
