"""The registry that maps operations to handlers, and the built-in handlers' registration.

Third-party handlers register through the entry-point group ``guestkit_worker.handlers``;
each entry point names a Handler subclass or a factory returning a handler instance.  The
registry sits above :mod:`.base` and the built-in handlers, which import only the base.
"""

import logging
from importlib import metadata

from .convert import ConvertHandler
from .echo import EchoHandler
from .inspect import InspectHandler
from .scan import ScanHandler

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "guestkit_worker.handlers"


class HandlerRegistry:
    """Maps operation names to handler instances."""

    def __init__(self):
        self._by_operation = {}
        self._handlers = []

    def register(self, handler):
        for op in handler.operations:
            if op in self._by_operation:
                raise ValueError(f"operation {op} already served by {self._by_operation[op].name}")
        for op in handler.operations:
            self._by_operation[op] = handler
        self._handlers.append(handler)
        return handler

    def get(self, operation):
        return self._by_operation.get(operation)

    @property
    def operations(self):
        return sorted(self._by_operation)

    @property
    def handlers(self):
        return list(self._handlers)

    def configure_paths(self, allowed=None, protected=(), allow_backing=None):
        """Hand the worker's path policy to every handler that takes one."""
        for handler in self._handlers:
            configure = getattr(handler, "configure_paths", None)
            if configure is not None:
                if allow_backing is None:
                    configure(allowed, protected)
                else:
                    configure(allowed, protected, allow_backing=allow_backing)

    def configure_vulns(self, db_dir, max_age_seconds):
        """Hand the vulnerability database (--vuln-db, None when not set) and its age limit in
        seconds (--vuln-db-max-age, 0 = none) to every handler that scans."""
        for handler in self._handlers:
            configure = getattr(handler, "configure_vulns", None)
            if configure is not None:
                configure(db_dir, max_age_seconds)

    def load_entry_points(self):
        """Register third-party handlers; a broken plugin is logged and skipped."""
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
                handler = obj() if callable(obj) else obj
                self.register(handler)
                log.info("loaded handler %s from entry point %s", handler.name, ep.name)
            except Exception as exc:  # a plugin must not take the worker down
                log.error("cannot load handler entry point %s: %s", ep.name, exc)


def default_registry(load_plugins=True):
    """A registry holding the built-in handlers (and plugins when asked)."""
    reg = HandlerRegistry()
    reg.register(EchoHandler())
    reg.register(InspectHandler())
    reg.register(ConvertHandler())
    reg.register(ScanHandler())
    if load_plugins:
        reg.load_entry_points()
    return reg
