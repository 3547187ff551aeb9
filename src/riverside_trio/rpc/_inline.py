"""Which request and signal handlers run inline, in the connection's reader: those that
cannot suspend. An ``async def`` whose body has no ``await``, ``async for`` or
``async with`` runs to its end the first time its coroutine is sent None, so the router
runs it right there instead of waking the connection's request task (see ``_router``)."""

from __future__ import annotations

import dis
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["DEFAULT", "Inline", "inline_table", "never_awaits"]

# The opcodes of a coroutine that may suspend it (await, async for, async with).
_SUSPENDING = frozenset(
    {"GET_AWAITABLE", "SEND", "YIELD_VALUE", "BEFORE_ASYNC_WITH", "GET_AITER", "GET_ANEXT"}
)
DEFAULT: Any = object()  # a name with no handler of its own: the handle_* fallback
Inline = Callable[..., Coroutine[Any, Any, Any]]


def never_awaits(fn: Any) -> Inline | None:
    """``fn`` if it is a bound ``async def`` method that cannot suspend (its body has no
    await, async for or async with): sending None into its coroutine runs it to the end."""
    code = getattr(getattr(fn, "__func__", None), "__code__", None)
    if code is None or not code.co_flags & inspect.CO_COROUTINE:
        return None
    if any(ins.opname in _SUSPENDING for ins in dis.get_instructions(code)):
        return None
    return fn  # type: ignore[no-any-return]


def inline_table(handler: object, names: dict[str, str]) -> dict[str, Inline | None]:
    """Each name's handler (a method of ``handler``) if it never awaits, else None."""
    return {name: never_awaits(getattr(handler, attr)) for name, attr in names.items()}
