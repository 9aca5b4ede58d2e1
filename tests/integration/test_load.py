"""`streamer load` + `streamer consume` + `streamer validate` against the real stack.

The product's "add a table" order: connector applied first (snapshot.mode=no_data: its slot
captures every change from then on), then the load while the source keeps taking writes, then
the consumer drains the stream; the validator must then prove source == target.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from streamer.db import create_target_engine
from streamer.stack.local import Stack
from streamer.stack.workload import SAMPLE_TABLES, create_sample, run_workload
from tests.integration.conftest import _mariadb_engine, target_url


def streamer(*args: str, url: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "STREAMER_TARGET_URL": url, "STREAMER_LOG_FORMAT": "json", **env}
    return subprocess.run(
        [sys.executable, "-m", "streamer.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def table_args(schema: str) -> list[str]:
    return [arg for t in SAMPLE_TABLES for arg in ("--table", f"{schema}.{t}")]


@pytest.fixture
def captured(stack: Stack, debezium, unique: str):
    """Sample tables with rows, a connector streaming them (no Debezium snapshot: the loader seeds)."""
    create_sample(stack.settings.source_url, unique, rows=4000)
    debezium(
        unique,
        ",".join(f"{unique}.{t}" for t in SAMPLE_TABLES),
        **{"snapshot.mode": "no_data", "column.propagate.source.type": ".*"},
    )
    yield unique
    engine = create_target_engine(stack.settings.source_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{unique}" CASCADE'))
    engine.dispose()


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_load_during_writes_then_consume_then_validate(
    stack: Stack, captured: str, tmp_path: Path, kind: str
) -> None:
    schema = captured
    if kind == "mariadb":
        _mariadb_engine().dispose()
    url = target_url(kind, stack, tmp_path)
    stop = threading.Event()
    writer = threading.Thread(
        target=run_workload,
        args=(stack.settings.source_url, schema),
        kwargs={"stop": stop.is_set, "rate": 50, "seed": 5},
    )
    writer.start()
    try:
        time.sleep(1)
        loaded = streamer("load", *table_args(schema), "--chunk-rows", "400", "--workers", "2", url=url)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        time.sleep(1)
    finally:
        stop.set()
        writer.join()
    consumed = streamer(
        "consume",
        "--group",
        f"{schema}-{kind}",
        "--topics",
        rf"^{schema}\.{schema}\.[^.]+$",
        "--until-idle",
        "10",
        url=url,
    )
    assert consumed.returncode == 0, consumed.stderr[-3000:]
    checked = streamer("validate", *table_args(schema), "--json", url=url)
    result = json.loads(checked.stdout)
    assert checked.returncode == 0, result
    assert result["ok"] is True
    assert all(t["equal"] and t["source_rows"] == t["target_rows"] > 0 for t in result["tables"])


def test_validate_finds_exactly_the_corrupted_keys(stack: Stack, captured: str, tmp_path: Path) -> None:
    schema = captured
    url = target_url("postgresql", stack, tmp_path)
    loaded = streamer("load", *table_args(schema), url=url)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    target = create_target_engine(url)
    with target.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE \"{schema}\".customers SET email = 'corrupt@example.com' WHERE id = 17")
        )
        conn.execute(sa.text(f'DELETE FROM "{schema}".orders WHERE id = 1234'))
    target.dispose()
    checked = streamer("validate", *table_args(schema), "--json", "--chunk-rows", "500", url=url)
    assert checked.returncode == 1
    result = json.loads(checked.stdout)
    by_table = {t["table"].split(".")[1]: t for t in result["tables"]}
    assert by_table["customers"]["changed"] == [{"key": {"id": 17}, "columns": ["email"]}]
    assert by_table["customers"]["missing"] == [] and by_table["customers"]["extra"] == []
    assert by_table["orders"]["missing"] == [{"id": 1234}]
    assert by_table["orders"]["changed"] == [] and by_table["orders"]["extra"] == []
    assert by_table["orders"]["source_rows"] == by_table["orders"]["target_rows"] + 1
    assert by_table["products"]["equal"] is True
    # the plain form (not a terminal) names them too, one line each
    text = streamer("validate", "--table", f"{schema}.customers", url=url)
    assert text.returncode == 1
    assert f"DIFF table={schema}.customers key=id=17 changed columns=email" in text.stdout.splitlines()


def test_interrupted_load_resumes(stack: Stack, captured: str, tmp_path: Path) -> None:
    schema = captured
    url = target_url("postgresql", stack, tmp_path)
    env = {**os.environ, "STREAMER_TARGET_URL": url}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamer.cli",
            "load",
            "--table",
            f"{schema}.orders",
            "--chunk-rows",
            "20",
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = create_target_engine(url)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and done < 5:
        time.sleep(0.1)
        with target.connect() as conn:
            if sa.inspect(conn).has_table("_streamer_load_chunks"):
                done = conn.execute(
                    sa.text("SELECT count(*) FROM _streamer_load_chunks WHERE table_name = :t AND done"),
                    {"t": f"{schema}.orders"},
                ).scalar_one()
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert done >= 5
    with target.connect() as conn:
        total, finished = conn.execute(
            sa.text(
                "SELECT count(*), sum(CASE WHEN done THEN 1 ELSE 0 END) FROM _streamer_load_chunks WHERE table_name = :t"
            ),
            {"t": f"{schema}.orders"},
        ).one()
        status = conn.execute(
            sa.text("SELECT status FROM _streamer_loads WHERE table_name = :t"), {"t": f"{schema}.orders"}
        ).scalar_one()
    target.dispose()
    assert status == "loading" and finished < total
    resumed = streamer(
        "load", "--table", f"{schema}.orders", "--chunk-rows", "20", "--resume", "--json", url=url
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (report,) = json.loads(resumed.stdout)
    # the chunks the first run finished are skipped, the rest loaded
    assert report["chunks"] == total and report["chunks_skipped"] == finished >= 5
    source = create_target_engine(stack.settings.source_url)
    with source.connect() as conn:
        source_rows = conn.execute(sa.text(f'SELECT count(*) FROM "{schema}".orders')).scalar_one()
    source.dispose()
    assert report["rows"] == source_rows - 20 * finished  # chunks of exactly 20 keys
    checked = streamer("validate", "--table", f"{schema}.orders", "--json", url=url)
    assert checked.returncode == 0, checked.stdout


def test_consumer_holds_a_table_while_it_is_loading(stack: Stack, captured: str, tmp_path: Path) -> None:
    """A table marked loading in _streamer_loads gets none of its events applied until the load is done."""
    schema = captured
    url = target_url("postgresql", stack, tmp_path)
    run_workload(stack.settings.source_url, schema, transactions=60, seed=8)
    target = create_target_engine(url)
    from streamer.apply import state

    state.upgrade(target)
    with target.begin() as conn:
        conn.execute(
            sa.insert(state.loads_table).values(
                table_name=f"{schema}.orders",
                source_table=f"{schema}.orders",
                status="loading",
                floor_version="pg:0000000000000000",
                snapshot_version="pg:0000000000000000",
                rows_loaded=0,
                started_at=sa.func.now(),
            )
        )
    topics = rf"^{schema}\.{schema}\.[^.]+$"
    group = f"{schema}-hold"
    first = streamer("consume", "--group", group, "--topics", topics, "--until-idle", "8", url=url)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "holding partition while its table is loaded" in first.stderr
    with target.connect() as conn:
        insp = sa.inspect(conn)
        orders = (
            conn.execute(sa.text(f'SELECT count(*) FROM "{schema}".orders')).scalar_one()
            if insp.has_table("orders", schema=schema)
            else 0
        )
        customers = conn.execute(sa.text(f'SELECT count(*) FROM "{schema}".customers')).scalar_one()
    assert orders == 0 and customers > 0
    # the load finishes (here: just loads the table for real), and the held events follow
    loaded = streamer("load", "--table", f"{schema}.orders", url=url)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    second = streamer("consume", "--group", group, "--topics", topics, "--until-idle", "8", url=url)
    assert second.returncode == 0, second.stderr[-3000:]
    with target.connect() as conn:
        applied = conn.execute(
            sa.text("SELECT last_version FROM _streamer_tables WHERE table_name = :t"),
            {"t": f"{schema}.orders"},
        ).scalar()
    target.dispose()
    assert applied is not None  # orders' streamed events were applied after the load
    checked = streamer("validate", "--table", f"{schema}.orders", "--json", url=url)
    assert checked.returncode == 0, checked.stdout


def test_delete_during_a_multi_table_load_stays_deleted(stack: Stack, captured: str, tmp_path: Path) -> None:
    """`load --table a --table b` with a consumer running: a row of b deleted at the source after
    the snapshot, while a is being loaded, must stay deleted (b's partitions are held from the
    start of the load, not from b's turn). The loader is paused before b by a hook."""
    from streamer.apply.sink import build_sink
    from streamer.load.loader import Loader
    from streamer.settings import load_settings
    from streamer.validate import compare_tables
    from tests.integration.test_operations import per_partition, read_topics, stored_by_sql

    schema = captured
    url = target_url("postgresql", stack, tmp_path)
    group = f"{schema}-multi"
    topics = rf"^{schema}\.{schema}\.[^.]+$"
    a, b = f"{schema}.customers", f"{schema}.orders"
    env = {**os.environ, "STREAMER_TARGET_URL": url, "STREAMER_LOG_FORMAT": "json"}
    consumer = subprocess.Popen(
        [sys.executable, "-m", "streamer.cli", "consume", "--group", group, "--topics", topics],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(consumer.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    source = create_target_engine(stack.settings.source_url)
    target = create_target_engine(url)
    paused, go = threading.Event(), threading.Event()

    def names() -> list[str]:
        from confluent_kafka.admin import AdminClient

        md = AdminClient({"bootstrap.servers": stack.settings.bootstrap_servers}).list_topics(timeout=10)
        return sorted(t for t in md.topics if t.startswith(f"{schema}.{schema}."))

    def wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert consumer.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.3)

    def caught_up() -> bool:
        try:
            return stored_by_sql(url, group) == per_partition(read_topics(stack, names()))
        except sa.exc.ProgrammingError:
            return False

    try:
        # the consumer is running and has applied a first change of every table
        run_workload(stack.settings.source_url, schema, transactions=20, seed=9)
        wait(lambda: len(names()) == 3, 60, "the topics")
        wait(caught_up, 120, "the consumer to apply the first changes")

        def hook(name: str) -> None:
            if name == b:
                paused.set()
                assert go.wait(180)

        sink = build_sink(load_settings(env={"STREAMER_TARGET_URL": url}))
        loader = Loader(stack.settings.source_url, sink, workers=1, chunk_rows=500, on_table_start=hook)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                loader.run([a, b])
            except BaseException as exc:
                errors.append(exc)
                paused.set()

        thread = threading.Thread(target=run)
        thread.start()
        assert paused.wait(180) and not errors, errors
        # the snapshot is taken and a is loaded; b is not read yet: delete one of b's rows now
        with source.begin() as conn:
            victim = conn.execute(sa.text(f'SELECT min(id) FROM "{schema}".orders')).scalar_one()
            conn.execute(sa.text(f'DELETE FROM "{schema}".orders WHERE id = :i'), {"i": victim})
        # the consumer either applies the delete (the old bug) or holds b's partition
        wait(
            lambda: caught_up() or any("holding partition" in ln and b in ln for ln in lines),
            120,
            "the consumer to apply or hold the delete",
        )
        go.set()
        thread.join(300)
        assert not thread.is_alive() and not errors, errors
        sink.engine.dispose()
        wait(caught_up, 120, "the consumer to drain")
    finally:
        go.set()
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(60)
    try:
        for table in ("customers", "orders"):
            diff = compare_tables(source, (schema, table), target, (schema, table))
            assert diff.source_rows > 0
            assert diff.equal, (
                f"{table}: missing {diff.missing[:5]} extra {diff.extra[:5]} changed {diff.changed[:5]}"
            )
    finally:
        source.dispose()
        target.dispose()


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_load_respects_a_stored_truncate_position(
    stack: Stack, unique: str, tmp_path: Path, kind: str
) -> None:
    """Rows older than the table's recorded truncate are not written, on the COPY path (PostgreSQL)
    as on the upsert path (other targets): the target table stays empty."""
    from streamer.apply import state

    schema = unique
    create_sample(stack.settings.source_url, schema, rows=300)
    url = target_url(kind, stack, tmp_path)
    target = create_target_engine(url)
    try:
        state.upgrade(target)
        name = f"{schema}.orders" if kind == "postgresql" else f"{schema}_orders"
        with target.begin() as conn:
            conn.execute(
                sa.insert(state.tables_table).values(
                    table_name=name,
                    last_version="pg:7FFFFFFFFFFFFFFF",
                    truncated_version="pg:7FFFFFFFFFFFFFFF",
                    updated_at=sa.func.now(),
                )
            )
        loaded = streamer("load", "--table", f"{schema}.orders", "--json", url=url)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        [report] = json.loads(loaded.stdout)
        assert report["target"] == name
        t = sa.table(name.rpartition(".")[2], schema=schema if kind == "postgresql" else None)
        with target.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() == 0
    finally:
        target.dispose()
        with create_target_engine(stack.settings.source_url).begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        if kind == "postgresql":
            with create_target_engine(url).begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def test_a_batch_filtered_before_a_load_marked_its_table_is_refused(target, unique: str) -> None:
    """holds.check_batch, on every target kind: a batch filtered with an older hold generation is
    refused only when it touches a table the newer load marked; the mark waits for a batch holding
    the generation row (PostgreSQL, MariaDB: FOR SHARE)."""
    from streamer.apply import holds, state

    _url, engine = target
    state.upgrade(engine)
    name = f"{unique}.orders"
    loads = state.loads_table
    with engine.begin() as conn:
        before = holds.current_generation(conn)
    with engine.begin() as conn:
        generation = holds.raise_generation(conn)
        conn.execute(
            sa.insert(loads).values(
                table_name=name,
                source_table=name,
                status="loading",
                floor_version="pg:0000000000000000",
                snapshot_version="pg:0000000000000000",
                rows_loaded=0,
                started_at=sa.func.now(),
            )
        )
    try:
        assert generation == before + 1
        with engine.begin() as conn:
            holds.check_batch(conn, "nobody", before, {f"{unique}.customers"})  # another table: fine
            holds.check_batch(conn, "nobody", generation, {name})  # filtered with the new loading set: fine
        member = holds.Member(engine, "consume", "g")
        member.register()
        with engine.begin() as conn:  # an older filter, but the loader waits for this live member's ack
            holds.check_batch(conn, member.member_id, before, {name})
        member.leave()  # as a loader removes a member it takes as stopped
        with pytest.raises(holds.HoldChangedError, match="rolled back"), engine.begin() as conn:
            holds.check_batch(conn, member.member_id, before, {name, f"{unique}.customers"})
        with pytest.raises(holds.MemberExpelledError, match="took it as stopped"):
            member.beat()
        if engine.dialect.name == "sqlite":
            return
        # a batch transaction that read the generation FOR SHARE makes the next mark wait for its commit
        order: list[str] = []
        with engine.connect() as batch:
            batch.begin()
            holds.check_batch(batch, "nobody", generation, {name})

            def mark() -> None:
                with engine.begin() as conn:
                    holds.raise_generation(conn)
                order.append("mark committed")

            marker = threading.Thread(target=mark)
            marker.start()
            marker.join(1.5)
            order.append("batch committed")
            batch.commit()
            marker.join(30)
        assert order == ["batch committed", "mark committed"]
    finally:
        with engine.begin() as conn:
            conn.execute(sa.delete(loads).where(loads.c.table_name == name))


def test_load_stops_when_a_live_consumer_does_not_acknowledge(
    stack: Stack, unique: str, tmp_path: Path
) -> None:
    """A live member that never acknowledges the hold: the load stops with HoldTimeoutError naming it
    and unmarks its tables; a member silent past the expiry is taken as stopped."""
    import datetime as dt

    from streamer.apply import holds, state

    schema = unique
    create_sample(stack.settings.source_url, schema, rows=100)
    url = target_url("postgresql", stack, tmp_path)
    target = create_target_engine(url)
    members = state.members_table
    try:
        state.upgrade(target)
        now = holds.now()
        with target.begin() as conn:
            conn.execute(
                sa.insert(members),
                [
                    {
                        "member_id": f"{unique}-stuck",
                        "kind": "consume",
                        "consumer_group": "g",
                        "process": "elsewhere:1",
                        "acked_generation": 0,
                        "heartbeat_at": now,
                    },
                    {
                        "member_id": f"{unique}-gone",
                        "kind": "consume",
                        "consumer_group": "g",
                        "process": "elsewhere:2",
                        "acked_generation": 0,
                        "heartbeat_at": now - dt.timedelta(hours=1),
                    },
                ],
            )
        tables = ["--table", f"{schema}.customers", "--table", f"{schema}.orders"]
        refused = streamer(
            "load", *tables, url=url, STREAMER_LOAD__HOLD_TIMEOUT_S="3", STREAMER_LOAD__MEMBER_EXPIRY_S="600"
        )
        assert refused.returncode == 1
        assert "no heartbeat: taking the member as stopped" in refused.stderr
        [error] = [ln for ln in refused.stderr.splitlines() if ln.startswith("streamer: error:")]
        assert "did not acknowledge hold generation" in error, refused.stderr[-3000:]
        assert f"'{unique}-stuck'" in error and f"'{unique}-gone'" not in error
        with target.connect() as conn:
            left = conn.execute(
                sa.select(members.c.member_id).where(members.c.member_id.like(f"{unique}-%"))
            ).all()
            assert left == [(f"{unique}-stuck",)]  # the silent one was removed
            marked = conn.execute(
                sa.select(state.loads_table.c.table_name).where(
                    state.loads_table.c.table_name.like(f"{schema}.%")
                )
            ).all()
        assert marked == []  # unmarked: consumers do not hold these tables for a load that never ran
        with target.begin() as conn:
            conn.execute(sa.delete(members).where(members.c.member_id == f"{unique}-stuck"))
        loaded = streamer("load", *tables, url=url, STREAMER_LOAD__HOLD_TIMEOUT_S="3")
        assert loaded.returncode == 0, loaded.stderr[-3000:]
    finally:
        with target.begin() as conn:
            conn.execute(sa.delete(members).where(members.c.member_id.like(f"{unique}-%")))
        target.dispose()
        with create_target_engine(stack.settings.source_url).begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
