#!/usr/bin/env python3
"""SHA-256 verification of a 256 MiB image: the handler's verifier vs hashlib over the same
bytes already in memory (the ceiling), with ``openssl dgst -sha256`` and ``sha256sum`` on the
same file for comparison.  The file is warm (in the page cache) for every side; sides
alternate, several rounds; MiB/s = 256 / seconds.

The handler side is ``guestkit_worker.system.checksum.verify_sha256`` with a real HandlerContext
(cancellation checks, progress callback, disk-read accounting) and the expected digest, exactly
as guestkit.inspect calls it.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from guestkit_worker.metrics.families import NullMetrics  # noqa: E402
from guestkit_worker.runtime.context import HandlerContext  # noqa: E402
from guestkit_worker.system.checksum import verify_sha256  # noqa: E402

SIZE = 256 * 1024 * 1024


def make_file(directory):
    path = os.path.join(directory, "image-256m.raw")
    with open(path, "wb") as fh:
        for _ in range(SIZE // (16 << 20)):
            fh.write(os.urandom(16 << 20))
    return path


def main():
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    rounds = args.rounds or 5
    base = common.fresh_dir("checksum")
    path = make_file(base)
    with open(path, "rb") as fh:
        data = fh.read()  # the ceiling's bytes; reading also warms the page cache
    want = hashlib.sha256(data).hexdigest()
    ctx = HandlerContext(types.SimpleNamespace(job_id="bench-checksum"), worker_id="bench", work_dir=base,
                         metrics=NullMetrics())

    def handler():
        assert verify_sha256(path, f"sha256:{want}", ctx) == want

    def ceiling():
        assert hashlib.sha256(data).hexdigest() == want

    def tool(argv):
        def run():
            out = subprocess.run(argv + [path], capture_output=True, text=True, check=True).stdout
            assert want in out, out
        return run

    sides = {"handler (verify_sha256)": handler, "hashlib in memory (ceiling)": ceiling}
    if shutil.which("openssl"):
        sides["openssl dgst -sha256"] = tool(["openssl", "dgst", "-sha256"])
    if shutil.which("sha256sum"):
        sides["sha256sum"] = tool(["sha256sum"])
    names = list(sides)
    mibs = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            sides[k]()
            mibs[k].append(SIZE / (1 << 20) / (time.perf_counter() - t0))
    ceil = common.med(mibs["hashlib in memory (ceiling)"])
    rows = [[k, common.summary(v), f"{common.med(v) / ceil:.2f}"] for k, v in mibs.items()]
    text = (f"SHA-256 of a warm 256 MiB file, {rounds} rounds, sides alternating\n"
            + common.table(["side", "MiB/s median (min–max)", "× ceiling"], rows))
    ratio = common.med(mibs["handler (verify_sha256)"]) / ceil
    goals = [common.goal("checksum", ratio >= 0.9,
                         f"{common.med(mibs['handler (verify_sha256)']):.0f} MiB/s = {ratio:.2f} × in-memory "
                         f"({ceil:.0f})", "≥ 0.90 ×")]
    common.finish(args, goals, text)


if __name__ == "__main__":
    main()
