#!/usr/bin/env python3
"""Inspection overhead: a ``guestkit.inspect`` job through the worker (``guestkit-worker --once``,
from process start to exit, result checked) vs the bare engine command the handler runs
(``guestfs_probe.py --image IMG --format raw --sections <all>`` with the system python) on the
same image.  Two rounds, alternating (each appliance launch takes ~12-25 s here).

Two ratios are printed.  Across runs: median worker wall time / median bare-engine wall time.
Paired: each worker run's wall time / the time the same engine command took inside that run
(the report's ``engine.inspection_seconds``), i.e. start-up, job handling, report and result
writing relative to the launch they wrap.  A TCG appliance launch varies by several percent
from one launch to the next, more than the 5 % being judged, so the verdict uses the paired
ratio; the cross-run ratio is shown beside it.

The image is the Debian-12-like test image built by tests/diskimage.py.  libguestfs runs with
LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg (nested KVM is broken here);
both sides share LIBGUESTFS_CACHEDIR, so the supermin appliance is built once (in an untimed
warm-up launch).  The row is skipped when libguestfs or the image tools are missing.
"""

import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SECTIONS = "packages,services,users,network,security,storage,databases"


def skip(args, why):
    common.finish(args, [common.goal("inspection overhead", None, "-", "≤ 1.05 ×", why)], f"skipped: {why}")


def main():
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    rounds = args.rounds or 2
    sys.path.insert(0, os.path.join(common.ROOT, "tests"))
    try:
        from diskimage import GUESTFS_ENV, build_debian_image
    except ImportError as exc:
        return skip(args, f"tests/diskimage.py not importable ({exc})")
    from guestkit_worker.engines import probe_script
    from guestkit_worker.engines.libguestfs import guestfs_python
    python = guestfs_python()
    missing = [t for t in ("sfdisk", "mkfs.ext4", "qemu-img") if not shutil.which(t)]
    if missing:
        return skip(args, f"missing {', '.join(missing)}")
    if subprocess.run([python, "-c", "import guestfs"], capture_output=True).returncode != 0:
        return skip(args, f"{python} cannot import guestfs (install python3-guestfs)")
    base = common.fresh_dir("inspect")
    image = build_debian_image(os.path.join(base, "image"))["raw"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUESTKIT_WORKER_")}
    env.update(GUESTFS_ENV)
    env["LIBGUESTFS_CACHEDIR"] = os.path.join(base, "appliance-cache")
    os.makedirs(env["LIBGUESTFS_CACHEDIR"])

    def engine():
        tmp = common.fresh_dir("inspect-engine")
        e = dict(env, TMPDIR=tmp)
        t0 = time.perf_counter()
        proc = subprocess.run([python, probe_script(), "--image", image, "--format", "raw",
                               "--sections", SECTIONS], env=e, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        doc = json.loads(proc.stdout)
        if proc.returncode != 0 or "error" in doc:
            raise SystemExit(f"probe failed: {proc.stdout[-500:]} {proc.stderr[-1000:]}")
        return dt

    inner = []

    def worker():
        d = common.fresh_dir("inspect-worker")
        jobs, results, work = (os.path.join(d, x) for x in ("jobs", "results", "work"))
        os.makedirs(jobs)
        doc = common.echo_job("bench-inspect-0001", 0)
        doc.update(operation="guestkit.inspect",
                   payload={"type": "guestkit.inspect.v1",
                            "data": {"image": {"path": image, "format": "raw"}}})
        with open(os.path.join(jobs, "bench-inspect-0001.json"), "w") as fh:
            json.dump(doc, fh)
        t0 = time.perf_counter()
        proc = subprocess.run(common.worker_exe() + ["--once", "--jobs-dir", jobs, "--results-dir", results,
                                                     "--work-dir", work, "--log-level", "WARNING",
                                                     "--allow-path", os.path.dirname(image)],
                              env=env, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        with open(os.path.join(results, "bench-inspect-0001-result.json")) as fh:
            res = json.load(fh)
        if proc.returncode != 0 or res["status"] != "completed":
            raise SystemExit(f"worker inspect failed: {res.get('error')} {proc.stderr[-1000:]}")
        inner.append(dt / res["data"]["engine"]["inspection_seconds"])
        return dt

    print("warm-up launch (builds the appliance cache, untimed)", file=sys.stderr, flush=True)
    engine()
    sides = {"guestkit-worker --once (1 inspect job)": worker, "bare engine (guestfs_probe.py)": engine}
    names = list(sides)
    secs = {k: [] for k in names}
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            secs[k].append(sides[k]())
            print(f"round {r + 1}/{rounds} {k}: {secs[k][-1]:.1f} s", file=sys.stderr, flush=True)
    ref = common.med(secs[names[1]])
    rows = [[k, common.summary(v, "{:.2f}"), f"{common.med(v) / ref:.3f}"] for k, v in secs.items()]
    text = (f"Inspection of the 48 MiB Debian test image (raw), {rounds} rounds, alternating (s)\n"
            + common.table(["side", "s median (min–max)", "× bare engine"], rows))
    cross = common.med(secs[names[0]]) / ref
    paired = common.med(inner)
    text += (f"\n\npaired: worker wall / engine time inside the same run = {common.summary(inner, '{:.3f}')}"
             f"\ncross-run: median worker / median bare engine = {cross:.3f}")
    goals = [common.goal("inspection overhead", paired <= 1.05,
                         f"{paired:.3f} × paired ({cross:.3f} × across runs; "
                         f"worker {common.med(secs[names[0]]):.1f} s, engine {ref:.1f} s)", "≤ 1.05 ×")]
    common.finish(args, goals, text)


if __name__ == "__main__":
    main()
