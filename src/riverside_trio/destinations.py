"""Destinations: who a delivery or an info goes to.

Every delivery names one (``server.send_info(User("42"), info)``); the
:class:`~riverside_trio.delivery.hub.Hub` turns it into the local members and, with a
broker, the nodes that hold the others. They are frozen, hashable values, so they also key
the registry's membership and the broker's subscriptions.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Channel", "Destination", "Group", "Name", "Session", "User"]


@dataclass(frozen=True, slots=True)
class User:
    """Every connection of a user."""

    user_id: str


@dataclass(frozen=True, slots=True)
class Session:
    """The connections of one session of a user."""

    user_id: str
    session_id: str


@dataclass(frozen=True, slots=True)
class Channel:
    """Every member of a channel."""

    name: str


@dataclass(frozen=True, slots=True)
class Name:
    """The connection registered under a unique name (:meth:`Connection.register_name`)."""

    name: str


@dataclass(frozen=True, slots=True)
class Group:
    """Every member of a group (:meth:`Connection.join_group`)."""

    name: str


Destination = User | Session | Channel | Name | Group | str
"""Where an info goes; a plain ``str`` is a registered :class:`Name`."""
