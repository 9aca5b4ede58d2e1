"""More of the matrix on the shared stack: replay after a crash, managed NOT NULL tables, primary-key
updates that leave a TOAST value unchanged, and `streamer replicate` killed -9 in a streamed transaction.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from streamer.db import create_target_engine
from streamer.stack.local import Stack
from tests.conftest import drop_connector
from tests.faults.conftest import Pipeline, drop_target_tables
from tests.faults.harness import (
    TABLES,
    ConsumerProc,
    StreamerProc,
    Workload,
    assert_equal,
    differences,
    drain_and_compare,
    end_all,
    run_streamer,
    say,
    wait_progress,
    wait_until,
)

SMALL_BATCHES = {"STREAMER_CONSUMER__BATCH_MAX_EVENTS": "40"}


def drain(p: Pipeline, url: str, group: str, **settings: str) -> None:
    drain_and_compare(
        p.source_url,
        url,
        p.database,
        p.schema,
        group,
        p.topics,
        p.log(f"{group}-drain"),
        settings={**SMALL_BATCHES, **settings},
    )


def replay(group: str, to: str, topics: str, url: str) -> None:
    """`streamer replay` once the group has no members left (a killed member lingers a session timeout)."""
    out = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = run_streamer("replay", "--group", group, "--to", to, "--topics", topics, url=url, timeout=120)
        if out.returncode == 0:
            say(f"replay --to {to}: {out.stdout.strip()[-500:]}")
            return
        time.sleep(2)
    assert out is not None
    raise AssertionError(f"replay --to {to} failed: {out.stdout[-1500:]} {out.stderr[-1500:]}")


@pytest.mark.parametrize("to", ["earliest", "timestamp"])
def test_replay_after_crash(make_pipeline, target: str, to: str) -> None:
    """Two consumers; one killed -9 mid-batch, the other stopped cleanly (the issue's case: the broker
    may still know the killed member), then the group replayed to earliest (or to a time before the
    crash): the replay converges and the tables end equal."""
    p = make_pipeline()
    group = f"{p.schema}-replay"
    p.workload.start(seconds=25, rate=30)
    c = ConsumerProc(group, p.topics, target, p.log("replay"), settings=SMALL_BATCHES)
    other = ConsumerProc(group, p.topics, target, p.log("replay-other"), settings=SMALL_BATCHES)
    done = wait_progress(target, group)
    time.sleep(3)
    moment = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    wait_progress(target, group, beyond=done)
    time.sleep(2)
    c.kill9()
    assert other.terminate() == 0, other.tail()
    p.workload.join()
    replay(group, "earliest" if to == "earliest" else moment, p.topics, target)
    drain(p, target, group)


def _managed_ddl(url: str, schema: str) -> None:
    """The target tables created by hand (schema_mode=managed never runs DDL), NOT NULL where the source is."""
    engine = create_target_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
                for t in TABLES:
                    conn.execute(
                        sa.text(
                            f'CREATE TABLE "{schema}"."{t}" (id integer PRIMARY KEY, n integer NOT NULL, label text, '
                            "amount numeric(12, 2), at timestamptz, doc jsonb, big text NOT NULL, "
                            "_streamer_version varchar(40))"
                        )
                    )
            else:
                for t in TABLES:
                    conn.execute(
                        sa.text(
                            f"CREATE TABLE `{schema}_{t}` (id integer PRIMARY KEY, n integer NOT NULL, label longtext, "
                            "amount decimal(12, 2), at datetime(6), doc longtext, big longtext NOT NULL, "
                            "_streamer_version varchar(40))"
                        )
                    )
    finally:
        engine.dispose()


def test_managed_tables_with_not_null_columns(make_pipeline, target: str) -> None:
    """schema_mode=managed into hand-made tables with NOT NULL columns (the TOAST column among them), a
    consumer killed -9 on the way: updates that leave the TOAST value unchanged must not trip NOT NULL."""
    p = make_pipeline(big_not_null=True)
    _managed_ddl(target, p.schema)
    group = f"{p.schema}-managed"
    managed = {**SMALL_BATCHES, "STREAMER_CONSUMER__SCHEMA_MODE": "managed"}
    p.workload.start(transactions=300, rate=30)
    c = ConsumerProc(group, p.topics, target, p.log("managed"), settings=managed)
    wait_progress(target, group)
    c.kill9()
    p.workload.join()
    drain(p, target, group, STREAMER_CONSUMER__SCHEMA_MODE="managed")


# the new key's event carries the unavailable placeholder for a value the target has only under the
# old key: the sink reads it from the source by key (streamer.apply.fetch, issue 13 item 6)
def test_key_updates_leaving_toast_unchanged(make_pipeline, target: str) -> None:
    """`UPDATE ... SET id = new` that leaves the out-of-line TOAST column alone: the new key's event
    carries the unavailable placeholder for a value the target only has under the old key."""
    p = make_pipeline(key_updates_keep_toast=True)
    group = f"{p.schema}-keytoast"
    p.workload.start(transactions=200, rate=30)
    c = ConsumerProc(group, p.topics, target, p.log("keytoast"), "--until-idle", "15", settings=SMALL_BATCHES)
    p.workload.join()
    assert c.wait(300) == 0, c.tail()
    drain(p, target, group)


# ---------------------------------------------------------------- replicate (pgoutput, no Kafka)
@pytest.fixture
def replicated(stack: Stack, unique: str) -> Iterator[Workload]:
    wl = Workload(stack.settings.source_url, unique)
    wl.create(0)
    yield wl
    end_all()
    wl.stop()
    drop_connector(stack, f"{unique}-none", unique)  # no connector: drops the slot and the publication
    wl.drop()
    drop_target_tables(stack.settings.target_url, unique)


def _replicate(wl: Workload, url: str, log: Path, *extra: str) -> StreamerProc:
    """A `streamer replicate` of the workload's slot; large transactions stream (64 kB decoding memory)."""
    source = wl.dsn + "?options=-c%20logical_decoding_work_mem%3D64kB"  # replicate sets its own options
    args = [
        "replicate",
        "--slot",
        f"{wl.schema}_slot",
        "--publication",
        f"{wl.schema}_pub",
        "--source",
        source,
    ]
    return StreamerProc([*args, *extra], url, log, {"STREAMER_CONSUMER__BATCH_MAX_EVENTS": "200"})


def test_replicate_killed_during_streamed_transaction(
    stack: Stack, replicated: Workload, tmp_path: Path
) -> None:
    """`streamer replicate` (pgoutput with streaming of large transactions, logical_decoding_work_mem 64kB)
    killed -9 while a large transaction is streaming and again right after it commits; restarted from
    its slot, the tables end equal."""
    wl = replicated
    url = stack.settings.target_url
    setup = run_streamer(
        "replicate",
        "--slot",
        f"{wl.schema}_slot",
        "--publication",
        f"{wl.schema}_pub",
        "--tables",
        ",".join(wl.qualified),
        "--create",
        "--max-events",
        "0",
        url=url,
    )
    assert setup.returncode == 0, setup.stderr[-3000:]
    wl.run(transactions=150, rate=50)
    rep = _replicate(wl, url, tmp_path / "replicate.log")
    wait_progress(url, f"{wl.schema}_slot")  # replicate's position: group = the slot, next_offset = an LSN
    killed = threading.Event()

    def kill_mid_stream() -> None:
        time.sleep(2)  # the walsender has streamed part of the open transaction by now
        rep.kill9()
        killed.set()

    wl.big_transaction(1500, halfway=kill_mid_stream)
    assert killed.is_set()
    rep = _replicate(wl, url, tmp_path / "replicate.log")
    wl.big_transaction(1500)
    time.sleep(random.Random(wl.seed).uniform(0.5, 2.0))
    rep.kill9()
    wl.run(transactions=100, rate=50)
    wl.big_transaction(800)  # the first drain run must see a streamed transaction: proof the mode is on
    deadline = time.monotonic() + 240
    first = True
    while True:
        rep = _replicate(wl, url, tmp_path / "drain.log", "--until-idle", "8")
        assert rep.wait(300) == 0, rep.tail()
        if first:
            summary = rep.tail(400)
            assert "replicated" in summary and "(0 transactions streamed" not in summary, summary
            first = False
        if not differences(wl.dsn, url, stack.cfg.source_database, wl.schema) or time.monotonic() > deadline:
            break
    assert_equal(wl.dsn, url, stack.cfg.source_database, wl.schema)


def test_harness_sees_a_difference(make_pipeline, stack: Stack) -> None:
    """The comparison itself: a target row changed by hand, one deleted, one added are each named."""
    p = make_pipeline(rows=50)
    url = stack.settings.target_url
    run = run_streamer(
        "consume", "--group", f"{p.schema}-self", "--topics", p.topics, "--until-idle", "10", url=url
    )
    assert run.returncode == 0, run.stderr[-2000:]
    wait_until(lambda: not differences(p.source_url, url, p.database, p.schema), 60, "the snapshot applied")
    engine = create_target_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE \"{p.schema}\".alpha SET label = 'changed' WHERE id = 3"))
        conn.execute(sa.text(f'DELETE FROM "{p.schema}".beta WHERE id = 4'))
        conn.execute(sa.text(f'INSERT INTO "{p.schema}".gamma (id, n) VALUES (100000, 1)'))
    engine.dispose()
    diffs = {d.table: d for d in differences(p.source_url, url, p.database, p.schema)}
    assert diffs["alpha"].changed == [(3, ["label"])] and not diffs["alpha"].missing
    assert diffs["beta"].missing == [4] and not diffs["beta"].changed
    assert diffs["gamma"].extra == [100000]
    with pytest.raises(AssertionError, match="alpha"):
        assert_equal(p.source_url, url, p.database, p.schema)
