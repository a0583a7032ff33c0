"""One huey round in its own interpreter (like a worker process): enqueue N no-op tasks into a
fresh SqliteHuey database (default settings), then start a thread consumer with C workers and
time the tasks to completion.  Prints one JSON line: completion timestamps summarised.

Usage: _huey_side.py DB N C
"""

import json
import os
import sys
import threading
import time


def main():
    db, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    from huey import SqliteHuey, signals

    huey = SqliteHuey(filename=db)  # default settings otherwise

    @huey.task()
    def echo(data):  # the no-op job: return the payload, stored as the task result
        return data

    done = []
    all_done = threading.Event()
    lock = threading.Lock()

    @huey.signal(signals.SIGNAL_COMPLETE)
    def completed(signal, task, *args):
        t = time.time()
        with lock:
            done.append(t)
            if len(done) >= n:
                all_done.set()

    for i in range(n):
        echo({"n": i, "text": "no-op"})
    os.sync()
    time.sleep(0.05)
    consumer = huey.create_consumer(workers=c, worker_type="thread")
    t0 = time.time()
    consumer.start()
    finished = all_done.wait(600)
    t1 = time.time()
    consumer.stop(graceful=True)
    stored = huey.storage.result_store_size()
    print(json.dumps({"first": min(done), "last": max(done), "count": len(done), "start": t0,
                      "end": t1, "finished": finished, "results": stored}))


if __name__ == "__main__":
    main()
