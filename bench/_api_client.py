"""One client of the API benchmark: ``_api_client.py PORT PREFIX COUNT`` POSTs COUNT distinct
echo jobs to /api/v1/jobs over one keep-alive connection, after a line on stdin (so all
clients start together).  Prints one JSON line: first and last completion, answers by status."""

import http.client
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    port, prefix, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    bodies = [json.dumps(common.echo_job(f"{prefix}-{i:06d}", i)).encode() for i in range(count)]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.connect()
    print("ready", flush=True)
    sys.stdin.readline()
    statuses, first, last = {}, None, None
    headers = {"Content-Type": "application/json"}
    for body in bodies:
        conn.request("POST", "/api/v1/jobs", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        last = time.time()
        first = first or last
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
    conn.close()
    print(json.dumps({"first": first, "last": last, "statuses": statuses}), flush=True)


if __name__ == "__main__":
    main()
