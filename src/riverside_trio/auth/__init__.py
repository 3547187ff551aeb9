"""Client authentication: ready-made authenticators (JWT) and Origin rules.

A Handler without its own ``authenticate`` uses the authenticators its settings configure
(:func:`configured_authenticators`); one with its own calls ``super().authenticate(req)``
or an authenticator directly.
"""

from __future__ import annotations

from ..config import Config
from ._base import Authenticator as Authenticator
from ._base import authenticate_default as authenticate_default
from ._base import may_wait as may_wait
from ._jwt import JWT_SUBPROTOCOL as JWT_SUBPROTOCOL
from ._jwt import JWTAuthenticator as JWTAuthenticator
from ._jwt import split_jwt_subprotocol as split_jwt_subprotocol
from ._origin import OriginRules as OriginRules

__all__ = [
    "JWT_SUBPROTOCOL",
    "Authenticator",
    "JWTAuthenticator",
    "OriginRules",
    "authenticate_default",
    "configured_authenticators",
    "may_wait",
    "split_jwt_subprotocol",
]


def configured_authenticators(config: Config) -> list[Authenticator]:
    """The authenticators ``config`` asks for, in the order they are tried (a claim, when
    the control API adds one, goes first, then a JWT).

    Raises:
        ConfigError: a key cannot be read or used (names the setting).
    """
    authenticators: list[Authenticator] = []
    if config.jwt_secret or config.jwt_public_key_file or config.jwt_jwks:
        authenticators.append(JWTAuthenticator(config))
    return authenticators
