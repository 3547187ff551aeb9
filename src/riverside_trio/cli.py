"""The ``riverside-trio`` command (also ``python -m riverside_trio``).

``riverside-trio serve [module:Handler] [--config FILE] [--port N] ...`` loads the settings
(defaults < TOML < ``RIVERSIDE_*`` < flags), imports the handler and runs the server until
SIGINT or SIGTERM. Without a handler it serves the built-in demo (:mod:`._demo`).

There is one flag per :class:`~riverside_trio.config.Config` field, generated from the
dataclass; their help texts are the ``Attributes:`` entries of its docstring.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import importlib
import os
import re
import socket
import sys
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import structlog

from . import _console
from . import config as _config
from ._logging import configure_logging
from .config import ENV_PREFIX, Config
from .errors import ConfigError

if TYPE_CHECKING:
    from .handler import Handler

__all__ = ["load_handler", "main"]

log = structlog.get_logger("riverside_trio.cli")

PROG = "riverside-trio"
EXIT_USAGE = 2  # bad flags, settings or handler spec, as argparse does

# The first setting of each group; the settings that follow belong to it until the next one.
_GROUP_STARTS = {
    "host": "network",
    "tls_certfile": "TLS",
    "max_connections": "limits",
    "handshake_timeout": "timeouts (seconds)",
    "permessage_deflate": "behaviour",
    "allowed_origins": "client authentication (Origin rules, JWT)",
    "request_concurrency": "request/reply and sessions",
    "log_format": "logging",
    "broker_url": "several nodes (Redis)",
    "api_key": "the HTTP control API",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (``sys.argv[1:]`` when None); return the exit status.

    0 after a clean shutdown, 2 for a usage error (bad flag, setting or handler), 1 when the
    handler module fails to import.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "client":
        return _console.run(args)
    return _serve(args, api_only=args.command == "api")


def _serve(args: argparse.Namespace, *, api_only: bool = False) -> int:
    unknown_env: list[tuple[str, str]] = []
    try:
        config = _config._load(
            toml_path=args.config,
            env=None,
            overrides=_flag_overrides(args),
            override_source=_flag,
            on_unknown_env=lambda var, problem: unknown_env.append((var, problem)),
        )
    except ConfigError as exc:
        return _usage_error(str(exc))
    if config.tls_certfile is not None:
        from .server._tls import make_ssl_context

        try:  # a bad certificate or key is a usage error, before anything listens
            make_ssl_context(config)
        except ConfigError as exc:
            return _usage_error(str(exc))
    if config.jwt_secret or config.jwt_public_key_file or config.jwt_jwks:
        from .auth import JWTAuthenticator

        try:  # an unreadable or wrong key file is a usage error, before anything listens
            JWTAuthenticator(config)
        except ConfigError as exc:
            return _usage_error(str(exc))
    configure_logging(config.log_format, config.log_level)
    for var, problem in unknown_env:
        log.warning("unknown_environment_variable", variable=var, problem=problem)
    shown = {
        k: "<hidden>" if k in _SECRETS and v else v for k, v in dataclasses.asdict(config).items()
    }
    log.debug("config", **shown)

    if api_only:
        if config.api_key is None:
            return _usage_error(
                "api_key: the api command serves the control API: set --api-key "
                f"(or {ENV_PREFIX}API_KEY, or api_key in the TOML file)"
            )
        if config.broker_url is None:
            return _usage_error(
                "broker_url: an API node holds no connections and reaches the cluster's "
                "through Redis: set --broker-url to the Redis of the 'serve' nodes (or run "
                "the API inside 'serve' with --api-key)"
            )
        from .api._node import ApiOnlyHandler

        handler: Handler = ApiOnlyHandler()
        log.info("serving_control_api_only", prefix=config.api_prefix)
    elif args.handler is None:
        from ._demo import DemoHandler

        handler = DemoHandler()
        log.info("serving_demo", hint="name your own handler as module:Handler")
    else:
        try:
            handler = load_handler(args.handler)
        except ConfigError as exc:
            return _usage_error(str(exc))
        except Exception:  # the user's module raised while importing: show where
            log.exception("handler_import_failed", handler=args.handler)
            return 1

    from .server._server import run  # late: the command must load even if the server cannot

    try:
        run(handler, config)
    except KeyboardInterrupt:  # the server handles SIGINT; this is only a second Ctrl-C
        return 130
    except BaseExceptionGroup as group:  # a bind error surfaces through the run's nursery
        matched, rest = group.split(OSError)
        if matched is None or rest is not None:
            raise
        return _usage_error(_bind_problem(_first_leaf(matched), config))
    except OSError as exc:
        return _usage_error(_bind_problem(exc, config))
    return 0


def _first_leaf(group: BaseExceptionGroup[OSError]) -> OSError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _bind_problem(exc: OSError, config: Config) -> str:
    """One line naming what could not be bound and the setting to change."""
    where = f"{config.host or '*'}:{config.port}"
    if isinstance(exc, socket.gaierror):
        return f"host: cannot resolve {config.host!r} ({exc.strerror}); set --host to an address"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port: {where} is already in use (is another server running?); choose another --port"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        hint = " (ports below 1024 need privileges)" if 0 < config.port < 1024 else ""
        return f"port: permission denied binding {where}{hint}; choose another --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"host: {config.host!r} is not an address of this machine; set --host"
    return f"host/port: cannot listen on {where}: {exc.strerror or exc}"


def _usage_error(message: str) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return EXIT_USAGE


# -- the handler ---------------------------------------------------------------------------


def load_handler(spec: str) -> Handler:
    """Import ``"module:attribute"`` and return the handler it names.

    The current directory is put first on ``sys.path`` (as uvicorn does), so a
    ``chat.py`` next to you is ``chat:ChatHandler``. The attribute may be dotted
    (``app:handlers.Chat``). A :class:`~riverside_trio.handler.Handler` subclass is
    instantiated with no arguments; an instance is used as it is.

    Raises:
        ConfigError: ``handler``: the spec is malformed, the module or attribute does not
            exist, or it is not a Handler.
        Exception: whatever the module raises while it is imported.
    """
    from .handler import Handler

    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path or not all(attr_path.split(".")):
        raise ConfigError(
            "handler", f"expected 'module:Handler', e.g. 'chat:ChatHandler', got {spec!r}"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise ConfigError(
                "handler", f"no module named {exc.name!r} (looked in {cwd} and on sys.path)"
            ) from None
        raise ConfigError("handler", f"importing {module_name!r} failed: {exc}") from None
    where = module_name
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(attr, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError("handler", f"{where!r} has no attribute {attr!r}{hint}") from None
        where = f"{where}:{attr}" if where == module_name else f"{where}.{attr}"
    if isinstance(obj, type):
        if not issubclass(obj, Handler):
            raise ConfigError("handler", f"{spec} is not a subclass of riverside_trio.Handler")
        try:
            obj = obj()
        except TypeError as exc:
            raise ConfigError(
                "handler", f"cannot create {spec}() without arguments: {exc}"
            ) from None
    if not isinstance(obj, Handler):
        raise ConfigError(
            "handler",
            f"{spec} is a {type(obj).__name__}, not a riverside_trio.Handler subclass or instance",
        )
    return obj


# -- flags ---------------------------------------------------------------------------------


# Settings that are lists: one value per flag, the flag repeated (and its metavar).
_REPEATED = {
    "allowed_origins": ("--allowed-origin", "ORIGIN"),
    "trusted_proxies": ("--trusted-proxy", "ADDRESS|CIDR"),
    "jwt_algorithms": ("--jwt-algorithm", "ALGORITHM"),
    "default_channels": ("--default-channel", "CHANNEL"),
    "api_key": ("--api-key", "KEY"),
}

# Settings whose values are never logged.
_SECRETS = frozenset({"jwt_secret", "api_key", "status_token"})


def _flag(name: str) -> str:
    """The flag of setting ``name``: ``--max-connections``; ``--allowed-origin`` (repeated)."""
    if name in _REPEATED:
        return _REPEATED[name][0]
    return "--" + name.replace("_", "-")


def _metavar(name: str) -> str:
    optional, base = _config._split_optional(_config._hints()[name])
    rule = _config._rules()[name]
    if typing.get_origin(base) is Literal:
        text = "{" + ",".join(typing.get_args(base)) + "}"
    elif typing.get_origin(base) is tuple:
        return _REPEATED[name][1]
    elif base is float and rule.unit == "seconds":
        text = "SECONDS"
    elif base is int:
        text = "BYTES" if rule.unit == "bytes" else "N"
    elif base is str and rule.url_path:
        text = "PATH"
    else:
        text = name.upper()
    return f"{text}|off" if optional else text


def _help(name: str) -> str:
    # The docstring speaks Python (None); the command line's word for it is "off".
    doc = re.sub(r'\bNone \("off"\)|\bNone\b', "off", _config._field_docs().get(name, ""))
    default = next(f.default for f in dataclasses.fields(Config) if f.name == name)
    if name == "allowed_origins":
        doc += " Repeat the flag for several origins."
    elif name == "trusted_proxies":
        doc += " Repeat the flag for several proxies."
    elif name == "jwt_algorithms":
        doc += " Repeat the flag for several algorithms."
    elif name == "default_channels":
        doc += " Repeat the flag for several channels."
    elif name == "api_key":
        doc += " Repeat the flag for several keys."
    shown = "off" if default is None else "none" if default == () else default
    env = ENV_PREFIX + name.upper()
    return f"{doc} (default: {shown}; env {env})".replace("%", "%%")


class _Parser(argparse.ArgumentParser):
    """argparse, with a suggestion for a misspelt flag (``--max-conections``)."""

    def error(self, message: str) -> typing.NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            parsers = [self]
            for action in self._actions:
                if isinstance(action, argparse._SubParsersAction):
                    parsers.extend(action.choices.values())
            known = [
                opt
                for parser in parsers
                for action in parser._actions
                for opt in action.option_strings
                if opt.startswith("--")
            ]
            for arg in message.removeprefix(prefix).split():
                flag = arg.partition("=")[0]
                close = difflib.get_close_matches(flag, known, n=1, cutoff=0.7)
                if flag.startswith("--") and close:
                    message += f" (did you mean {close[0]}?)"
                    break
        super().error(message)


def _version() -> str:
    from . import __version__
    from .wire.frames import IMPLEMENTATION

    hot_path = "compiled" if IMPLEMENTATION == "c" else "pure Python"
    return f"{PROG} {__version__} (hot path: {hot_path}; Python {sys.version.split()[0]})"


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="A WebSocket server framework for Trio.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="run a WebSocket server",
        description=(
            "Serve a riverside-trio Handler. Settings come from, lowest first: defaults, "
            "the TOML file, RIVERSIDE_* environment variables, these flags."
        ),
    )
    serve.add_argument(
        "handler",
        nargs="?",
        metavar="module:Handler",
        help="the handler to serve, e.g. chat:ChatHandler (default: the built-in demo)",
    )
    _add_settings(serve)
    api = commands.add_parser(
        "api",
        help="run a node that serves the HTTP control API only",
        description=(
            "Serve the HTTP control API alone: a node that holds no WebSocket connections "
            "and reaches the cluster through Redis. Needs --api-key and --broker-url."
        ),
    )
    _add_settings(api)
    _console.add_parser(commands)
    return parser


def _add_settings(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"TOML file of settings (default: none; env {ENV_PREFIX}CONFIG)",
    )
    group = serve.add_argument_group()
    for f in dataclasses.fields(Config):
        if f.name in _GROUP_STARTS:
            group = serve.add_argument_group(_GROUP_STARTS[f.name])
        base = _config._split_optional(_config._hints()[f.name])[1]
        if base is bool:
            group.add_argument(
                _flag(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=_help(f.name),
            )
        else:
            group.add_argument(
                _flag(f.name),
                dest=f.name,
                action="append" if f.name in _REPEATED else "store",
                metavar=_metavar(f.name),
                default=argparse.SUPPRESS,
                help=_help(f.name),
            )


def _flag_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The settings given as flags, parsed like environment variables."""
    overrides: dict[str, object] = {}
    for f in dataclasses.fields(Config):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if isinstance(value, bool):
            overrides[f.name] = value
        else:
            text = ",".join(value) if isinstance(value, list) else value
            overrides[f.name] = _config._parse_text(f.name, text, _flag(f.name))
    return overrides
