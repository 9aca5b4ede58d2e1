"""One settings object for every command: ``streamer.toml`` plus ``STREAMER_*`` environment variables.

Precedence, lowest first: built-in defaults, the TOML file, the environment. The file is
``streamer.toml`` in the current directory, or the path in ``STREAMER_CONFIG`` (or the
``--config`` option); a missing default file is fine, a missing explicit one is an error.

Environment names are the upper-cased key with the ``STREAMER_`` prefix; a key of a
section joins with ``__``: ``bootstrap_servers`` is ``STREAMER_BOOTSTRAP_SERVERS``,
``stack.broker_port`` is ``STREAMER_STACK__BROKER_PORT``. Unknown keys in the file are an
error; unknown ``STREAMER_*`` variables are ignored (the Connect worker reads some of its
own, such as ``STREAMER_SOURCE_PASSWORD``).

The endpoints (``bootstrap_servers``, ``connect_url``, ``source_url``, ``target_url``)
default to the local stack's, derived from the ``[stack]`` ports, so changing a port in one
place moves every command with it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streamer.core.errors import SettingsError

ENV_PREFIX = "STREAMER_"
DEFAULT_FILE = "streamer.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StackSettings(_Section):
    """The native development stack (``streamer stack``) and its ports (shared with docker-compose.yml)."""

    dir: Path = Path(".stack")
    host: str = "127.0.0.1"
    broker_port: int = Field(9092, ge=1, le=65535)
    connect_port: int = Field(8083, ge=1, le=65535)
    # not 5432: a developer machine usually has a PostgreSQL there already
    source_port: int = Field(15432, ge=1, le=65535)
    registry_port: int = Field(8081, ge=1, le=65535)
    source_user: str = "postgres"
    source_password: str = "postgres"
    source_database: str = "inventory"
    target_database: str = "target"
    connect_heap: str = "1g"
    startup_timeout: float = Field(180.0, gt=0)
    pg_bindir: Path | None = None  # default: newest /usr/lib/postgresql/*/bin
    # default: <dir>/pg, or, as root when the postgres user cannot reach <dir>, a directory of its
    # own under that user's home (see streamer.stack.local.Stack.pg_dir)
    pg_dir: Path | None = None
    # the MariaDB source (binlog_format=ROW), a part of the stack unless mariadb = false
    mariadb: bool = True
    mariadb_port: int = Field(13306, ge=1, le=65535)  # not 3306: the machine's own server is there
    mariadb_user: str = "streamer"  # the replication user Debezium connects as
    mariadb_password: str = "streamer"
    mariadb_root_password: str = "root"
    mariadb_database: str = "inventory"
    mariadb_server_id: int = Field(1, ge=1, le=4294967295)


class ConsumerSettings(_Section):
    """``streamer consume``."""

    group: str = "streamer"
    topics: str | None = None  # regex; default derived from the connectors' topic prefixes
    batch_max_events: int = Field(5000, ge=1)
    batch_max_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    # a batch closes at batch_max_events, batch_max_bytes, batch_max_ms after its first record, or as
    # soon as a read returns fewer records than asked (the consumer is caught up: waiting longer only
    # adds delay); under a backlog the reads return full and batches fill to the bounds
    batch_max_ms: int = Field(500, ge=1)
    # the caught-up rule above (off: a batch waits for its bounds, as before issue 14)
    close_batch_when_caught_up: bool = True
    # librdkafka's fetch.wait.max.ms (default 500): how long a fetch waits for new records. Kafka
    # answers as soon as a record arrives; the local broker (tansu) answers at the end of the wait, so
    # with 500 every change waited up to 500 ms (avg 250) for its fetch. Measured on the local broker:
    # 50 made backlog reads slower (consume / decode-only 0.55 instead of 0.93); 200 kept them (1.00)
    # with end-to-end p50 141 ms, p99 240 ms under the demo's workload (`make bench`).
    fetch_wait_max_ms: int = Field(200, ge=1)
    # bounded memory whatever the backlog (issue 14): librdkafka prefetches into one local queue per
    # consumer up to queued.max.messages.kbytes (default 64 MiB) / queued.min.messages, each fetch
    # brings at most fetch.max.bytes (default 50 MiB) and max.partition.fetch.bytes per partition.
    # With a batch pending and one in flight, the process holds about queue + fetch + 2 batches
    # (consumer.batch_max_bytes of record values each, decoded into Python objects) + the interpreter.
    queued_max_messages_kbytes: int = Field(16384, ge=1024)
    queued_min_messages: int = Field(20000, ge=1)
    fetch_max_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_partition_fetch_bytes: int = Field(1024 * 1024, ge=1024)
    # librdkafka's fetch.queue.backoff.ms (default 1000): how long a partition's next fetch waits once
    # the local queue is over the thresholds above. Under a backlog the queue fills with every fetch,
    # and with the default each partition then idled a second while the queue drained in a fraction of
    # it: a plain read of a 150,000-record Debezium topic came in bursts a second apart, 20,000
    # records/s; with 10 ms, 250,000-300,000/s on the same topic (`make bench`, consume). Memory stays
    # bounded by the thresholds, which this does not change.
    fetch_queue_backoff_ms: int = Field(10, ge=0)
    # small timeouts make group joins take seconds, not tens of seconds (see README)
    session_timeout_ms: int = Field(6000, ge=1000)
    heartbeat_interval_ms: int = Field(1000, ge=100)
    metadata_refresh_ms: int = Field(2000, ge=100)  # how soon a new table's topic is picked up
    statistics_interval_ms: int = Field(0, ge=0)  # librdkafka statistics (lag), 0 = off
    # a member that got no assignment (not even an empty one) this long after subscribing stops with
    # NoAssignmentError (exit 3); above librdkafka's max.poll.interval.ms (300 s), the longest a
    # healthy rebalance waits for a slow member
    assignment_timeout_s: float = Field(330.0, gt=0)
    retry_attempts: int = Field(8, ge=1)  # transient database errors, whole batch
    retry_max_wait_s: float = Field(10.0, gt=0)
    error_policy: Literal["stop", "dlq"] = "stop"
    dlq_topic: str = "streamer.dlq"
    version_column: str = "_streamer_version"
    schema_mode: Literal["auto", "managed"] = "auto"
    truncate: bool = True


class ReplicateSettings(_Section):
    """``streamer replicate``: bounded memory for large transactions (see :mod:`streamer.sources.pgoutput.spill`)."""

    # an open transaction whose buffered changes exceed this (estimated in-memory size) spills the
    # rest to a file under state_dir/spill; its apply then goes in chunks of consumer.batch_max_events
    max_transaction_memory_bytes: int = Field(64 * 1024 * 1024, ge=0)
    # streamer's local state (spill files of open transactions); relative paths are taken from the
    # working directory. Stale spill files of a crashed run of the same slot are removed at start.
    state_dir: Path = Path(".streamer")


class LoadSettings(_Section):
    """``streamer load``: the hold barrier (see :mod:`streamer.apply.holds`)."""

    hold_timeout_s: float = Field(60.0, gt=0)  # how long live consumers get to acknowledge the hold
    member_expiry_s: float = Field(30.0, gt=0)  # a consumer silent this long is taken as stopped


class StatusSettings(_Section):
    """``streamer status``: what counts as unhealthy."""

    # retained WAL (current LSN - restart_lsn) above this on any slot makes status exit 1
    max_retained_wal_bytes: int = Field(1024**3, ge=0)
    slots: str = ".*"  # regex (re.search) of the slot names status watches; default: every slot


class SchemaChangeSettings(_Section):
    """``[schema_changes]``: what the apply engine does when a source table's columns change mid-stream.

    See the README, "Schema changes", and :class:`streamer.apply.schema.SchemaManager`.
    """

    add_column: Literal["propagate", "ignore", "stop"] = "propagate"
    drop_column: Literal["ignore", "stop"] = "ignore"  # ignore: the target keeps the column and its values
    rename_column: Literal["propagate", "ignore", "stop"] = "stop"  # ignore: handled as drop + add
    widen_type: Literal["propagate", "ignore", "stop"] = "propagate"
    narrow_type: Literal["ignore", "stop"] = "ignore"  # the wider target column holds every value
    incompatible_type: Literal["ignore", "stop"] = "stop"
    new_table: Literal["propagate", "ignore", "stop"] = "propagate"


class RouteSettings(_Section):
    """Per source table (``[routes."public.customers"]``): target table and column transforms."""

    target: str = ""  # "schema.table" or "table"; empty: default routing
    rename: dict[str, str] = {}
    drop: list[str] = []
    cast: dict[str, str] = {}


class Settings(_Section):
    """All of streamer's settings. Build with :func:`load_settings`."""

    bootstrap_servers: str = ""
    connect_url: str = ""
    source_url: str = ""
    target_url: str = ""
    schema_registry_url: str | None = None
    connectors_dir: Path = Path("connectors")
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    stack: StackSettings = StackSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    replicate: ReplicateSettings = ReplicateSettings()
    load: LoadSettings = LoadSettings()
    status: StatusSettings = StatusSettings()
    schema_changes: SchemaChangeSettings = SchemaChangeSettings()
    routes: dict[str, RouteSettings] = {}

    @model_validator(mode="after")
    def _derive_endpoints(self) -> Settings:
        s = self.stack
        derived = {
            "bootstrap_servers": f"{s.host}:{s.broker_port}",
            "connect_url": f"http://{s.host}:{s.connect_port}",
            "source_url": (
                f"postgresql://{s.source_user}:{s.source_password}@{s.host}:{s.source_port}/{s.source_database}"
            ),
            "target_url": (
                f"postgresql://{s.source_user}:{s.source_password}@{s.host}:{s.source_port}/{s.target_database}"
            ),
        }
        for name, value in derived.items():
            if not getattr(self, name):
                object.__setattr__(self, name, value)
        return self


def _env_tree(env: Mapping[str, str]) -> dict[str, Any]:
    """``STREAMER_A__B=v`` -> ``{"a": {"b": "v"}}``, for keys the settings know."""
    tree: dict[str, Any] = {}
    sections = {name for name, f in Settings.model_fields.items() if isinstance(f.default, BaseModel)}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == "STREAMER_CONFIG":
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if len(path) == 1 and path[0] in Settings.model_fields and path[0] not in sections:
            tree[path[0]] = value
        elif len(path) == 2 and path[0] in sections:
            model = Settings.model_fields[path[0]].annotation
            if isinstance(model, type) and path[1] in getattr(model, "model_fields", {}):
                tree.setdefault(path[0], {})[path[1]] = value
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _origin(loc: tuple[int | str, ...], env_tree: Mapping[str, Any], file: Path | None) -> str:
    node: Any = env_tree
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            return f"in {file}" if file else "default"
        node = node[part]
    return "from $" + ENV_PREFIX + "__".join(str(p).upper() for p in loc)


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the TOML file and the environment into one validated :class:`Settings`.

    ``overrides`` (command-line options) win over both. Raises :class:`SettingsError`
    naming the first bad key and where its value came from.
    """
    env = os.environ if env is None else env
    explicit = path is not None or "STREAMER_CONFIG" in env
    file = Path(path if path is not None else env.get("STREAMER_CONFIG", DEFAULT_FILE))
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{file}: not valid TOML: {exc}") from exc
    elif explicit:
        raise SettingsError(f"settings file {file} does not exist")
    env_tree = _env_tree(env)
    merged = _merge(_merge(data, env_tree), overrides or {})
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        key = ".".join(str(p) for p in loc)
        where = _origin(loc, env_tree, file if file.exists() else None)
        got = f" (got {first['input']!r})" if first["type"] != "extra_forbidden" else ""
        msg = "unknown setting" if first["type"] == "extra_forbidden" else first["msg"]
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise SettingsError(f"setting {key} {where}: {msg}{got}{more}") from None
