"""``riverside-trio api``: a node that serves the control API only.

It holds no WebSocket connections (every upgrade is refused with 404 and a JSON error) and
reaches the cluster's connections through the broker, as dSock's API service does apart
from its workers.
"""

from __future__ import annotations

from .._values import AuthRequest
from ..errors import AuthError
from ..handler import Accept, Handler
from ._request import error_body, request_id

__all__ = ["ApiOnlyHandler"]


class ApiOnlyHandler(Handler):
    """Refuses every WebSocket upgrade: this node answers the control API only."""

    async def authenticate(self, req: AuthRequest) -> Accept:
        rid = request_id(req.headers)
        body = error_body(
            "NOT_FOUND",
            "this node serves the control API only: connect to a node run with 'serve'",
            rid,
        )
        raise AuthError(404, [("Content-Type", "application/json"), ("X-Request-ID", rid)], body)
