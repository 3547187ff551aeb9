"""The flusher: one task per server that sends what the cork held back for other tasks.

A frame pushed into an idle outbox of the fast path waits on the server's
:class:`~riverside_trio.wire.frames.Cork`, so that everything one burst sends to a client
leaves in one ``send``. Two things flush the cork, neither of them a Trio instrument (the
server adds nothing to its caller's Trio run):

- a connection's reader, before it parks (what its own step queued, and whatever else is
  waiting by then);
- this flusher, woken by the cork when the first outbox is noted since the last flush, for
  frames pushed by any other task (a ``handle_info`` runner, a child task, a task of the
  program calling ``server.deliver_channel``, a handler that awaits in the middle). It runs
  after the tasks already scheduled, so a burst of one scheduling round still leaves in one
  ``send`` per client.
"""

from __future__ import annotations

import structlog
from trio.lowlevel import (
    Abort,
    RaiseCancelT,
    Task,
    checkpoint,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

from ..wire.frames import Cork

__all__ = ["Flusher"]

log = structlog.get_logger("riverside_trio.server")


class Flusher:
    """Flushes a cork whenever it has something noted; parked otherwise."""

    __slots__ = ("_cork", "_task")

    def __init__(self, cork: Cork) -> None:
        self._cork = cork
        self._task: Task | None = None  # the flusher task, while it is parked
        cork.wake = self.wake

    def wake(self) -> None:
        """The cork noted its first outbox since the last flush: unpark the flusher."""
        task = self._task
        if task is not None:
            self._task = None
            reschedule(task)

    def _abort(self, raise_cancel: RaiseCancelT) -> Abort:
        self._task = None
        return Abort.SUCCEEDED

    async def run(self) -> None:
        """Flush whenever woken, forever (until cancelled with the server's nursery)."""
        cork = self._cork
        while True:
            if cork.pending:
                await checkpoint()  # noted again during the last flush: let others run first
            else:
                self._task = current_task()
                await wait_task_rescheduled(self._abort)
            try:
                cork.flush()
            except Exception:  # a bug of ours (a wake callback failed): log, carry on
                log.exception("cork_flush_failed")
