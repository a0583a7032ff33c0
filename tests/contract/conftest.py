"""The contract suite runs every test of test_contract_*.py against every transport.

Each ``factory_*.py`` module beside this file adds one transport: it defines ``NAME`` and
``make_factory(request, tmp_path)`` returning an object with

* ``make(worker_id, **options)``: a new, not yet opened Transport (options: max_job_bytes, and
  observer: the TransportObserver it reports to); transports made by one factory share one
  queue and one store;
* ``kill(transport)``: make that transport's worker dead as a crash would (nothing cleaned up),
  seen from outside: its files, keys or broker entry as a dead process leaves them.  The
  transport object must not be used afterwards (a dead process makes no calls), except close();
* ``advance(seconds)``: let that much time pass for the transports' leases (a sleep where leases
  run on the real clock, a jump of an injected clock, nothing where no claim runs out with time);
* ``lapse(transport)``: make that transport's claims on its deliveries run out while its worker
  lives on and makes no sign of life: a lease not renewed in time (one that runs out by itself
  within a second needs nothing here: the tests wait for the take-over, bounded), or, where a
  claim lasts as long as its worker's lock, the lock lost;
* ``break_store()`` / ``mend_store()``: make the store refuse to store anything (a results
  directory that is no directory any more, a Redis server that is down, a broker told to act
  unreachable) and repair it afterwards, nothing lost (what was stored before is there again);
* ``inject_raw(data, name)``: put raw bytes in the queue as a job, bypassing submit
  (for poison input);
* ``close()``: tear down what the factory started.

None of them reaches into a transport's private attributes: what a test needs is done from
outside (as a crash or an outage would) or through a transport's public, documented methods.
"""

import contextlib
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


#: a factory whose transport needs a process (INTEGRATION = True) marks its tests integration
PARAMS = [pytest.param(name, marks=[pytest.mark.integration] if getattr(mod, "INTEGRATION", False) else [])
          for name, mod in sorted(FACTORIES.items())]


@pytest.fixture(params=PARAMS)
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
            with contextlib.suppress(Exception):
                t.close()
        factory.close()
