from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import structlog
import structlog.testing

from riverside_trio.config import Config, load_config
from riverside_trio.errors import ConfigError


def test_defaults() -> None:
    config = Config()
    assert (config.host, config.port, config.path) == ("127.0.0.1", 8000, "/ws")
    assert config.reuse_port is False
    assert config.backlog == 1024
    assert config.max_connections == 10_000
    assert config.max_message_size == 1_048_576
    assert (config.transmission_limit, config.transmission_period) == (50, 2.0)
    assert (config.outbox_size, config.outbox_bytes, config.mailbox_size) == (256, 65_536, 100)
    assert config.max_queued_bytes == 1_610_612_736  # 1.5 GiB
    assert config.control_frame_limit == 10
    assert config.max_header_size == 16_384
    assert config.max_headers == 100
    assert (config.max_pending_handshakes, config.max_pending_per_address) == (1024, 64)
    assert config.trusted_proxies == ()
    assert config.handshake_timeout == 10.0
    assert config.authenticate_timeout == 5.0
    assert config.idle_timeout == 60.0
    assert config.max_connection_age is None
    assert (config.ping_interval, config.ping_timeout) == (30.0, 20.0)
    assert (config.close_timeout, config.drain_timeout, config.terminate_timeout) == (5, 10, 5)
    assert config.invalid_message == "ignore"
    assert config.poller == "auto"
    assert config.allowed_origins is None
    assert (config.health_path, config.metrics_path) == ("/health", "/metrics")
    assert (config.log_format, config.log_level) == ("console", "info")
    assert config.broker_url is None  # one process, no Redis, unless asked
    assert (config.broker_prefix, config.broker_ttl, config.broker_queue_size) == (
        "riverside",
        15.0,
        10_000,
    )
    assert (config.request_concurrency, config.request_timeout) == (1, 60.0)
    assert (config.sessions, config.max_session_connections) == (True, 0)
    assert config.session_expiry == 86_400.0


def test_is_frozen_and_keyword_only() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Config("0.0.0.0")  # type: ignore[misc]


def test_every_field_is_documented() -> None:
    from riverside_trio.config import _field_docs

    assert set(_field_docs()) == {f.name for f in dataclasses.fields(Config)}
    assert all(_field_docs().values())


BAD_VALUES: dict[str, list[object]] = {
    "host": ["", 1, None],
    "port": [-1, 65536, "8000", True, 80.0, None],
    "path": ["ws", "", "/a b", "/ws?x", None, b"/ws"],
    "reuse_port": [1, "yes", None],
    "permessage_deflate": [1, "yes", None],
    "backlog": [0, -5, "1024", False],
    "tls_certfile": ["", 1],
    "tls_keyfile": ["", b"key.pem", "key.pem"],  # the last: without tls_certfile
    "tls_ca_file": ["", "ca.pem"],
    "max_connections": [0, 1.5, True],
    "max_message_size": [0, "1M", None],
    "transmission_limit": [-1, 1.0, True],
    "transmission_period": [0, -1.0, "2", float("nan"), float("inf"), True, None],
    "outbox_size": [0, None, "1"],
    "outbox_bytes": [0, 2.5],
    "mailbox_size": [0, None, "100"],
    "max_queued_bytes": [0, -1, 1.5, "1G", True],
    "control_frame_limit": [-1, 1.5, None, True],
    "max_header_size": [1023, 0, "16k"],
    "max_headers": [0, -1, None, 1.5, "100"],
    "max_pending_handshakes": [0, -1, None, True, "1024"],
    "max_pending_per_address": [0, -64, None, 2.0, "64"],
    "trusted_proxies": [
        "10.0.0.1",  # a bare string, not a list
        None,
        ["proxy.example.com"],
        ["10.0.0.1/8"],  # host bits set
        ["10.0.0.0/33"],
        ["2001:db8::1/32"],
        ["*"],
        [10],
    ],
    "handshake_timeout": [0, -1, None, "10"],
    "http_keepalive_timeout": [-1, None, "5", float("nan")],
    "http_keepalive_requests": [0, -1, None, 1.5, "1000"],
    "authenticate_timeout": [0, -5, None, "5", float("inf"), float("nan")],
    "idle_timeout": [0, -3.5, "60", False],
    "max_connection_age": [0, -1, "1h"],
    "ping_interval": [0, -1, "30"],
    "ping_timeout": [0, None, "x"],
    "close_timeout": [0, -0.5, None],
    "drain_timeout": [-0.1, None, "10"],
    "terminate_timeout": [0, None],
    "invalid_message": ["drop", "CLOSE", None, 1],
    "outbox_policy": ["drop", "CLOSE", None, "oldest"],
    "poller": ["epoll", "AUTO", None, True],
    "allowed_origins": [
        "https://example.com",  # a bare string, not a list of origins
        [],
        ["*"],
        ["example.com"],
        ["https://example.com/"],
        ["https://example.com/app"],
        ["ftp://example.com"],
        ["https://user@example.com"],
        ["https://example.com:99999"],
        ["https://example.com?x=1"],
        [1],
        ["https://*.com"],  # a wildcard over a top-level domain
        ["https://a*.example.com"],
        ["https://*example.com"],
        ["*.example.com"],
        ["https://*.*.example.com"],
        ["https://*.example.com/app"],
    ],
    "allow_missing_origin": [1, "yes", None],
    "jwt_secret": ["", 1, "x" * 31],  # the last: shorter than HS256's 32 bytes
    "jwt_public_key_file": ["", 1],
    "jwt_jwks": ["", 1],
    "jwt_algorithms": [
        "HS256",  # a bare string
        ["none"],
        ["HS256", "RS256"],  # HMAC and public-key algorithms mixed
        ["RS512"],
        [256],
        ["HS256"],  # without a key
    ],
    "jwt_audience": ["", 1, "api"],  # the last: without a key
    "jwt_issuer": ["", 1, "https://issuer.example"],
    "jwt_require_exp": [1, "yes", None],
    "jwt_leeway": [-1, None, "5", float("nan")],
    "jwt_max_length": [63, 0, None, "8k"],
    "jwt_jwks_refresh": [0, -1, None],
    "jwt_jwks_min_refresh": [0, None],
    "default_channels": ["news", [""], [1], None, ["  "]],
    "health_path": ["health", "", None, "/ws"],
    "metrics_path": ["metrics", "", "/health"],
    "status_token": ["", "  ", 1, b"token"],
    "status_path": ["status", "", None, "/a b"],
    "request_concurrency": [0, -1, None, "2", 1.5],
    "request_timeout": [0, -1, "60", True],
    "sessions": [1, "yes", None],
    "max_session_connections": [-1, None, "3", 2.0],
    "session_expiry": [0, -5, "1d"],
    "session_store": ["redis", "Redis", "sql", None],  # "redis" without broker_url
    "log_format": ["text", None],
    "log_level": ["trace", "INFO", None],
    "log_connections": [1, "no", None],
    "broker_url": [
        "",
        1,
        "http://127.0.0.1:6379",
        "redis://",
        "redis://h:0",
        "redis://h:99999",
        "redis://h/x",
        "redis://a:1,b:2",  # several hosts without +cluster
        "redis+cluster://a:1/0",  # a Cluster has no database
        "redis://h?x=1",
    ],
    "broker_prefix": ["", None, "a b", "{x}"],
    "broker_ttl": [0, 0.5, -1, None, "15"],
    "broker_queue_size": [0, -1, 1.5, None],
    "api_key": ["short", "", [], ["a key with spaces"], ["a,b,c,d,e,f"], [12345678], 5],
    "api_prefix": ["api", "", "/a b", None],
    "api_claim_duration": [0, -1, None, "60"],
    "api_max_body": [0, -1, 1.5, None],
}


def test_bad_values_cover_every_field() -> None:
    assert set(BAD_VALUES) == {f.name for f in dataclasses.fields(Config)}


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name, values in BAD_VALUES.items() for value in values],
)
def test_invalid_value_raises_config_error_naming_the_field(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as exc_info:
        Config(**{name: value})  # type: ignore[arg-type]
    assert exc_info.value.setting == name
    assert str(exc_info.value).startswith(f"{name}: ")


def test_error_message_says_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"^port: must be an integer from 0 to 65535.*70000"):
        Config(port=70000)
    with pytest.raises(ConfigError, match=r"idle_timeout: .*> 0, or None.*got -1"):
        Config(idle_timeout=-1)


@pytest.mark.parametrize(
    "changes",
    [
        {"port": 0},
        {"port": 65535},
        {"transmission_limit": 0},
        {"control_frame_limit": 0},
        {"max_queued_bytes": None},
        {"max_queued_bytes": 1},
        {"drain_timeout": 0},
        {"idle_timeout": None, "ping_interval": None, "max_connection_age": 3600},
        {"metrics_path": None},
        {"max_header_size": 1024},
        {"host": "::"},
        {"allowed_origins": ("https://example.com", "http://localhost:3000")},
        {"allowed_origins": ("https://*.example.com", "http://*.example.com:8080")},
        {"jwt_secret": "k" * 32},
        {"jwt_secret": "k" * 64, "jwt_algorithms": ("HS256", "HS512")},
        {"jwt_jwks": "https://issuer.example/jwks.json", "jwt_algorithms": ("RS256", "EdDSA")},
        {"jwt_public_key_file": "key.pem", "jwt_audience": "api", "jwt_issuer": "me"},
        {"default_channels": ("news", "global")},
        {"jwt_leeway": 0.0, "jwt_max_length": 64},
        {"max_headers": 1, "max_pending_handshakes": 1, "max_pending_per_address": 1},
        {"authenticate_timeout": 0.001},
        {"trusted_proxies": ()},
        {"trusted_proxies": ("10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32")},
    ],
)
def test_valid_edge_values_are_accepted(changes: dict[str, object]) -> None:
    config = Config(**changes)  # type: ignore[arg-type]
    for name, value in changes.items():
        assert getattr(config, name) == value


def test_values_are_normalised() -> None:
    config = Config(
        transmission_period=3, idle_timeout=1, allowed_origins=["HTTPS://Example.COM:8443"]
    )
    assert type(config.transmission_period) is float
    assert type(config.idle_timeout) is float
    assert config.allowed_origins == ("https://example.com:8443",)


def test_trusted_proxies_are_normalised_to_networks() -> None:
    config = Config(trusted_proxies=["10.1.2.3", " 2001:DB8::/32", "::ffff:0:0/96"])
    assert config.trusted_proxies == ("10.1.2.3/32", "2001:db8::/32", "::ffff:0:0/96")


def test_trusted_proxies_errors_name_the_entry_and_suggest_the_network() -> None:
    with pytest.raises(
        ConfigError, match=r"'10.0.0.1/8' has host bits set; did you mean '10.0.0.0/8'"
    ):
        Config(trusted_proxies=["10.0.0.1/8"])
    with pytest.raises(ConfigError, match=r"^trusted_proxies: 'lb.internal' is not an IP address"):
        Config(trusted_proxies=["lb.internal"])


def test_replace_revalidates() -> None:
    config = Config().replace(port=0, idle_timeout=None)
    assert (config.port, config.idle_timeout) == (0, None)
    with pytest.raises(ConfigError) as exc_info:
        config.replace(port=-1)
    assert exc_info.value.setting == "port"


def test_replace_unknown_name_suggests_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'port'"):
        Config().replace(prot=1)


# -- load_config ---------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "riverside.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_config_with_nothing_gives_defaults() -> None:
    assert load_config(env={}) == Config()


def test_precedence_defaults_toml_env_overrides(tmp_path: Path) -> None:
    toml = write(
        tmp_path,
        'host = "0.0.0.0"\nport = 9000\nbacklog = 10\nidle_timeout = 5\n',
    )
    env = {"RIVERSIDE_PORT": "9001", "RIVERSIDE_BACKLOG": "20"}
    config = load_config(toml_path=toml, env=env, overrides={"backlog": 30})
    assert config.path == "/ws"  # default
    assert config.host == "0.0.0.0"  # TOML
    assert config.idle_timeout == 5.0  # TOML
    assert config.port == 9001  # env over TOML
    assert config.backlog == 30  # overrides over env


def test_toml_riverside_table(tmp_path: Path) -> None:
    toml = write(
        tmp_path,
        '[riverside]\nport = 9000\nallowed_origins = ["https://a.example"]\n'
        'metrics_path = "off"\nmax_connection_age = 3600\n',
    )
    config = load_config(toml_path=toml, env={})
    assert config.port == 9000
    assert config.allowed_origins == ("https://a.example",)
    assert config.metrics_path is None
    assert config.max_connection_age == 3600.0


def test_toml_key_in_both_places_is_an_error(tmp_path: Path) -> None:
    toml = write(tmp_path, "port = 1\n[riverside]\nport = 2\n")
    with pytest.raises(ConfigError) as exc_info:
        load_config(toml_path=toml, env={})
    assert exc_info.value.setting == "port"


def test_toml_unknown_key_suggests_closest(tmp_path: Path) -> None:
    toml = write(tmp_path, "idle_timout = 5\n")
    with pytest.raises(ConfigError, match="did you mean 'idle_timeout'") as exc_info:
        load_config(toml_path=toml, env={})
    assert exc_info.value.setting == "idle_timout"


def test_toml_bad_value_names_field_and_file(tmp_path: Path) -> None:
    toml = write(tmp_path, 'port = "http"\n')
    with pytest.raises(ConfigError) as exc_info:
        load_config(toml_path=toml, env={})
    assert exc_info.value.setting == "port"
    assert str(exc_info.value).startswith(f"port (from {toml}): must be an integer")


def test_missing_toml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as exc_info:
        load_config(toml_path=tmp_path / "nope.toml", env={})
    assert exc_info.value.setting == "config"


def test_malformed_toml_file(tmp_path: Path) -> None:
    toml = write(tmp_path, "port = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as exc_info:
        load_config(toml_path=toml, env={})
    assert exc_info.value.setting == "config"


def test_toml_path_from_riverside_config_variable(tmp_path: Path) -> None:
    toml = write(tmp_path, "port = 9100\n")
    assert load_config(env={"RIVERSIDE_CONFIG": str(toml)}).port == 9100


def test_env_unknown_variable_is_a_warning_that_suggests_closest() -> None:
    # An application's own RIVERSIDE_* variables (or .ci/run's RIVERSIDE_CI_VENV) must not
    # stop the server; a typo of a real setting is still reported, with the right name.
    with structlog.testing.capture_logs() as logs:
        config = load_config(env={"RIVERSIDE_IDLE_TIMOUT": "30", "RIVERSIDE_CI_VENV": "/x"})
    assert config == Config()
    warnings = {e["variable"]: e for e in logs if e["event"] == "unknown_environment_variable"}
    assert set(warnings) == {"RIVERSIDE_IDLE_TIMOUT", "RIVERSIDE_CI_VENV"}
    assert warnings["RIVERSIDE_IDLE_TIMOUT"]["log_level"] == "warning"
    assert "did you mean 'RIVERSIDE_IDLE_TIMEOUT'" in warnings["RIVERSIDE_IDLE_TIMOUT"]["problem"]
    assert "did you mean" not in warnings["RIVERSIDE_CI_VENV"]["problem"]


def test_env_ignores_other_variables() -> None:
    env = {
        "PORT": "1",
        "riverside_port": "2",
        "RIVERSIDE_NO_EXTENSIONS": "1",
        "RIVERSIDE_BUILD_EXTENSIONS": "1",
        "RIVERSIDE_REQUIRE_EXTENSIONS": "1",
    }
    assert load_config(env=env) == Config()


def test_env_unparsable_value_names_field_and_variable() -> None:
    with pytest.raises(ConfigError) as exc_info:
        load_config(env={"RIVERSIDE_IDLE_TIMEOUT": "abc"})
    assert exc_info.value.setting == "idle_timeout"
    assert str(exc_info.value) == (
        "idle_timeout (from RIVERSIDE_IDLE_TIMEOUT): "
        "expected a number of seconds or 'off', got 'abc'"
    )


def test_env_out_of_range_value_names_variable() -> None:
    with pytest.raises(ConfigError, match=r"^port \(from RIVERSIDE_PORT\): must be") as exc_info:
        load_config(env={"RIVERSIDE_PORT": "70000"})
    assert exc_info.value.setting == "port"


@pytest.mark.parametrize("word", ["off", "none", "OFF", " None "])
@pytest.mark.parametrize(
    "name", ["idle_timeout", "max_connection_age", "ping_interval", "metrics_path"]
)
def test_env_off_and_none_turn_optional_settings_off(name: str, word: str) -> None:
    config = load_config(env={f"RIVERSIDE_{name.upper()}": word})
    assert getattr(config, name) is None


def test_env_off_is_invalid_for_a_required_setting() -> None:
    with pytest.raises(ConfigError, match=r"expected a number of seconds, got 'off'"):
        load_config(env={"RIVERSIDE_PING_TIMEOUT": "off"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("true", True),
        ("Yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("NO", False),
        ("off", False),
    ],
)
def test_env_bool_parsing(text: str, expected: bool) -> None:
    assert load_config(env={"RIVERSIDE_REUSE_PORT": text}).reuse_port is expected


def test_env_bool_rejects_other_words() -> None:
    with pytest.raises(ConfigError, match=r"reuse_port .*expected one of 1/0") as exc_info:
        load_config(env={"RIVERSIDE_REUSE_PORT": "maybe"})
    assert exc_info.value.setting == "reuse_port"


def test_env_numbers_and_choices() -> None:
    env = {
        "RIVERSIDE_MAX_CONNECTIONS": "20_000",
        "RIVERSIDE_TRANSMISSION_PERIOD": "0.5",
        "RIVERSIDE_INVALID_MESSAGE": "close",
        "RIVERSIDE_LOG_FORMAT": "JSON",
        "RIVERSIDE_POLLER": "trio",
    }
    config = load_config(env=env)
    assert config.poller == "trio"
    assert config.max_connections == 20_000
    assert config.transmission_period == 0.5
    assert config.invalid_message == "close"
    assert config.log_format == "json"


def test_env_integer_rejects_a_fraction() -> None:
    with pytest.raises(ConfigError, match=r"expected an integer, got '1.5'"):
        load_config(env={"RIVERSIDE_BACKLOG": "1.5"})


def test_env_allowed_origins_comma_separated() -> None:
    env = {"RIVERSIDE_ALLOWED_ORIGINS": "https://a.example, http://localhost:3000,"}
    config = load_config(env=env)
    assert config.allowed_origins == ("https://a.example", "http://localhost:3000")
    assert load_config(env={"RIVERSIDE_ALLOWED_ORIGINS": "off"}).allowed_origins is None


def test_env_limits_before_the_handshake() -> None:
    env = {
        "RIVERSIDE_MAX_HEADERS": "50",
        "RIVERSIDE_MAX_PENDING_HANDSHAKES": "200",
        "RIVERSIDE_MAX_PENDING_PER_ADDRESS": "8",
        "RIVERSIDE_AUTHENTICATE_TIMEOUT": "2.5",
        "RIVERSIDE_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1 ,",
    }
    config = load_config(env=env)
    assert (config.max_headers, config.authenticate_timeout) == (50, 2.5)
    assert (config.max_pending_handshakes, config.max_pending_per_address) == (200, 8)
    assert config.trusted_proxies == ("10.0.0.0/8", "127.0.0.1/32")
    assert load_config(env={"RIVERSIDE_TRUSTED_PROXIES": ""}).trusted_proxies == ()


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("RIVERSIDE_TRUSTED_PROXIES", "10.0.0.0/8,nope", "'nope' is not an IP address"),
        ("RIVERSIDE_AUTHENTICATE_TIMEOUT", "soon", "expected a number of seconds, got 'soon'"),
        ("RIVERSIDE_AUTHENTICATE_TIMEOUT", "off", "expected a number of seconds, got 'off'"),
        ("RIVERSIDE_MAX_PENDING_PER_ADDRESS", "0", "must be an integer >= 1, got 0"),
        ("RIVERSIDE_MAX_HEADERS", "many", "expected an integer, got 'many'"),
    ],
)
def test_env_bad_limit_names_the_setting_and_variable(var: str, value: str, expected: str) -> None:
    name = var.removeprefix("RIVERSIDE_").lower()
    with pytest.raises(ConfigError) as exc_info:
        load_config(env={var: value})
    assert exc_info.value.setting == name
    assert str(exc_info.value).startswith(f"{name} (from {var}): ")
    assert expected in str(exc_info.value)


def test_toml_trusted_proxies_list(tmp_path: Path) -> None:
    path = write(tmp_path, 'trusted_proxies = ["10.0.0.0/8", "fd00::/8"]\nmax_headers = 64\n')
    config = load_config(toml_path=path, env={})
    assert config.trusted_proxies == ("10.0.0.0/8", "fd00::/8")
    assert config.max_headers == 64
    path = write(tmp_path, 'trusted_proxies = ["10.0.0.1/8"]\n')
    with pytest.raises(ConfigError, match=r"^trusted_proxies \(from .*riverside.toml\): "):
        load_config(toml_path=path, env={})


def test_overrides_unknown_name_suggests_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'backlog'"):
        load_config(env={}, overrides={"backlogg": 1})


def test_overrides_bad_value_names_field() -> None:
    with pytest.raises(ConfigError) as exc_info:
        load_config(env={}, overrides={"max_connections": 0})
    assert exc_info.value.setting == "max_connections"


def test_load_config_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIVERSIDE_PORT", "9200")
    assert load_config().port == 9200


def test_the_default_limits_fit_max_connections_in_the_memory_budget() -> None:
    """The README's arithmetic: per connection its queue, the batch its writer holds and a
    full mailbox; max_connections of them within max_queued_bytes."""
    from riverside_trio.server._mailbox import INFO_BYTES
    from riverside_trio.server._writer import WRITE_BATCH

    config = Config()
    per_connection = config.outbox_bytes + WRITE_BATCH + config.mailbox_size * INFO_BYTES
    assert per_connection == 153 * 1024
    assert config.max_queued_bytes is not None
    assert config.max_connections * per_connection <= config.max_queued_bytes


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://:secret@redis.internal",
        "rediss://user:secret@redis.example.com:6380/2",
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000",
        "redis://[::1]:6379",
    ],
)
def test_broker_url_accepts_redis_tls_and_cluster_forms(url: str) -> None:
    assert Config(broker_url=url).broker_url == url


def test_a_bad_broker_url_from_the_environment_names_the_setting_without_the_password() -> None:
    env = {"RIVERSIDE_BROKER_URL": "redis://:hunter2@a:1,b:2"}
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    message = str(info.value)
    assert message.startswith("broker_url (from RIVERSIDE_BROKER_URL): ")
    assert "redis+cluster://" in message
    assert "hunter2" not in message
