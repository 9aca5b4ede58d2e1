"""The stack works end to end, and `up`/`down`/`status`/`env` behave as documented."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from streamer.core.errors import StackError
from streamer.settings import load_settings
from streamer.stack import PARTS, Stack
from tests.conftest import kafka_consumer_config


def test_insert_reaches_kafka_within_15s(stack: Stack, source_db, debezium, unique: str) -> None:
    with source_db.cursor() as cur:
        cur.execute(f"CREATE TABLE public.{unique} (id bigint PRIMARY KEY, name text NOT NULL)")
    debezium(unique, f"public.{unique}")
    consumer = Consumer(kafka_consumer_config(stack, f"{unique}-g"))
    topic = f"{unique}.public.{unique}"
    consumer.subscribe([f"^{unique}\\..*"])
    try:
        with source_db.cursor() as cur:
            cur.execute(f"INSERT INTO public.{unique} VALUES (42, 'hello')")
        inserted = time.monotonic()
        event = None
        while time.monotonic() - inserted < 15 and event is None:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            event = msg
        elapsed = time.monotonic() - inserted
    finally:
        consumer.close()
    assert event is not None, "no change event within 15 s of the insert"
    assert elapsed < 15
    assert event.topic() == topic
    value = json.loads(event.value() or b"null")
    assert value["payload"]["op"] == "c"
    assert value["payload"]["after"] == {"id": 42, "name": "hello"}
    assert value["payload"]["source"]["table"] == unique
    assert json.loads(event.key() or b"null")["payload"] == {"id": 42}


def test_env_and_status_describe_the_running_stack(stack: Stack) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "stack", "env"], capture_output=True, text=True, check=True
    ).stdout
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    assert exports["STREAMER_BOOTSTRAP_SERVERS"] == stack.settings.bootstrap_servers
    assert exports["STREAMER_CONNECT_URL"] == stack.settings.connect_url
    assert exports["STREAMER_SOURCE_URL"] == stack.settings.source_url
    statuses = stack.status()
    assert [s.name for s in statuses] == list(PARTS)
    assert all(s.healthy and s.pid for s in statuses), statuses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def side_dir(stack: Stack, unique: str) -> Iterator[Path]:
    """A directory for a second stack, inside the stack dir (the postgres user must reach it)."""
    path = stack.dir / f"side-{unique}"
    path.mkdir()
    (path / "artifacts").symlink_to(stack.art_dir)  # share the fetched artifacts
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_second_stack_up_twice_then_down_leaves_nothing(stack: Stack, side_dir: Path) -> None:
    """A stack on its own ports and dir: `up` twice starts nothing twice; `down` stops every pid and port."""
    ports = {"broker": _free_port(), "connect": _free_port(), "source": _free_port()}
    env = {
        "STREAMER_STACK__DIR": str(side_dir),
        "STREAMER_STACK__BROKER_PORT": str(ports["broker"]),
        "STREAMER_STACK__CONNECT_PORT": str(ports["connect"]),
        "STREAMER_STACK__SOURCE_PORT": str(ports["source"]),
    }
    other = Stack(load_settings(env=env))
    try:
        other.up()
        first = {p: other.pid(p) for p in PARTS}
        assert all(first.values()), first
        other.up()
        assert {p: other.pid(p) for p in PARTS} == first
        assert all(_listening(port) for port in ports.values())
    finally:
        stopped = other.down()
    assert sorted(stopped) == sorted(PARTS)
    assert all(other.pid(p) is None for p in PARTS)
    assert not any(_listening(port) for port in ports.values())
    # the session's stack is untouched
    assert all(s.healthy for s in stack.status())


def test_port_taken_is_one_clear_error(stack: Stack, side_dir: Path) -> None:
    env = {"STREAMER_STACK__DIR": str(side_dir), "STREAMER_STACK__SOURCE_PORT": str(stack.cfg.broker_port)}
    other = Stack(load_settings(env=env))
    with pytest.raises(StackError, match=r"port .* is taken .*STREAMER_STACK__SOURCE_PORT"):
        other.up()
    assert other.pid("source") is None
