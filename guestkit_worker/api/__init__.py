"""The REST API: submit, follow, fetch and cancel jobs over HTTP (``--api-addr``).

A front door to whichever transport the worker uses: :mod:`.app` routes and shapes JSON,
:mod:`.jobs` maps the job endpoints onto the transport, :mod:`..http.auth` checks bearer tokens,
:mod:`.server` serves it with its own bounds, :mod:`.metrics` counts requests by route
template, :mod:`.openapi` describes it (the OpenAPI 3.1 document it serves), :mod:`.limits`
holds the bounds' defaults, and :mod:`.service` puts them together
(:func:`~.service.start_api`) and refuses to listen beyond loopback without tokens or without
``--allow-path`` (:func:`~.service.check_exposure`).  Importing this package imports nothing
else, so the command line can read the defaults cheaply.
"""
