"""What every ready-made authenticator is, and what a handler without ``authenticate`` does.

An authenticator is an async callable ``(AuthRequest) -> Accept | None``:

- :class:`~riverside_trio.Accept` when the request carries a credential of its kind that
  is valid (a JWT, a claim);
- None when the request carries no credential of its kind, so the next one is tried;
- it raises :class:`~riverside_trio.AuthError` when the credential is there but wrong
  (expired, forged, unknown): the client is refused, no other authenticator is tried.

The server builds the ones its settings ask for (:func:`configured_authenticators`) and
hands them to the default :meth:`Handler.authenticate` through the request. A handler with
its own ``authenticate`` calls ``await super().authenticate(req)`` to use them, or calls one
itself (``JWTAuthenticator``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

from .._values import Accept, AuthRequest, new_session_id
from ..errors import AuthError

__all__ = ["Authenticator", "authenticate_default", "may_wait", "refusal"]

REALM = "riverside"


class Authenticator(Protocol):
    """An async callable that authenticates an upgrade request from one kind of credential.

    Returns :class:`~riverside_trio.Accept` for a valid credential, None when the request
    carries none of its kind; raises :class:`~riverside_trio.AuthError` for a wrong one.
    One that never awaits may say so with an attribute ``may_wait = False``: the server
    then runs it without a watcher task (one that can wait is cancelled on a hang-up or
    after ``authenticate_timeout``).
    """

    async def __call__(self, req: AuthRequest, /) -> Accept | None: ...


def may_wait(authenticators: Sequence[Authenticator]) -> bool:
    """Whether any of ``authenticators`` can wait (I/O): one that does not say
    ``may_wait = False`` is assumed to."""
    return any(getattr(a, "may_wait", True) for a in authenticators)


async def authenticate_default(
    req: AuthRequest, authenticators: Sequence[Authenticator] | None = None
) -> Accept:
    """What a Handler without ``authenticate`` does: the first authenticator that finds its
    credential decides; with none configured, everyone is accepted with a random user id.

    ``authenticators`` defaults to the server's configured ones (carried by ``req``).
    A checkpoint when an authenticator waits (a JWKS fetch); cancelling it leaves nothing.

    Raises:
        AuthError: a credential is wrong (its authenticator's status), or authenticators
            are configured and the request carries no credential at all (401,
            ``MISSING_AUTHENTICATION``).
    """
    chain = req._authenticators if authenticators is None else authenticators
    for authenticate in chain:
        accept = await authenticate(req)
        if accept is not None:
            return accept
    if chain:
        raise refusal(
            401,
            "MISSING_AUTHENTICATION",
            "no credential: connect with a token (?jwt=, Authorization: Bearer, or the "
            "riverside.jwt subprotocol) or a claim (?claim=)",
            "missing_authentication",
            bearer_error=None,
        )
    return Accept(user_id=new_session_id())


def refusal(
    status: int,
    code: str,
    message: str,
    reason: str,
    *,
    bearer_error: str | None = "invalid_token",
) -> AuthError:
    """An :class:`~riverside_trio.AuthError` with a JSON body in dSock's shape
    (``{"success": false, "errorCode": code, "error": message, "reason": reason}``) and,
    for 401, a Bearer challenge (RFC 6750) naming ``bearer_error``."""
    body = json.dumps(
        {"success": False, "errorCode": code, "error": message, "reason": reason}
    ).encode()
    if status == 401:
        exc = AuthError.bearer(REALM, bearer_error, None, body=body, reason=reason)
    else:
        exc = AuthError(status, body=body, reason=reason)
    exc.headers.append(("Content-Type", "application/json"))
    return exc
