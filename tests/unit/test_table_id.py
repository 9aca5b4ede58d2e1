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


def test_unpickled_in_another_process_hashes_there() -> None:
    # string hashes depend on PYTHONHASHSEED: a hash carried in the pickle would be wrong there
    dump = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pickle, sys; from streamer.core.events import TableId; "
            "sys.stdout.buffer.write(pickle.dumps(TableId('db', 'public', 'items')))",
        ],
        env={**os.environ, "PYTHONHASHSEED": "1"},
        capture_output=True,
        check=True,
    ).stdout
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pickle, sys; from streamer.core.events import TableId; "
            "t = pickle.loads(sys.stdin.buffer.read()); print({TableId('db', 'public', 'items'): 'found'}.get(t))",
        ],
        env={**os.environ, "PYTHONHASHSEED": "2"},
        input=dump,
        capture_output=True,
        check=True,
    )
    assert check.stdout.decode().strip() == "found"
    assert pickle.loads(dump) == TableId("db", "public", "items")
