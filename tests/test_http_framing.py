"""Request framing and early answers on the bounded HTTP server, through raw sockets to a real
``guestkit-worker api`` process (REST API and metrics port, which share the server).

* A request whose body length is ambiguous (several or malformed ``Content-Length`` headers,
  ``Transfer-Encoding`` beside ``Content-Length``, folded or malformed header lines) is answered
  400 and the connection closes: the bytes after its headers are never taken for a second
  request, which a proxy framing the request differently would have sent as a body.
* An answer given before the body was read (401, 413, 415, 411, 405) reaches a client that is
  still sending a large body: the server reads and drops that body (bounded) instead of closing
  on unread data, which makes the kernel answer with a reset.
"""

import json
import re
import socket
import threading

import pytest
from apikit import Served, write_tokens
from conftest import Dirs

from guestkit_worker.http.request import _DISCARD_MAX_BYTES as DRAINED

pytestmark = pytest.mark.integration

TOKEN = "framing-token-0123456789abcdef"
TIMEOUT = 20
MAX_JOB = 4096
#: the body of the early-answer tests: 2 MiB over --max-job-size
BIG = MAX_JOB + (2 << 20)


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


# -- early answers and the body still coming -------------------------------------------------

def _chunked(size):
    return b"%x\r\n%s\r\n0\r\n\r\n" % (size, b" " * size)


_AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
_JOBS = b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n"
_JSON = b"Content-Type: application/json\r\n"
# (id, port, head without the blank line, body, status, what the answer's body says)
EARLY = [
    ("401-no-token", "api", _JOBS + _JSON, None, 401, "UNAUTHORIZED"),
    ("413-too-large", "api", _JOBS + _JSON + _AUTH, None, 413, "PAYLOAD_TOO_LARGE"),
    ("415-media-type", "api", _JOBS + b"Content-Type: text/plain\r\n" + _AUTH, None, 415,
     "UNSUPPORTED_MEDIA_TYPE"),
    ("411-chunked", "api", _JOBS + _JSON + _AUTH + b"Transfer-Encoding: chunked\r\n", _chunked(BIG), 411,
     "LENGTH_REQUIRED"),
    ("405-metrics", "metrics", b"POST /metrics HTTP/1.1\r\nHost: x\r\n", None, 405, "405 method not allowed"),
    ("401-metrics", "metrics", b"GET /metrics HTTP/1.1\r\nHost: x\r\n", None, 401, "401 Unauthorized"),
]


def _send_all_then_read(url, data):
    """(status, body) of the answer, or the name of the error that broke the exchange.  The send
    buffer (128 KiB) is far below the body: the request is sent whole only if the server reads it."""
    host, port = _address(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 131072)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect((host, port))
        sock.sendall(data)
        with sock.makefile("rb") as stream:
            received = stream.read()
    except OSError as exc:
        return type(exc).__name__
    finally:
        sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("port, head, body, status, says", [e[1:] for e in EARLY], ids=[e[0] for e in EARLY])
def test_early_answer_reaches_a_client_still_sending_a_large_body(worker, port, head, body, status, says):
    if body is None:
        body = b" " * BIG
        head += b"Content-Length: %d\r\n" % len(body)
    url = worker.url if port == "api" else worker.metrics_url
    outcomes = [_send_all_then_read(url, head + b"\r\n" + body) for _ in range(20)]
    assert all(o[0] == status for o in outcomes if isinstance(o, tuple)), outcomes
    resets = [o for o in outcomes if not isinstance(o, tuple)]
    assert resets == [], f"{len(resets)} of 20 exchanges broken: {resets}"
    answer = outcomes[-1][1]
    if port == "api":
        assert json.loads(answer)["error"] == says
    else:
        assert answer.decode().startswith(says)


def test_the_drain_is_bounded_for_a_client_that_never_stops_sending(worker):
    """A 1 GB body declared with a wrong token: the answer comes, the server reads and drops
    16 MiB of the body, then closes, so the client's sending fails well before 64 MiB."""
    sent, failure = [0], []

    def flood(sock):
        chunk = b" " * (1 << 20)
        try:
            while sent[0] < (64 << 20):
                sock.sendall(chunk)
                sent[0] += len(chunk)
        except OSError as exc:
            failure.append(type(exc).__name__)

    with socket.create_connection(_address(worker.url), timeout=TIMEOUT) as sock:
        sock.sendall(_JOBS + _JSON + b"Authorization: Bearer wrong\r\nContent-Length: %d\r\n\r\n" % (1 << 30))
        sender = threading.Thread(target=flood, args=(sock,), daemon=True)
        sender.start()
        with sock.makefile("rb") as stream:
            answer = stream.read()
        sender.join(TIMEOUT)
    assert answer.startswith(b"HTTP/1.1 401 ") and b'"UNAUTHORIZED"' in answer, answer[:300]
    # read and dropped: 16 MiB (plus what the sockets' buffers hold), then the server closed
    assert failure and DRAINED <= sent[0] < 2 * DRAINED, (failure, sent[0])
