"""The names of the job files in this worker's processing directory, shared by the queue (claim,
give back, archive) and the reclaimer (taking over a dead worker's files)."""

from __future__ import annotations

import threading
from collections.abc import Iterable


class ClaimedNames:
    """Names reserved in this worker's processing directory.

    Only this process moves files in there (the worker lock keeps out anyone else with this
    worker id, and other workers recover the directory only once this one is dead), so a name
    is reserved here before a file is moved in, and a plain rename then replaces nothing."""

    def __init__(self) -> None:
        self._names: set = set()
        self._lock = threading.Lock()

    def reserve(self, name: str) -> bool:
        """Reserve ``name``; False while a job file of that name is here already."""
        with self._lock:
            if name in self._names:
                return False
            self._names.add(name)
            return True

    def reserve_all(self, names: Iterable[str]) -> None:
        """Reserve names whose files are here already (an earlier life's leftovers)."""
        with self._lock:
            self._names.update(names)

    def discard(self, name: str) -> None:
        """Forget ``name``: its file left the processing directory."""
        with self._lock:
            self._names.discard(name)

    def unclaimed(self, names: Iterable[str]) -> list:
        """The names, in their order, that are not reserved here."""
        with self._lock:
            return [n for n in names if n not in self._names]
