from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio_websocket

import riverside_trio
from riverside_trio._demo import DemoHandler
from riverside_trio.cli import _flag, main
from riverside_trio.config import Config
from riverside_trio.server import _server

from ._helpers import start_cli


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No RIVERSIDE_* variable of the outer environment leaks in; logging is restored after."""
    for var in list(os.environ):
        if var.startswith("RIVERSIDE_"):
            monkeypatch.delenv(var)
    monkeypatch.setattr(sys, "path", list(sys.path))
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Config]]:
    """Replace ``riverside_trio.server._server.run`` with a recorder of what it was given."""
    calls: list[tuple[Any, Config]] = []
    monkeypatch.setattr(_server, "run", lambda handler, config: calls.append((handler, config)))
    return calls


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Write a module into the current directory; return its (unique) name."""
    monkeypatch.chdir(tmp_path)
    names: list[str] = []

    def make(source: str) -> str:
        name = f"handlers_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
        names.append(name)
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)


HANDLERS = """
import riverside_trio

class Chat(riverside_trio.Handler):
    pass

class NeedsArgs(riverside_trio.Handler):
    def __init__(self, db):
        self.db = db

class NotAHandler:
    pass

instance = Chat()
number = 42
"""


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(["serve", *argv])
    return status, capsys.readouterr().err


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--port", "70000"], "port (from --port): must be an integer from 0 to 65535"),
        (["--port", "http"], "port (from --port): expected an integer, got 'http'"),
        (["--idle-timeout", "soon"], "idle_timeout (from --idle-timeout): expected a number"),
        (["--ping-timeout", "off"], "ping_timeout (from --ping-timeout): expected a number"),
        (["--max-connections", "0"], "max_connections (from --max-connections): must be"),
        (["--log-level", "trace"], "log_level (from --log-level): must be one of"),
        (["--poller", "epoll"], "poller (from --poller): must be one of"),
        (["--path", "ws"], "path (from --path): must be a URL path starting with '/'"),
        (["--allowed-origin", "https://a.example/x"], "allowed_origins (from --allowed-origin)"),
        (["--trusted-proxy", "lb.local"], "trusted_proxies (from --trusted-proxy): 'lb.local'"),
        (["--authenticate-timeout", "0"], "authenticate_timeout (from --authenticate-timeout)"),
        (["--max-pending-handshakes", "x"], "max_pending_handshakes (from --max-pending-hand"),
        (["--health-path", "/ws"], "health_path (from --health-path): '/ws' is already"),
    ],
)
def test_bad_flag_value_exits_2_naming_the_setting(
    capsys: pytest.CaptureFixture[str], served: list[Any], argv: list[str], expected: str
) -> None:
    status, err = run_main(capsys, *argv)
    assert status == 2
    assert err == f"riverside-trio: error: {err.removeprefix('riverside-trio: error: ')}"
    assert expected in err
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert served == []


def test_bad_environment_value_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, served: list[Any]
) -> None:
    monkeypatch.setenv("RIVERSIDE_MAX_CONNECTIONS", "many")
    status, err = run_main(capsys)
    assert status == 2
    assert "max_connections (from RIVERSIDE_MAX_CONNECTIONS)" in err
    assert served == []


def test_unknown_environment_variable_is_a_warning_not_an_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, served: list[Any]
) -> None:
    # An application's own variable (or .ci/run's RIVERSIDE_CI_VENV) must not stop the server.
    monkeypatch.setenv("RIVERSIDE_MAX_CONECTIONS", "5")
    monkeypatch.setenv("RIVERSIDE_CI_VENV", "/tmp/venv")
    status, err = run_main(capsys, "--log-format", "json")
    assert status == 0
    assert len(served) == 1
    events = [json.loads(line) for line in err.splitlines()]
    warned = {e["variable"]: e["problem"] for e in events if e["level"] == "warning"}
    assert set(warned) == {"RIVERSIDE_MAX_CONECTIONS", "RIVERSIDE_CI_VENV"}
    assert "did you mean 'RIVERSIDE_MAX_CONNECTIONS'" in warned["RIVERSIDE_MAX_CONECTIONS"]
    assert served[0][1].max_connections == Config().max_connections


def test_missing_config_file_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, served: list[Any]
) -> None:
    status, err = run_main(capsys, "--config", str(tmp_path / "missing.toml"))
    assert status == 2
    assert "config: cannot read" in err


def test_flags_override_toml_and_environment(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    served: list[tuple[Any, Config]],
) -> None:
    toml = tmp_path / "riverside.toml"
    toml.write_text('port = 9000\nhost = "0.0.0.0"\nbacklog = 7\n', encoding="utf-8")
    monkeypatch.setenv("RIVERSIDE_PORT", "9001")
    monkeypatch.setenv("RIVERSIDE_IDLE_TIMEOUT", "30")
    argv = [
        "--config",
        str(toml),
        "--port",
        "0",
        "--idle-timeout",
        "off",
        "--reuse-port",
        "--allowed-origin",
        "https://a.example",
        "--allowed-origin",
        "http://localhost:3000",
        "--trusted-proxy",
        "10.0.0.0/8",
        "--trusted-proxy",
        "192.168.0.1",
        "--max-pending-per-address",
        "16",
        "--log-format",
        "json",
        "--poller",
        "trio",
    ]
    status, _ = run_main(capsys, *argv)
    assert status == 0
    [(handler, config)] = served
    assert isinstance(handler, DemoHandler)
    assert config.host == "0.0.0.0"  # TOML, no flag given
    assert config.backlog == 7  # TOML
    assert config.port == 0  # flag over env over TOML
    assert config.idle_timeout is None  # flag over env
    assert config.reuse_port is True
    assert config.allowed_origins == ("https://a.example", "http://localhost:3000")
    assert config.trusted_proxies == ("10.0.0.0/8", "192.168.0.1/32")
    assert config.max_pending_per_address == 16
    assert config.log_format == "json"
    assert config.poller == "trio"
    assert config.path == "/ws"  # default


def test_flags_only_override_when_given(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    served: list[tuple[Any, Config]],
) -> None:
    monkeypatch.setenv("RIVERSIDE_PORT", "9300")
    monkeypatch.setenv("RIVERSIDE_REUSE_PORT", "yes")
    assert run_main(capsys)[0] == 0
    [(_, config)] = served
    assert config == Config(port=9300, reuse_port=True)


def test_no_reuse_port_flag(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    served: list[tuple[Any, Config]],
) -> None:
    monkeypatch.setenv("RIVERSIDE_REUSE_PORT", "1")
    assert run_main(capsys, "--no-reuse-port")[0] == 0
    assert served[0][1].reuse_port is False


def test_help_lists_a_flag_for_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(Config):
        assert _flag(f.name) in out
    assert "--no-reuse-port" in out
    assert "--config" in out
    assert "module:Handler" in out
    assert "RIVERSIDE_IDLE_TIMEOUT" in out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "serve" in capsys.readouterr().err


def test_unknown_flag_exits_2_suggesting_the_right_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--max-conections", "5"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --max-conections" in err
    assert "(did you mean --max-connections?)" in err


def test_unknown_flag_far_from_any_gets_no_suggestion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --frobnicate" in err
    assert "did you mean" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"riverside-trio {riverside_trio.__version__} (hot path: ")
    assert out.count("\n") == 1


def test_help_says_off_never_none(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "None" not in out
    assert "--idle-timeout SECONDS|off" in out


def _listening_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen()
    return sock


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--host", "nosuchhost.invalid"], "host: cannot resolve 'nosuchhost.invalid'"),
        (["--host", "192.0.2.1"], "host: '192.0.2.1' is not an address of this machine"),
        ([], "is already in use (is another server running?); choose another --port"),
    ],
)
def test_cannot_listen_is_one_line_naming_the_setting(
    capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    with _listening_socket() as taken:
        port = str(taken.getsockname()[1])
        status, err = run_main(capsys, "--port", port, *flags)
    assert status == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[-1].startswith("riverside-trio: error: ")
    assert expected in lines[-1]


# -- the handler ---------------------------------------------------------------------------


def test_handler_class_is_instantiated(
    capsys: pytest.CaptureFixture[str], make_module: Any, served: list[tuple[Any, Config]]
) -> None:
    module = make_module(HANDLERS)
    assert run_main(capsys, f"{module}:Chat")[0] == 0
    [(handler, _)] = served
    assert type(handler).__name__ == "Chat"
    assert type(handler).__module__ == module


def test_handler_instance_is_used_as_is(
    capsys: pytest.CaptureFixture[str], make_module: Any, served: list[tuple[Any, Config]]
) -> None:
    module = make_module(HANDLERS)
    assert run_main(capsys, f"{module}:instance")[0] == 0
    assert served[0][0] is sys.modules[module].instance


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("{module}", "handler: expected 'module:Handler'"),
        ("{module}:", "handler: expected 'module:Handler'"),
        (":Chat", "handler: expected 'module:Handler'"),
        ("{module}:Chat.", "handler: expected 'module:Handler'"),
        ("no_such_module_for_riverside:Chat", "handler: no module named"),
        ("{module}:Caht", "has no attribute 'Caht'; did you mean 'Chat'?"),
        ("{module}:NotAHandler", "is not a subclass of riverside_trio.Handler"),
        ("{module}:NeedsArgs", "without arguments"),
        ("{module}:number", "is a int, not a riverside_trio.Handler"),
    ],
)
def test_bad_handler_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str],
    make_module: Any,
    served: list[Any],
    spec: str,
    expected: str,
) -> None:
    module = make_module(HANDLERS)
    status, err = run_main(capsys, spec.format(module=module))
    assert status == 2
    assert expected in err
    assert err.startswith("riverside-trio: error: handler: ")
    assert err.count("\n") == 1
    assert served == []


def test_handler_module_missing_a_dependency_exits_2(
    capsys: pytest.CaptureFixture[str], make_module: Any, served: list[Any]
) -> None:
    module = make_module("import no_such_dependency_for_riverside\n")
    status, err = run_main(capsys, f"{module}:Chat")
    assert status == 2
    assert f"importing '{module}' failed" in err
    assert "no_such_dependency_for_riverside" in err


def test_handler_module_that_raises_exits_1_with_traceback(
    capsys: pytest.CaptureFixture[str], make_module: Any, served: list[Any]
) -> None:
    module = make_module("raise RuntimeError('broken at import')\n")
    status, err = run_main(capsys, f"{module}:Chat", "--log-format", "json")
    assert status == 1
    event = json.loads(err.strip().splitlines()[-1])
    assert event["event"] == "handler_import_failed"
    assert "RuntimeError: broken at import" in event["exception"]


# -- end to end ----------------------------------------------------------------------------


@asynccontextmanager
async def open_client(port: int) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A WebSocket client on a TCP stream we close ourselves.

    ``open_websocket_url`` would leak its socket here: when the *server* closes first,
    trio-websocket's client answers the close frame but never closes its stream, and its
    ``aclose()`` then returns early (trio-websocket 0.12), so pytest reports a ResourceWarning.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream, trio.open_nursery() as nursery:
        ws = await trio_websocket.wrap_client_stream(nursery, stream, "127.0.0.1", "/ws")
        try:
            yield ws
        finally:
            await ws.aclose()


async def http_get(port: int, path: str) -> bytes:
    """One plain HTTP/1.1 request; the whole response (the server closes after it)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
async def test_serve_demo_end_to_end() -> None:
    src = str(Path(riverside_trio.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVERSIDE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "riverside_trio", "serve", "--port", "0"]
    command += ["--log-format", "json"]
    lines: list[str] = []

    async def exchange(ws: trio_websocket.WebSocketConnection, message: object) -> Any:
        await ws.send_message(json.dumps(message))
        return json.loads(await ws.get_message())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            process, port = await start_cli(nursery, command, env, lines)
            async with open_client(port) as alice, open_client(port) as bob:
                for ws in (alice, bob):  # the demo greets with how to use it
                    assert json.loads(await ws.get_message())["type"] == "welcome"
                echo = {"hello": "world", "n": [1, 2.5, None]}
                assert await exchange(alice, echo) == echo
                joined = {"type": "joined", "channel": "lobby"}
                assert await exchange(alice, {"type": "join", "channel": "lobby"}) == joined
                assert await exchange(bob, {"type": "join", "channel": "lobby"}) == joined

                said = await exchange(alice, {"type": "say", "channel": "lobby", "text": "hi"})
                assert said == {
                    "type": "said",
                    "channel": "lobby",
                    "from": said["from"],
                    "text": "hi",
                }
                assert isinstance(said["from"], str) and said["from"]
                assert json.loads(await bob.get_message()) == said

                # ...and its chat page at /, on the browser client
                page = await http_get(port, "/")
                assert page.startswith(b"HTTP/1.1 200 ")
                assert b'from "/riverside.js"' in page

                process.send_signal(signal.SIGINT)
                for ws in (alice, bob):
                    with pytest.raises(trio_websocket.ConnectionClosed) as exc_info:
                        await ws.get_message()
                    assert exc_info.value.reason.code == 1001  # going away
            with trio.fail_after(15):
                await process.wait()
    assert process.returncode == 0, "\n".join(lines)


def test_the_api_command_needs_a_key_and_a_broker(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["api", "--port", "0"]) == 2
    assert "api_key" in capsys.readouterr().err
    assert main(["api", "--port", "0", "--api-key", "test-api-key-1"]) == 2
    err = capsys.readouterr().err
    assert "broker_url" in err and "Redis" in err


def test_the_status_token_is_never_shown() -> None:
    """Not in the Config's repr, nor in the CLI's debug log of the settings (a process of
    its own: the log level is fixed once a process has logged)."""
    token = "status-t0ken-not-for-logs"
    assert token not in repr(Config(status_token=token))
    src = str(Path(riverside_trio.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVERSIDE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "riverside_trio", "serve", "no_such_module_here:App"]
    command += ["--status-token", token, "--log-level", "debug", "--log-format", "json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2  # the handler does not exist: after the settings are logged
    [logged] = [json.loads(line) for line in done.stderr.splitlines() if '"config"' in line]
    assert logged["status_token"] == "<hidden>"
    assert token not in done.stderr
