"""TableId's cached hash: equal ids hash equal, also after pickling into a process with another seed."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

from streamer.core.events import TableId


def test_equal_ids_are_one_key() -> None:
    a, b = TableId("db", "public", "items"), TableId(database="db", schema="public", table="items")
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert TableId("db", None, "items") != a
    assert "_hash" not in repr(a)


def _python(code: str, seed: str, stdin: bytes = b"") -> bytes:
    """stdout of ``code`` run by a new interpreter with PYTHONHASHSEED ``seed``."""
    return subprocess.run(
        [sys.executable, "-c", "import pickle, sys; from streamer.core.events import TableId; " + code],
        env={**os.environ, "PYTHONHASHSEED": seed},
        input=stdin,
        capture_output=True,
        check=True,
    ).stdout


def test_unpickled_in_another_process_hashes_there() -> None:
    # string hashes depend on PYTHONHASHSEED: a hash carried in the pickle would be wrong there
    dump = _python("sys.stdout.buffer.write(pickle.dumps(TableId('db', 'public', 'items')))", "1")
    found = _python(
        "t = pickle.loads(sys.stdin.buffer.read()); print({TableId('db', 'public', 'items'): 'found'}.get(t))",
        "2",
        dump,
    )
    assert found.decode().strip() == "found"
    assert pickle.loads(dump) == TableId("db", "public", "items")
