"""The browser client, ``riverside.js``: package data every server serves at
``/riverside.js``."""

from __future__ import annotations

import functools
from importlib.resources import files

__all__ = ["CLIENT_JS_PATH", "CLIENT_JS_TYPE", "client_js"]

CLIENT_JS_PATH = "/riverside.js"
CLIENT_JS_TYPE = "text/javascript; charset=utf-8"


@functools.cache
def client_js() -> bytes:
    """The module's source (read once)."""
    return files("riverside_trio.client").joinpath("riverside.js").read_bytes()
