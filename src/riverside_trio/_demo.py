"""The demo served by ``riverside-trio serve`` when no handler is named.

Try it with any WebSocket client, e.g. ``python -m websockets ws://127.0.0.1:8000/ws``::

    > {"type": "join", "channel": "lobby"}
    < {"type":"joined","channel":"lobby"}
    > {"type": "say", "channel": "lobby", "text": "hi"}
    < {"type":"said","channel":"lobby","from":"3f2a...","text":"hi"}
    > {"anything": "else"}
    < {"anything":"else"}

Every client is anonymous: the default ``authenticate`` gives it a random user id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .handler import Handler

if TYPE_CHECKING:
    from .server._connection import Connection

__all__ = ["DemoHandler"]


class DemoHandler(Handler):
    """A chat room and an echo in one handler, speaking JSON.

    - ``{"type": "join", "channel": C}`` joins channel C and replies
      ``{"type": "joined", "channel": C}``;
    - ``{"type": "leave", "channel": C}`` leaves it and replies ``{"type": "left", ...}``;
    - ``{"type": "say", "channel": C, "text": T}`` sends
      ``{"type": "said", "channel": C, "from": <user id>, "text": T}`` to every member of C
      (the sender too, if it joined);
    - any other message is sent back unchanged.
    """

    async def handle_message(self, msg: Any, conn: Connection) -> None:
        match msg:
            case {"type": "join", "channel": str(channel)} if channel:
                conn.join_channel(channel)
                conn.send({"type": "joined", "channel": channel})
            case {"type": "leave", "channel": str(channel)} if channel:
                conn.leave_channel(channel)
                conn.send({"type": "left", "channel": channel})
            case {"type": "say", "channel": str(channel), "text": str(text)} if channel:
                said = {"type": "said", "channel": channel, "from": conn.user_id, "text": text}
                conn.deliver_channel(channel, said)
            case _:
                conn.send(msg)
