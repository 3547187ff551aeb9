"""Run a Handler as a server: listeners, the front door, connections, timers, shutdown.

Internal: :class:`~riverside_trio.Server`, :func:`~riverside_trio.serve`,
:func:`~riverside_trio.run` and :class:`~riverside_trio.Connection` are public through
:mod:`riverside_trio`. The modules, from the outside in: ``_listener`` (sockets, accept),
``_frontdoor`` (the HTTP request head, the upgrade, ``authenticate``), ``_transport`` (a
plain socket or any Trio stream), ``_connection`` (one client's state and rules) with its
``_reader`` and ``_writer``, ``_tls`` (the TLS context), ``_sweeper`` (timers), ``_core``
(what connections share) and ``_server`` (the lifecycle).
"""
