"""Signals of ``guestkit-worker run``.

* first SIGTERM or SIGINT: stop claiming; running jobs get ``--shutdown-timeout`` to finish;
* second SIGTERM or SIGINT: cancel every running job now (its processes SIGKILLed, a
  ``cancelled`` result written, its job file back in the queue), then exit 130;
* SIGHUP: the token files (``--metrics-token-file``, ``--api-token-file``) and TLS
  certificates of the worker's HTTP ports are read again (``systemctl reload``); a file that
  cannot be read or holds nothing usable is logged and the one in use stays.  Nothing else
  happens (logs go to standard error: nothing to reopen), so a closed terminal or a stray
  ``kill -HUP`` never ends the worker.

The handlers only record the signal and wake a watcher thread; logging, killing and exiting
happen in that thread (a signal handler that logged could deadlock on the logging lock held
by the thread it interrupted).
"""

import logging
import os
import signal
import threading
import time

from .exitcodes import EXIT_ABORTED

log = logging.getLogger(__name__)


class SignalWatcher:
    """Installs the handlers and runs the watcher thread for one worker."""

    def __init__(self, worker, *, shutdown_timeout: float, exit=os._exit):
        self.worker = worker
        self.shutdown_timeout = shutdown_timeout
        self._exit = exit
        self._pending = []              # signal numbers, appended by the handler
        self._event = threading.Event()
        self._stops = 0
        self._thread = None
        #: run by the watcher thread on SIGHUP (reload_servers of the worker's HTTP servers)
        self.on_hup = None

    def install(self) -> "SignalWatcher":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, self._handle)
        self._thread = threading.Thread(target=self._watch, name="signals", daemon=True)
        self._thread.start()
        return self

    def after_run(self):
        """Called when the worker's run returns: after a second signal, wait (bounded) for the
        watcher to finish cancelling and exit 130 -- never return to a normal exit 0."""
        if self.worker is None or not self.worker.hard_stop:
            # let the watcher log the signals it has not logged yet (a stop during start-up
            # ends the run at once), bounded
            for _ in range(200):
                if not self._pending:
                    break
                time.sleep(0.01)
            return
        if self._thread is not None:
            self._thread.join(timeout=60)
        logging.shutdown()
        self._exit(EXIT_ABORTED)

    def attach(self, worker) -> "SignalWatcher":
        """The worker, once built (handlers are installed before, so that a signal during
        start-up is a clean stop): signals received meanwhile apply to it now."""
        self.worker = worker
        if self._stops >= 1:
            worker.request_stop()
        if self._stops >= 2:  # two during start-up: the watcher aborts (cancels nothing yet, exits 130)
            worker.hard_stop = True
            self._pending.append(signal.SIGTERM)
            self._event.set()
        return self

    def _handle(self, signum, frame):
        worker = self.worker
        if signum != signal.SIGHUP:
            self._stops += 1
            if worker is not None and self._stops == 1:
                worker.request_stop()
            elif worker is not None:
                worker.hard_stop = True
        self._pending.append(signum)
        self._event.set()

    def _watch(self):
        while True:
            self._event.wait()
            self._event.clear()
            while self._pending:
                signum = self._pending[0]
                if signum != signal.SIGHUP and self.worker is not None and self.worker.hard_stop:
                    self._abort(signal.Signals(signum).name)
                    return
                self._log(signum)
                self._pending.pop(0)  # after logging: after_run() waits for an empty list

    def _log(self, signum):
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            if self.on_hup is None:
                log.info("SIGHUP received: nothing to reload (logs go to standard error, nothing to reopen)",
                         extra={"event": "signal_hup_ignored"})
                return
            log.info("SIGHUP received: reading token files and TLS certificates again",
                     extra={"event": "signal_hup_reload"})
            try:
                self.on_hup()
            except Exception:  # the watcher must outlive a reload
                log.exception("SIGHUP: reloading failed")
        elif self.worker is None:  # still starting: attach() applies it
            log.info("%s received during start-up: stopping once started", name,
                     extra={"event": "signal_stop"})
        else:
            log.info("%s received: stopping; no new jobs are claimed, running jobs get up to %ss "
                     "(a second SIGTERM or SIGINT cancels them at once)", name, self.shutdown_timeout,
                     extra={"event": "signal_stop"})

    def _abort(self, name):
        started = time.monotonic()
        log.warning("second signal (%s): cancelling running jobs now, killing their processes and "
                    "returning their jobs to the queue; exit status %d", name, EXIT_ABORTED,
                    extra={"event": "signal_abort"})
        try:
            n = self.worker.cancel_all_now()
        except Exception:
            log.exception("cancelling running jobs failed; the next start recovers them")
            n = -1
        log.warning("second signal: %s in %.2fs; exiting %d",
                    f"{n} job(s) cancelled and returned to the queue" if n >= 0 else "cancelling failed",
                    time.monotonic() - started, EXIT_ABORTED, extra={"event": "signal_abort_done"})
        logging.shutdown()
        self._exit(EXIT_ABORTED)


def reload_servers(servers) -> int:
    """Run every reload function of ``servers`` (WSGIService.reloadable), each on its own: a bad
    file is logged and leaves what is in use.  How many reloaded."""
    done = 0
    for server in servers:
        for what, reload in getattr(server, "reloadable", ()):
            try:
                detail = reload()
            except Exception as exc:
                log.error("SIGHUP: cannot reload %s: %s; the one in use stays", what, exc,
                          extra={"event": "reload_failed"})
                continue
            done += 1
            log.info("SIGHUP: reloaded %s (%s)", what, detail, extra={"event": "reloaded"})
    return done
