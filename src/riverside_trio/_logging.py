"""Logging set-up for the ``riverside-trio`` command.

The library never configures logging: its modules only do
``log = structlog.get_logger("riverside_trio.<module>")`` and leave the output to the
application. The CLI calls :func:`configure_logging` once, before serving.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

__all__ = ["configure_logging"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _StderrLogger:
    """Writes each rendered event as one line to the *current* ``sys.stderr``.

    It looks ``sys.stderr`` up on every write, so loggers cached before a redirection (pytest's
    capture, for one) never write to a stale stream. ``name`` is the name given to
    ``structlog.get_logger``, added to events by ``add_logger_name``.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        stream = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warn = warning = msg
    err = error = critical = exception = fatal = failure = msg


def _logger_factory(*args: Any) -> _StderrLogger:
    return _StderrLogger(str(args[0]) if args else "")


def configure_logging(format: str = "console", level: str = "info") -> None:
    """Send structlog events at or above ``level`` to stderr, rendered as ``format``.

    Args:
        format: ``"console"`` for aligned, human-readable lines (coloured when stderr is a
            terminal and ``NO_COLOR`` is unset), or ``"json"`` for one JSON object per line
            with an ISO 8601 UTC ``timestamp``, ``level``, ``logger`` and ``event``.
        level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``.

    ``log.exception(...)`` adds the traceback: rendered below the line on the console, as an
    ``exception`` string in JSON. Local variables are never rendered (they may hold secrets).

    Raises:
        ValueError: unknown ``format`` or ``level``.
    """
    if level not in _LEVELS:
        raise ValueError(f"log level must be one of {', '.join(_LEVELS)}, got {level!r}")
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.StackInfoRenderer(),
    ]
    if format == "json":
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    elif format == "console":
        colors = sys.stderr.isatty() and "NO_COLOR" not in os.environ
        processors += [
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(
                colors=colors, exception_formatter=structlog.dev.plain_traceback
            ),
        ]
    else:
        raise ValueError(f"log format must be 'console' or 'json', got {format!r}")
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        context_class=dict,
        logger_factory=_logger_factory,
        cache_logger_on_first_use=True,
    )
