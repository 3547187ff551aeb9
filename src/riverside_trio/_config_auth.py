"""The client-authentication settings checked together: which JWT key, which algorithms.

Pure checks on the values (no file is read here: the key files are read when the server is
made, by :class:`~riverside_trio.JWTAuthenticator`). Each raises a
:class:`~riverside_trio.errors.ConfigError` naming the setting to change.
"""

from __future__ import annotations

from ._config_lists import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS
from .errors import ConfigError

__all__ = ["MIN_HMAC_KEY_BYTES", "check_jwt_settings"]

# RFC 7518 section 3.2: a key of the same size as the hash output, or larger.
MIN_HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}

_KEY_SETTINGS = ("jwt_secret", "jwt_public_key_file", "jwt_jwks")


def check_jwt_settings(
    *,
    algorithms: tuple[str, ...],
    secret: str | None,
    public_key_file: str | None,
    jwks: str | None,
    audience: str | None,
    issuer: str | None,
) -> tuple[str, ...]:
    """The algorithms to pin (a secret's default: HS256; a public key's: empty, the key's
    own), once the JWT settings are consistent: at most one key, algorithms of the key's
    family, a long enough secret.

    Raises:
        ConfigError: naming the setting to change.
    """
    given = {
        name: value
        for name, value in zip(_KEY_SETTINGS, (secret, public_key_file, jwks), strict=True)
        if value is not None
    }
    if len(given) > 1:
        first, second = list(given)[:2]
        raise ConfigError(second, f"set only one JWT key: {first} is set too")
    if not given:
        for name, value in (
            ("jwt_algorithms", algorithms),
            ("jwt_audience", audience),
            ("jwt_issuer", issuer),
        ):
            if value:
                raise ConfigError(
                    name, "needs a JWT key: set jwt_secret, jwt_public_key_file or jwt_jwks"
                )
        return algorithms
    if secret is not None:
        algorithms = algorithms or ("HS256",)
        wrong = [a for a in algorithms if a not in HMAC_ALGORITHMS]
        if wrong:
            raise ConfigError(
                "jwt_algorithms",
                f"{', '.join(wrong)} need a public key (jwt_public_key_file or jwt_jwks); "
                "jwt_secret signs with HS256, HS384 or HS512",
            )
        size = len(secret.encode("utf-8"))
        need = max(MIN_HMAC_KEY_BYTES[a] for a in algorithms)
        if size < need:
            strongest = max(algorithms, key=MIN_HMAC_KEY_BYTES.__getitem__)
            raise ConfigError(
                "jwt_secret",
                f"is {size} bytes; {strongest} needs a secret of at least {need} bytes "
                "(RFC 7518 section 3.2: as long as the hash), e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'",
            )
        return algorithms
    name = "jwt_public_key_file" if public_key_file is not None else "jwt_jwks"
    wrong = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
    if wrong:
        raise ConfigError(
            "jwt_algorithms",
            f"{', '.join(wrong)} need an HMAC secret (jwt_secret); {name} holds public keys "
            f"for {', '.join(ASYMMETRIC_ALGORITHMS)}",
        )
    if jwks is not None and not algorithms:
        raise ConfigError(
            "jwt_algorithms",
            "is required with jwt_jwks: name the algorithms of your keys, e.g. ['RS256'] "
            "(they are pinned here, never taken from a token)",
        )
    return algorithms
