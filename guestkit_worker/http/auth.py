"""Bearer tokens for the REST API and the metrics port: loaded from ``--api-token-file`` or
``--metrics-token-file``, checked in constant time.

Only SHA-256 digests of the tokens are kept in memory, and a presented token is compared with
every configured one (no early exit), so neither the position of a matching token nor the
length of a wrong one shows in the time an answer takes.  Tokens never reach logs or answers.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Callable

from ..job.errors import ConfigError

#: The ``WWW-Authenticate`` challenge of a 401 answer (RFC 6750).
CHALLENGE = 'Bearer realm="guestkit-worker"'
#: ... and of a 401 answer to a token that was presented but is not valid.
CHALLENGE_INVALID = 'Bearer realm="guestkit-worker", error="invalid_token"'
#: A token file larger than this is refused (it is a list of secrets, not data).
MAX_TOKEN_FILE_BYTES = 65536


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class TokenSet:
    """The accepted tokens.  ``compare`` is the equality of two digests (injectable so a test
    can observe that every token is compared); it must be constant-time."""

    def __init__(self, tokens: Iterable[str],
                 compare: Callable[[bytes, bytes], bool] = hmac.compare_digest) -> None:
        self._digests = tuple(_digest(t.encode("utf-8")) for t in tokens)
        self._compare = compare
        self.source: tuple[str, str] | None = None  # (path, flag) of a set read from a file

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, presented: str) -> bool:
        """True when ``presented`` is one of the tokens; compares with all of them."""
        candidate = _digest(presented.encode("utf-8", "surrogateescape"))
        found = False
        for digest in self._digests:
            found |= bool(self._compare(candidate, digest))
        return found

    @classmethod
    def from_file(cls, path: str, flag: str = "--api-token-file") -> TokenSet:
        """The tokens of a token file (see :func:`load_tokens`); ``flag`` names it in errors."""
        tokens = cls(load_tokens(path, flag))
        tokens.source = (path, flag)
        return tokens

    def reload(self) -> str:
        """Read the token file again and accept exactly its tokens from now on (one swap: a
        request checks against the old set or the new one, never a mix).  ConfigError when the
        file cannot be read or holds no token: the set in use stays.  Returns a summary."""
        if self.source is None:
            raise ConfigError("these tokens were not read from a file")
        path, flag = self.source
        digests = tuple(_digest(t.encode("utf-8")) for t in load_tokens(path, flag))
        self._digests = digests
        return f"{len(digests)} token(s) from {path}"


def load_tokens(path: str, flag: str = "--api-token-file") -> list:
    """One token a line; blank lines and lines starting with ``#`` are skipped.
    ConfigError when the file cannot be read or holds no token."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc.strerror}") from None
    if len(raw) > MAX_TOKEN_FILE_BYTES:
        raise ConfigError(f"{flag} {path}: larger than {MAX_TOKEN_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{flag} {path}: not UTF-8 text") from None
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if any(ch.isspace() for ch in token) or not token.isprintable():
            raise ConfigError(f"{flag} {path}: line {number}: a token may not contain "
                              "spaces or control characters")
        tokens.append(token)
    if not tokens:
        raise ConfigError(f"{flag} {path}: no token in the file")
    return tokens


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
