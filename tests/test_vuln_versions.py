"""Version order per package format, checked against the reference tools where they exist here:
``dpkg --compare-versions`` and rpm's own ``rpm.labelCompare`` (Debian's python3-rpm, run by the
system python), each on a few hundred pairs.  apk-tools is in none of the package registries
reachable here, so apk is checked on chains whose order follows apk-tools' documented grammar
(every pair of a chain, a few hundred in all)."""

import itertools
import json
import os
import subprocess

import pytest
from conftest import require, require_tool

from guestkit_worker.vulns import model, versions

pytestmark = pytest.mark.integration

#: strictly increasing in dpkg's order: epochs, tildes, +debNuM, letters before non-letters
DPKG_CHAIN = [
    "0.9", "1.0~~", "1.0~~a", "1.0~", "1.0~rc1", "1.0~rc2", "1.0", "1.0-1~bpo12+1", "1.0-1",
    "1.0-1ubuntu1", "1.0-1+b1", "1.0-1+deb12u1", "1.0-1+deb12u4", "1.0-1+deb12u10", "1.0-1.1",
    "1.0-2", "1.0-10", "1.0a", "1.0+dfsg-1", "1.0.1", "1.0.10", "1.1", "1.10", "2.0",
    "1:0.5", "1:1.0", "2:0.1",
]
#: more shapes seen in Debian and Ubuntu, compared with everything in the chain
DPKG_EXTRA = [
    "2.36-9+deb12u4", "2.36-9+deb12u10", "7.88.1-10+deb12u5", "1.2.3-0ubuntu0.22.04.1", "0:1.0",
    "1.0-1build1", "1.0+really0.9-1", "1.0~git20230101.abc-1", "3.0.11-1~deb12u2", "1.0.0", "01.0",
]

#: strictly increasing in rpm's order: ~ before the end, ^ after it, numbers beat letters
RPM_CHAIN = [
    "0.9", "1.0~~", "1.0~rc1", "1.0~rc1^1", "1.0", "1.0^", "1.0^git1~pre", "1.0^git1", "1.0a",
    "1.0.1", "1.0.1-0.rc1.el9", "1.0.1-1", "1.0.1-1.el9", "1.0.1-1.el9_2", "1.0.1-1.el9_2.2",
    "1.0.1-1.el9_2.10", "1.0.1-2", "1.0.1-10", "1.0.2", "1.10", "4.18.0-477.10.1.el9_2",
    "4.18.0-477.27.1.el9_2", "1:0.1", "1:0.1-1", "2:0.1",
]
RPM_EXTRA = ["1.01", "1.001", "1.a", "1.A", "1..0", "1_0", "007", "7", "1.0-", "1-1-1", "a", "~", "^",
             "0:1.0-1", "10:0.1", "1.0-1.el9~bootstrap", "5.14.0-362.8.1.el9_3", "3.9.16-1.el9_2.2"]

#: strictly increasing in apk's order: pre-release suffixes, none, -rN, post suffixes, letters,
#: more digits; leading zeros compare as text; ~hash after the end and before -rN
APK_CHAIN = [
    "0.9", "1.0_alpha", "1.0_alpha1", "1.0_alpha2", "1.0_beta", "1.0_beta3", "1.0_pre1", "1.0_rc1",
    "1.0_rc2", "1.0", "1.0-r0", "1.0-r1", "1.0-r2", "1.0-r10", "1.0_cvs", "1.0_svn", "1.0_git",
    "1.0_hg", "1.0_p", "1.0_p1", "1.0_p2", "1.0_p2-r1", "1.0a", "1.0b", "1.0.0", "1.0.1",
    "1.0.2_rc1", "1.0.2", "1.0.10", "1.001", "1.01", "1.1", "1.1~abc", "1.1~abd", "1.1~abd-r1",
    "1.1_p1", "1.2", "1.10", "2.0_alpha1", "2.0", "3.0.8-r3", "3.0.8-r10", "3.0.9", "10.0",
]
#: pairs apk orders as equal
APK_EQUAL = [("1.0", "1.0"), ("01.0", "1.0"), ("1.0-r01", "1.0-r1"), ("1.0_rc01", "1.0_rc1"),
             ("2.0-r001", "2.0-r1")]


def _chain_pairs(chain):
    """Every pair (older, newer) of a strictly increasing chain."""
    return list(itertools.combinations(chain, 2))


def _check_chain(kind, chain):
    wrong = [(a, b, versions.compare(kind, a, b)) for a, b in _chain_pairs(chain)
             if versions.compare(kind, a, b) != -1 or versions.compare(kind, b, a) != 1]
    assert not wrong, f"{len(wrong)} pairs out of order: {wrong[:10]}"
    assert all(versions.compare(kind, v, v) == 0 for v in chain)


def _dpkg_reference(pairs):
    """dpkg's own order of every pair, from one shell running ``dpkg --compare-versions``."""
    script = "".join(f"if dpkg --compare-versions '{a}' lt '{b}'; then echo -1; "
                     f"elif dpkg --compare-versions '{a}' eq '{b}'; then echo 0; else echo 1; fi\n"
                     for a, b in pairs)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=240, check=True)
    return [int(line) for line in out.stdout.split()]


_RPM_PROGRAM = ("import json, sys, rpm\n"
                "pairs = json.load(sys.stdin)\n"
                "print(json.dumps([rpm.labelCompare(tuple(a), tuple(b)) for a, b in pairs]))\n")


def _rpm_reference(pairs):
    """rpm.labelCompare of every pair, run by the system python that has Debian's python3-rpm."""
    system_python = "/usr/bin/python3"
    require(os.path.exists(system_python), "/usr/bin/python3 (with python3-rpm) is not installed")
    probe = subprocess.run([system_python, "-c", "import rpm"], capture_output=True, timeout=60)
    require(probe.returncode == 0, "python3-rpm is not installed for /usr/bin/python3")
    evrs = [[versions.split_evr(a), versions.split_evr(b)] for a, b in pairs]
    out = subprocess.run([system_python, "-c", _RPM_PROGRAM], input=json.dumps(evrs),
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def test_dpkg_chain_is_in_order():
    _check_chain(model.DPKG, DPKG_CHAIN)


def _check_against(kind, pairs, reference, tool):
    """Our order of each pair is the reference tool's."""
    ours = [versions.compare(kind, a, b) for a, b in pairs]
    wrong = [(a, b, r, o) for (a, b), r, o in zip(pairs, reference, ours) if r != o]
    assert not wrong, f"{len(wrong)} of {len(pairs)} pairs differ from {tool}: {wrong[:10]}"


def test_dpkg_matches_dpkg_compare_versions():
    require_tool("dpkg")
    pool = DPKG_CHAIN + DPKG_EXTRA
    pairs = list(itertools.combinations(pool, 2))
    assert len(pairs) >= 500
    _check_against(model.DPKG, pairs, _dpkg_reference(pairs), "dpkg")


def test_dpkg_issue_cases():
    assert versions.compare(model.DPKG, "2.36-9+deb12u4", "2.36-9+deb12u10") == -1
    assert versions.compare(model.DPKG, "1:1.0-1", "2.0-1") == 1
    assert versions.compare(model.DPKG, "1.0~rc1-1", "1.0-1") == -1
    assert versions.compare(model.DPKG, "0:1.0", "1.0") == 0
    with pytest.raises(ValueError):
        versions.compare(model.DPKG, "not a version!", "1.0")


def test_rpm_chain_is_in_order():
    _check_chain(model.RPM, RPM_CHAIN)


def test_rpm_matches_rpm_label_compare():
    pool = RPM_CHAIN + RPM_EXTRA
    pairs = [(a, b) for a, b in itertools.product(pool, pool) if a != b]
    assert len(pairs) >= 1000
    _check_against(model.RPM, pairs, _rpm_reference(pairs), "rpm")


def test_rpm_issue_cases():
    assert versions.compare(model.RPM, "1:1.0-1.el9", "2.0-1.el9") == 1
    assert versions.compare(model.RPM, "1.0~rc1-1", "1.0-1") == -1
    assert versions.compare(model.RPM, "1.0^20230101-1", "1.0-1") == 1
    assert versions.compare(model.RPM, "1.0^20230101-1", "1.0.1-1") == -1
    assert versions.split_evr("2:1.0-3.el9") == ("2", "1.0", "3.el9")


def test_apk_chain_is_in_order():
    _check_chain(model.APK, APK_CHAIN)
    assert len(_chain_pairs(APK_CHAIN)) >= 500


def test_apk_equal_pairs():
    for a, b in APK_EQUAL:
        assert versions.compare(model.APK, a, b) == 0, (a, b)
        assert versions.compare(model.APK, b, a) == 0, (b, a)


def test_apk_issue_cases_and_invalid_versions():
    assert versions.compare(model.APK, "1.2.3_rc1-r0", "1.2.3-r0") == -1
    assert versions.compare(model.APK, "3.0.8-r3", "3.0.8_p1-r0") == -1
    assert versions.compare(model.APK, "1.0-r9", "1.0-r10") == -1
    assert versions.compare(model.APK, "1.0_p", "1.0_p0") == -1  # the shorter one ends first
    # an invalid tail makes the version older than one that ends there, as apk-tools orders it
    assert versions.compare(model.APK, "1.0-foo", "1.0") == -1
    assert versions.compare(model.APK, "1.0", "1.0bc") == -1


def test_unknown_kind_names_the_kinds():
    with pytest.raises(ValueError, match="unknown package kind 'pacman'"):
        versions.compare("pacman", "1", "2")


def test_dpkg_order_agrees_with_python_debian_on_generated_versions():
    """The tuple keys (checked, and a database bound's unchecked one) give python-debian's own
    order on 20,000 pairs of generated versions, odd ones included (a trailing '-', a ':' in
    the revision, an upstream starting with '-')."""
    import random

    from debian.debian_support import version_compare
    rng = random.Random(23)
    parts = ["0", "1", "2", "10", "01", "00", "a", "b", "z", "A", "~", "~~", "+", ".", "-", "rc", "deb12u",
             "+b", ":"]

    def one():
        upstream = rng.choice("0123456789-") + "".join(rng.choice(parts) for _ in range(rng.randint(0, 6)))
        if rng.random() < 0.5:
            upstream = upstream.replace(":", ".")
        revision = "".join(rng.choice(parts) for _ in range(rng.randint(0, 4))).replace("-", "")
        epoch = rng.choice(["", "", "", "1:", "2:", "0:"])
        return epoch + upstream + (f"-{revision}" if revision else rng.choice(["", "-"]))

    pool = [one() for _ in range(3000)]
    wrong, checked = [], 0
    while checked < 20000:
        a, b = rng.choice(pool), rng.choice(pool)
        try:
            want = version_compare(a, b)
        except ValueError:  # python-debian refuses one of them
            continue
        checked += 1
        want = (want > 0) - (want < 0)
        ka, kb = versions.key(model.DPKG, a, checked=False), versions.key(model.DPKG, b, checked=False)
        if versions.compare(model.DPKG, a, b) != want or (ka > kb) - (ka < kb) != want:
            wrong.append((a, b, want))
    assert not wrong, wrong[:10]
