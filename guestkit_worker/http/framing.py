"""Where a request's body ends, decided once and unambiguously (RFC 9112 sections 5 and 6).

A server and a proxy in front of it must agree on where one request ends and the next begins;
when a request leaves room for two readings, bytes one of them takes as a body the other takes
as a second request (request smuggling).  :func:`body_length` therefore refuses, with a
:class:`FramingError` that the server answers 400 before closing the connection:

* more than one ``Content-Length`` header, even with equal values, or a list of values;
* a ``Content-Length`` that is not plain decimal digits (``+5``, ``0x10``, ``5 5``, ``²``);
* ``Transfer-Encoding`` together with ``Content-Length``;
* a header line that is not ``name:value``: obsolete line folding (a line starting with a space
  or tab), blanks before the colon, a bare CR, NUL or another control character.

Blanks around a ``Content-Length`` value are allowed (RFC 9110's optional whitespace).
"""

import re
from collections.abc import Iterable
from email.message import Message
from typing import Optional

__all__ = ["FramingError", "body_length"]

#: a header line as RFC 9110/9112 write it: a token, a colon, a value of visible characters,
#: blanks and obs-text, then CRLF (or LF)
_HEADER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r?\n")
#: the longest Content-Length accepted (18 digits: up to an exabyte)
_LENGTH = re.compile(r"[0-9]{1,18}")


class FramingError(ValueError):
    """The request's framing is ambiguous or malformed: the message says what, for the 400."""


def body_length(lines: Iterable[bytes], headers: Message) -> Optional[int]:
    """The body's length in bytes (0 without ``Content-Length``), or None when
    ``Transfer-Encoding`` delimits it; ``lines`` are the raw header lines and ``headers`` their
    parsed form.  Raises :class:`FramingError` for the cases of the module docstring."""
    for line in lines:
        if line not in (b"\r\n", b"\n", b"") and not _HEADER_LINE.fullmatch(line):
            raise FramingError("malformed header line (folded, blanks before the colon, or a control "
                               "character); send each header as one NAME: VALUE line")
    lengths = headers.get_all("Content-Length") or []
    if headers.get_all("Transfer-Encoding"):
        if lengths:
            raise FramingError("Transfer-Encoding and Content-Length together; send only one")
        return None
    if not lengths:
        return 0
    if len(lengths) > 1:
        raise FramingError("several Content-Length headers; send exactly one")
    value = lengths[0].strip(" \t")
    if not _LENGTH.fullmatch(value):
        raise FramingError(f"Content-Length must be a number of bytes in decimal digits, "
                           f"got {value[:20]!r}")
    return int(value)
