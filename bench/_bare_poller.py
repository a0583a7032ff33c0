"""The idle benchmark's yardstick: the least a polling daemon with a metrics endpoint does.
prometheus_client's start_http_server on 127.0.0.1 (default registry) and a scan of the jobs
directory once a second.  Usage: _bare_poller.py JOBS_DIR; prints "ready" once serving."""

import os
import sys
import time

from prometheus_client import start_http_server


def main():
    jobs = sys.argv[1]
    os.makedirs(jobs, exist_ok=True)
    start_http_server(0, addr="127.0.0.1")
    print("ready", flush=True)
    while True:
        with os.scandir(jobs) as it:
            for _entry in it:
                pass
        time.sleep(1.0)


if __name__ == "__main__":
    main()
