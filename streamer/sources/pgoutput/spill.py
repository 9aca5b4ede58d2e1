"""Spill files: the part of an open replication transaction that does not fit its memory bound.

``streamer replicate`` holds a transaction's changes until it commits (a batch holds whole
transactions, and the confirmed LSN only moves past a transaction once all of it is in the
target). A transaction of millions of rows would need all of them in memory; instead, once
an open transaction's buffered changes exceed ``replicate.max_transaction_memory_bytes``
(:class:`~streamer.sources.pgoutput.protocol.TransactionAssembler`), they are appended to a :class:`SpillFile`
under ``<replicate.state_dir>/spill`` and read back in order when the transaction is applied.

Format: a sequence of pickled lists of plain tuples (text values, ``None``, small ints), one
list per spill, written with :mod:`pickle` protocol 5. pickle is the standard library's C
serializer: it needs no new dependency, handles the tuples of ``str``/``None`` that pgoutput
changes are made of natively, and the file is only ever read back by the process that wrote
it (never shared, never kept across runs), so neither a schema nor portability matters.

A file is named ``<prefix>-<xid>-<random>.spill``; it is deleted when its transaction is
applied, skipped or aborted, or when the stream is reset (reconnect). After a crash, files of
the crashed run are left behind: :func:`remove_stale` (called when a replicate process of the
same slot starts) deletes them. Nothing in them is needed, because the server sends every
unconfirmed transaction again whole.
"""

from __future__ import annotations

import os
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["SpillFile", "remove_stale", "spill_directory"]

SUFFIX = ".spill"


def spill_directory(state_dir: Path) -> Path:
    """Where spill files go: ``<state_dir>/spill``."""
    return Path(state_dir) / "spill"


def remove_stale(directory: Path, prefix: str) -> list[Path]:
    """Delete the spill files ``<prefix>-*.spill`` a crashed earlier run left in ``directory``."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for path in directory.glob(f"{prefix}-*{SUFFIX}"):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


class SpillFile:
    """An append-only file of record batches, read back in the order written."""

    def __init__(self, directory: Path, prefix: str, xid: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{prefix}-{xid}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        self._file: IO[bytes] | None = open(self.path, "wb")  # closed by delete()
        self.records = 0
        self.bytes = 0

    def append(self, records: list[tuple[Any, ...]]) -> None:
        """Write one batch of records (after the ones written before)."""
        if self._file is None:
            raise ValueError(f"spill file {self.path} is closed")
        data = pickle.dumps(records, protocol=5)
        self._file.write(data)
        self.records += len(records)
        self.bytes += len(data)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        """The records in the order written (the file stays open for more appends)."""
        if self._file is not None:
            self._file.flush()
        with open(self.path, "rb") as f:
            while True:
                try:
                    batch = pickle.load(f)
                except EOFError:
                    return
                yield from batch

    def delete(self) -> None:
        """Close and remove the file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
