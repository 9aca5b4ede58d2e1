"""streamer.sources.pgoutput.walstream: the libpq it drives is psycopg2's own (resolved through psycopg2's extension module)."""

from __future__ import annotations

import pytest

from streamer.sources.pgoutput.walstream import WalStream, WalStreamLost, _libpq


def test_libpq_functions_resolve_in_psycopg2s_libpq() -> None:
    lib = _libpq()
    for name in ("PQgetCopyData", "PQputCopyData", "PQflush", "PQconsumeInput", "PQfreemem", "PQgetResult"):
        assert getattr(lib, name).argtypes, name
    assert _libpq() is lib  # loaded once


def test_a_closed_connection_is_a_lost_stream() -> None:
    class Closed:
        closed = 1
        pgconn_ptr = None

    stream = WalStream(Closed(), 1.0)
    with pytest.raises(WalStreamLost):
        stream.read()
    with pytest.raises(WalStreamLost):
        stream.feedback(5)
