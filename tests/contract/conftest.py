"""The contract suite runs every test of test_contract_*.py against every transport.

Each ``factory_*.py`` module beside this file adds one transport: it defines ``NAME`` and
``make_factory(request, tmp_path)`` returning an object with

* ``make(worker_id, **options)``: a new, not yet opened Transport (options: max_job_bytes);
  transports made by one factory share one queue and one store;
* ``kill(transport)``: make that transport's worker dead as a crash would (nothing cleaned up);
* ``inject_raw(data, name)``: put raw bytes in the queue as a job, bypassing submit
  (for poison input);
* ``close()``: tear down what the factory started.
"""

import glob
import importlib
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

FACTORIES = {}
for _path in sorted(glob.glob(os.path.join(HERE, "factory_*.py"))):
    _mod = importlib.import_module(os.path.basename(_path)[:-3])
    FACTORIES[_mod.NAME] = _mod


@pytest.fixture(params=sorted(FACTORIES))
def transport_factory(request, tmp_path):
    factory = FACTORIES[request.param].make_factory(request, tmp_path)
    opened = []
    real_make = factory.make

    def make(worker_id="contract-w1", **options):
        t = real_make(worker_id, **options)
        opened.append(t)
        return t
    factory.make = make
    try:
        yield factory
    finally:
        for t in opened:
            try:
                t.close()
            except Exception:
                pass
        factory.close()
