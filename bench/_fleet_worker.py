"""One worker process of a fleet-benchmark peer: ``_fleet_worker.py PEER URL THREADS``
(the stamp file's path in $GKW_BENCH_STAMPS).  Runs until SIGTERM (rq: until its queue is empty)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fleetpeers  # noqa: E402

if __name__ == "__main__":
    fleetpeers.worker_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
