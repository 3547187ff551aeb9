"""Shared test options and fixtures.

Compiled hot path: tests marked ``c_extension`` run against ``riverside_trio._frames_c``;
``pytest --no-c-extensions`` skips them (the pure-Python twin is still tested).
``pytest --no-poller`` runs every server on Trio's ``wait_readable`` instead of its own
edge-triggered poller (the fallback where there is no epoll).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest
from hypothesis import settings

from ._tls import Certs, make_certs

# No per-example deadline: on a loaded 2-core machine one example can take longer than
# hypothesis's default 200 ms for reasons that have nothing to do with the code under test.
settings.register_profile("riverside", deadline=None)
settings.load_profile("riverside")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        default=False,
        help="skip the tests of the compiled hot path (marker c_extension)",
    )
    parser.addoption(
        "--no-poller",
        action="store_true",
        default=False,
        help="run every server without its edge-triggered poller (Trio's wait_readable, as "
        "where there is no epoll); the poller's own tests are skipped",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--no-poller"):
        from riverside_trio.server import _poller

        _poller.AVAILABLE = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--no-c-extensions"):
        return
    skip = pytest.mark.skip(reason="--no-c-extensions")
    for item in items:
        if "c_extension" in item.keywords:
            item.add_marker(skip)


def _import_frames_c() -> ModuleType:
    try:
        return importlib.import_module("riverside_trio._frames_c")
    except ImportError as exc:
        pytest.skip(f"riverside_trio._frames_c is not built ({exc})")


@pytest.fixture(scope="session")
def frames_c() -> ModuleType:
    """The compiled hot path; skips the test when it was not built."""
    return _import_frames_c()


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("c", marks=pytest.mark.c_extension),
        pytest.param("python"),
    ],
)
def frames_impl(request: pytest.FixtureRequest) -> ModuleType:
    """The hot-path module under test: ``_frames_c``, then ``_frames_py``."""
    if request.param == "c":
        return _import_frames_c()
    return importlib.import_module("riverside_trio.wire._frames_py")


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A self-signed server certificate, a client CA, a client it signed and a stranger."""
    return make_certs(tmp_path_factory.mktemp("tls"))
