"""Exception hierarchy: every error the worker raises on purpose derives from GuestkitWorkerError."""


class GuestkitWorkerError(Exception):
    """Base class of every error raised on purpose by guestkit-worker."""


class ConfigError(GuestkitWorkerError):
    """The command line or environment asks for something impossible (exit status 2)."""


class JobValidationError(GuestkitWorkerError):
    """A job document (or a handler payload) breaks the protocol; names the field and the reason."""

    code = "INVALID_JOB"

    def __init__(self, field, reason, code=None):
        self.field = field
        self.reason = reason
        if code:
            self.code = code
        super().__init__(f"{field}: {reason}" if field else reason)


class JobFileError(JobValidationError):
    """The job file itself cannot be read as a JSON object (size, encoding, syntax, file type)."""

    code = "INVALID_JOB_FILE"


class HandlerError(GuestkitWorkerError):
    """A handler failed in a way it understands; carries a protocol error code for the result."""

    def __init__(self, code, message, *, recoverable=False, phase=None, details=None):
        self.code = code
        self.message = message
        self.recoverable = recoverable
        self.phase = phase
        self.details = details
        super().__init__(f"{code}: {message}")


class JobCancelled(BaseException):
    """Raised inside a handler when its job is cancelled (timeout, shutdown, a cancel request or
    a lost lease).  Like KeyboardInterrupt it derives from BaseException, so a handler's
    ``except Exception`` cannot swallow it; ``code``, ``message`` and ``recoverable`` are read
    like a HandlerError's."""

    phase = "execution"
    details = None

    def __init__(self, reason="cancelled"):
        self.reason = reason
        self.code = "TIMEOUT" if reason == "timeout" else "CANCELLED"
        self.message = f"job {reason}"
        self.recoverable = reason != "timeout"
        super().__init__(f"{self.code}: {self.message}")


class EngineUnavailable(HandlerError):
    """A system tool a handler needs (libguestfs, qemu-img) is not installed."""

    def __init__(self, message):
        super().__init__("ENGINE_UNAVAILABLE", message, recoverable=False)


class InvalidTransition(GuestkitWorkerError):
    """A job was moved between states in an order the state machine forbids: a bug."""
