"""Placeholder: replaced by the real handler."""

from .base import Handler


class ConvertHandler(Handler):
    name = "guestkit.convert"
    operations = ("guestkit.convert",)
    payload_types = ("guestkit.convert.v1",)
