"""JSON Web Tokens (RFC 7519) as a ready-made authenticator: :class:`JWTAuthenticator`.

Where a client puts its token (the first found wins):

1. the query parameter ``?jwt=<token>``;
2. the header ``Authorization: Bearer <token>``;
3. ``Sec-WebSocket-Protocol: riverside.jwt, <token>``: for browsers, which cannot set
   headers: ``new WebSocket(url, ["riverside.jwt", token])``. The 101 response selects
   ``riverside.jwt`` (a browser fails a connection whose response selects no protocol, or
   one it did not offer), never the token; ``AuthRequest.subprotocols`` leaves the token
   out.

How a token is checked, in order (each refusal is 401 ``INVALID_JWT`` with a reason; see
the README's "JWT"):

- at most ``jwt_max_length`` bytes (``jwt_too_large``), three base64url parts
  (``jwt_malformed``);
- its header's ``alg`` is one of the pinned ``jwt_algorithms`` (``jwt_algorithm_not_allowed``:
  this refuses ``alg: none`` and an HS256 token signed with a public key as the secret);
- its key: the secret, the PEM key, or the JWKS key named by ``kid``
  (``jwt_unknown_kid``; a key of another algorithm: ``jwt_wrong_key``);
- the signature (``jwt_bad_signature``), then the claims: ``exp`` required unless
  ``jwt_require_exp`` is off (``jwt_missing_claim``) and not past (``jwt_expired``), ``nbf``
  and ``iat`` not in the future (``jwt_not_yet_valid``), each with ``jwt_leeway`` seconds
  of skew; ``aud`` (``jwt_bad_audience``) and ``iss`` (``jwt_bad_issuer``) when configured;
- ``sub`` (a non-empty string) is the user, ``sid`` (optional) the session, ``channels``
  (optional, a list of non-empty strings) the channels joined on connect
  (``jwt_bad_claims``).
"""

from __future__ import annotations

import functools
from typing import Any

import structlog

from .._values import Accept, AuthRequest
from ..config import Config
from ..errors import AuthError, ConfigError
from ..wire.handshake import subprotocols
from ._base import refusal
from ._jwks import KeySet, KeysUnavailable

__all__ = ["JWT_SUBPROTOCOL", "JWTAuthenticator", "split_jwt_subprotocol"]

log = structlog.get_logger("riverside_trio.auth")

JWT_SUBPROTOCOL = "riverside.jwt"
"""The subprotocol a browser offers right before its token: ``["riverside.jwt", token]``."""


def _pyjwt() -> Any:
    """PyJWT, imported when a JWT key is configured: it and cryptography would otherwise
    cost every process about 0.1 s and 12,000 objects at import."""
    import jwt

    return jwt


@functools.cache
def _errors() -> tuple[tuple[type[Exception], str, str], ...]:
    """What PyJWT's exceptions mean, most specific first: (exception, reason, message)."""
    e = _pyjwt().exceptions
    return (
        (e.ExpiredSignatureError, "jwt_expired", "the token has expired (exp)"),
        (
            e.ImmatureSignatureError,
            "jwt_not_yet_valid",
            "the token is not valid yet (nbf or iat in the future)",
        ),
        (e.InvalidAudienceError, "jwt_bad_audience", "the token is for another audience"),
        (e.InvalidIssuerError, "jwt_bad_issuer", "the token is from another issuer"),
        (e.MissingRequiredClaimError, "jwt_missing_claim", "the token lacks a claim"),
        (e.InvalidAlgorithmError, "jwt_algorithm_not_allowed", "algorithm not allowed"),
        (e.InvalidSignatureError, "jwt_bad_signature", "the signature does not verify"),
        (e.InvalidKeyError, "jwt_wrong_key", "the key does not fit the algorithm"),
        (e.DecodeError, "jwt_malformed", "not a well-formed token"),
        (e.InvalidTokenError, "jwt_bad_claims", "a claim has a wrong type or value"),
    )


def split_jwt_subprotocol(offered: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
    """``(the offered subprotocols without the token, the token)``: the token is the entry
    right after ``riverside.jwt`` (None when there is none)."""
    try:
        at = offered.index(JWT_SUBPROTOCOL)
    except ValueError:
        return offered, None
    if at + 1 >= len(offered):
        return offered, None
    return offered[: at + 1] + offered[at + 2 :], offered[at + 1]


def _invalid(reason: str, message: str) -> AuthError:
    return refusal(401, "INVALID_JWT", message, reason)


def _key_algorithm(key: object, path: str) -> str:
    """The one algorithm a public key checks.

    Raises:
        ConfigError: a key of another type (``jwt_public_key_file``).
    """
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "EdDSA"
    raise ConfigError(
        "jwt_public_key_file",
        f"{path} holds a {type(key).__name__}; use an RSA (RS256), P-256 (ES256) or "
        "Ed25519/Ed448 (EdDSA) public key",
    )


def _load_public_key(path: str) -> Any:
    """The public key of a PEM file (a public key or a certificate).

    Raises:
        ConfigError: unreadable, a private key, or not PEM (``jwt_public_key_file``).
    """
    try:
        with open(path, "rb") as file:
            data = file.read(1 << 20)
    except OSError as exc:
        raise ConfigError(
            "jwt_public_key_file", f"cannot read {path}: {exc.strerror or exc}"
        ) from None
    if b"PRIVATE KEY-----" in data:
        raise ConfigError(
            "jwt_public_key_file",
            f"{path} holds a private key; give the server the public key only "
            "(openssl pkey -in private.pem -pubout)",
        )
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        return load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(
            "jwt_public_key_file", f"{path} is not a PEM public key or certificate: {exc}"
        ) from None


class JWTAuthenticator:
    """Authenticates upgrade requests that carry a JSON Web Token, with the JWT settings of
    a :class:`~riverside_trio.Config`.

    The server makes one when a JWT key is configured, and a Handler without its own
    ``authenticate`` uses it. A handler with its own makes one and calls it::

        class Chat(riverside_trio.Handler):
            def __init__(self, config: riverside_trio.Config) -> None:
                self.jwt = riverside_trio.JWTAuthenticator(config)

            async def authenticate(self, req):
                accept = await self.jwt(req)      # None: no token in the request
                if accept is None:
                    raise riverside_trio.AuthError(401)
                return accept                     # or your own Accept, from accept.state["jwt"]

    Attributes:
        algorithms: the pinned algorithms.
        keys: the JWKS of ``jwt_jwks`` (its ``fetches`` count), or None.
        may_wait: whether a check can wait (a JWKS URL to fetch).
    """

    def __init__(self, config: Config) -> None:
        """Read the key (``jwt_public_key_file``, a ``jwt_jwks`` file) now.

        Raises:
            ConfigError: no JWT key is configured, or the key cannot be used (names the
                setting).
        """
        self.keys: KeySet | None = None
        self._key: Any = None
        algorithms = config.jwt_algorithms
        if config.jwt_secret is not None:
            self._key = config.jwt_secret.encode("utf-8")
            algorithms = algorithms or ("HS256",)
        elif config.jwt_public_key_file is not None:
            path = config.jwt_public_key_file
            self._key = _load_public_key(path)
            own = _key_algorithm(self._key, path)
            if algorithms and algorithms != (own,):
                raise ConfigError(
                    "jwt_algorithms",
                    f"the key in {path} checks {own} only; set jwt_algorithms to [{own!r}] "
                    "(or leave it empty)",
                )
            algorithms = (own,)
        elif config.jwt_jwks is not None:
            self.keys = KeySet(
                config.jwt_jwks,
                algorithms,
                refresh=config.jwt_jwks_refresh,
                min_refresh=config.jwt_jwks_min_refresh,
            )
        else:
            raise ConfigError(
                "jwt_secret", "no JWT key: set jwt_secret, jwt_public_key_file or jwt_jwks"
            )
        self.algorithms: tuple[str, ...] = algorithms
        # Only a JWKS URL makes a check wait (a fetch): otherwise it never awaits, and the
        # server runs it without watching for a hang-up or a timeout.
        self.may_wait = self.keys is not None and self.keys.is_url
        self._audience = config.jwt_audience
        self._issuer = config.jwt_issuer
        self._leeway = config.jwt_leeway
        self._max_length = config.jwt_max_length
        required = ["sub"]
        if config.jwt_require_exp:
            required.append("exp")
        if config.jwt_audience is not None:
            required.append("aud")
        if config.jwt_issuer is not None:
            required.append("iss")
        self._options: dict[str, Any] = {
            "require": required,
            "verify_aud": config.jwt_audience is not None,
            "verify_iss": config.jwt_issuer is not None,
        }

    @staticmethod
    def token_of(req: AuthRequest) -> str | None:
        """The token a request carries (``?jwt=``, Bearer, or the ``riverside.jwt``
        subprotocol, first found), or None."""
        token = req.query.get("jwt")
        if token is not None:
            return token
        token = req.bearer_token
        if token is not None:
            return token
        return split_jwt_subprotocol(subprotocols(req.headers))[1]

    async def __call__(self, req: AuthRequest) -> Accept | None:
        """:class:`~riverside_trio.Accept` for a request with a valid token, None for a
        request without one. A checkpoint only when a JWKS URL is fetched.

        ``sub`` is the user id, ``sid`` the session id, ``channels`` joined on connect;
        every claim is in ``Accept.state["jwt"]`` (so ``conn.state["jwt"]``); the
        ``riverside.jwt`` subprotocol is selected when the client offered it.

        Raises:
            AuthError: 401 ``INVALID_JWT`` for a token that does not verify (``reason``
                says why), 503 ``JWKS_UNAVAILABLE`` when the JWKS URL cannot be fetched.
        """
        token = self.token_of(req)
        if token is None:
            return None
        claims = await self.verify(token)
        session = claims.get("sid")
        channels = claims.get("channels", [])
        if session is not None and (not isinstance(session, str) or not session):
            raise _invalid("jwt_bad_claims", "sid must be a non-empty string")
        if not isinstance(channels, list) or not all(isinstance(c, str) and c for c in channels):
            raise _invalid("jwt_bad_claims", "channels must be a list of non-empty strings")
        return Accept(
            user_id=claims["sub"],
            session_id=session,
            state={"jwt": claims},
            subprotocol=JWT_SUBPROTOCOL if JWT_SUBPROTOCOL in req.subprotocols else None,
            channels=channels,
        )

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of ``token`` once its signature and claims are checked. A checkpoint
        only when a JWKS URL is fetched.

        Raises:
            AuthError: as :meth:`__call__`.
        """
        if len(token.encode("utf-8", "replace")) > self._max_length:
            raise _invalid("jwt_too_large", f"the token is over {self._max_length} bytes")
        jwt = _pyjwt()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("jwt_malformed", "not a well-formed token") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise _invalid(
                "jwt_algorithm_not_allowed",
                f"algorithm {str(algorithm)[:20]!r} is not allowed; this server accepts "
                + ", ".join(self.algorithms),
            )
        key = self._key
        if self.keys is not None:
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise _invalid("jwt_malformed", "kid must be a string")
            try:
                found = await self.keys.lookup(kid)
            except KeysUnavailable:
                exc = refusal(
                    503, "JWKS_UNAVAILABLE", "the keys cannot be fetched now", "jwks_unavailable"
                )
                exc.headers.append(("Retry-After", "5"))
                raise exc from None
            if found is None:
                raise _invalid("jwt_unknown_kid", "no key has the token's kid")
            key_algorithm, key = found
            if key_algorithm != algorithm:
                raise _invalid("jwt_wrong_key", f"the token's kid names a {key_algorithm} key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=self._options,
            )
        except jwt.PyJWTError as exc:
            for kind, reason, message in _errors():
                if isinstance(exc, kind):
                    raise _invalid(reason, message) from None
            raise _invalid("jwt_bad_claims", "the token does not verify") from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise _invalid("jwt_bad_claims", "sub must be a non-empty string")
        return claims
