"""Request framing and early answers on the bounded HTTP server, through raw sockets to a real
``guestkit-worker api`` process (REST API and metrics port, which share the server).

* A request whose body length is ambiguous (several or malformed ``Content-Length`` headers,
  ``Transfer-Encoding`` beside ``Content-Length``, folded or malformed header lines) is answered
  400 and the connection closes: the bytes after its headers are never taken for a second
  request, which a proxy framing the request differently would have sent as a body.
"""

import re
import socket

import pytest

from apikit import Served, write_tokens
from conftest import Dirs

TOKEN = "framing-token-0123456789abcdef"
TIMEOUT = 20
MAX_JOB = 4096


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """One ``guestkit-worker api`` with a token on the API and on /metrics."""
    base = tmp_path_factory.mktemp("framing")
    tokens = write_tokens(base, TOKEN)
    proc = Served("api", Dirs(base), "--api-token-file", tokens, "--metrics-token-file", tokens,
                  "--max-job-size", str(MAX_JOB), metrics=True)
    yield proc
    proc.stop()


def _address(url):
    host, _, port = url.partition("://")[2].rpartition(":")
    return host.strip("[]"), int(port)


def _answers(data):
    """The status codes of every answer in ``data`` (a whole connection's bytes from the server)."""
    return [int(code) for code in re.findall(rb"(?:^|\n)HTTP/1\.[01] (\d{3}) ", data)]


def _exchange(url, data):
    """Send ``data`` and read what the server sends until it closes (bounded by TIMEOUT)."""
    with socket.create_connection(_address(url), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


# -- ambiguous framing ----------------------------------------------------------------------

#: the request hidden after the headers: its length is the body a proxy may have framed
_SMUGGLED = {"api": b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
             "metrics": b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"}
_FIRST = {"api": b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
          "metrics": b"GET /health HTTP/1.1\r\nHost: x\r\n"}

# (id, header lines with N for the hidden request's length, word the 400 names)
FRAMINGS = [
    ("differing-lengths", b"Content-Length: 0\r\nContent-Length: N\r\n", b"Content-Length"),
    ("differing-list", b"Content-Length: 0, N\r\n", b"Content-Length"),
    ("identical-duplicates", b"Content-Length: N\r\nContent-Length: N\r\n", b"Content-Length"),
    ("plus-sign", b"Content-Length: +N\r\n", b"Content-Length"),
    ("hexadecimal", b"Content-Length: 0x10\r\n", b"Content-Length"),
    ("two-numbers", b"Content-Length:  N N\r\n", b"Content-Length"),
    ("superscript-digit", b"Content-Length: \xb2\r\n", b"Content-Length"),
    ("chunked-and-length", b"Transfer-Encoding: chunked\r\nContent-Length: N\r\n", b"Transfer-Encoding"),
    ("folded-line", b"Content-Length: 0\r\nX-Note: a\r\n N\r\n", b"header line"),
    ("space-before-colon", b"Content-Length : N\r\n", b"header line"),
    ("bare-cr", b"X-Note: a\rContent-Length: N\r\n", b"header line"),
]


@pytest.mark.parametrize("port", ["api", "metrics"])
@pytest.mark.parametrize("lines, names", [f[1:] for f in FRAMINGS], ids=[f[0] for f in FRAMINGS])
def test_ambiguous_framing_is_400_and_the_hidden_request_is_never_answered(worker, port, lines, names):
    hidden = _SMUGGLED[port]
    request = _FIRST[port] + lines.replace(b"N", str(len(hidden)).encode()) + b"\r\n" + hidden
    received = _exchange(worker.url if port == "api" else worker.metrics_url, request)
    assert _answers(received) == [400], received[:600]
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"\r\nConnection: close" in head and names in body, received[:600]


def test_one_plain_content_length_still_frames_the_next_request(worker):
    """The checks leave well-framed pipelined requests alone (a length padded with blanks too):
    both are answered, in order."""
    first = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\t2 \r\n\r\n{}"
    last = b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    assert _answers(_exchange(worker.metrics_url, first + last)) == [405, 200]
