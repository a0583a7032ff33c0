"""Job transports.  The executor only uses the :class:`Transport` interface; :class:`FileTransport`
implements it on a directory tree shared by any number of workers:

    jobs/                     incoming *.json (producers write NAME.tmp, then rename)
    jobs/.processing/<worker>/ jobs claimed by one worker (NAME.json; NAME.json.running once started)
    jobs/.processing/<worker>.lock   flock held while that worker lives
    jobs/done/                finished jobs (completed, duplicate)
    jobs/failed/              failed, timed out and rejected jobs, each with NAME.reason.json
    results/<job_id>-result.json     one result per job, written atomically
    results/<job_id>-progress.jsonl  progress events
    results/.idempotency/     idempotency key -> result records

A claim is an atomic rename, so two workers never run the same job file.  Nothing is ever
deleted: every job file ends in done/ or failed/, or goes back to jobs/.
"""

import errno
import fcntl
import hashlib
import json
import logging
import os
import stat
import threading
import time

from . import atomic
from .errors import JobFileError

log = logging.getLogger(__name__)

PROCESSING = ".processing"
RUNNING_SUFFIX = ".running"
#: Longest job file name (bytes) admitted: room for ".running", a collision suffix and
#: ".reason.json" within the 255-byte limit of file names.
MAX_NAME_BYTES = 200


class Claim:
    """A job file this worker owns until finish/fail/requeue/release."""

    __slots__ = ("name", "path", "claimed_at", "started", "job_id", "attempt")

    def __init__(self, name, path):
        self.name = name
        self.path = path
        self.claimed_at = time.time()
        self.started = False
        self.job_id = None
        self.attempt = None

    def __repr__(self):
        return f"Claim({self.name!r})"


class Transport:
    """What the executor needs from a job source.  A queue transport (e.g. Redis Streams
    consumer groups) implements the same methods."""

    def scan(self):
        """Names of the jobs waiting now, oldest first."""
        raise NotImplementedError

    def claim(self, name):
        """Take ownership of one waiting job; None when another worker was faster."""
        raise NotImplementedError

    def read(self, claim):
        """The claimed job's bytes; JobFileError when it is not a readable regular file."""
        raise NotImplementedError

    def mark_started(self, claim):
        """Record durably that the handler is about to run (crash recovery counts attempts)."""

    def finish(self, claim, reason=None, failed=False):
        """Archive the job (done/, or failed/ with the reason); its result is stored before."""
        raise NotImplementedError

    def requeue(self, claim, doc=None):
        """Put the job back in the queue (doc: a rewritten document, e.g. attempt + 1)."""
        raise NotImplementedError

    def release(self, claim):
        """Give an untouched job back (it is meant for another worker)."""
        raise NotImplementedError

    def encode_result(self, result):
        """The stored form of a result; TypeError/ValueError when it cannot be stored."""
        return json.dumps(result).encode()

    def write_result(self, result, sync=True, encoded=None):
        """Store a result document (replacing an earlier attempt's).  sync=False: it is only
        durable after the next sync_results().  encoded: encode_result(result), if done."""
        raise NotImplementedError

    def sync_results(self):
        """Make every result written with sync=False durable."""

    def read_result(self, job_id):
        """The stored result of job_id, or None."""
        raise NotImplementedError

    def idempotency_lookup(self, key):
        """{key, job_id, result, completed_at} of the completed job with this key, or None."""
        raise NotImplementedError

    def idempotency_store(self, key, job_id, completed_at):
        """Remember that key completed as job_id."""
        raise NotImplementedError

    def progress_path(self, job_id):
        """A local file progress events of job_id are appended to, or None."""
        return None

    own_dirs = ()  #: local directories handler outputs must never be written into

    def open(self):
        """Connect / create what is needed and announce this worker as alive."""

    def close(self):
        """Release what open() took."""

    def health(self):
        """{check name: (ok, detail)}."""
        return {}

    def recover(self, decide):
        """Hand each job claimed by a dead worker to decide(claim, dead_worker_id); return the count."""
        return 0


def _json_bytes(obj):
    # backslashreplace: a job file name that is not UTF-8 (surrogate-escaped by os.fsdecode)
    # becomes a \udcXX escape inside its JSON string instead of failing the whole write
    return (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8",
                                                                                         "backslashreplace")


_RESULT_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)  # stateless: shared by threads


def _result_bytes(result):
    # one line (jq . shows it indented): json's C encoder, several times faster than indent=2
    return (_RESULT_ENCODER.encode(result) + "\n").encode("utf-8", "backslashreplace")


class FileTransport(Transport):
    def __init__(self, jobs_dir, results_dir, worker_id, *, max_job_bytes, durable=True):
        self.jobs_dir = os.path.abspath(jobs_dir)
        self.results_dir = os.path.abspath(results_dir)
        self.worker_id = worker_id
        self.max_job_bytes = max_job_bytes
        self.durable = durable
        self.processing_root = os.path.join(self.jobs_dir, PROCESSING)
        self.processing = os.path.join(self.processing_root, worker_id)
        self.done_dir = os.path.join(self.jobs_dir, "done")
        self.failed_dir = os.path.join(self.jobs_dir, "failed")
        self.idem_dir = os.path.join(self.results_dir, ".idempotency")
        self._lock_fd = None
        self._results_fd = None  # kept open for the group commit's directory fsync
        self._own_leftovers = []
        # Names of the job files in our processing dir.  Only this process writes there (the
        # flock keeps out anyone else with our worker id, and recovery by other workers starts
        # only once we are dead), so a name is reserved here before a file is moved in and
        # plain renames cannot replace anything.
        self._here = set()
        self._here_lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------
    def open(self):
        """Create the directory layout and take this worker's liveness lock."""
        for d in (self.jobs_dir, self.results_dir, self.processing_root, self.done_dir, self.failed_dir,
                  self.idem_dir):
            self._make_dir(d)
        # lock before our processing dir exists: a worker recovering dead workers' claims must
        # never take a starting worker's empty dir (and its lock) for a dead one's
        self._lock_fd = os.open(self.processing + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._make_dir(self.processing)
        self._results_fd = os.open(self.results_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # Holding our lock, whatever is in our own processing dir was left by an earlier
        # process with this worker id (a stable id such as the host name) that died.
        self._own_leftovers = sorted(n for n in os.listdir(self.processing) if not n.startswith("."))
        self._here = {n[:-len(RUNNING_SUFFIX)] if n.endswith(RUNNING_SUFFIX) else n for n in self._own_leftovers}

    def _make_dir(self, d):
        os.makedirs(d, mode=0o770, exist_ok=True)  # never world access, whatever the umask
        # a link planted at an inner directory by whoever can write jobs/ would send archived
        # files elsewhere: checked before anything is created below it
        if d not in (self.jobs_dir, self.results_dir) and not stat.S_ISDIR(os.lstat(d).st_mode):
            raise OSError(errno.ENOTDIR, f"{d} is a symbolic link or not a directory; refusing to use it")

    def close(self):
        # remove the dir and the lock file while still holding the lock, so nobody locks the
        # file we are about to unlink
        for path in (self.processing, self.processing + ".lock"):
            try:
                (os.rmdir if path == self.processing else os.unlink)(path)
            except OSError:
                pass  # not empty (a stuck job): left for recovery
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._results_fd is not None:
            os.close(self._results_fd)
            self._results_fd = None

    @property
    def own_dirs(self):
        """Directories a job's output must never be written into."""
        return (self.jobs_dir, self.results_dir)

    # -- queue --------------------------------------------------------------------------
    def scan(self):
        try:
            with os.scandir(self.jobs_dir) as it:
                names = [e.name for e in it if e.name.endswith(".json") and not e.name.startswith(".")]
        except OSError as exc:
            log.error("cannot list jobs dir %s: %s", self.jobs_dir, exc)
            return []
        names.sort()
        return names

    def _reserve(self, name):
        """Reserve a name in our processing dir; False while a job file of that name is here."""
        with self._here_lock:
            if name in self._here:
                return False
            self._here.add(name)
            return True

    def _unreserve(self, name):
        with self._here_lock:
            self._here.discard(name)

    def claim(self, name):
        if not self._reserve(name):
            return None  # a job file of this name is claimed or running here: claim it after that one
        dst = f"{self.processing}/{name}"
        try:
            os.rename(f"{self.jobs_dir}/{name}", dst)  # the name is reserved: nothing to replace
        except OSError as exc:
            self._unreserve(name)
            if exc.errno != errno.ENOENT:  # ENOENT: another worker claimed it, or its producer removed it
                log.error("cannot claim %s: %s", name, exc)
            return None
        return Claim(name, dst)

    def read(self, claim):
        size = len(os.fsencode(claim.name))
        if size > MAX_NAME_BYTES:
            raise JobFileError("file", f"name is {size} bytes long; job file names may have at most "
                                       f"{MAX_NAME_BYTES} bytes")
        # Look before opening: a link is never followed and a FIFO, socket or device is never
        # opened (opening some devices has side effects).  The claim sits in our own
        # processing directory, so nobody else swaps it between lstat and open.
        try:
            st = os.lstat(claim.path)
        except OSError as exc:
            raise JobFileError("file", f"cannot stat: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            if stat.S_ISLNK(st.st_mode):
                raise JobFileError("file", "is a symbolic link; job files must be regular files "
                                           "(the link was not followed)")
            kind = ("directory" if stat.S_ISDIR(st.st_mode) else "FIFO" if stat.S_ISFIFO(st.st_mode) else
                    "socket" if stat.S_ISSOCK(st.st_mode) else "device" if stat.S_ISCHR(st.st_mode) or
                    stat.S_ISBLK(st.st_mode) else "special file")
            raise JobFileError("file", f"is a {kind}, not a regular file")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(claim.path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise JobFileError("file", "is a symbolic link; job files must be regular files "
                                           "(the link was not followed)") from None
            if exc.errno == errno.EACCES:
                raise JobFileError("file", "permission denied reading the job file") from None
            raise JobFileError("file", f"cannot open: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = ("directory" if stat.S_ISDIR(st.st_mode) else
                        "FIFO" if stat.S_ISFIFO(st.st_mode) else "special file")
                raise JobFileError("file", f"is a {kind}, not a regular file")
            if st.st_size > self.max_job_bytes:
                raise JobFileError("file", f"is {st.st_size} bytes, larger than the limit of "
                                           f"{self.max_job_bytes} bytes (--max-job-size)")
            # one read of the size fstat reports (+1 to see a file still growing); a short
            # read of a regular file is its end
            want = min(st.st_size + 1, self.max_job_bytes + 1)
            data = os.read(fd, want)
            if len(data) < want:
                return data
            chunks, left = [data], self.max_job_bytes + 1 - len(data)
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        except OSError as exc:
            raise JobFileError("file", f"cannot read: {exc.strerror}") from None
        finally:
            os.close(fd)

    def mark_started(self, claim):
        running = claim.path + RUNNING_SUFFIX
        os.rename(claim.path, running)  # within our processing dir, under a reserved name
        claim.path = running
        claim.started = True

    # -- results ------------------------------------------------------------------------
    def result_path(self, job_id):
        return f"{self.results_dir}/{job_id}-result.json"

    def progress_path(self, job_id):
        return f"{self.results_dir}/{job_id}-progress.jsonl"

    def encode_result(self, result):
        return _result_bytes(result)

    def write_result(self, result, sync=True, encoded=None):
        path = self.result_path(result["job_id"])
        atomic.write_bytes(path, _result_bytes(result) if encoded is None else encoded, durable=self.durable,
                           sync_dir=sync)
        return path

    def sync_results(self):
        if self.durable:
            if self._results_fd is not None:
                os.fsync(self._results_fd)
            else:
                atomic.fsync_dir(self.results_dir)

    def read_result(self, job_id):
        try:
            with open(self.result_path(job_id), "rb") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    # -- archive ------------------------------------------------------------------------
    def _archive(self, claim, directory):
        name = claim.name
        raw = os.fsencode(name)
        if len(raw) > MAX_NAME_BYTES:  # keep room for the suffixes (the reason names the original)
            name = os.fsdecode(raw[:MAX_NAME_BYTES - 30] + b"~" + hashlib.sha256(raw).hexdigest()[:16].encode()
                               + b".json")
        dst = f"{directory}/{name}"
        try:
            atomic.rename_noreplace(claim.path, dst)  # two workers archiving the same name: both kept
        except FileExistsError:
            dst = f"{directory}/{name}.{time.time_ns()}"
            atomic.rename_noreplace(claim.path, dst)
        self._unreserve(claim.name)
        return dst

    def finish(self, claim, reason=None, failed=False):
        """Archive the job file (callers store its result first)."""
        dst = self._archive(claim, self.failed_dir if failed else self.done_dir)
        if reason is not None:
            try:
                atomic.write_bytes(dst + ".reason.json", _json_bytes(reason), durable=False)
            except OSError as exc:
                log.error("job %s: cannot write reason file for %s: %s", claim.job_id or "-", dst, exc)
        return dst

    def requeue(self, claim, doc=None):
        if doc is None:
            self.release(claim)
            return
        data = _json_bytes(doc)
        for dst in self._queue_names(claim.name):
            try:
                atomic.write_bytes(dst, data, durable=self.durable, mode=0o640, overwrite=False)
                break
            except FileExistsError:
                continue
        os.unlink(claim.path)
        self._unreserve(claim.name)

    def release(self, claim):
        for dst in self._queue_names(claim.name):
            try:
                atomic.rename_noreplace(claim.path, dst)
                self._unreserve(claim.name)
                return
            except FileExistsError:
                continue

    def _queue_names(self, name):
        """Where a job file goes back to: its own name, or, when a producer has meanwhile put a
        new job file under that name, a fresh one (never over someone else's job)."""
        yield os.path.join(self.jobs_dir, name)
        stem = name[:-len(".json")] if name.endswith(".json") else name
        while True:
            yield os.path.join(self.jobs_dir, f"{stem}.{time.time_ns()}.json")

    # -- idempotency --------------------------------------------------------------------
    def _idem_path(self, key):
        return os.path.join(self.idem_dir, hashlib.sha256(key.encode("utf-8")).hexdigest() + ".json")

    def idempotency_lookup(self, key):
        try:
            with open(self._idem_path(key), "rb") as fh:
                rec = json.load(fh)
        except (OSError, ValueError):
            return None
        return rec if rec.get("key") == key else None

    def idempotency_store(self, key, job_id, completed_at):
        rec = {"key": key, "job_id": job_id, "result": self.result_path(job_id), "completed_at": completed_at}
        atomic.write_bytes(self._idem_path(key), _json_bytes(rec), durable=self.durable)

    # -- health -------------------------------------------------------------------------
    def health(self):
        checks = {}
        for label, path in (("jobs_dir", self.jobs_dir), ("results_dir", self.results_dir)):
            checks[label] = _probe_dir(path, readable=label == "jobs_dir")
        return checks

    # -- recovery -----------------------------------------------------------------------
    def recover(self, decide):
        """Recover jobs of dead workers (their lock is free).

        ``decide(claim, started)`` is called for each orphaned job and disposes of it
        (requeue, or finish as failed).  Returns the number of jobs recovered.
        """
        count = 0
        leftovers, self._own_leftovers = self._own_leftovers, []
        for name in leftovers:
            started = name.endswith(RUNNING_SUFFIX)
            claim = Claim(name[:-len(RUNNING_SUFFIX)] if started else name, os.path.join(self.processing, name))
            claim.started = started
            if not os.path.lexists(claim.path):
                self._unreserve(claim.name)
                continue
            log.warning("recovering %s left by an earlier run of this worker id (%s)", claim.name,
                        "handler had started" if started else "not started")
            decide(claim, self.worker_id)
            count += 1
        try:
            entries = os.listdir(self.processing_root)
        except OSError:
            return count
        for entry in entries:
            path = os.path.join(self.processing_root, entry)
            if entry.endswith(".lock") or entry == self.worker_id or not os.path.isdir(path):
                continue
            lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # that worker is alive
                try:
                    names = sorted(os.listdir(path))
                except FileNotFoundError:
                    # another worker recovered it between our listing and our lock (and removed
                    # the lock file we have just created again)
                    try:
                        os.unlink(path + ".lock")
                    except OSError:
                        pass
                    continue
                for name in names:
                    started = name.endswith(RUNNING_SUFFIX)
                    job_name = name[:-len(RUNNING_SUFFIX)] if started else name
                    if name.startswith("."):
                        continue
                    # move it into our own processing area first: we own it now
                    own = os.path.join(self.processing, name)
                    if not self._reserve(job_name):  # a job file of that name is ours right now: next time
                        continue
                    try:
                        atomic.rename_noreplace(os.path.join(path, name), own)
                    except OSError:
                        self._unreserve(job_name)
                        continue
                    claim = Claim(job_name, own)
                    claim.started = started
                    log.warning("recovering %s left by dead worker %s (%s)", job_name, entry,
                                "handler had started" if started else "not started")
                    decide(claim, entry)
                    count += 1
                try:
                    os.rmdir(path)
                    os.unlink(path + ".lock")
                except OSError:
                    pass
            finally:
                os.close(lock_fd)
        return count


def _probe_dir(path, readable):
    """(ok, detail) after really listing and creating a file in path (access() lies for root)."""
    try:
        if readable:
            os.listdir(path)
        probe = os.path.join(path, f".health-{os.getpid()}.tmp")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return False, f"{path}: {exc.strerror}"
    return True, path
