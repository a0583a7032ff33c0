"""Writing a job's output file into a directory other users may write, without following links.

A :class:`PrivateOutput` is made for one destination path (already checked against the path
policy).  It opens the destination's directory once (``O_DIRECTORY|O_NOFOLLOW``) and creates in
it a private directory with an unpredictable name (``mkdtemp``: mode 0700, owned by the worker),
which it also holds open.  The output is written inside that directory -- by the worker with
``O_CREAT|O_EXCL|O_NOFOLLOW`` relative to the held descriptor, by a child such as qemu-img
through ``/proc/<worker pid>/fd/<n>/<file>`` -- and published with ``link``/``rename`` between
the two held directory descriptors.  So nobody who can write the destination directory can make
the worker write anywhere else: a link planted at any name there is never followed, and
renaming the private directory away and putting a link in its place changes nothing, as every
step goes through the descriptors, never through a name that could be swapped.

Each published output carries its job's id in the extended attribute ``user.guestkit.job_id``
(:data:`OWNER_XATTR`).  A destination that exists is no ``OUTPUT_EXISTS`` conflict when it is
this same job's earlier output (a regular file owned by the worker, carrying the job's id): an
attempt whose outcome could not be stored, or whose worker died after publishing, runs again
and replaces it.  On a file system without user extended attributes nothing is marked, and an
existing destination stays a conflict.

Private directories left by a killed worker (``.<name>.<job_id>.<random>.partial``) are removed
by the next attempt of the same job (only real directories owned by the worker).
"""

import errno
import logging
import os
import shutil
import stat
import tempfile

from ..job.errors import HandlerError

log = logging.getLogger(__name__)

#: name of the output file inside the private directory
FILE = "output"
#: the extended attribute naming the job that published an output
OWNER_XATTR = "user.guestkit.job_id"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def is_own_output(path: str, job_id: str) -> bool:
    """True when path is a regular file owned by the worker that the job job_id published
    (see :data:`OWNER_XATTR`); never follows a link."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return False
        return os.getxattr(path, OWNER_XATTR, follow_symlinks=False) == job_id.encode()
    except OSError:
        return False


class PrivateOutput:
    """A private directory beside ``dest`` holding the output until :meth:`publish`."""

    def __init__(self, dest: str, job_id: str):
        self.dest = dest
        self.job_id = job_id
        parent = os.path.dirname(dest) or "."
        self._name = os.path.basename(dest)
        self._prefix = f".{self._name}.{job_id}."
        self._parent_fd = os.open(parent, _DIR_FLAGS)
        self._dir_fd = None
        try:
            self._remove_stale()
            self.dir = tempfile.mkdtemp(prefix=self._prefix, suffix=".partial", dir=parent)
            self._dir_name = os.path.basename(self.dir)
            self._dir_fd = os.open(self._dir_name, _DIR_FLAGS, dir_fd=self._parent_fd)
            st = os.fstat(self._dir_fd)
            if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700:
                raise OSError(errno.EPERM, "the private output directory was replaced", self.dir)
        except BaseException:
            self.close()
            raise

    @property
    def child_path(self) -> str:
        """The output file's path for a child process: through the worker's held descriptor."""
        return f"/proc/{os.getpid()}/fd/{self._dir_fd}/{FILE}"

    def create(self, mode: int = 0o640) -> int:
        """Create the output file (never following a link, never an existing file); an fd."""
        return os.open(FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                       | getattr(os, "O_CLOEXEC", 0), mode, dir_fd=self._dir_fd)

    def stat(self) -> os.stat_result:
        """lstat of the output file."""
        return os.stat(FILE, dir_fd=self._dir_fd, follow_symlinks=False)

    def fsync(self) -> None:
        """fsync the output file (a regular file; a link there is refused)."""
        fd = os.open(FILE, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=self._dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "the output is not a regular file", self.dest)
            os.fsync(fd)
        finally:
            os.close(fd)

    def publish(self, overwrite: bool) -> None:
        """Move the finished, fsynced output to the destination; without overwrite never
        replace anything there (a link there included)."""
        self._mark()
        own = not overwrite and is_own_output(f"/proc/self/fd/{self._parent_fd}/{self._name}", self.job_id)
        if overwrite or own:
            os.replace(FILE, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._parent_fd)
            if own:
                log.info("job %s: replaced its own earlier output %s", self.job_id, self.dest)
        else:
            try:
                os.link(FILE, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._parent_fd,
                        follow_symlinks=False)
            except FileExistsError:
                raise HandlerError("OUTPUT_EXISTS", f"{self.dest} appeared while the job ran; not replaced",
                                   phase="export", details={"path": self.dest}) from None
            os.unlink(FILE, dir_fd=self._dir_fd)
        try:
            os.fsync(self._parent_fd)
        except OSError as exc:  # some file systems refuse fsync on directories
            log.debug("fsync of the directory of %s failed: %s", self.dest, exc)
        log.info("job %s: wrote %s", self.job_id, self.dest)

    def _mark(self) -> None:
        """Write the job's id into the output's OWNER_XATTR (skipped where unsupported)."""
        fd = os.open(FILE, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=self._dir_fd)
        try:
            os.setxattr(fd, OWNER_XATTR, self.job_id.encode())
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                raise
            log.debug("job %s: cannot mark %s as its output: %s", self.job_id, self.dest, exc)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Remove the private directory (and a leftover output) and close the descriptors;
        idempotent, never raises."""
        if self._dir_fd is not None:
            try:
                os.unlink(FILE, dir_fd=self._dir_fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("job %s: cannot remove the partial output of %s: %s", self.job_id, self.dest, exc)
            try:
                same = os.stat(self._dir_name, dir_fd=self._parent_fd, follow_symlinks=False)
                if os.path.samestat(same, os.fstat(self._dir_fd)):
                    os.rmdir(self._dir_name, dir_fd=self._parent_fd)
            except OSError:
                pass
            os.close(self._dir_fd)
            self._dir_fd = None
        if self._parent_fd is not None:
            os.close(self._parent_fd)
            self._parent_fd = None

    def _remove_stale(self) -> None:
        """Private directories of earlier, killed attempts of this job (ours, real directories)."""
        for entry in os.scandir(self._parent_fd):
            if not (entry.name.startswith(self._prefix) and entry.name.endswith(".partial")):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                partial = os.path.join(os.path.dirname(self.dest) or ".", entry.name)
                shutil.rmtree(partial, ignore_errors=True)
                log.info("job %s: removed the partial output %s of an earlier attempt",
                         self.job_id, entry.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
