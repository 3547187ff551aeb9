"""Keys and tokens for the JWT tests: keys generated per test session with cryptography,
tokens minted with PyJWT (and by hand, for the forgeries PyJWT refuses to make)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SECRET = "s" * 32  # HS256's minimum: 32 bytes

KEYS: dict[str, Any] = {}


def private_key(alg: str, name: str = "") -> Any:
    """A private key for ``alg``, made once per session (``name`` makes another)."""
    if (alg, name) not in KEYS:
        if alg == "RS256":
            KEYS[alg, name] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            KEYS[alg, name] = ec.generate_private_key(ec.SECP256R1())
        else:
            KEYS[alg, name] = ed25519.Ed25519PrivateKey.generate()
    return KEYS[alg, name]


def public_pem(alg: str, name: str = "") -> bytes:
    return (
        private_key(alg, name)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def write_public_pem(tmp_path: Path, alg: str, name: str = "") -> str:
    path = tmp_path / f"{alg}{name}.pub.pem"
    path.write_bytes(public_pem(alg, name))
    return str(path)


def jwk(alg: str, kid: str, name: str = "") -> dict[str, Any]:
    """The public JWK of a key, with its ``kid``."""
    algorithm = jwt.get_algorithm_by_name(alg)
    entry: dict[str, Any] = json.loads(algorithm.to_jwk(private_key(alg, name).public_key()))
    entry.update(kid=kid, use="sig")
    return entry


def claims(**extra: Any) -> dict[str, Any]:
    """``sub`` alice, ``exp`` in five minutes, then ``extra`` (None removes a claim)."""
    payload: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 300}
    payload.update(extra)
    return {k: v for k, v in payload.items() if v is not None}


def mint(alg: str = "HS256", *, kid: str | None = None, name: str = "", **extra: Any) -> str:
    """A token signed with the test key of ``alg`` (SECRET for HMAC)."""
    key = SECRET if alg.startswith("HS") else private_key(alg, name)
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**extra), key, algorithm=alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge_hs256(secret: bytes, **extra: Any) -> str:
    """An HS256 token with ``secret`` as the HMAC key, made by hand: PyJWT refuses to use a
    PEM public key as a secret (the algorithm-confusion forgery)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims(**extra)).encode())
    signing_input = f"{header}.{payload}".encode()
    return f"{header}.{payload}." + _b64(hmac.new(secret, signing_input, hashlib.sha256).digest())


def unsigned(**extra: Any) -> str:
    """An ``alg: none`` token."""
    return jwt.encode(claims(**extra), None, algorithm="none")
