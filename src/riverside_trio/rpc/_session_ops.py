"""The session side of an RPCHandler's router: create, restore and close sessions over its
store, keep which connections of this server hold which session, and answer each refusal
with its own error reply (the rules are in ``_sessions``).

The store is the handler's ``session_store`` if it has one, else the server's (the Redis
store with ``broker_url``, see ``session_store``), else a :class:`MemoryStore` of the
handler's own.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import structlog

from ..errors import ConnectionClosed, SessionError, SessionStoreError
from ._envelope import (
    CloseSession,
    ErrorCode,
    ErrorReply,
    RestoreSession,
    SessionClosed,
    SessionCreated,
    SessionData,
)
from ._sessions import MemoryStore, Sessions, SessionStore, new_session_key

if TYPE_CHECKING:
    from ..server._connection import Connection
    from ._calls import ConnRPC
    from ._format import Format

__all__ = ["SessionOps"]

log = structlog.get_logger("riverside_trio.rpc")

_KEY = re.compile(r"[A-Za-z0-9_-]{64}")


def unavailable() -> SessionError:
    """The refusal when the store cannot be reached (the store logs and counts it)."""
    return SessionError(
        ErrorCode.SESSION_STORE_UNAVAILABLE, "the session store is unreachable; try again later"
    )


class SessionOps:
    """Sessions for the Router (a mixin: the Router gives ``handler``, ``fmt``, ``state``,
    ``_send`` and ``_reply``)."""

    handler: Any
    fmt: Format
    sessions: Sessions
    _store: SessionStore | None

    def state(self, conn: Connection) -> ConnRPC:
        raise NotImplementedError

    def _send(self, conn: Connection, env: Any) -> None:
        raise NotImplementedError

    def _reply(self, conn: Connection, rid: Any, value: Any) -> None:
        raise NotImplementedError

    def store_of(self, conn: Connection) -> SessionStore:
        """The handler's store (chosen on first use; see the module's docstring)."""
        store = self._store
        if store is None:
            store = self.handler.session_store
            if store is None:
                store = getattr(conn._core, "session_store", None)
            if store is None:
                store = MemoryStore()
            store.watch(self.closed_elsewhere)
            self._store = store
        return store

    def unbind_session(self, key: str, conn: Connection) -> None:
        """``conn`` no longer holds ``key``: here, and in the store's count."""
        if self.sessions.holds(key, conn):
            self.sessions.unbind(key, conn)
            if self._store is not None:
                self._store.release(key)

    def closed_elsewhere(self, key: str) -> None:
        """The store lost ``key`` (closed on another node): tell its connections here."""
        for conn in self.sessions.connections(key):
            conn._rpc.session = None
            self.unbind_session(key, conn)
            self._send(conn, SessionClosed())

    async def create_session(self, conn: Connection, info: Any) -> SessionData:
        cfg = conn._core.config
        if not cfg.sessions:
            raise SessionError(ErrorCode.SESSIONS_DISABLED, "sessions are turned off")
        st = self.state(conn)
        if st.session is not None:
            raise SessionError(ErrorCode.SESSION_EXISTS, "this connection has a session")
        if conn.closed or st.closed:
            raise ConnectionClosed(*conn._closed_args())
        store = self.store_of(conn)
        now = time.time()
        session = SessionData(new_session_key(), now, now, info)
        st.session = session  # taken: a second create meanwhile is refused
        self.sessions.bind(session.key, conn)
        try:
            await store.create(session, cfg.session_expiry)
        except BaseException as exc:
            if st.session is session:
                st.session = None
            self.sessions.unbind(session.key, conn)  # (the store counted nothing)
            if isinstance(exc, SessionStoreError):
                raise unavailable() from None
            raise
        if st.closed:  # the connection ended meanwhile (and released the session)
            raise ConnectionClosed(*conn._closed_args())
        conn.send(self.fmt.out(SessionCreated(session)))  # before the request's reply
        return session

    async def close_session_of(self, conn: Connection) -> bool:
        st = self.state(conn)
        session = st.session
        if session is None:
            return False
        st.session = None
        self.unbind_session(session.key, conn)
        self._send(conn, SessionClosed())
        await self._forget(conn, session.key, unless_held=True)
        return True

    async def close_key(self, key: str) -> int:
        conns = self.sessions.connections(key)
        for conn in conns:
            conn._rpc.session = None
            self.unbind_session(key, conn)
            self._send(conn, SessionClosed())
        store = self._store
        if store is not None:
            await self._forget(None, key, unless_held=False)
        return len(conns)

    async def _forget(self, conn: Connection | None, key: str, *, unless_held: bool) -> None:
        store = self._store
        assert store is not None  # a session was made or restored through it
        try:
            await store.delete(key, unless_held=unless_held)
        except SessionStoreError:
            raise unavailable() from None
        except Exception:
            user_id = conn.user_id if conn is not None else None
            log.exception("session_store_failed", op="delete", user_id=user_id)

    async def _restore(self, req: RestoreSession, conn: Connection) -> None:
        cfg = conn._core.config
        st = self.state(conn)
        limit = cfg.max_session_connections
        if not cfg.sessions:
            error = (ErrorCode.SESSIONS_DISABLED, "sessions are turned off")
        elif st.session is not None:
            error = (ErrorCode.SESSION_EXISTS, "this connection has a session already")
        elif limit and self.sessions.count(req.key) >= limit:
            error = (ErrorCode.MAX_SESSION_CONNECTIONS, "the session has its most connections")
        elif not _KEY.fullmatch(req.key):
            error = (ErrorCode.SESSION_NOT_FOUND, "no session has that key")
        else:
            store = self.store_of(conn)
            try:
                session = await store.restore(req.key, cfg.session_expiry, limit)
            except SessionError as exc:
                error = (exc.code, exc.message)
            except SessionStoreError:
                error = (unavailable().code, unavailable().message)
            except Exception:
                log.exception("session_store_failed", op="restore", user_id=conn.user_id)
                error = (ErrorCode.INTERNAL, "internal error")
            else:
                if session is None:
                    error = (ErrorCode.SESSION_NOT_FOUND, "no session has that key")
                elif st.closed:  # the connection ended meanwhile
                    store.release(session.key)
                    return
                elif st.session is not None:  # created meanwhile by a handler
                    store.release(session.key)
                    error = (ErrorCode.SESSION_EXISTS, "this connection has a session already")
                else:
                    st.session = session
                    self.sessions.bind(session.key, conn)
                    self._reply(conn, req.id, self.fmt.session_payload(session))
                    return
        self._send(conn, ErrorReply(req.id, *error))

    async def _close_by_client(self, req: CloseSession, conn: Connection) -> None:
        if not conn._core.config.sessions:
            self._send(conn, ErrorReply(req.id, ErrorCode.SESSIONS_DISABLED, "sessions are off"))
            return
        st = self.state(conn)
        session = st.session
        if session is not None:
            st.session = None
            self.unbind_session(session.key, conn)
            try:
                await self._forget(conn, session.key, unless_held=True)
            except SessionError as exc:  # closed here; the store could not be told
                self._send(conn, ErrorReply(req.id, exc.code, exc.message))
                return
        self._reply(conn, req.id, None)
