"""Consumer-side faults on the shared stack: kill -9, one of three killed, session expiry, target restart.

Each scenario: a live seeded workload (inserts, updates with and without the TOAST column, deletes,
primary-key updates over three tables), the fault injected while it runs, then a drain and
whole-table equality (every row, every column) of source and target.
"""

from __future__ import annotations

import subprocess
import sys
import time

import sqlalchemy as sa

from streamer.db import create_target_engine
from tests.faults.conftest import Pipeline
from tests.faults.harness import (
    ConsumerProc,
    drain_and_compare,
    private_postgres,
    run_streamer,
    say,
    streamer_env,
    wait_progress,
    wait_until,
)

SMALL_BATCHES = {"STREAMER_CONSUMER__BATCH_MAX_EVENTS": "40"}


def drain(p: Pipeline, url: str, group: str) -> None:
    drain_and_compare(
        p.source_url,
        url,
        p.database,
        p.schema,
        group,
        p.topics,
        p.log(f"{group}-drain"),
        settings=SMALL_BATCHES,
    )


def test_kill_9_mid_batch_then_restart(make_pipeline, target: str) -> None:
    p = make_pipeline()
    group = f"{p.schema}-k9"
    p.workload.start(transactions=300, rate=30)
    done = 0
    for round_ in range(3):
        c = ConsumerProc(group, p.topics, target, p.log(f"k9-{round_}"), settings=SMALL_BATCHES)
        done = wait_progress(target, group, beyond=done)
        time.sleep(0.3 * round_)  # a little further into the stream each round
        assert c.alive(), c.tail()
        c.kill9()
    p.workload.join()
    drain(p, target, group)


def test_three_consumers_one_killed(make_pipeline, target: str) -> None:
    p = make_pipeline()
    group = f"{p.schema}-three"
    p.workload.start(transactions=300, rate=30)
    consumers = [
        ConsumerProc(
            group, p.topics, target, p.log(f"three-{i}"), "--until-idle", "15", settings=SMALL_BATCHES
        )
        for i in range(3)
    ]
    wait_progress(target, group)
    time.sleep(1)
    consumers[0].kill9()
    p.workload.join()
    for c in consumers[1:]:
        rc = c.wait(300)
        assert rc == 0, c.tail()
    drain(p, target, group)


def test_session_expires_under_sigstop_then_sigcont(make_pipeline, target: str) -> None:
    """A consumer frozen longer than session.timeout.ms (6 s) loses its partitions to another; thawed, it
    must not write anything that the other consumer's progress contradicts (a zombie batch)."""
    p = make_pipeline()
    group = f"{p.schema}-stop"
    p.workload.start(seconds=40, rate=30)
    frozen = ConsumerProc(group, p.topics, target, p.log("stop-frozen"), settings=SMALL_BATCHES)
    done = wait_progress(target, group)
    other = ConsumerProc(group, p.topics, target, p.log("stop-other"), settings=SMALL_BATCHES)
    time.sleep(8)  # the second consumer has joined and got partitions
    frozen.sigstop()
    try:
        time.sleep(15)  # > session.timeout.ms: the group gives every partition to `other`
        wait_progress(target, group, beyond=done)
    finally:
        frozen.sigcont()
    time.sleep(10)  # the thawed consumer finishes whatever batch it held, then rejoins
    p.workload.join()
    assert frozen.alive(), frozen.tail()
    assert other.alive(), other.tail()
    frozen.terminate()
    other.terminate()
    drain(p, target, group)


def test_target_restart_mid_batch(make_pipeline, stack, unique: str) -> None:
    """A private target PostgreSQL crashes twice (stop -m immediate) and comes back: the consumer retries
    the transient errors, stays up, and the tables end equal."""
    p = make_pipeline()
    with private_postgres(stack.dir / f"faults-target-{unique}") as pg:
        group = f"{p.schema}-restart"
        p.workload.start(seconds=40, rate=30)
        c = ConsumerProc(
            group,
            p.topics,
            pg.url,
            p.log("restart"),
            settings={**SMALL_BATCHES, "STREAMER_CONSUMER__RETRY_ATTEMPTS": "12"},
        )
        done = wait_progress(pg.url, group)
        for _ in range(2):
            pg.crash()
            time.sleep(4)
            pg.start()
            done = wait_progress(pg.url, group, beyond=done, timeout=120)
            assert c.alive(), c.tail()
        p.workload.join()
        assert c.alive(), c.tail()
        say(f"consumer survived the restarts; log tail:\n{c.tail(1500)}")
        rc = c.terminate()
        assert rc == 0, c.tail()
        drain(p, pg.url, group)


def test_kill_9_of_load_then_resume(make_pipeline, target: str) -> None:
    """`streamer load` of three tables killed -9 mid-load while the workload writes (deletes included),
    then `load --resume`, then the stream drained: the tables end equal."""
    p = make_pipeline(rows=2500, snapshot="no_data")
    tables = [arg for t in p.workload.qualified for arg in ("--table", t)]
    p.workload.start(seconds=60, rate=20)
    log = p.log("load").open("ab")
    load = subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "load", *tables, "--chunk-rows", "20", "--workers", "1"],
        env=streamer_env(target),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    engine = create_target_engine(target)

    def chunks_done() -> bool:
        if load.poll() is not None:
            return True  # ended before the kill: the assertion below says so
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("_streamer_load_chunks"):
                return False
            n = conn.execute(
                sa.text("SELECT count(*) FROM _streamer_load_chunks WHERE table_name LIKE :t AND done"),
                {"t": f"{p.schema}%"},  # the target's table name: schema.table or schema_table
            ).scalar_one()
            return int(n) >= 20

    try:
        wait_until(chunks_done, 180, "20 load chunks done")
    finally:
        engine.dispose()
    assert load.poll() is None, "the load ended before it could be killed: make it bigger"
    say("kill -9 of streamer load")
    load.kill()
    load.wait(30)
    log.close()
    resumed = run_streamer("load", *tables, "--chunk-rows", "20", "--resume", url=target, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    p.workload.join()
    drain(p, target, f"{p.schema}-load")


def test_slow_target_during_rebalances(make_pipeline, stack) -> None:
    """Every statement on one target table takes 2 s (a trigger with pg_sleep) while consumers join and
    leave the group: partitions are revoked while slow batches are in flight; the tables end equal.

    (A rebalance *forced* by the slowness itself would need an apply longer than max.poll.interval.ms,
    300 s, which is not a streamer setting; the apply runs off the poll loop, so heartbeats go on.)
    """
    url = stack.settings.target_url
    p = make_pipeline()
    group = f"{p.schema}-slow"
    first = ConsumerProc(group, p.topics, url, p.log("slow-0"), settings=SMALL_BATCHES)
    engine = create_target_engine(url)

    def alpha_exists() -> bool:
        with engine.connect() as conn:
            return sa.inspect(conn).has_table("alpha", schema=p.schema)

    wait_until(alpha_exists, 120, "the consumer to create the target table alpha")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f'CREATE FUNCTION "{p.schema}".slow() RETURNS trigger LANGUAGE plpgsql AS '
                "$$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text(
                f'CREATE TRIGGER slow AFTER INSERT OR UPDATE OR DELETE ON "{p.schema}".alpha '
                f'FOR EACH STATEMENT EXECUTE FUNCTION "{p.schema}".slow()'
            )
        )
    engine.dispose()
    p.workload.start(seconds=30, rate=30)
    second = ConsumerProc(group, p.topics, url, p.log("slow-1"), settings=SMALL_BATCHES)
    time.sleep(8)
    third = ConsumerProc(group, p.topics, url, p.log("slow-2"), settings=SMALL_BATCHES)
    time.sleep(8)
    assert second.terminate() == 0, second.tail()
    time.sleep(6)
    p.workload.join()
    for c in (first, third):
        assert c.alive(), c.tail()
        assert c.terminate(120) == 0, c.tail()
    drain(p, url, group)
