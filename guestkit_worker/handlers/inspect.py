"""Placeholder: replaced by the real handler."""

from .base import Handler


class InspectHandler(Handler):
    name = "guestkit.inspect"
    operations = ("guestkit.inspect",)
    payload_types = ("guestkit.inspect.v1",)
