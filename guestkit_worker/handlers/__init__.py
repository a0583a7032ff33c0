"""Handler plugin interface, registry and built-in handlers."""

from .base import Handler, HandlerResult, HandlerRegistry, default_registry

__all__ = ["Handler", "HandlerResult", "HandlerRegistry", "default_registry"]
