"""system.echo: returns payload.data unchanged; the no-op job used for tests and benchmarks."""

from .base import Handler, HandlerResult


class EchoHandler(Handler):
    name = "system.echo"
    operations = ("system.echo",)
    payload_types = ("system.echo.v1",)

    def execute(self, context, data):
        return HandlerResult(data=data)
