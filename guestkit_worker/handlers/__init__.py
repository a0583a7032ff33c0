"""Handler plugin interface (:mod:`.base`), registry (:mod:`.registry`) and built-in handlers."""

from .base import Handler, HandlerResult
from .registry import HandlerRegistry, default_registry

__all__ = ["Handler", "HandlerResult", "HandlerRegistry", "default_registry"]
