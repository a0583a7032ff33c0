"""The man page, the wheel's data files and the README cannot drift from the code."""

import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT, require_tool

from guestkit_worker.cli.options import RUN_OPTIONS

pytestmark = pytest.mark.timeout(300)
MAN = os.path.join(ROOT, "man", "guestkit-worker.1")
README = os.path.join(ROOT, "README.md")
SECTIONS = ("JOB FILES", "METRICS", "HTTP ENDPOINTS", "SIGNALS", "ENVIRONMENT", "FILES", "EXIT STATUS",
            "EXAMPLES", "SEE ALSO")


def _read(path):
    with open(path) as fh:
        return fh.read()


@pytest.mark.integration
def test_committed_man_page_matches_parser():
    env = dict(os.environ, SOURCE_DATE_EPOCH="1793491200")
    page = subprocess.run([sys.executable, os.path.join(ROOT, "man", "build"), "--stdout"], env=env,
                          capture_output=True, text=True, check=True).stdout
    with open(MAN) as fh:
        committed = fh.read()
    assert page == committed, "man/guestkit-worker.1 is stale: run man/build and commit it"


@pytest.mark.integration
def test_man_page_renders_without_warnings():
    groff = require_tool("groff")
    proc = subprocess.run([groff, "-man", "-Tutf8", "-ww", MAN], capture_output=True, text=True,
                          env=dict(os.environ, LC_ALL="C.UTF-8"))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    text = re.sub(r".\x08", "", proc.stdout)
    for section in SECTIONS:
        assert re.search(rf"^{section}$", text, re.M), section
    for flags, *_ in RUN_OPTIONS:
        assert flags[0] in text, flags[0]
    assert "guestkit_worker_jobs_total{operation,status}" in text


@pytest.mark.integration
def test_man_l_renders(tmp_path):
    man = require_tool("man")
    proc = subprocess.run([man, "-l", MAN], capture_output=True, text=True,
                          env=dict(os.environ, MANPAGER="cat", MANWIDTH="80", LC_ALL="C.UTF-8"))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert re.search(r"guestkit-worker\s+-\s+run guestkit VM disk-image jobs", proc.stdout)
    # no word is hyphenated across lines: metavars (SECONDS), variables and paths are read whole
    broken = re.findall(r"\S*\u2010\n\s*\S*", proc.stdout)
    assert not broken, broken


@pytest.mark.integration
def test_wheel_installs_man_page(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(tmp_path), ROOT], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    wheel = [p for p in os.listdir(tmp_path) if p.endswith(".whl")][0]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    page = [n for n in names if n.endswith("data/share/man/man1/guestkit-worker.1")]
    assert page, names
    assert zipfile.ZipFile(tmp_path / wheel).read(page[0]).decode() == _read(MAN)
    assert "guestkit_worker/engines/guestfs_probe.py" in names
    assert "guestkit_worker/engines/guestfs_sections.py" in names  # the probe imports it from its directory


def test_readme_lists_every_option():
    text = _read(README)
    for flags, dest, *_ in RUN_OPTIONS:
        env = "GUESTKIT_WORKER_" + dest.upper()
        assert re.search(rf"^\| `{flags[0]}[^\n]*?\| `{env}`", text, re.M), flags[0]


def runnable_blocks():
    text = _read(README)
    return re.findall(r"<!-- runnable -->\n```sh\n(.*?)```", text, re.S)


@pytest.mark.integration
def test_readme_runnable_commands(tmp_path):
    """Run the README's runnable blocks twice in a copy of the repository (they make their own
    virtualenv, .venv)."""
    blocks = runnable_blocks()
    assert blocks, "README has no runnable block"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    repo = tmp_path / "repo"
    for f in files:
        src = os.path.join(ROOT, f)
        if os.path.isfile(src):
            os.makedirs(repo / os.path.dirname(f), exist_ok=True)
            shutil.copy2(src, repo / f)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for run in (1, 2):  # a user may well run the quick-start twice: the second run is no error
        for block in blocks:
            proc = subprocess.run(["sh", "-ec", block], cwd=repo, env=env, capture_output=True, text=True,
                                  timeout=400)
            assert proc.returncode == 0, (run, proc.stdout[-3000:] + proc.stderr[-3000:])
        # the quick-start ran the bundled examples: their results are there and completed
        results = sorted(os.listdir(repo / "demo" / "results"))
        assert [r for r in results if r.endswith("-result.json")] == [
            "example-hello-0001-result.json", "example-idempotent-0002-result.json",
            "example-routed-0003-result.json"]
        assert '"status": "completed"' in proc.stdout
        assert "DUPLICATE_JOB_ID" not in proc.stdout + proc.stderr
    assert "example-hello-0001 completed (already submitted)" in proc.stdout
    assert os.path.exists(repo / ".venv" / "share" / "man" / "man1" / "guestkit-worker.1")


def test_readme_first_command_installs_into_a_venv_from_the_checkout():
    """PEP 668 systems (Debian 12) refuse a pip install outside a virtual environment, and the
    package is not on PyPI: the first command makes a venv and installs from the checkout."""
    first = runnable_blocks()[0].splitlines()[0]
    assert first == "python3 -m venv .venv && . .venv/bin/activate && pip install .", first
    text = _read(README) + _read(os.path.join(ROOT, "contrib", "README.md"))
    assert "install 'guestkit-worker[" not in text and "install guestkit-worker[" not in text


def _cron_lines(text):
    field = r"[*\d][\d*/,-]*"
    return [line for line in text.splitlines() if re.match(rf"^{field}( {field}){{4}} \S", line)]


def test_man_page_cron_example_is_the_readmes_valid_cron_d_line():
    readme = _cron_lines(_read(README))
    with open(os.path.join(ROOT, "man", "guestkit-worker.1.in")) as fh:
        man = _cron_lines(fh.read().replace("\\-", "-"))
    assert len(readme) == 1 and man == readme, (man, readme)
    fields = readme[0].split(None, 6)
    # /etc/cron.d syntax: five time fields, then the user, then the command
    assert len(fields) == 7 and fields[5] == "guestkit-worker", fields
    argv = fields[6].split()
    assert argv[:3] == ["flock", "-n", "/run/lock/guestkit-worker-once.lock"]
    assert argv[3].startswith("/") and argv[4:6] == ["run", "--once"]
    for flag in ("--jobs-dir", "--results-dir", "--work-dir", "--textfile-dir"):
        assert argv[argv.index(flag) + 1].startswith("/"), flag
    # a fixed id: the default (host name + random suffix) would orphan claims run after run
    assert argv[argv.index("--worker-id") + 1] == '"$(hostname)"'
    assert "%" not in readme[0]  # cron turns % into a newline


def test_tests_run_installs_without_upgrading_and_readme_says_what():
    with open(os.path.join(ROOT, "tests", "run")) as fh:
        script = fh.read()
    install = re.search(r"apt-get install ([^\n]*\\\n)*[^\n]*", script).group(0)
    assert "--no-upgrade" in install
    packages = [w for w in install.replace("\\", " ").split()[2:]
                if not w.startswith("-") and w != ">/dev/null"]
    readme = " ".join(_read(README).split())
    sentence = re.search(r"installs the real engines the tests use, with `apt-get install --no-upgrade`.*?\)",
                         readme).group(0)
    for package in packages:
        assert package in sentence, package
    # and the extras: other extras join the one pip line as the suite needs them
    extras = re.search(r"pip install -q -e '\.\[([a-z0-9,_-]+)\]'", script).group(1)
    assert f"then `pip install -e '.[{extras}]'`" in readme, extras


def test_readme_flag_table_has_list_operations():
    assert re.search(r"^\| `--list-operations` \|", _read(README), re.M)


def _statuses_listed(text):
    """The exit statuses a README paragraph lists: each number that starts it or follows ';' or ','."""
    return tuple(int(n) for n in re.findall(r"(?:^|; |, )(\d+) ", " ".join(text.split())))


def test_exit_statuses_of_man_page_and_readme_are_the_exitcodes_table():
    """The man page's EXIT STATUS (run; the job commands; prune; vulndb info; dead) and the README's
    lists give exactly the statuses of guestkit_worker/cli/exitcodes.py, in order."""
    from guestkit_worker.cli import exitcodes as x
    tables = [x.RUN_STATUSES, x.JOB_COMMAND_STATUSES, x.PRUNE_STATUSES, x.VULNDB_STATUSES,
              x.DEAD_STATUSES]
    with open(os.path.join(ROOT, "man", "guestkit-worker.1.in")) as fh:
        section = fh.read().split("[EXIT STATUS]\n", 1)[1].split("\n[", 1)[0]
    man = [tuple(int(n) for n in re.findall(r"^\.B (\d+)$", part, re.M))
           for part in re.split(r"^\.PP$", section, flags=re.M)]
    assert man == tables
    text = _read(README)
    readme = [re.search(r"^Exit status: (.*?)\n\n", text, re.S | re.M).group(1),
              re.search(r"Their exit\s+status: (.*?)\n\n", text, re.S).group(1),
              re.search(r"Its exit status: (.*?)\.", text, re.S).group(1),
              re.search(r"Its exit status \(vulndb info\): (.*?)\.\n", text, re.S).group(1),
              re.search(r"`dead`'s exit status: (.*?)\.\n", text, re.S).group(1)]
    assert [_statuses_listed(p) for p in readme] == tables


def test_top_level_help_names_the_transports_and_once():
    """``guestkit-worker --help`` is the first thing a user reads: it says that the worker runs
    without a command, from a jobs directory or Redis, and how to run it once (--once)."""
    from guestkit_worker.cli.main import get_parser
    text = " ".join(get_parser().format_help().split())
    for words in ("jobs directory", "--transport redis", "--once", "Without a COMMAND the worker runs",
                  "run --help"):
        assert words in text, words


@pytest.mark.integration
def test_a_run_in_the_checkout_leaves_nothing_for_git_to_show():
    """``guestkit-worker`` run in a checkout with the default directories (./jobs, ./results,
    ./work) and the README's demo (./demo, ./.venv) leave nothing ``git status`` would list."""
    paths = ["jobs/a.json", "results/a-result.json", "work/x", "demo/jobs/a.json", ".venv/bin/python"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode == 128:
        pytest.skip("not a git checkout")
    assert proc.stdout.split() == paths
