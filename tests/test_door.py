"""Mistakes caught at the door: exit 2, one clear line naming what is wrong, no traceback,
nothing created or run."""

import contextlib
import os
import subprocess
import sys

import pytest
from conftest import cli, make_job, wait_for, worker_env, write_job

from guestkit_worker.cli.exitcodes import EXIT_TEXTFILE
from guestkit_worker.cli.main import _commands, get_parser

pytestmark = pytest.mark.integration


def _one_clean_line(proc):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("name,value,words", [
    ("GUESTKIT_WORKER_ONCE", "maybe", "expected true or false, got 'maybe'"),
    ("GUESTKIT_WORKER_METRICS_ENABLED", "sure", "expected true or false, got 'sure'"),
    ("GUESTKIT_WORKER_MAX_CONCURRENT", "many", "expected a whole number, got 'many'"),
    ("GUESTKIT_WORKER_POLL_INTERVAL", "soon", "expected a number, got 'soon'"),
    ("GUESTKIT_WORKER_SHUTDOWN_TIMEOUT", "nan", "must not be negative"),
    ("GUESTKIT_WORKER_LOG_LEVEL", "verbose", "expected DEBUG, INFO, WARNING or ERROR, got 'verbose'"),
])
def test_bad_environment_values_exit_2_with_one_line(dirs, name, value, words):
    write_job(dirs.jobs, make_job("door-env-0001"))
    once = [] if name == "GUESTKIT_WORKER_ONCE" else ["--once"]  # the flag would win over the variable
    proc = cli(*once, *dirs.args(), env=worker_env(**{name: value}), timeout=60)
    line = _one_clean_line(proc)
    assert name in line and words in line, line
    assert os.listdir(dirs.results) == []  # no job ran


@pytest.mark.parametrize("args,words", [
    (["--log-level", "verbose"],
     "argument --log-level: expected DEBUG, INFO, WARNING or ERROR, got 'verbose'"),
    (["--max-concurrent", "x"], "argument --max-concurrent: expected a whole number, got 'x'"),
])
def test_bad_flag_values_exit_2(dirs, args, words):
    line = _one_clean_line(cli("--once", *dirs.args(), *args))
    assert words in line, line


def test_submit_never_creates_the_jobs_dir(tmp_path):
    job = tmp_path / "job.json"
    job.write_text(__import__("json").dumps(make_job("door-submit-01")))
    missing = tmp_path / "typo"
    line = _one_clean_line(cli("submit", str(job), "--jobs-dir", str(missing)))
    assert line == f"guestkit-worker: error: --jobs-dir {missing}: no such directory"
    assert not missing.exists()


def test_run_creates_a_missing_dir_only_under_an_existing_parent(tmp_path):
    jobs, results, work = tmp_path / "jobs", tmp_path / "results", tmp_path / "work"
    proc = cli("--once", "--metrics-enabled", "false", "--jobs-dir", str(jobs), "--results-dir", str(results),
               "--work-dir", str(work), check=0)
    assert jobs.is_dir() and results.is_dir() and work.is_dir()
    assert f"created jobs directory {jobs}" in proc.stderr
    deep = tmp_path / "no" / "such" / "jobs"
    line = _one_clean_line(cli("--once", "--jobs-dir", str(deep), "--results-dir", str(results),
                               "--work-dir", str(work)))
    assert line == (f"guestkit-worker: error: --jobs-dir {deep}: no such directory, and its parent "
                    f"{deep.parent} does not exist either")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("flag", ["--jobs-dir", "--results-dir", "--work-dir"])
def test_a_directory_that_is_a_file_is_named(dirs, tmp_path, flag):
    afile = tmp_path / "a-file"
    afile.write_text("")
    args = dirs.args()
    args[args.index(flag) + 1] = str(afile)
    line = _one_clean_line(cli("--once", *args))
    assert line == f"guestkit-worker: error: {flag} {afile}: exists but is not a directory"


def test_unknown_command_lists_the_commands():
    line = _one_clean_line(cli("statuz"))
    commands = _commands(get_parser())
    assert {"run", "submit", "validate", "list-operations"} <= set(commands)
    assert line.startswith("guestkit-worker: error: unknown command 'statuz' (commands: ")
    assert ", ".join(commands) in line


@contextlib.contextmanager
def _writable_then_not(path):
    """A directory that can be made unwritable for this process while a run is going on:
    a tmpfs remounted read-only as root, mode 0555 otherwise."""
    os.makedirs(path)
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", path], check=True)

        def lock():
            subprocess.run(["mount", "-o", "remount,ro", path], check=True)
        try:
            yield lock
        finally:
            subprocess.run(["umount", path], check=False)
    else:
        yield lambda: os.chmod(path, 0o555)


def test_unwritable_textfile_dir_refused_before_any_job(dirs, tmp_path):
    write_job(dirs.jobs, make_job("door-textfile-01"))
    with _writable_then_not(str(tmp_path / "textfile")) as lock:
        lock()
        proc = cli("--once", *dirs.args(), "--textfile-dir", str(tmp_path / "textfile"))
    line = _one_clean_line(proc)
    assert line.startswith(f"guestkit-worker: error: --textfile-dir {tmp_path / 'textfile'}: "
                           "cannot create a file")
    assert os.listdir(dirs.results) == [] and os.listdir(dirs.jobs) == ["door-textfile-01.json"]


def test_textfile_write_failing_at_the_end_has_its_own_exit_code(dirs, tmp_path):
    write_job(dirs.jobs, make_job("door-textfile-02", "test.sleep", {"seconds": 2}))
    textfile = str(tmp_path / "textfile")
    with _writable_then_not(textfile) as lock:
        proc = subprocess.Popen([sys.executable, "-m", "guestkit_worker", "--once", *dirs.args(),
                                 "--textfile-dir", textfile, "--poll-interval", "0.1"],
                                env=worker_env(), stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: dirs.running(), timeout=30, what="job running")
            lock()
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == EXIT_TEXTFILE == 3, err
    assert dirs.result("door-textfile-02")["status"] == "completed"
    assert f"cannot write the textfile in {textfile}" in err


@pytest.mark.parametrize("command", [["status", "door-env-job-1"], ["result", "door-env-job-1"], ["list"],
                                     ["cancel", "door-env-job-1"], ["submit", "--wait", "5", "JOB"]])
def test_job_commands_read_every_variable_of_their_options_like_run(dirs, command):
    """The job commands take each setting from its flag, else its GUESTKIT_WORKER_* variable,
    else the default, through run's option table: a bad value is one line and exit 2, and
    --help lists every variable they read (before: without --api, status/result/list/cancel and
    submit --wait read GUESTKIT_WORKER_MAX_JOB_SIZE with int(): a ValueError traceback, exit 1,
    and no --help of theirs named it)."""
    job = os.path.join(dirs.base, "job.json")
    with open(job, "w") as fh:
        fh.write(__import__("json").dumps(make_job("door-env-job-1")))
    argv = [job if a == "JOB" else a for a in command]
    proc = cli(*argv, "--jobs-dir", dirs.jobs, "--results-dir", dirs.results,
               env=worker_env(GUESTKIT_WORKER_MAX_JOB_SIZE="abc"), timeout=60)
    line = _one_clean_line(proc)
    assert line == "guestkit-worker: error: GUESTKIT_WORKER_MAX_JOB_SIZE: expected a whole number, got 'abc'"
    assert not os.path.exists(os.path.join(dirs.jobs, "door-env-job-1.json"))  # nothing queued
    text = " ".join(cli(command[0], "--help", check=0).stdout.split())
    for name in ("API_URL", "API_TOKEN_FILE", "API_CA", "TRANSPORT", "REDIS_URL", "POOL", "JOBS_DIR",
                 "RESULTS_DIR", "MAX_JOB_SIZE", "RESULT_TTL"):
        assert f"GUESTKIT_WORKER_{name}" in text, name
