"""The CopyBoth stream of a started replication connection, read and answered through libpq itself.

Why not psycopg2's ``ReplicationCursor.read_message()`` / ``send_feedback()``: psycopg2 (checked in
2.9's ``pq_read_replication_message``) keeps its own flush position and, on every primary
keep-alive, moves it to the keep-alive's ``wal_end`` when the flush LSN last passed to
``send_feedback`` is at or beyond the ``dataStart`` of the last XLogData message. That is meant
for clients that confirm each message as they go. ``streamer replicate`` confirms a batch only
after the target committed it, and with protocol 2 the server streams chunks of in-progress
transactions whose changes lie *before* the last confirmed LSN (Relation messages even carry a
``dataStart`` of 0). So while a committed transaction waited in the open batch, psycopg2 reported
a flush position past it; the server took it (``confirmed_flush_lsn`` only moves forward), and
after a crash the transaction was never sent again. The position psycopg2 keeps cannot be lowered
and its keep-alive rule cannot be turned off, so :class:`WalStream` bypasses both: it reads the
messages with libpq's ``PQgetCopyData`` on psycopg2's own connection (``connection.pgconn_ptr``,
the libpq psycopg2 is linked with) and writes the standby status updates itself. The flush,
write and apply positions it sends are only ever the ones its owner passes to :meth:`feedback`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import struct
import time
from typing import Any

import psycopg2

__all__ = ["WalMessage", "WalStream", "WalStreamEnded", "WalStreamLost"]

_PG_EPOCH = 946_684_800  # 2000-01-01 in Unix seconds: the protocol's timestamps count from there
_PGRES_FATAL_ERROR = 7
_PG_DIAG_SQLSTATE = ord("C")
_XLOG_HEADER = 1 + 8 + 8 + 8  # 'w', dataStart, walEnd, sendTime
_KEEPALIVE_SIZE = 1 + 8 + 8 + 1  # 'k', walEnd, sendTime, reply requested


class WalStreamLost(Exception):
    """The connection broke (network, server restart, walsender terminated): reconnect."""


class WalStreamEnded(Exception):
    """The server ended the stream with an error that a reconnect does not cure (message and SQLSTATE)."""

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclasses.dataclass(frozen=True, slots=True)
class WalMessage:
    """One XLogData message: the pgoutput payload and the LSNs of its header."""

    payload: bytes
    data_start: int
    wal_end: int


_lib: Any = None


def _libpq() -> Any:
    """psycopg2's own libpq (symbols resolved through its extension module), with typed functions."""
    global _lib
    if _lib is None:
        from psycopg2 import _psycopg

        lib = ctypes.CDLL(_psycopg.__file__)
        vp, i = ctypes.c_void_p, ctypes.c_int
        for name, args, res in (
            ("PQgetCopyData", [vp, ctypes.POINTER(ctypes.c_void_p), i], i),
            ("PQputCopyData", [vp, ctypes.c_char_p, i], i),
            ("PQflush", [vp], i),
            ("PQconsumeInput", [vp], i),
            ("PQfreemem", [vp], None),
            ("PQerrorMessage", [vp], ctypes.c_char_p),
            ("PQgetResult", [vp], vp),
            ("PQresultStatus", [vp], i),
            ("PQresultErrorMessage", [vp], ctypes.c_char_p),
            ("PQresultErrorField", [vp, i], ctypes.c_char_p),
            ("PQclear", [vp], None),
        ):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res
        _lib = lib
    return _lib


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", "replace").strip()


class WalStream:
    """Reads XLogData messages and keep-alives of a replication connection after ``START_REPLICATION``.

    Guarantees: the only positions sent to the server are those given to :meth:`feedback` (the
    highest so far, as write, flush and apply LSN); a keep-alive that asks for a reply is answered
    with that position at once, and :meth:`feedback_due` tells when ``status_interval`` has passed
    since the last report. :attr:`server_wal_end` is the ``walEnd`` of the last keep-alive: every
    transaction the server committed before it and that it sends has been sent before that keep-alive.
    """

    def __init__(self, conn: psycopg2.extensions.connection, status_interval: float) -> None:
        self._lib = _libpq()
        self._conn = conn
        self.status_interval = status_interval
        self.confirmed = 0  # the flush LSN last reported
        self.server_wal_end = 0  # walEnd of the last keep-alive
        self.keepalives = 0
        self._last_feedback = time.monotonic()

    def _pg(self) -> int:
        if self._conn.closed:
            raise WalStreamLost("the replication connection is closed")
        return int(self._conn.pgconn_ptr)

    def _error(self) -> str:
        return _text(self._lib.PQerrorMessage(self._pg())) or "connection lost"

    def read(self) -> WalMessage | None:
        """The next XLogData message already received, or None (keep-alives are handled on the way)."""
        lib, pg = self._lib, self._pg()
        consumed = False
        while True:
            buf = ctypes.c_void_p()
            size = lib.PQgetCopyData(pg, ctypes.byref(buf), 1)
            if size == 0:
                if consumed:
                    return None
                if not lib.PQconsumeInput(pg):
                    raise WalStreamLost(self._error())
                consumed = True
                continue
            if size == -1:
                self._ended()
            if size < 0 or not buf.value:
                raise WalStreamLost(self._error())
            try:
                data = ctypes.string_at(buf.value, size)
            finally:
                lib.PQfreemem(buf)
            consumed = True  # return early after a keep-alive; more data wakes the caller's select()
            kind = data[:1]
            if kind == b"w" and size >= _XLOG_HEADER:
                data_start, wal_end = struct.unpack_from("!QQ", data, 1)
                return WalMessage(data[_XLOG_HEADER:], data_start, wal_end)
            if kind == b"k" and size >= _KEEPALIVE_SIZE:
                (self.server_wal_end,) = struct.unpack_from("!Q", data, 1)
                self.keepalives += 1
                if data[17]:
                    self.feedback(self.confirmed)
                continue
            raise WalStreamEnded(f"unexpected replication message {data[:1]!r} of {size} bytes", None)

    def _ended(self) -> None:
        """The server ended COPY: its error, classified (connection and operator errors are losses)."""
        lib, pg = self._lib, self._pg()
        message, sqlstate = "the server ended the replication stream", None
        while True:
            res = lib.PQgetResult(pg)
            if not res:
                break
            if lib.PQresultStatus(res) == _PGRES_FATAL_ERROR:
                message = _text(lib.PQresultErrorMessage(res)) or message
                sqlstate = _text(lib.PQresultErrorField(res, _PG_DIAG_SQLSTATE)) or None
            lib.PQclear(res)
        if sqlstate is None or sqlstate[:2] in ("08", "57", "53"):
            raise WalStreamLost(message)
        raise WalStreamEnded(message, sqlstate)

    def feedback(self, lsn: int, *, reply: bool = False) -> None:
        """Report ``lsn`` (or the higher one reported before) as written, flushed and applied."""
        position = max(self.confirmed, lsn)
        now_us = int((time.time() - _PG_EPOCH) * 1_000_000)
        msg = b"r" + struct.pack("!QQQqB", position, position, position, now_us, int(reply))
        lib, pg = self._lib, self._pg()
        if lib.PQputCopyData(pg, msg, len(msg)) != 1 or lib.PQflush(pg) < 0:
            raise WalStreamLost(self._error())
        self.confirmed = position
        self._last_feedback = time.monotonic()

    def feedback_due(self) -> bool:
        return time.monotonic() - self._last_feedback >= self.status_interval
