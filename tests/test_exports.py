"""The public API: everything a user needs is re-exported from ``riverside_trio``, typed and
documented; nothing private leaks."""

from __future__ import annotations

import dataclasses
import inspect

import riverside_trio

PUBLIC = sorted(name for name in vars(riverside_trio) if not name.startswith("_"))
EXPECTED = {
    "Accept",
    "AuthError",
    "AuthRequest",
    "Authenticator",
    "JWTAuthenticator",
    "BrokerError",
    "CBORCodec",
    "ClusterView",
    "ConnectionInfo",
    "NameClaim",
    "NameLost",
    "NodeInfo",
    "Channel",
    "ControlFrame",
    "Group",
    "Name",
    "NameInUseError",
    "Session",
    "SessionStoreError",
    "RedisSessionStore",
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
    "make_ssl_context",
    "ProtocolError",
    "RawBinaryCodec",
    "RawCodec",
    "RawTextCodec",
    "RiversideError",
    "Server",
    "TerminateReason",
    "Client",
    "open_client",
    "ErrorCode",
    "MemoryStore",
    "RPCHandler",
    "RequestError",
    "RequestTimeout",
    "SessionData",
    "SessionError",
    "SessionStore",
    "Sessions",
    "WebwireCodec",
    "request",
    "signal",
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


def own_doc(obj: object) -> str:
    """The docstring ``obj`` itself carries: not one inherited from a base class, and not the
    signature ``@dataclass`` writes into ``__doc__`` when a class has none."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return ""
    if dataclasses.is_dataclass(obj) and isinstance(obj, type):
        generated = obj.__name__ + str(inspect.signature(obj)).replace(" -> None", "")
        if doc == generated or doc.startswith(f"{obj.__name__}("):
            return ""
    return doc


def test_own_doc_sees_through_inherited_and_generated_docstrings() -> None:
    @dataclasses.dataclass
    class Undocumented:
        x: int

    class Quiet(riverside_trio.RiversideError):
        pass

    assert Undocumented.__doc__  # @dataclass filled it in: "Undocumented(x: int)"
    assert inspect.getdoc(Quiet)  # inherited from RiversideError
    assert own_doc(Undocumented) == ""
    assert own_doc(Quiet) == ""
    assert own_doc(riverside_trio.TerminateReason).startswith("Why a connection ended")


def test_every_export_has_a_docstring_of_its_own() -> None:
    missing = [name for name in sorted(EXPECTED) if not own_doc(getattr(riverside_trio, name))]
    assert missing == []


def test_public_methods_and_properties_of_handler_connection_and_server_are_documented() -> None:
    missing = []
    for cls in (
        riverside_trio.Handler,
        riverside_trio.RPCHandler,
        riverside_trio.Connection,
        riverside_trio.Server,
        riverside_trio.Client,
    ):
        for name, member in inspect.getmembers(cls):
            if name.startswith("_"):
                continue
            if isinstance(member, property):
                if not own_doc(member):
                    missing.append(f"{cls.__name__}.{name}")
                continue
            if not callable(member):
                continue
            if not own_doc(member):
                missing.append(f"{cls.__name__}.{name}")
            hints = inspect.signature(member).return_annotation
            assert hints is not inspect.Signature.empty, f"{cls.__name__}.{name} has no return type"
    assert missing == []


def test_errors_share_one_base_class() -> None:
    for name in EXPECTED:
        obj = getattr(riverside_trio, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, riverside_trio.RiversideError), name


def test_package_is_typed() -> None:
    from importlib.resources import files

    assert files("riverside_trio").joinpath("py.typed").is_file()


def test_the_testing_helpers_are_documented_and_not_imported_by_the_package() -> None:
    import subprocess
    import sys

    import riverside_trio.testing as testing

    assert sorted(testing.__all__) == sorted(
        name
        for name in vars(testing)
        # (pytest's assertion rewriting adds "@py_builtins" to modules of plugin distributions)
        if not name.startswith(("_", "@")) and name != "annotations"
    )
    aliases = {"Transport"}  # Literal["memory", "tcp"]: documented where it is defined
    missing = [
        name
        for name in testing.__all__
        if name not in aliases and not own_doc(getattr(testing, name))
    ]
    for cls in (testing.Riverside, testing.TestServer, testing.TestClient):
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") or not (callable(member) or isinstance(member, property)):
                continue
            if not own_doc(member):
                missing.append(f"{cls.__name__}.{name}")
    assert missing == []
    # pytest and the testing helpers stay out of `import riverside_trio`
    code = "import sys, riverside_trio; print(sorted(m for m in sys.modules if 'testing' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "riverside_trio.testing" not in out.stdout
