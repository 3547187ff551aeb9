"""How :class:`~riverside_trio.config.Config` describes, parses and documents its settings.

Pure functions of a setting's name, type hint and :class:`Rule`; ``config`` binds them to
its fields. Kept apart so ``config`` itself stays a list of settings a reader can hold.
"""

from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError

__all__ = [
    "OFF_WORDS",
    "Rule",
    "describe",
    "describe_text",
    "field_docs",
    "in_range",
    "is_path",
    "parse_text",
    "setting",
    "sourced_error",
    "split_optional",
    "suggest",
]

OFF_WORDS = frozenset({"off", "none"})
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Rule:
    """Constraints beyond the annotated type, kept in each field's metadata."""

    min: float | None = None  # inclusive lower bound
    gt: float | None = None  # exclusive lower bound
    max: float | None = None  # inclusive upper bound
    unit: str = ""  # "seconds" or "bytes", for messages
    url_path: bool = False  # a string starting with "/"
    note: str = ""  # appended to the "allowed" description


def setting(default: Any, **rule: Any) -> Any:
    """A dataclass field with ``default`` and the :class:`Rule` made of ``rule``."""
    return field(default=default, metadata={"rule": Rule(**rule)})


def sourced_error(name: str, source: str, message: str) -> ConfigError:
    """A ConfigError for ``name`` whose text reads ``name (from source): message``."""
    exc = ConfigError(name, message)
    exc.args = (f"{name} (from {source}): {message}",)
    return exc


def split_optional(hint: Any) -> tuple[bool, Any]:
    """``X | None`` -> ``(True, X)``; any other type -> ``(False, type)``."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return True, args[0]
    return False, hint


def in_range(value: float, rule: Rule) -> bool:
    """Whether ``value`` meets ``rule``'s bounds."""
    return (
        (rule.min is None or value >= rule.min)
        and (rule.gt is None or value > rule.gt)
        and (rule.max is None or value <= rule.max)
    )


_PATH_RE = re.compile(r"/[^\s?#]*")


def is_path(value: str) -> bool:
    """Whether ``value`` is a URL path: a "/" then no spaces, "?" or "#"."""
    return _PATH_RE.fullmatch(value) is not None


def parse_text(name: str, text: str, source: str, hint: Any, rule: Rule) -> object:
    """Parse ``text`` (from an environment variable or a flag) into a value for ``name``.

    Only the form is checked here; ranges are checked by ``Config``.

    Raises:
        ConfigError: ``text`` does not parse; the message names ``name`` and ``source``.
    """
    optional, base = split_optional(hint)
    word = text.strip().lower()
    if optional and word in OFF_WORDS:
        return None
    try:
        if base is bool:
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
            raise ValueError
        if base is int:
            return int(word)
        if base is float:
            return float(word)
        if typing.get_origin(base) is Literal:
            return word
        if typing.get_origin(base) is tuple:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return text.strip()
    except ValueError:
        expected = describe_text(name, hint, rule)
        raise sourced_error(name, source, f"expected {expected}, got {text!r}") from None


def describe(name: str, hint: Any, rule: Rule) -> str:
    """What ``Config`` accepts for ``name``, for error messages."""
    optional, base = split_optional(hint)
    if base is bool:
        text = "True or False"
    elif base is int or base is float:
        if base is int:
            text = f"an integer number of {rule.unit}" if rule.unit else "an integer"
        else:
            text = f"a number of {rule.unit}" if rule.unit else "a number"
        if rule.min is not None and rule.max is not None:
            text += f" from {rule.min:g} to {rule.max:g}"
        elif rule.min is not None:
            text += f" >= {rule.min:g}"
        elif rule.gt is not None:
            text += f" > {rule.gt:g}"
    elif typing.get_origin(base) is Literal:
        text = "one of " + ", ".join(repr(c) for c in typing.get_args(base))
    elif typing.get_origin(base) is tuple and name == "trusted_proxies":
        return "a list of addresses or networks like '10.0.0.0/8'"
    elif typing.get_origin(base) is tuple and name == "allowed_origins":
        return "a list of origins like 'https://example.com', or None to allow any"
    elif typing.get_origin(base) is tuple:
        text = "a list of non-empty strings"
    elif base is str and rule.url_path:
        text = "a URL path starting with '/' (no spaces, '?' or '#')"
    else:
        text = "a non-empty string"
    if rule.note:
        text += f" {rule.note}"
    if optional:
        text += ", or None to turn it off"
    return text


def describe_text(name: str, hint: Any, rule: Rule) -> str:
    """What :func:`parse_text` accepts for ``name``, for error messages."""
    optional, base = split_optional(hint)
    if base is bool:
        return "one of 1/0, true/false, yes/no, on/off"
    if base is int:
        text = f"an integer number of {rule.unit}" if rule.unit else "an integer"
    elif base is float:
        text = f"a number of {rule.unit}" if rule.unit else "a number"
    else:  # str, Literal and tuple values always parse; Config checks them
        return describe(name, hint, rule)
    return f"{text} or 'off'" if optional else text


def suggest(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the candidate closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def field_docs(doc: str) -> dict[str, str]:
    """The ``Attributes:`` entries of a Google-style docstring ``doc``, by name.

    The CLI uses those of ``Config`` as ``--help`` texts, so each setting is documented in
    one place.
    """
    docs: dict[str, str] = {}
    lines = inspect.cleandoc(doc).splitlines()
    try:
        start = lines.index("Attributes:") + 1
    except ValueError:
        return docs
    current = None
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break  # the next section
        entry = re.fullmatch(r" {4}(\w+): (.*)", line)
        if entry:
            current = entry[1]
            docs[current] = entry[2]
        elif current is not None and line.strip():
            docs[current] += " " + line.strip()
    return docs
