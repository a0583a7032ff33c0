#!/usr/bin/env python3
"""Write a synthetic OSV database the size and shape of OSV's Debian set, which cannot be
downloaded here: ``DIR/Debian/all.zip`` with one JSON record per member.

    bench/osvgen.py DIR [--records 65000] [--sources 3000] [--seed 23]

Shapes follow the published records: ids DSA-/DLA-/DEBIAN-CVE-, CVE aliases, a summary and a
few hundred characters of details; 1 to 4 affected entries, one per Debian release
(``Debian:10`` .. ``Debian:13``), each naming a SOURCE package with an ECOSYSTEM range
(``introduced: "0"`` and a ``fixed`` version such as ``1.2.3-4+deb12u5``; some open, some with
a later ``introduced``, a few with ``last_affected`` or a second range) and, for most, the
enumerated ``versions`` list osv.dev adds; a CVSS 3.1 vector on 60 % of the records and a
Debian urgency on the entries.  Records per source package follow a Zipf law (a few sources,
like the kernel, carry thousands).  Deterministic for a seed.  :func:`installed` gives the
matching inventory of an image (binary packages with their source and version).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import zipfile

RELEASES = {"Debian:10": "deb10u", "Debian:11": "deb11u", "Debian:12": "deb12u", "Debian:13": "deb13u"}
URGENCIES = ("low", "medium", "high", "unimportant", "not yet assigned")
WORDS = ("buffer", "overflow", "use-after-free", "heap", "integer", "parsing", "crafted", "remote",
         "denial", "service", "memory", "disclosure", "escalation", "privilege", "certificate", "request")
METRICS = {"AV": "NALP", "AC": "LH", "PR": "NLH", "UI": "NR", "S": "UC", "C": "HLN", "I": "HLN", "A": "HLN"}


def source_names(count: int) -> list[str]:
    """``count`` source package names, the most affected first (the kernel, libraries...)."""
    head = ["linux", "chromium", "firefox-esr", "thunderbird", "openjdk-17", "php8.2", "imagemagick",
            "qemu", "tiff", "binutils", "glibc", "openssl", "curl", "python3.11", "ffmpeg", "libxml2",
            "systemd", "git", "vim", "gnutls28", "bind9", "postgresql-15", "sudo", "bash", "zlib"]
    return head + [f"lib{WORDS[i % len(WORDS)].replace('-', '')}{i}" for i in range(count - len(head))]


def upstream(rng: random.Random) -> str:
    return f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 20)}"


def cvss(rng: random.Random) -> str:
    return "CVSS:3.1/" + "/".join(f"{k}:{rng.choice(v)}" for k, v in METRICS.items())


def _versions(rng: random.Random, base: str, suffix: str, fixed_n: int) -> list[str]:
    """The enumerated affected versions osv.dev lists before the fix."""
    out = [f"{base}-{r}" for r in range(1, rng.randint(1, 4))]
    return out + [f"{base}-1+{suffix}{n}" for n in range(1, fixed_n)]


def _affected(rng: random.Random, ecosystem: str, name: str) -> dict:
    suffix, base = RELEASES[ecosystem], upstream(rng)
    fixed_n = rng.randint(1, 12)
    fixed = f"{base}-1+{suffix}{fixed_n}"
    shape = rng.random()
    if shape < 0.15:  # not fixed yet
        events = [{"introduced": "0"}]
    elif shape < 0.22:  # a regression: a later introduced
        events = [{"introduced": f"{base}-1"}, {"fixed": fixed}]
    elif shape < 0.25:
        events = [{"introduced": "0"}, {"last_affected": f"{base}-1+{suffix}{max(1, fixed_n - 1)}"}]
    else:
        events = [{"introduced": "0"}, {"fixed": fixed}]
    ranges = [{"type": "ECOSYSTEM", "events": events}]
    if rng.random() < 0.05:  # a second range on an older branch
        ranges.append({"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": f"0.{base}-1"}]})
    purl = f"pkg:deb/debian/{name}?arch=source"
    entry = {"package": {"ecosystem": ecosystem, "name": name, "purl": purl},
             "ranges": ranges,
             "ecosystem_specific": {"urgency": rng.choice(URGENCIES)},
             "database_specific": {"source": f"https://security-tracker.debian.org/tracker/{name}"}}
    if rng.random() < 0.7:
        entry["versions"] = _versions(rng, base, suffix, fixed_n)
    return entry


def record(rng: random.Random, n: int, name: str) -> dict:
    year = 2014 + n % 13
    cve = f"CVE-{year}-{10000 + n}"
    kind = rng.random()
    rid = f"DSA-{4000 + n}-1" if kind < 0.1 else f"DLA-{2000 + n}-1" if kind < 0.2 else f"DEBIAN-{cve}"
    releases = rng.sample(sorted(RELEASES), rng.randint(1, 4))
    details = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 70)))
    aliases = [cve] if rid.startswith("DEBIAN") else [cve, f"CVE-{year}-{20000 + n}"]
    doc = {"schema_version": "1.6.0", "id": rid, "aliases": aliases,
           "published": f"{year}-0{1 + n % 9}-1{n % 10}T00:00:00Z",
           "modified": f"2026-11-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00Z",
           "summary": f"{name}: {rng.choice(WORDS)} {rng.choice(WORDS)}", "details": details,
           "affected": [_affected(rng, eco, name) for eco in sorted(releases)],
           "references": [{"type": "ADVISORY", "url": f"https://security-tracker.debian.org/tracker/{cve}"}]}
    if rng.random() < 0.6:
        doc["severity"] = [{"type": "CVSS_V3", "score": cvss(rng)}]
    return doc


def zipf_names(rng: random.Random, names: list[str], count: int) -> list[str]:
    weights = [1.0 / (rank + 1) ** 0.9 for rank in range(len(names))]
    return rng.choices(names, weights, k=count)


def write(directory: str, records: int = 65000, sources: int = 3000, seed: int = 23) -> str:
    """Write DIR/Debian/all.zip; return its path."""
    rng = random.Random(seed)
    names = zipf_names(rng, source_names(sources), records)
    folder = os.path.join(directory, "Debian")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "all.zip")
    with zipfile.ZipFile(path + ".tmp", "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for n, name in enumerate(names):
            doc = record(rng, n, name)
            archive.writestr(f"{doc['id']}.json", json.dumps(doc, indent=2))
    os.replace(path + ".tmp", path)
    return path


def installed(count: int = 1500, sources: int = 3000, seed: int = 5) -> list[tuple]:
    """An image's inventory: ``count`` binary packages (name, version, source, source version,
    arch, kind) from about half as many sources, most of them named by records."""
    rng = random.Random(seed)
    pool = source_names(sources)
    chosen = rng.sample(pool[:25], 20) + rng.sample(pool[25:], count // 2 - 20)
    version_of = {source: f"{upstream(rng)}-1+deb12u{rng.randint(1, 12)}" for source in chosen}
    out = []
    for i in range(count):
        source = chosen[i % len(chosen)]
        version = version_of[source]  # the binaries of a source share its version
        binary = source if i < len(chosen) else f"{source}-bin{i}"
        out.append((binary, version, source, version, "amd64", "dpkg"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("directory")
    p.add_argument("--records", type=int, default=65000)
    p.add_argument("--sources", type=int, default=3000)
    p.add_argument("--seed", type=int, default=23)
    args = p.parse_args()
    path = write(args.directory, args.records, args.sources, args.seed)
    print(f"{path}: {os.path.getsize(path)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
