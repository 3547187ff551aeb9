"""What the write cork would cost every Trio task step as an instrument.

The server once installed its cork as a Trio instrument (``after_task_step``); it no longer
does (readers flush before they park, a flusher task does the rest), and this script shows
what that saves every task step of the whole program, the user's tasks included.

Run ``python bench/cork_step_cost.py``: one task steps through ``checkpoint()`` many times,
in a Trio run without the cork and in one with a cork installed as an instrument (with
nothing held back); prints nanoseconds per step for each, best of five runs each.
"""

from __future__ import annotations

import sys
import time

import trio

from riverside_trio.wire.frames import IMPLEMENTATION, Cork

STEPS = 200_000
RUNS = 5


async def _steps(with_cork: bool) -> float:
    if with_cork:
        cork = Cork()
        cork.active = True
        trio.lowlevel.add_instrument(cork)  # type: ignore[arg-type]  # duck-typed
    start = time.perf_counter_ns()
    for _ in range(STEPS):
        await trio.lowlevel.checkpoint()
    return (time.perf_counter_ns() - start) / STEPS


def main() -> None:
    without = min(trio.run(_steps, False) for _ in range(RUNS))
    with_cork = min(trio.run(_steps, True) for _ in range(RUNS))
    sys.stdout.write(
        f"hot path: {IMPLEMENTATION}\n"
        f"task step without the cork: {without:7.0f} ns\n"
        f"task step with the cork:    {with_cork:7.0f} ns  (+{with_cork - without:.0f} ns)\n"
    )


if __name__ == "__main__":
    main()
