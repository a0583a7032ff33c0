"""Version order of each package format, as its own package manager defines it.

Public API::

    compare(kind: str, a: str, b: str) -> int      # -1, 0 or 1; kind is model.DPKG/RPM/APK
    sort_key(kind: str) -> Callable[[str], object]  # a key function for sorted()
    key(kind: str, version: str, checked: bool = True) -> object  # one version's sort key

* dpkg: python-debian's ``Version`` checks the syntax (a version dpkg would refuse raises
  ``ValueError``); the order is dpkg's own (epochs, ``~`` before everything, letters before
  other characters, digit runs as numbers: ``+deb12u4`` < ``+deb12u10``), computed as a tuple
  once per version so that comparisons are cheap.
* rpm: ``[EPOCH:]VERSION[-RELEASE]`` compared part by part with rpmvercmp's rules: runs of
  digits numerically, runs of letters by byte order, a digit run beats a letter run, ``~``
  sorts before anything (even the end) and ``^`` after the end but before anything else.  A
  missing epoch is 0, and a version without a release is older than the same version with
  any release (as ``rpm.labelCompare`` orders them).
* apk: apk-tools' grammar ``DIGITS{.DIGITS}[letter]{_suffix[N]}[~hash][-rN]``: numbers compare
  numerically unless either has a leading zero (then as strings), suffixes ``alpha < beta <
  pre < rc < (none) < cvs < svn < git < hg < p``, and at the first difference in shape the
  version that ends earlier is older, except against a pre-release suffix.  Like
  ``apk version -t``'s comparison it orders any string, valid or not.

python-debian is imported on first use only: a worker that never scans does not need it.
"""

from __future__ import annotations

import functools
import re
from typing import Callable

from .model import APK, DPKG, RPM

# -- dpkg ------------------------------------------------------------------------------------
# The order is dpkg's verrevcmp turned into a tuple once per version, so a comparison is a
# C-level tuple comparison (the matcher compares each installed version with thousands of
# bounds).  python-debian checks a version's syntax where it matters (compare(), an installed
# package's version); a database's bounds are only split, which is what makes the first scan of
# a process cheap.

_DPKG_RUNS = re.compile(r"([^0-9]*)([0-9]*)")
#: dpkg's order of the characters of a non-digit run: ~ first, then the end (0), letters, others
_DPKG_WEIGHTS = {chr(c): (c if chr(c).isalpha() else c + 256) for c in range(33, 127)}
_DPKG_WEIGHTS["~"] = -1
_DPKG_END = ((0,), 0)  # an empty non-digit run and no digits: what a part that ended compares as


def _dpkg_part_key(text: str) -> tuple:
    """The upstream version or revision as ((weights of a non-digit run + end, digits), ...,
    _DPKG_END): runs compare weight by weight, digit runs as numbers, and a version that ended
    as _DPKG_END against the other's next part.  Only the first pair can have an empty run (every
    later one follows a digit run), so no pair but the last equals _DPKG_END, which is what
    makes plain tuple comparison right for versions of different lengths."""
    try:
        pairs = [(tuple(map(_DPKG_WEIGHTS.__getitem__, letters)) + (0,), int(digits or 0))
                 for letters, digits in _DPKG_RUNS.findall(text) if letters or digits]
    except KeyError:
        raise ValueError(f"not a dpkg version: {text!r}") from None
    if not pairs:
        pairs.append(_DPKG_END)  # "" is "0": both start with the neutral pair
    pairs.append(_DPKG_END)
    return tuple(pairs)


@functools.lru_cache(maxsize=131072)
def _dpkg_bound_key(text: str) -> tuple:
    """The order key of a version split as dpkg splits it (epoch before the first ':', a
    non-empty revision after the last '-'), without checking its syntax."""
    epoch, sep, rest = text.partition(":")
    if not sep:
        epoch, rest = "0", text
    upstream, sep, revision = rest.rpartition("-")
    if not (sep and upstream and revision) or ":" in revision:  # as python-debian splits "1.0-", "-1"
        upstream, revision = rest, ""
    return (int(epoch), _dpkg_part_key(upstream), _dpkg_part_key(revision))


@functools.lru_cache(maxsize=65536)
def _dpkg_key(text: str) -> tuple:
    """The order key of a version python-debian accepts (ValueError for one dpkg would refuse)."""
    from debian.debian_support import Version  # optional extra "scan"

    Version(text)
    return _dpkg_bound_key(text)


def _dpkg_compare(a: str, b: str) -> int:
    ka, kb = _dpkg_key(a), _dpkg_key(b)
    return (ka > kb) - (ka < kb)


# -- rpm -------------------------------------------------------------------------------------


def _rpm_segments(text: str, pos: int) -> int:
    """The index of the next character rpmvercmp looks at: alphanumerics, ``~`` and ``^``."""
    while pos < len(text) and not (text[pos].isascii() and text[pos].isalnum()) and text[pos] not in "~^":
        pos += 1
    return pos


def _rpm_run(text: str, pos: int, digits: bool) -> int:
    test = str.isdigit if digits else str.isalpha
    while pos < len(text) and text[pos].isascii() and test(text[pos]):
        pos += 1
    return pos


def _rpm_special(a: str, i: int, b: str, j: int) -> int | None:
    """The order decided by ``~`` or ``^`` at a[i]/b[j], 0 to skip both, None when neither."""
    ca, cb = a[i:i + 1], b[j:j + 1]
    if ca == "~" or cb == "~":
        if ca != "~":
            return 1
        return 0 if cb == "~" else -1
    if ca == "^" or cb == "^":
        if not ca:
            return -1
        if not cb:
            return 1
        if ca != "^":
            return 1
        return 0 if cb == "^" else -1
    return None


def rpmvercmp(a: str, b: str) -> int:
    """rpm's comparison of one version or release string (no epoch, no ``-``)."""
    if a == b:
        return 0
    i = j = 0
    while i < len(a) or j < len(b):
        i, j = _rpm_segments(a, i), _rpm_segments(b, j)
        special = _rpm_special(a, i, b, j)
        if special is not None:
            if special:
                return special
            i, j = i + 1, j + 1
            continue
        if i >= len(a) or j >= len(b):
            break
        digits = a[i].isdigit()
        ei, ej = _rpm_run(a, i, digits), _rpm_run(b, j, digits)
        sa, sb = a[i:ei], b[j:ej]
        if not sb:  # a digit run against a letter run: the digits are newer
            return 1 if digits else -1
        if digits:
            sa, sb = sa.lstrip("0"), sb.lstrip("0")
            if len(sa) != len(sb):
                return 1 if len(sa) > len(sb) else -1
        if sa != sb:
            return 1 if sa > sb else -1
        i, j = ei, ej
    if i >= len(a) and j >= len(b):
        return 0
    return 1 if i < len(a) else -1


def split_evr(text: str) -> tuple[str, str, str | None]:
    """``[EPOCH:]VERSION[-RELEASE]`` into (epoch, version, release); epoch "0" when absent."""
    epoch, sep, rest = text.partition(":")
    if not sep or not epoch.isdigit():
        epoch, rest = "0", text
    version, sep, release = rest.rpartition("-")
    if not sep:
        return epoch, rest, None
    return epoch, version, release


def _rpm_compare(a: str, b: str) -> int:
    ea, va, ra = split_evr(a)
    eb, vb, rb = split_evr(b)
    result = rpmvercmp(ea, eb) or rpmvercmp(va, vb)
    if result or ra == rb:
        return result
    if ra is None or rb is None:  # a version without a release is the older one
        return -1 if ra is None else 1
    return rpmvercmp(ra, rb)


# -- apk -------------------------------------------------------------------------------------

# token kinds in the order apk-tools gives them: a later kind at the first difference is older
_INITIAL, _DIGIT, _LETTER, _SUFFIX, _SUFFIX_NO, _HASH, _REVISION, _END, _INVALID = range(9)
_SUFFIX_NONE = 4
_SUFFIXES = {"alpha": 0, "beta": 1, "pre": 2, "rc": 3, "cvs": 5, "svn": 6, "git": 7, "hg": 8, "p": 9}
_HEX = frozenset("0123456789abcdef")
_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz")


def _span(text: str, pos: int, allowed) -> int:
    while pos < len(text) and text[pos] in allowed:
        pos += 1
    return pos


def _apk_digits(text: str, pos: int, kind: int) -> tuple[tuple, int]:
    end = _span(text, pos, "0123456789")
    if end == pos:
        return (_INVALID, "", 0), end
    return (kind, text[pos:end], int(text[pos:end])), end


def _apk_next(text: str, pos: int, prev: int) -> tuple[tuple, int]:
    """The token at ``pos`` after a token of kind ``prev``: (kind, text, number), next pos."""
    if pos >= len(text):
        return (_END, "", 0), pos
    char = text[pos]
    if char in _LOWER and prev <= _DIGIT:
        return (_LETTER, char, ord(char)), pos + 1
    if char == "." and prev <= _DIGIT:
        return _apk_digits(text, pos + 1, _DIGIT)
    if char.isascii() and char.isdigit() and prev in (_INITIAL, _DIGIT, _SUFFIX):
        return _apk_digits(text, pos, _DIGIT if prev != _SUFFIX else _SUFFIX_NO)
    if char == "_" and prev <= _SUFFIX_NO:
        end = _span(text, pos + 1, _LOWER)
        suffix = _SUFFIXES.get(text[pos + 1:end])
        if suffix is not None:
            return (_SUFFIX, text[pos + 1:end], suffix), end
    elif char == "~" and prev < _HASH:
        end = _span(text, pos + 1, _HEX)
        if end > pos + 1:
            return (_HASH, text[pos + 1:end], 0), end
    elif char == "-" and prev < _REVISION and text.startswith("-r", pos):
        return _apk_digits(text, pos + 2, _REVISION)
    return (_INVALID, "", 0), pos


def _apk_tokens(text: str):
    """apk-tools' tokens of ``text``, ending with an _END or _INVALID token."""
    token, pos = _apk_digits(text, 0, _INITIAL)
    yield token
    while token[0] < _END:
        token, pos = _apk_next(text, pos, token[0])
        yield token


def _apk_token_compare(ta: tuple, tb: tuple) -> int:
    kind = ta[0]
    by_text = kind == _HASH or (kind == _DIGIT and (ta[1][:1] == "0" or tb[1][:1] == "0"))
    a, b = (ta[1], tb[1]) if by_text else (ta[2], tb[2])
    return (a > b) - (a < b)


def _apk_compare(a: str, b: str) -> int:
    for ta, tb in zip(_apk_tokens(a), _apk_tokens(b)):
        if ta[0] == tb[0] and ta[0] < _END:
            result = _apk_token_compare(ta, tb)
            if result:
                return result
            continue
        return _apk_tail(ta, tb)
    return 0  # not reached: both token streams end with _END or _INVALID


def _apk_tail(ta: tuple, tb: tuple) -> int:
    """The order once the token kinds differ (or both ended)."""
    if ta[0] == tb[0]:
        return 0
    if ta[0] == _SUFFIX and ta[2] < _SUFFIX_NONE:
        return -1
    if tb[0] == _SUFFIX and tb[2] < _SUFFIX_NONE:
        return 1
    return -1 if ta[0] > tb[0] else 1


# -- public ----------------------------------------------------------------------------------

_COMPARERS: dict[str, Callable[[str, str], int]] = {DPKG: _dpkg_compare, RPM: _rpm_compare,
                                                     APK: _apk_compare}


def compare(kind: str, a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is older than, equal to or newer than ``b`` in ``kind``'s
    order (model.DPKG, model.RPM or model.APK).  ValueError for an unknown kind or a version
    the kind's syntax refuses (dpkg only)."""
    try:
        comparer = _COMPARERS[kind]
    except KeyError:
        raise ValueError(f"unknown package kind {kind!r}: expected one of {sorted(_COMPARERS)}") from None
    return comparer(a, b)


def sort_key(kind: str) -> Callable[[str], object]:
    """A key for ``sorted()`` that orders version strings of ``kind``."""
    if kind == DPKG:
        return _dpkg_key
    return functools.cmp_to_key(functools.partial(compare, kind))


def key(kind: str, version: str, checked: bool = True):
    """An object that orders like ``version`` among versions of ``kind`` (a tuple for dpkg,
    computed once per version; a comparison wrapper for rpm and apk).  ValueError as compare;
    with ``checked`` false a dpkg version's syntax is not checked (a database's bounds)."""
    if kind == DPKG:
        return _dpkg_key(version) if checked else _dpkg_bound_key(version)
    if kind not in _COMPARERS:
        compare(kind, version, version)  # raises the unknown-kind error
    return _WRAPPERS[kind](version)


_WRAPPERS = {kind: functools.cmp_to_key(fn) for kind, fn in ((RPM, _rpm_compare), (APK, _apk_compare))}
