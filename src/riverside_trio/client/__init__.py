"""The clients: the Trio client (:func:`open_client`, on trio-websocket) and the browser
client (``riverside.js``, served by every server at ``/riverside.js``)."""

from __future__ import annotations

from ._client import Client as Client
from ._client import open_client as open_client

__all__ = ["Client", "open_client"]
