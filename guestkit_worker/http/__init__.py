"""The HTTP/1.1 server the metrics port and the REST API share: the bounded WSGI server
(:mod:`.server`), one connection's requests (:mod:`.request`), its thread pool, refusals,
listening sockets, and the metrics port (:mod:`.metrics_port`)."""
