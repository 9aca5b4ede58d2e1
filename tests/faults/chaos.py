"""``make chaos``: a bounded run of random faults on a seeded schedule, ending with whole-table equality.

    python -m tests.faults.chaos [--seconds 300] [--seed N] [--targets postgresql,mariadb] [--faults a,b]

Everything runs on processes of its own, so it never disturbs a shared stack: a private stack
(source PostgreSQL, tansu, Kafka Connect with Debezium) on free ports under ``.stack/chaos-*``, a
private target PostgreSQL (restartable), and optionally the machine's MariaDB (database
``streamer_chaos``, or ``$STREAMER_CHAOS_MARIADB_URL``). A seeded workload writes to three tables
while two consumers per target apply it; every few seconds the schedule (from the same seed) injects
one fault:

* ``consumer_kill9``: kill -9 a consumer mid-batch, start a new one;
* ``consumer_sigstop``: SIGSTOP a consumer longer than the session timeout, then SIGCONT;
* ``consumer_churn``: stop one consumer cleanly and start another (a rebalance);
* ``target_restart``: crash the target PostgreSQL (``pg_ctl stop -m immediate``), start it again;
* ``connect_kill9``: kill -9 the Connect worker, start it again (the connector resumes from its offset);
* ``broker_reset``: let the consumers catch up, restart the broker with topic loss (and Connect),
  apply the connector again (it streams from its slot).

At the end: the workload stops, every consumer is thawed and stopped, each target is drained and
compared with the source, whole tables (every row, every column). The seed is printed first and
last; the exit status is 1 when a table differs. The run length is ``--seconds`` or
``$STREAMER_CHAOS_SECONDS`` (default 300). The schedule replays exactly from a seed; the timing of
the processes around it does not, so a replay reproduces the same faults in the same order.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import sqlalchemy as sa

from streamer.db import create_target_engine
from streamer.settings import load_settings
from streamer.stack.local import Stack
from tests.conftest import debezium_config, wait_running
from tests.faults.harness import (
    ConsumerProc,
    PrivatePostgres,
    Workload,
    differences,
    drain_and_compare,
    free_port,
    say,
    stop_part,
    topics_regex,
    wait_until,
)

FAULTS = (
    "consumer_kill9",
    "consumer_sigstop",
    "consumer_churn",
    "target_restart",
    "connect_kill9",
    "broker_reset",
)
SMALL_BATCHES = {"STREAMER_CONSUMER__BATCH_MAX_EVENTS": "50"}


def _mariadb_url() -> str:
    url = os.environ.get("STREAMER_CHAOS_MARIADB_URL", "mysql://root@127.0.0.1:3306/streamer_chaos")
    parsed = sa.engine.make_url(url)
    server = create_target_engine(parsed.set(database="").render_as_string(hide_password=False))
    try:
        with server.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS `{parsed.database}` CHARACTER SET utf8mb4"))
    finally:
        server.dispose()
    return url


class Chaos:
    def __init__(self, seed: int, seconds: float, targets: list[str], faults: list[str], base: Path) -> None:
        self.seed = seed
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.faults = faults
        self.base = base
        self.name = f"chaos{uuid.uuid4().hex[:6]}"
        self.logs = base / "logs-chaos"
        env = {
            "STREAMER_STACK__DIR": str(base),
            "STREAMER_STACK__BROKER_PORT": str(free_port()),
            "STREAMER_STACK__CONNECT_PORT": str(free_port()),
            "STREAMER_STACK__SOURCE_PORT": str(free_port()),
            "STREAMER_STACK__CONNECT_HEAP": "512m",
            "STREAMER_STACK__MARIADB": "false",  # no MariaDB source: not needed here
        }
        self.stack = Stack(load_settings(env=env), log=say)
        self.pg = PrivatePostgres(base / "target-pg")
        self.targets = targets
        self.urls: dict[str, str] = {}
        self.consumers: dict[str, list[ConsumerProc]] = {}
        self.started = 0
        self.workload: Workload | None = None
        self.injected: list[str] = []

    # ------------------------------------------------------------ setup
    def setup(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.stack.up()
        if "postgresql" in self.targets:
            self.pg.init()
            self.urls["postgresql"] = self.pg.url
        if "mariadb" in self.targets:
            self.urls["mariadb"] = _mariadb_url()
        self.workload = Workload(self.stack.settings.source_url, self.name, self.seed)
        self.workload.create(300)
        self.apply_connector("initial")
        for kind in self.urls:
            self.consumers[kind] = [self.new_consumer(kind) for _ in range(2)]

    def apply_connector(self, snapshot: str) -> None:
        assert self.workload is not None
        cfg = debezium_config(
            self.stack,
            self.name,
            ",".join(self.workload.qualified),
            **{"column.propagate.source.type": ".*", "snapshot.mode": snapshot},
        )
        resp = httpx.put(
            f"{self.stack.settings.connect_url}/connectors/{self.name}/config", json=cfg, timeout=60
        )
        resp.raise_for_status()
        wait_running(self.stack.settings.connect_url, self.name, timeout=180)

    def env(self) -> dict[str, str]:
        return {**SMALL_BATCHES, "STREAMER_BOOTSTRAP_SERVERS": self.stack.settings.bootstrap_servers}

    def group(self, kind: str) -> str:
        return f"{self.name}-{kind}"

    @property
    def topics(self) -> str:
        return topics_regex(self.name, self.name)

    def new_consumer(self, kind: str) -> ConsumerProc:
        self.started += 1
        return ConsumerProc(
            self.group(kind),
            self.topics,
            self.urls[kind],
            self.logs / f"{kind}-{self.started}.log",
            settings={**self.env(), "STREAMER_CONSUMER__RETRY_ATTEMPTS": "12"},
        )

    # ------------------------------------------------------------ faults
    def _pick_consumer(self) -> tuple[str, int]:
        kind = self.rng.choice(sorted(self.consumers))
        return kind, self.rng.randrange(len(self.consumers[kind]))

    def consumer_kill9(self) -> None:
        kind, i = self._pick_consumer()
        self.consumers[kind][i].kill9()
        self.consumers[kind][i] = self.new_consumer(kind)

    def consumer_sigstop(self) -> None:
        kind, i = self._pick_consumer()
        frozen = self.rng.uniform(8, 14)
        c = self.consumers[kind][i]
        c.sigstop()
        time.sleep(frozen)
        c.sigcont()

    def consumer_churn(self) -> None:
        kind, i = self._pick_consumer()
        self.consumers[kind][i].terminate()
        self.consumers[kind][i] = self.new_consumer(kind)

    def target_restart(self) -> None:
        if "postgresql" not in self.urls:
            return
        self.pg.crash()
        time.sleep(self.rng.uniform(1, 5))
        self.pg.start()

    def connect_kill9(self) -> None:
        stop_part(self.stack, "connect", signal.SIGKILL)
        time.sleep(self.rng.uniform(1, 4))
        self.stack.up()
        wait_running(self.stack.settings.connect_url, self.name, timeout=180)

    def broker_reset(self) -> None:
        assert self.workload is not None
        self.workload.stop()
        self.workload.join()
        src, db = self.stack.settings.source_url, self.stack.cfg.source_database
        for url in self.urls.values():

            def caught_up(url: str = url) -> bool:
                return not differences(src, url, db, self.name)

            wait_until(caught_up, 240, "the consumers to catch up", every=2)
        stop_part(self.stack, "connect")
        stop_part(self.stack, "broker")
        self.stack.up()
        self.apply_connector("no_data")
        self.workload.start(seconds=self.remaining(), rate=25)

    # ------------------------------------------------------------ run
    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def run(self) -> bool:
        assert self.workload is not None
        self.end = time.monotonic() + self.seconds
        self.workload.start(seconds=self.seconds, rate=25)
        actions: dict[str, Callable[[], None]] = {f: getattr(self, f) for f in self.faults}
        while True:
            pause = self.rng.uniform(5, 15)
            if self.remaining() <= pause + 5:
                break
            time.sleep(pause)
            fault = self.rng.choice(self.faults)
            self.injected.append(fault)
            say(f"chaos seed {self.seed}: fault {len(self.injected)}: {fault}")
            actions[fault]()
        self.workload.join(timeout=self.seconds + 120)
        for kind, procs in self.consumers.items():
            for c in procs:
                c.terminate()
            del kind
        ok = True
        for kind, url in self.urls.items():
            try:
                drain_and_compare(
                    self.stack.settings.source_url,
                    url,
                    self.stack.cfg.source_database,
                    self.name,
                    self.group(kind),
                    self.topics,
                    self.logs / f"{kind}-drain.log",
                    settings=self.env(),
                    timeout=300,
                )
            except AssertionError as exc:
                ok = False
                print(
                    f"chaos seed {self.seed}: {kind} target DIFFERS from the source:\n{exc}", file=sys.stderr
                )
        return ok

    def teardown(self) -> None:
        for procs in self.consumers.values():
            for c in procs:
                c.terminate(10)
        if self.workload is not None:
            self.workload.stop()
        if "mariadb" in self.urls:
            engine = create_target_engine(self.urls["mariadb"])
            with engine.begin() as conn:
                for t in ("alpha", "beta", "gamma"):
                    conn.execute(sa.text(f"DROP TABLE IF EXISTS `{self.name}_{t}`"))
            engine.dispose()
        self.pg.destroy()
        self.stack.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("STREAMER_CHAOS_SECONDS", "300"))
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--targets", default=os.environ.get("STREAMER_CHAOS_TARGETS", "postgresql,mariadb"))
    parser.add_argument(
        "--faults", default=",".join(FAULTS), help=f"comma-separated subset of {','.join(FAULTS)}"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs) afterwards")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    targets = [t for t in args.targets.split(",") if t]
    shared = Stack(load_settings())
    base = shared.dir / f"chaos-{seed}-{uuid.uuid4().hex[:4]}"
    base.mkdir(parents=True)
    (base / "artifacts").symlink_to(shared.art_dir)
    print(f"chaos: seed {seed}, {args.seconds:.0f} s, targets {targets}, faults {faults}", file=sys.stderr)
    print(
        f"chaos: replay with: python -m tests.faults.chaos --seed {seed} --seconds {args.seconds:.0f}",
        file=sys.stderr,
    )
    chaos = Chaos(seed, args.seconds, targets, faults, base)
    ok = False
    try:
        chaos.setup()
        ok = chaos.run()
    finally:
        chaos.teardown()
        if not args.keep and ok:
            shutil.rmtree(base, ignore_errors=True)
    print(
        f"chaos: seed {seed}: {'EQUAL' if ok else 'DIFFERENT'} after {len(chaos.injected)} faults "
        f"({', '.join(chaos.injected)}); logs {'removed' if ok and not args.keep else f'in {base}'}",
        file=sys.stderr,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
