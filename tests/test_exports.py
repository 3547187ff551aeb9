"""The public API: everything a user needs is re-exported from ``riverside_trio``, typed and
documented; nothing private leaks."""

from __future__ import annotations

import inspect

import riverside_trio

PUBLIC = sorted(name for name in vars(riverside_trio) if not name.startswith("_"))
EXPECTED = {
    "Accept",
    "AuthError",
    "AuthRequest",
    "BrokerError",
    "CBORCodec",
    "Channel",
    "ControlFrame",
    "Group",
    "Name",
    "NameInUseError",
    "Session",
    "TaskFailed",
    "TaskResult",
    "User",
    "CloseConnection",
    "Codec",
    "CodecError",
    "Config",
    "ConfigError",
    "Connection",
    "ConnectionClosed",
    "DeliveryError",
    "HTTPRequest",
    "HTTPResponse",
    "Handler",
    "Headers",
    "JSONCodec",
    "Metrics",
    "ProtocolError",
    "RawBinaryCodec",
    "RawCodec",
    "RawTextCodec",
    "RiversideError",
    "Server",
    "TerminateReason",
    "load_config",
    "run",
    "serve",
}


def test_every_public_name_is_exported_and_nothing_else() -> None:
    exported = {
        name
        for name in PUBLIC
        if not inspect.ismodule(getattr(riverside_trio, name)) and name != "annotations"
    }
    assert exported == EXPECTED


def test_every_export_has_a_docstring() -> None:
    for name in EXPECTED:
        obj = getattr(riverside_trio, name)
        assert inspect.getdoc(obj), f"riverside_trio.{name} has no docstring"


def test_public_methods_of_handler_connection_and_server_are_documented_and_typed() -> None:
    for cls in (riverside_trio.Handler, riverside_trio.Connection, riverside_trio.Server):
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") or not callable(member):
                continue
            assert inspect.getdoc(member), f"{cls.__name__}.{name} has no docstring"
            hints = inspect.signature(member).return_annotation
            assert hints is not inspect.Signature.empty, f"{cls.__name__}.{name} has no return type"


def test_errors_share_one_base_class() -> None:
    for name in EXPECTED:
        obj = getattr(riverside_trio, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, riverside_trio.RiversideError), name


def test_package_is_typed() -> None:
    from importlib.resources import files

    assert files("riverside_trio").joinpath("py.typed").is_file()
