"""How envelopes travel with a given codec: as dicts (JSON, CBOR, any codec of dicts) or
as themselves (:class:`~riverside_trio.WebwireCodec`). Shared by the server and the Trio
client."""

from __future__ import annotations

from typing import Any

from ._envelope import Envelope, Malformed, Reply, SessionData, from_dict, to_dict
from ._webwire import WebwireCodec, parse_session_json, session_json

__all__ = ["Format", "format_for"]


class Format:
    """Envelopes as dicts: ``{"$": "req", ...}`` (see :mod:`._envelope`)."""

    webwire = False

    def parse(self, msg: Any) -> Envelope | Malformed | None:
        """The envelope in a decoded message; None: a plain message."""
        return from_dict(msg)

    def out(self, env: Envelope) -> Any:
        """What to hand to the codec to send ``env``."""
        return to_dict(env)

    def reply(self, rid: Any, payload: Any) -> Any:
        """What to hand to the codec to send the reply ``payload`` to the request ``rid``
        (``out(Reply(rid, payload))`` without the Reply)."""
        return {"$": "rep", "id": rid, "data": payload}

    def session_payload(self, session: SessionData) -> Any:
        """The payload of the reply to a restore."""
        return session.to_dict()

    def parse_session(self, payload: Any) -> SessionData:
        """The inverse of :meth:`session_payload`.

        Raises:
            ValueError: ``payload`` is not a session.
        """
        if not isinstance(payload, dict) or not isinstance(payload.get("key"), str):
            raise ValueError("not a session")
        return SessionData(
            payload["key"],
            float(payload.get("created") or 0.0),
            float(payload.get("last_lookup") or 0.0),
            payload.get("info"),
        )

    def new_id(self, n: int) -> Any:
        """The id of the ``n``-th request this side makes."""
        return n


class _WebwireFormat(Format):
    """Envelopes as webwire's binary messages: the codec encodes them itself."""

    webwire = True

    def parse(self, msg: Any) -> Envelope | Malformed | None:
        return msg  # type: ignore[no-any-return]

    def out(self, env: Envelope) -> Any:
        return env

    def reply(self, rid: Any, payload: Any) -> Any:
        return Reply(rid, payload)

    def session_payload(self, session: SessionData) -> Any:
        return session_json(session)

    def parse_session(self, payload: Any) -> SessionData:
        return parse_session_json(payload)

    def new_id(self, n: int) -> Any:
        return n.to_bytes(8, "big")


_DICT = Format()
_WEBWIRE = _WebwireFormat()


def format_for(codec: object) -> Format:
    """The envelope format of ``codec``."""
    return _WEBWIRE if isinstance(codec, WebwireCodec) else _DICT
