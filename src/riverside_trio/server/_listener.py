"""Listening sockets and the accept loop: the first limits a client meets.

The accept loop takes up to ``ACCEPTS_PER_WAKEUP`` sockets per wake-up, backs off when the
process is out of descriptors, asks the admission (``_admission.py``) for a pending slot for
each socket, closes at once (nothing written, no task started) one that gets none, and
starts one task per admitted socket in the server's nursery.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio
from trio.lowlevel import wait_readable

from ..config import Config
from ._admission import Admission, Slot

__all__ = ["ACCEPTS_PER_WAKEUP", "accept_loop", "open_listeners"]

log = structlog.get_logger("riverside_trio.server")

ACCEPTS_PER_WAKEUP = 64
_FD_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


async def accept_loop(
    lsock: socket.socket,
    nursery: trio.Nursery,
    handle: Callable[[socket.socket, tuple[str, int], Slot], Awaitable[None]],
    admission: Admission,
) -> None:
    """Accept clients on ``lsock`` until it is closed; ``handle`` each admitted one (with
    its pending slot) in ``nursery``; close the others at once."""
    backoff = 0.0
    while True:
        try:
            await wait_readable(lsock)
        except (trio.ClosedResourceError, OSError):
            return
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, addr = lsock.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _FD_EXHAUSTED:
                    # Out of file descriptors: back off instead of spinning; the
                    # pending clients wait in the backlog.
                    backoff = min(max(backoff * 2, 0.01), 1.0)
                    log.error("accept_failed", error=str(exc), retry_in=backoff)
                    await trio.sleep(backoff)
                elif lsock.fileno() == -1:
                    return
                break
            backoff = 0.0
            slot = admission.admit(addr[0])
            if slot is None:
                sock.close()  # over a cap of pending sockets: counted, nothing written
                continue
            try:
                sock.setblocking(False)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # reset before we got to it
                slot.release()
                sock.close()
                continue
            nursery.start_soon(handle, sock, addr[:2], slot)


def open_listeners(config: Config) -> list[socket.socket]:
    """Bind every address ``host`` resolves to (all on the same port)."""
    infos = socket.getaddrinfo(
        config.host or None,
        config.port,
        type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE,
    )
    seen: set[Any] = set()
    listeners: list[socket.socket] = []
    port = config.port
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, type_, proto)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if config.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((addr[0], port, *addr[2:]))
            port = sock.getsockname()[1]
            sock.listen(config.backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners
