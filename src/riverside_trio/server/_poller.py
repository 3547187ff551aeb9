"""Edge-triggered readiness for the plain-TCP connections of one server (Linux).

Trio's ``wait_readable`` registers a descriptor one-shot and re-arms it on every wait: one
``epoll_ctl`` per message, and a park and wake that cost more user time than the rest of an
echo. The fast path uses its own readiness instead:

- a :class:`Poller` per server (never process-wide) owns one epoll; each connection's
  socket is registered in it once, edge-triggered (``EPOLLIN | EPOLLRDHUP | EPOLLET``), when
  its reader starts, and unregistered before the socket is closed, however the connection
  ends (close, abort, cancellation, a crash);
- a reader that finds its socket drained parks on its :class:`Watch`
  (``trio.lowlevel.wait_task_rescheduled``; cancellable: the abort unparks it cleanly);
- one poller task per server waits for the epoll itself through Trio
  (``trio.lowlevel.wait_readable`` on its descriptor, so it is an ordinary Trio task:
  ``MockClock``, cancellation and other libraries' use of epoll are unaffected) and wakes
  the readers whose sockets became ready, at most ``BATCH`` per wake-up before it lets the
  woken ones run.

A ready flag per watch makes the edge-triggered events safe to miss nothing: the poller sets
it when an event comes for a reader that is not parked, and the reader reads again instead
of parking. Elsewhere than Linux (no ``select.epoll``), or with ``poller = "trio"``, readers
wait with ``wait_readable`` as before.
"""

from __future__ import annotations

import contextlib
import select
import socket

import outcome
import trio
from trio.lowlevel import (
    Abort,
    RaiseCancelT,
    Task,
    checkpoint,
    notify_closing,
    reschedule,
    wait_readable,
)

__all__ = ["AVAILABLE", "BATCH", "Poller", "Watch"]

AVAILABLE = hasattr(select, "epoll")
"""Whether this platform has epoll (Linux); the tests turn it off to test the fallback."""

BATCH = 256
"""Readiness events the poller handles per wake-up before it lets the woken readers run."""

_EVENTS = (
    (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)  # type: ignore[attr-defined,unused-ignore]
    if AVAILABLE
    else 0
)


class Watch:
    """One socket registered with a :class:`Poller`: its ready flag and its parked reader.

    Also the abort callback of the reader's park (``wait_task_rescheduled(watch)``), so a
    park allocates nothing.
    """

    __slots__ = ("fd", "poller", "ready", "task")

    def __init__(self, poller: Poller, fd: int) -> None:
        self.poller: Poller | None = poller
        self.fd = fd
        self.ready = True  # data may have come before the registration: read first
        self.task: Task | None = None  # the reader, while it is parked

    def __call__(self, raise_cancel: RaiseCancelT) -> Abort:
        """The park was cancelled: forget the reader (it unparks with Cancelled)."""
        self.task = None
        return Abort.SUCCEEDED

    def unregister(self) -> None:
        """Stop watching (idempotent); a reader still parked is woken with
        :class:`trio.ClosedResourceError`."""
        poller = self.poller
        if poller is None:
            return
        self.poller = None
        poller._forget(self)
        task = self.task
        if task is not None:
            self.task = None
            reschedule(task, outcome.Error(trio.ClosedResourceError("the socket was closed")))


class Poller:
    """The edge-triggered epoll of one server and the task that waits on it."""

    __slots__ = ("_epoll", "_watches")

    def __init__(self) -> None:
        self._epoll = select.epoll()  # type: ignore[attr-defined,unused-ignore]
        self._watches: dict[int, Watch] = {}

    @property
    def watched(self) -> int:
        """Sockets registered now."""
        return len(self._watches)

    @property
    def closed(self) -> bool:
        """The epoll was closed (the server stopped)."""
        return bool(self._epoll.closed)

    def register(self, sock: socket.socket) -> Watch | None:
        """Watch ``sock`` (once, edge-triggered); None when the kernel refuses (the
        reader then waits with ``wait_readable``)."""
        if self._epoll.closed:
            return None
        fd = sock.fileno()
        try:
            self._epoll.register(fd, _EVENTS)
        except OSError:  # e.g. ENOSPC: over fs.epoll.max_user_watches
            return None
        watch = self._watches[fd] = Watch(self, fd)
        return watch

    def _forget(self, watch: Watch) -> None:
        if self._watches.get(watch.fd) is watch:
            del self._watches[watch.fd]
            if not self._epoll.closed:
                # OSError: closed already (a bug of the caller), nothing to remove
                with contextlib.suppress(OSError):
                    self._epoll.unregister(watch.fd)

    async def run(self) -> None:
        """Wake the readers whose sockets are ready, forever (until cancelled)."""
        epoll = self._epoll
        watches = self._watches
        fd = epoll.fileno()
        while True:
            await wait_readable(fd)
            while True:
                events = epoll.poll(0, BATCH)
                for wfd, _ in events:
                    watch = watches.get(wfd)
                    if watch is None:
                        continue
                    task = watch.task
                    if task is None:
                        watch.ready = True
                    else:
                        watch.task = None
                        reschedule(task)
                if len(events) < BATCH:
                    break
                await checkpoint()  # a full batch: let the woken readers run first

    def close(self) -> None:
        """Close the epoll (idempotent); every watch is forgotten first."""
        if self._epoll.closed:
            return
        for watch in list(self._watches.values()):
            watch.unregister()
        notify_closing(self._epoll.fileno())
        self._epoll.close()
