"""TLS: the server's context, built from the settings with errors that name the setting,
and the transport that speaks it on a plain socket's fast path."""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
from collections.abc import Callable

import structlog
import trio
from trio.lowlevel import wait_readable, wait_writable

from ..config import Config
from ..errors import ConfigError
from ..wire.frames import Budget

__all__ = ["TLSTransport", "make_ssl_context"]

log = structlog.get_logger("riverside_trio.tls")

_RECV_SIZE = 65536
# How long a closing connection may take to send what is pending (its close_notify).
_CLOSE_TIMEOUT = 1.0


def _read(setting: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(setting, f"cannot read {path!r}: {exc.strerror or exc}") from None


def make_ssl_context(config: Config) -> ssl.SSLContext:
    """The server's TLS context from ``tls_certfile``, ``tls_keyfile`` and ``tls_ca_file``.

    TLS 1.2 or newer, ALPN ``http/1.1``. With ``tls_ca_file`` clients must present a
    certificate signed by one of its CAs.

    Raises:
        ConfigError: ``tls_certfile`` is not set, or a file cannot be read or does not hold
            what it should (a certificate, a key that matches it, CA certificates); the
            message names the setting.
    """
    certfile = config.tls_certfile
    if certfile is None:
        raise ConfigError("tls_certfile", "is not set: name the server's certificate (PEM)")
    keyfile = config.tls_keyfile
    cert_pem = _read("tls_certfile", certfile)
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise ConfigError("tls_certfile", f"{certfile!r} holds no PEM certificate")
    key_setting, key_path = ("tls_keyfile", keyfile) if keyfile else ("tls_certfile", certfile)
    key_pem = _read(key_setting, key_path) if keyfile else cert_pem
    if b"PRIVATE KEY-----" not in key_pem:
        hint = "" if keyfile else " (set tls_keyfile if the key is in a file of its own)"
        raise ConfigError(key_setting, f"{key_path!r} holds no PEM private key{hint}")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            problem = f"the key in {key_path!r} does not match the certificate in {certfile!r}"
        else:
            problem = (
                f"cannot load the certificate and key ({exc.reason or exc}): "
                "a corrupt PEM block, or an encrypted key"
            )
        raise ConfigError(key_setting, problem) from None
    except OSError as exc:
        raise ConfigError(key_setting, f"cannot load the certificate and key: {exc}") from None
    if config.tls_ca_file is not None:
        ca_pem = _read("tls_ca_file", config.tls_ca_file)
        if b"-----BEGIN CERTIFICATE-----" not in ca_pem:
            raise ConfigError("tls_ca_file", f"{config.tls_ca_file!r} holds no PEM certificate")
        try:
            ctx.load_verify_locations(cafile=config.tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("tls_ca_file", f"cannot load the CA certificates: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class TLSTransport:
    """TLS on a non-blocking socket, with :class:`ssl.SSLObject` and two memory BIOs (the
    fast path of ``wss://``).

    Reads: a non-blocking ``recv`` into the incoming BIO, then ``read`` from the TLS
    object until it wants more; :meth:`recv_now` never waits. Writes: plaintext in with
    :meth:`send_plain` (the connection's outbox calls it directly, as it would ``send`` on
    a plain socket), encrypted into the outgoing BIO and sent with one non-blocking
    ``send``; what the kernel does not take stays in :attr:`pending` (ciphertext, in order)
    for the writer task, and further plaintext is refused (0) until it has gone, so the
    outbox's limits hold. Every byte of ciphertext leaves through that one buffer, whoever
    made it (handshake, data, close_notify), so records never interleave.
    """

    __slots__ = (
        "_budget",
        "_early",
        "_eof",
        "_in",
        "_obj",
        "_out",
        "_wake",
        "drained",
        "pending",
        "secure_channel_up",
        "sock",
    )

    stream: None = None

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self.pending = b""  # ciphertext the kernel has not taken yet
        self.drained = False  # the last recv emptied the socket and nothing is buffered
        self._eof = False
        self.secure_channel_up = False
        """False until the TLS handshake is done: nothing can be written to the client."""
        self._early: bytes | None = None  # read while watching for a hang-up
        self._wake: Callable[[], None] | None = None
        self._budget: Budget | None = None

    def attach(self, wake: Callable[[], None], budget: Budget) -> None:
        """Join a connection's writer: ``wake()`` is called when ciphertext is left over
        for the writer task, and the ciphertext pending from now on is charged to
        ``budget`` (the node's memory budget) until it is sent or dropped."""
        self._wake = wake
        self._budget = budget
        if self.pending:
            budget.charge(len(self.pending))

    # ------------------------------------------------------------------ the handshake

    async def handshake(self) -> bool:
        """The TLS handshake; False if it failed or the client went away. A checkpoint
        when it waits; the caller bounds it in time (the front door's deadline)."""
        if self.secure_channel_up:
            return True
        obj = self._obj
        while True:
            try:
                obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except (ssl.SSLError, ValueError) as exc:
                self._move_out()
                with contextlib.suppress(OSError):  # the alert, if the kernel takes it now
                    self.send_pending()
                log.debug("tls_handshake_failed", error=str(exc)[:200])
                return False
            self._move_out()
            if not await self._send_all_pending():
                return False
            if done:
                self.secure_channel_up = True
                return True
            data = await self._recv_raw()
            if not data:
                return False
            self._in.write(data)

    async def _recv_raw(self) -> bytes:
        sock = self.sock
        while True:
            try:
                return sock.recv(_RECV_SIZE)
            except BlockingIOError:
                await wait_readable(sock)
            except OSError:
                return b""

    # ------------------------------------------------------------------ reading

    def recv_now(self) -> bytes | None:
        """Plaintext the connection has now, without waiting: None if nothing; b"" at EOF
        (close_notify, a TCP FIN or reset) or when TLS failed."""
        early = self._early
        if early is not None:
            self._early = None
            return early
        if self._eof:
            return b""
        if not self.secure_channel_up:
            return None  # the front door does the handshake first
        obj = self._obj
        incoming = self._in
        chunks: list[bytes] = []
        size = 0
        while True:
            # Decrypt only when there is something to decrypt: an SSLWantReadError costs
            # more than the check.
            if incoming.pending or obj.pending():
                try:
                    chunk = obj.read(_RECV_SIZE)
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLError, ValueError):  # close_notify, or broken
                    self._eof = True
                    break
                else:
                    if chunk:
                        chunks.append(chunk)
                        size += len(chunk)
                        if size >= _RECV_SIZE:
                            self.drained = False
                            break
                        continue
                    self._eof = True
                    break
            if chunks:
                break
            try:
                data = self.sock.recv(_RECV_SIZE)
            except BlockingIOError:
                self.drained = True
                return None
            except OSError:
                data = b""
            if not data:
                self._eof = True
                break
            self.drained = len(data) < _RECV_SIZE
            incoming.write(data)
        if self._out.pending:  # TLS answered something (a key update): send it in order
            self._flush_nowait()
        if chunks:  # at EOF: these first, b"" on the next call
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return b""

    async def receive(self) -> bytes:
        """Some plaintext; b"" at EOF or when TLS failed. A checkpoint only when it waits."""
        while (data := self.recv_now()) is None:
            await wait_readable(self.sock)
        return data

    async def wait_hangup(self) -> None:
        """Return when the client closes; plaintext read meanwhile is kept for later reads."""
        while True:
            await wait_readable(self.sock)
            data = self.recv_now()
            if data is None:
                continue
            if not data:
                return
            self._early = data
            await trio.sleep_forever()

    # ------------------------------------------------------------------ writing

    def _move_out(self) -> None:
        """Ciphertext from the outgoing BIO to the pending buffer, in order."""
        out = self._out
        if out.pending:
            data = out.read()
            self.pending = self.pending + data if self.pending else data
            if self._budget is not None:
                self._budget.charge(len(data))

    def drop_pending(self) -> None:
        """The connection failed: let the pending ciphertext go (and its charge)."""
        if self.pending:
            if self._budget is not None:
                self._budget.credit(len(self.pending))
            self.pending = b""

    def send_pending(self) -> None:
        """One non-blocking send of the pending ciphertext.

        Raises:
            OSError: the connection failed.
        """
        pending = self.pending
        try:
            n = self.sock.send(pending)
        except BlockingIOError:
            return
        self.pending = pending[n:] if n < len(pending) else b""
        if self._budget is not None and n:
            self._budget.credit(n)

    def _flush_nowait(self) -> int:
        """Move and send what TLS produced; 0, or a negative errno when the send failed.
        Leftovers wake the writer task."""
        self._move_out()
        if not self.pending:
            return 0
        try:
            self.send_pending()
        except OSError as exc:
            self.drop_pending()
            return -(exc.errno or errno.EPIPE)
        if self.pending and self._wake is not None:
            self._wake()
        return 0

    def send_plain(self, data: bytes) -> int:
        """Encrypt and send ``data`` without blocking: ``len(data)`` once it is encrypted
        (the kernel may not have taken all of it: see :attr:`pending`), 0 while earlier
        ciphertext is still pending (queue it), or a negative errno when the connection
        failed. The outbox's ``sender``."""
        if self.pending:
            return 0
        try:
            self._obj.write(data)
        except (ssl.SSLError, ValueError):
            return -errno.EPIPE
        error = self._flush_nowait()
        return error if error < 0 else len(data)

    def encrypt(self, data: bytes) -> None:
        """Encrypt ``data`` behind whatever is pending (the writer task's path)."""
        try:
            self._obj.write(data)
        except (ssl.SSLError, ValueError):
            raise OSError(errno.EPIPE, "TLS failed") from None
        self._move_out()

    async def _send_all_pending(self) -> bool:
        """Send every pending byte of ciphertext; False if the peer is gone."""
        while self.pending:
            try:
                self.send_pending()
            except OSError:
                self.drop_pending()
                return False
            if self.pending:
                await wait_writable(self.sock)
        return True

    async def send_all(self, data: bytes) -> bool:
        """Encrypt and send all of ``data``; False if the peer is gone. A checkpoint only
        when it has to wait."""
        try:
            self.encrypt(data)
        except OSError:
            return False
        return await self._send_all_pending()

    # ------------------------------------------------------------------ closing

    def send_eof(self) -> None:
        """Our close_notify, then a half-close of TCP once every byte has left."""
        try:
            self._obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # it waits for the client's close_notify: we do not
        except (ssl.SSLError, ValueError):
            return
        with contextlib.suppress(OSError):
            self._move_out()
            self.send_pending()
            if not self.pending:
                self.sock.shutdown(socket.SHUT_WR)

    async def aclose(self, graceful: bool = True) -> None:
        """Close: if ``graceful``, first send what is pending (close_notify included),
        waiting a moment at most. A checkpoint only when graceful."""
        if graceful and self.pending and self.sock.fileno() != -1:
            with trio.move_on_after(_CLOSE_TIMEOUT):
                await self._send_all_pending()
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)
        self.close_now()

    def close_now(self) -> None:
        """Close the socket at once (idempotent)."""
        self.drop_pending()
        sock = self.sock
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
            sock.close()
