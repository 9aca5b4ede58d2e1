"""Connectors as files: ``connectors/*.json`` loaded, checked, validated, planned, applied and watched.

A connector file holds one connector in the shape Connect itself takes::

    {"name": "inventory", "config": {"connector.class": "...", "database.password": "${env:PW}", ...}}

Rules (see the README section "Connectors as files"):

* **Strings only.** Every config value must be a JSON string, as Connect stores them; a number or
  boolean is an error naming the key and the quoted form to write (no silent coercion: the file is
  exactly what is pushed and what ``GET /connectors/{name}/config`` gives back, so plans never differ
  by representation). ``name`` must be unique across files; ``config.name``, if present, must equal it.
* **Placeholders** (``${env:NAME}``, any ``${provider:...}``) are passed through untouched and shown
  as written: the Connect worker resolves them (``config.providers=env``), never this tool.
* **Secrets are masked** in all output: a key is secret when one of its parts (split at ``.``, ``_``,
  ``-``) contains ``password``, ``passwd``, ``secret``, ``token`` or ``credential``, or is ``jaas``
  (``sasl.jaas.config`` embeds a password), or when its *last* part ends in ``key`` (``api.key``,
  ``aws.secret.access.key``, ``ssl.key``), or when it ends in ``user.info`` (``basic.auth.user.info``
  is ``user:password``). ``key.converter`` and ``message.key.columns`` are not secret: ``key`` is not
  their last part. A secret's value is shown only when it is made of placeholders alone (the
  placeholder names a variable, it holds no secret); any literal is shown as ``****``, and literal
  secret values are also scrubbed from Connect's messages and traces before they are printed.
* **Ownership.** ``apply`` adds ``streamer.scope`` to every config it pushes; its value, the
  scope, is the connector directory's name (``connectors``). ``--prune`` deletes only
  connectors on the worker whose ``streamer.scope`` equals the scope and that have no file: never a
  connector somebody created by hand, by another tool, or from a directory of another name.
* **Minimal writes.** Connect restarts a connector on every ``PUT .../config``, even an identical one
  (KAFKA-17719), so ``apply`` compares with the stored config and only PUTs what differs.

Loading, shape checks, planning, diffs, masking and topic derivation are pure; the functions at the
end talk to Connect through :class:`streamer.connect.client.ConnectClient`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from streamer.core.errors import (
    ConnectorFailedError,
    ConnectorFileError,
    ConnectorNotFoundError,
    ConnectorValidationError,
)

if TYPE_CHECKING:  # the REST client (httpx) is imported where it is used: the sink imports resolve_env
    from streamer.connect.client import ConnectClient, ConnectorPlugin, ConnectorStatus

SCOPE_KEY = "streamer.scope"
MASK = "****"
CLASS_KEY = "connector.class"
# how long a just-changed connector's state must hold before it counts (see wait_running):
# longer than Connect's task.shutdown.graceful.timeout.ms (5 s), when no state change was seen
SETTLE_SECONDS = 6.0
# after a state change was seen
CONFIRM_SECONDS = 1.0
# a FAILED state whose traces equal the ones from before the PUT may be the old instance's
STALE_FAILURE_SECONDS = 20.0

_PLACEHOLDERS_ONLY = re.compile(r"(?:\$\{[^{}]*\})+")
_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential")
_TOP_LEVEL = ("name", "config")


# ---------------------------------------------------------------------- problems and positions
@dataclasses.dataclass(frozen=True)
class Problem:
    """One error or warning about a connector file, printed as ``file:line:col: message``."""

    file: Path
    message: str
    line: int | None = None
    col: int | None = None

    def __str__(self) -> str:
        where = str(self.file)
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        return f"{where}: {self.message}"


def key_positions(text: str) -> dict[tuple[str, ...], list[tuple[int, int]]]:
    """Where each object key of a *valid* JSON document is: path of keys -> [(line, col), ...] (1-based).

    A key that occurs twice under the same path has two positions (``json`` keeps the last value).
    """
    line_starts = [0] + [m.end() for m in re.finditer(r"\n", text)]

    def line_col(offset: int) -> tuple[int, int]:
        lo, hi = 0, len(line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if line_starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1, offset - line_starts[lo] + 1

    positions: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    containers: list[str | None] = []  # the key that owns each open container (None: root or array item)
    pending: str | None = None
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            k = j + 1
            while k < n and text[k] in " \t\r\n":
                k += 1
            if k < n and text[k] == ":":
                key = json.loads(text[i : j + 1])
                path = tuple(c for c in containers[1:] if c is not None) + (key,)
                if all(c is not None for c in containers[1:]):
                    positions.setdefault(path, []).append(line_col(i))
                pending = key
                i = k + 1
                continue
            pending = None
            i = j + 1
            continue
        if ch in "{[":
            containers.append(pending)
            pending = None
        elif ch in "}]":
            if containers:
                containers.pop()
            pending = None
        elif ch == ",":
            pending = None
        i += 1
    return positions


# ---------------------------------------------------------------------- files
@dataclasses.dataclass(frozen=True)
class ConnectorFile:
    """One connector file: its path, the connector's name and config as written (strings only)."""

    path: Path
    name: str
    config: Mapping[str, str]
    positions: Mapping[tuple[str, ...], Sequence[tuple[int, int]]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def connector_class(self) -> str:
        return self.config[CLASS_KEY]

    def at(self, key: str | None, message: str) -> Problem:
        """A problem placed at ``config.<key>``'s position in the file when it is there."""
        pos = self.positions.get(("config", key)) if key is not None else None
        if pos:
            return Problem(self.path, message, pos[-1][0], pos[-1][1])
        return Problem(self.path, message)

    def connect_config(self) -> dict[str, str]:
        """The config as sent to Connect's validate endpoint: the file's, with ``name``."""
        return {**self.config, "name": self.name}

    def desired(self, scope: str) -> dict[str, str]:
        """The config ``apply`` pushes: the file's, with ``name`` and the ``streamer.scope`` marker."""
        return {**self.config, "name": self.name, SCOPE_KEY: scope}


def scope_of(directory: Path) -> str:
    """The default ownership scope of a connector directory: its name (``connectors``)."""
    return directory.resolve().name or "connectors"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def parse_file(path: Path, text: str) -> tuple[ConnectorFile | None, list[Problem]]:
    """Check one file's text: syntax (with line and column), duplicate keys, then shape. Pure."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [Problem(path, f"invalid JSON: {exc.msg}", exc.lineno, exc.colno)]
    positions = key_positions(text)
    problems: list[Problem] = []

    def at(path_keys: tuple[str, ...], message: str, which: int = -1) -> Problem:
        pos = positions.get(path_keys)
        if pos:
            return Problem(path, message, pos[which][0], pos[which][1])
        return Problem(path, message)

    for keys, where in sorted(positions.items()):
        if len(where) > 1 and len(keys) <= 2:
            problems.append(at(keys, f"duplicate key {'.'.join(keys)!r} (JSON keeps only the last)"))
    if not isinstance(data, dict):
        problems.append(
            Problem(path, 'a connector file holds one JSON object: {"name": ..., "config": {...}}', 1, 1)
        )
        return None, problems
    for key in data:
        if key not in _TOP_LEVEL:
            problems.append(
                at((key,), f'unknown top-level key {key!r}: a connector file holds only "name" and "config"')
            )
    name = data.get("name")
    if "name" not in data:
        problems.append(Problem(path, 'missing "name" (the connector\'s name)', 1, 1))
    elif not isinstance(name, str) or not name.strip():
        problems.append(at(("name",), f'"name" must be a non-empty string, got {_describe(name)}'))
    elif name != name.strip() or "/" in name or any(ord(c) < 32 for c in name):
        problems.append(
            at(("name",), f'"name" {name!r} has leading/trailing spaces, "/" or control characters')
        )
    config = data.get("config")
    if "config" not in data:
        problems.append(Problem(path, 'missing "config" (an object of string values)', 1, 1))
        return None, problems
    if not isinstance(config, dict):
        problems.append(
            at(("config",), f'"config" must be an object of string values, got {_describe(config)}')
        )
        return None, problems
    for key, value in config.items():
        if not key:
            problems.append(at(("config", key), "empty config key"))
        elif not isinstance(value, str):
            hint = f"; write {json.dumps(json.dumps(value))}" if isinstance(value, bool | int | float) else ""
            problems.append(
                at(
                    ("config", key),
                    f"config key {key!r}: value must be a string (Connect takes strings), "
                    f"got {_describe(value)} {json.dumps(value)}{hint}",
                )
            )
    if CLASS_KEY not in config:
        problems.append(at(("config",), f'config has no "{CLASS_KEY}"'))
    elif isinstance(config[CLASS_KEY], str) and not config[CLASS_KEY].strip():
        problems.append(at(("config", CLASS_KEY), f'"{CLASS_KEY}" is empty'))
    if "name" in config and isinstance(name, str) and config["name"] != name:
        problems.append(
            at(
                ("config", "name"),
                f'config "name" {config["name"]!r} differs from the connector\'s "name" {name!r}',
            )
        )
    if SCOPE_KEY in config:
        problems.append(
            at(("config", SCOPE_KEY), f'"{SCOPE_KEY}" is set by `streamer connectors apply`: remove it')
        )
    if problems:
        return None, problems
    assert isinstance(name, str)
    strings = {str(k): str(v) for k, v in config.items()}
    return ConnectorFile(path, name, strings, {k: tuple(v) for k, v in positions.items()}), []


def load_file(path: Path) -> ConnectorFile:
    """One connector file; :class:`ConnectorFileError` lists every problem in it."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConnectorFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConnectorFileError(f"{path}: cannot read: {exc.strerror}") from None
    loaded, problems = parse_file(path, text)
    if problems or loaded is None:
        raise ConnectorFileError("\n".join(str(p) for p in problems))
    return loaded


def connector_paths(directory: Path) -> list[Path]:
    """``*.json`` in ``directory`` (not hidden, not recursive), sorted."""
    if not directory.is_dir():
        raise ConnectorFileError(
            f"connector directory {directory} does not exist (set --dir or connectors_dir)"
        )
    return sorted(p for p in directory.glob("*.json") if p.is_file() and not p.name.startswith("."))


def load_dir(directory: Path) -> list[ConnectorFile]:
    """Every connector file of ``directory``; one :class:`ConnectorFileError` lists all problems of all files."""
    files: list[ConnectorFile] = []
    problems: list[str] = []
    for path in connector_paths(directory):
        try:
            files.append(load_file(path))
        except ConnectorFileError as exc:
            problems.append(str(exc))
    seen: dict[str, ConnectorFile] = {}
    for f in files:
        if f.name in seen:
            first = seen[f.name]
            problems.append(
                str(Problem(f.path, f"connector name {f.name!r} is also used by {first.path}", *_name_pos(f)))
            )
        else:
            seen[f.name] = f
    if problems:
        raise ConnectorFileError("\n".join(problems))
    return files


def _name_pos(f: ConnectorFile) -> tuple[int | None, int | None]:
    pos = f.positions.get(("name",))
    return (pos[0][0], pos[0][1]) if pos else (None, None)


def literal_secrets(files: Iterable[ConnectorFile]) -> list[Problem]:
    """Warnings: secret keys whose value is a literal instead of a ``${env:...}`` placeholder."""
    return [
        f.at(key, f"{key} is a literal secret; prefer a placeholder such as ${{env:NAME}}")
        for f in files
        for key, value in f.config.items()
        if is_secret_key(key) and value and not is_placeholder_only(value)
    ]


# ---------------------------------------------------------------------- masking
def is_secret_key(key: str) -> bool:
    """Whether a config key holds a secret (see the module docstring for the rule)."""
    lowered = key.lower()
    parts = [p for p in re.split(r"[._\-]", lowered) if p]
    if not parts:
        return False
    if any(word in part for part in parts for word in _SECRET_WORDS):
        return True
    if "jaas" in parts:
        return True
    if parts[-1].endswith("key"):
        return True
    return lowered.endswith(("user.info", "userinfo"))


def is_placeholder_only(value: str) -> bool:
    """``${env:PW}`` or ``${env:USER}${env:PW}``: nothing but config-provider references."""
    return bool(_PLACEHOLDERS_ONLY.fullmatch(value))


def display_value(key: str, value: str) -> str:
    """How a value is printed: masked when the key is secret and the value is not only placeholders."""
    if value == "":
        return '""'
    if is_secret_key(key) and not is_placeholder_only(value):
        return MASK
    return value


class Masker:
    """Scrubs literal secret values (from files and from the worker's configs) out of free text."""

    def __init__(self, configs: Iterable[Mapping[str, str]] = ()) -> None:
        self._secrets: set[str] = set()
        for config in configs:
            self.add(config)

    def add(self, config: Mapping[str, str]) -> None:
        for key, value in config.items():
            if is_secret_key(key) and len(value) >= 3 and not is_placeholder_only(value):
                self._secrets.add(value)

    def scrub(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text


# ---------------------------------------------------------------------- diff and plan
@dataclasses.dataclass(frozen=True)
class KeyChange:
    """One key's change: added (``old`` None), removed (``new`` None) or changed."""

    key: str
    old: str | None
    new: str | None

    def render(self) -> str:
        if self.old is None:
            assert self.new is not None
            return f"+ {self.key}: {display_value(self.key, self.new)}"
        if self.new is None:
            return f"- {self.key}: {display_value(self.key, self.old)}"
        old, new = display_value(self.key, self.old), display_value(self.key, self.new)
        note = " (secret changed)" if old == new == MASK else ""
        return f"~ {self.key}: {old} -> {new}{note}"


def diff(current: Mapping[str, str], desired: Mapping[str, str]) -> list[KeyChange]:
    """Key-level changes from ``current`` to ``desired``, sorted by key."""
    changes = []
    for key in sorted(set(current) | set(desired)):
        old, new = current.get(key), desired.get(key)
        if old != new:
            changes.append(KeyChange(key, old, new))
    return changes


ActionKind = Literal["create", "update", "unchanged", "delete"]


@dataclasses.dataclass(frozen=True)
class Action:
    """What ``apply`` does to one connector."""

    kind: ActionKind
    name: str
    file: ConnectorFile | None
    desired: Mapping[str, str] | None
    changes: tuple[KeyChange, ...] = ()

    @property
    def writes(self) -> bool:
        return self.kind in ("create", "update")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every connector's action, files' connectors first (in file order), then deletions."""

    scope: str
    actions: tuple[Action, ...]
    orphans: tuple[str, ...] = ()  # managed connectors without a file, kept because --prune was not given

    def of(self, kind: ActionKind) -> list[Action]:
        return [a for a in self.actions if a.kind == kind]

    @property
    def changes_anything(self) -> bool:
        return any(a.kind != "unchanged" for a in self.actions)

    def summary(self) -> str:
        n = {k: len(self.of(k)) for k in ("create", "update", "unchanged", "delete")}
        return (
            f"Plan: {n['create']} to create, {n['update']} to update, "
            f"{n['unchanged']} unchanged, {n['delete']} to delete."
        )

    def render(self) -> list[str]:
        """Terraform-like lines: ``+ create``, ``~ update`` with ``key: old -> new``, ``= unchanged``, ``- delete``."""
        lines: list[str] = []
        for a in self.actions:
            where = f"  ({a.file.path})" if a.file else f"  (no file; {SCOPE_KEY}={self.scope})"
            if a.kind == "create":
                assert a.desired is not None
                lines.append(f"+ create {a.name}{where}")
                lines += [
                    f"    {KeyChange(k, None, v).render()}"
                    for k, v in sorted(a.desired.items())
                    if k != "name"
                ]
            elif a.kind == "update":
                lines.append(f"~ update {a.name}{where}")
                lines += [f"    {c.render()}" for c in a.changes]
            elif a.kind == "unchanged":
                lines.append(f"= unchanged {a.name}{where}")
            else:
                lines.append(f"- delete {a.name}{where}")
        if self.orphans:
            lines.append(
                f"note: {len(self.orphans)} connector(s) with {SCOPE_KEY}={self.scope} have no file and are kept "
                f"(--prune deletes them): {', '.join(self.orphans)}"
            )
        lines.append(self.summary())
        return lines


def make_plan(
    files: Sequence[ConnectorFile], current: Mapping[str, Mapping[str, str]], scope: str, prune: bool = False
) -> Plan:
    """Compare the files with the worker's stored configs (``current``, by name). Pure.

    Only connectors whose ``streamer.scope`` equals ``scope`` and that have no file are deleted, and
    only with ``prune``; without it they are listed as orphans.
    """
    actions: list[Action] = []
    names = {f.name for f in files}
    for f in files:
        desired = f.desired(scope)
        if f.name not in current:
            actions.append(Action("create", f.name, f, desired))
            continue
        changes = tuple(diff(current[f.name], desired))
        actions.append(Action("update" if changes else "unchanged", f.name, f, desired, changes))
    managed = sorted(n for n, cfg in current.items() if cfg.get(SCOPE_KEY) == scope and n not in names)
    if prune:
        actions += [Action("delete", n, None, None) for n in managed]
        return Plan(scope, tuple(actions))
    return Plan(scope, tuple(actions), tuple(managed))


# ---------------------------------------------------------------------- topics
_LITERAL_TABLE = re.compile(r"(?:[A-Za-z0-9_$-]|\\\.)+(?:\.(?:[A-Za-z0-9_$-]|\\\.)+)*")


def configured_topics(config: Mapping[str, str]) -> list[str]:
    """The topics a connector's config says it uses. Regexes are given as ``regex:<pattern>``.

    Sinks: ``topics`` / ``topics.regex``. Debezium sources: ``<topic.prefix>.<table>`` for each entry
    of ``table.include.list`` (``collection.include.list``), the heartbeat topic when
    ``heartbeat.interval.ms`` > 0, and ``schema.history.internal.kafka.topic``. ``topic`` for simple
    sources. Transforms that reroute records are not followed: Connect's ``/topics`` is the truth.
    """
    topics: list[str] = []
    if config.get("topics"):
        topics += [t.strip() for t in config["topics"].split(",") if t.strip()]
    if config.get("topics.regex"):
        topics.append(f"regex:{config['topics.regex']}")
    if config.get("topic"):
        topics.append(config["topic"])
    prefix = config.get("topic.prefix")
    if prefix:
        include = config.get("table.include.list") or config.get("collection.include.list") or ""
        entries = [e.strip() for e in include.split(",") if e.strip()]
        if not entries:
            topics.append(f"regex:{re.escape(prefix)}\\..*")
        for entry in entries:
            if _LITERAL_TABLE.fullmatch(entry):
                topics.append(f"{prefix}.{entry.replace(chr(92) + '.', '.')}")
            else:
                topics.append(f"regex:{re.escape(prefix)}\\.{entry}")
        try:
            heartbeat = int(config.get("heartbeat.interval.ms", "0"))
        except ValueError:
            heartbeat = 0
        if heartbeat > 0:
            topics.append(f"{config.get('topic.heartbeat.prefix', '__debezium-heartbeat')}.{prefix}")
    if config.get("schema.history.internal.kafka.topic"):
        topics.append(config["schema.history.internal.kafka.topic"])
    return list(dict.fromkeys(topics))


# ---------------------------------------------------------------------- against Connect
def unknown_classes(files: Sequence[ConnectorFile], plugins: Sequence[ConnectorPlugin]) -> list[Problem]:
    """Files whose ``connector.class`` no installed plugin answers to (by class name or Connect alias). Pure."""
    known = set().union(*(p.aliases() for p in plugins)) if plugins else set()
    installed = ", ".join(sorted(p.class_name for p in plugins)) or "none"
    return [
        f.at(
            CLASS_KEY,
            f"connector.class {f.connector_class!r} is not installed on the worker; it has: {installed}",
        )
        for f in files
        if f.connector_class not in known
    ]


def validate(client: ConnectClient, files: Sequence[ConnectorFile], masker: Masker | None = None) -> None:
    """Ask Connect to validate every file's config. :class:`ConnectorValidationError` lists every field error
    as ``file:line:col: key: message`` (and unknown connector classes with the classes the worker has)."""
    masker = masker or Masker(f.config for f in files)
    problems = unknown_classes(files, client.plugins())
    bad = {p.file for p in problems}
    for f in files:
        if f.path in bad:
            continue
        result = client.validate(f.connector_class, f.connect_config())
        for key, messages in sorted(result.errors.items()):
            problems += [f.at(key, f"{key}: {masker.scrub(m)}") for m in messages]
        if result.error_count and not result.errors:
            problems.append(Problem(f.path, f"Connect reports {result.error_count} error(s) without a key"))
    if problems:
        raise ConnectorValidationError("\n".join(str(p) for p in problems))


Report = Callable[[str], None]


def execute(client: ConnectClient, plan: Plan, report: Report) -> None:
    """Carry out a plan: deletions first (a renamed connector frees its slot), then PUT each create/update."""
    for a in plan.of("delete"):
        client.delete(a.name)
        report(f"- deleted {a.name}")
    for a in plan.actions:
        if a.writes:
            assert a.desired is not None
            created = client.put_config(a.name, a.desired)
            report(f"{'+ created' if created else '~ updated'} {a.name}")


def failure_message(status: ConnectorStatus, masker: Masker) -> str:
    """A FAILED connector's and tasks' states with Connect's full traces (secrets scrubbed)."""
    parts = [
        f"connector {status.name} FAILED"
        if status.state == "FAILED"
        else f"connector {status.name} has failed tasks"
    ]
    if status.state == "FAILED":
        parts.append(f"connector on worker {status.worker_id}:\n{masker.scrub(status.trace or '(no trace)')}")
    for t in status.tasks:
        if t.state == "FAILED":
            parts.append(
                f"task {t.id} FAILED on worker {t.worker_id}:\n{masker.scrub(t.trace or '(no trace)')}"
            )
    parts.append(
        f"(fix the cause, then `streamer connectors restart {status.name}`, or change its file and apply again)"
    )
    return "\n".join(parts)


def state_line(status: ConnectorStatus | None) -> str:
    """``RUNNING (task 0 FAILED)``; ``ABSENT`` for a connector the worker does not have."""
    if status is None:
        return "ABSENT"
    tasks = ", ".join(f"task {t.id} {t.state}" for t in status.tasks) or "no tasks yet"
    return f"{status.state} ({tasks})"


def _tasks_reflect(task_configs: Sequence[Mapping[str, str]], desired: Mapping[str, str]) -> bool:
    """Every task config agrees with ``desired`` on the keys both have (tasks were regenerated after a PUT)."""
    return all(tc.get(k, v) == v for tc in task_configs for k, v in desired.items())


def _traces(status: ConnectorStatus) -> frozenset[str]:
    return frozenset(t for t in [status.trace, *(x.trace for x in status.tasks)] if t)


def failed_traces(client: ConnectClient, names: Iterable[str]) -> dict[str, frozenset[str]]:
    """The traces of connectors that are FAILED now (before a PUT restarts them)."""
    out: dict[str, frozenset[str]] = {}
    for name in names:
        try:
            st = client.status(name)
        except ConnectorNotFoundError:
            continue
        if st.failed:
            out[name] = _traces(st)
    return out


def wait_running(
    client: ConnectClient,
    targets: Mapping[str, Mapping[str, str]],
    changed: Collection[str],
    timeout: float,
    report: Report,
    masker: Masker,
    before: Mapping[str, frozenset[str]] | None = None,
    created: Collection[str] = (),
    settle: float = SETTLE_SECONDS,
    poll: float = 0.25,
) -> dict[str, ConnectorStatus]:
    """Wait until each connector of ``targets`` (name -> desired config) and all its tasks are RUNNING.

    FAILED raises :class:`ConnectorFailedError` with Connect's traces; so do PAUSED/STOPPED (they
    do not become RUNNING on their own) and the timeout.

    A connector PUT by this apply (``changed``) shows its old tasks' state until Connect has
    restarted them, and Connect's REST status carries no generation (on this stack it does not
    even show the UNASSIGNED between the old and the new task). So a changed connector's state
    counts only:

    * when it was ``created`` (it has no old tasks), or its tasks were seen to change after the PUT
      (RUNNING -> FAILED, FAILED -> RUNNING, a new trace): once that state held
      :data:`CONFIRM_SECONDS`;
    * otherwise once the state held ``settle`` seconds (longer than Connect takes to stop a task)
      and then :data:`CONFIRM_SECONDS` more after ``GET /connectors/{name}/tasks`` showed the new
      config. That call waits while the worker rebalances, so it returns after the new tasks were
      started; a FAILED state with the very traces it had ``before`` the PUT must hold
      :data:`STALE_FAILURE_SECONDS` (the same error again, or the old instance).
    """
    before = before or {}
    deadline = time.monotonic() + timeout
    since: dict[str, tuple[str, float]] = {}  # name -> (signature, first seen) of a final state
    tasks_seen: dict[str, str] = {}  # name -> the tasks' part of the last signature
    moved: set[str] = set(created)  # changed connectors whose tasks were seen to change
    reflected: dict[str, float] = {}  # name -> when GET .../tasks returned the new config
    last: dict[str, str] = {}
    done: dict[str, ConnectorStatus] = {}
    while True:
        for name in sorted(set(targets) - set(done)):
            try:
                st: ConnectorStatus | None = client.status(name)
            except ConnectorNotFoundError:
                st = None
            now = time.monotonic()
            last[name] = state_line(st) if st else "no status yet"
            tasks_part = _tasks_signature(st)
            if name in changed and tasks_seen.get(name, tasks_part) != tasks_part:
                moved.add(name)
            tasks_seen[name] = tasks_part
            if st is None or not (st.running or st.failed or st.state in ("PAUSED", "STOPPED")):
                since.pop(name, None)
                reflected.pop(name, None)
                continue
            signature = f"{st.state}|{tasks_part}|{st.trace}"
            if since.get(name, ("", 0.0))[0] != signature:
                since[name] = (signature, now)
                reflected.pop(name, None)
            need = 0.0
            if name in changed:
                if name in moved:
                    need = CONFIRM_SECONDS
                elif st.failed and _traces(st) == before.get(name):
                    need = STALE_FAILURE_SECONDS
                else:
                    need = settle
            if now - since[name][1] < need:
                continue
            if name in changed and name not in moved:
                if name not in reflected:
                    if not _tasks_reflect(client.task_configs(name), targets[name]):
                        since.pop(name, None)
                        last[name] += ", tasks not reconfigured yet"
                        continue
                    reflected[name] = time.monotonic()
                if time.monotonic() - reflected[name] < CONFIRM_SECONDS or since[name][1] > reflected[name]:
                    continue
            if st.running:
                done[name] = st
                workers = ", ".join(sorted({t.worker_id for t in st.tasks}))
                report(f"{name}: RUNNING, {len(st.tasks)} task(s) on {workers}")
            elif st.failed:
                raise ConnectorFailedError(failure_message(st, masker))
            else:
                raise ConnectorFailedError(
                    f"connector {name} is {st.state}: it will not run until `streamer connectors resume {name}`"
                )
        if len(done) == len(targets):
            return done
        if time.monotonic() >= deadline:
            waiting = "; ".join(f"{n}: {last.get(n, '?')}" for n in sorted(set(targets) - set(done)))
            raise ConnectorFailedError(f"not RUNNING after {timeout:g}s: {waiting}")
        time.sleep(poll)


def _tasks_signature(status: ConnectorStatus | None) -> str:
    if status is None:
        return "absent"
    return ";".join(f"{t.id}:{t.state}:{t.worker_id}:{hash(t.trace)}" for t in status.tasks) or "none"


@dataclasses.dataclass(frozen=True)
class ConnectorReport:
    """One connector as ``status`` shows it."""

    name: str
    file: Path | None
    status: ConnectorStatus | None  # None: not on the worker
    topics_configured: tuple[str, ...]
    topics_active: tuple[str, ...] | None  # None: Connect's /topics did not answer

    @property
    def ok(self) -> bool:
        """RUNNING, or deliberately PAUSED/STOPPED; not FAILED, absent or in transition."""
        st = self.status
        if st is None or st.failed:
            return False
        return st.running or st.state in ("PAUSED", "STOPPED")

    @property
    def topics(self) -> list[str]:
        return list(dict.fromkeys([*self.topics_configured, *(self.topics_active or ())]))

    def to_json(self, masker: Masker) -> dict[str, Any]:
        st = self.status
        return {
            "name": self.name,
            "file": str(self.file) if self.file else None,
            "state": st.state if st else "ABSENT",
            "worker_id": st.worker_id if st else None,
            "type": st.type if st else None,
            "trace": masker.scrub(st.trace) if st and st.trace else None,
            "tasks": [
                {
                    "id": t.id,
                    "state": t.state,
                    "worker_id": t.worker_id,
                    "trace": masker.scrub(t.trace) if t.trace else None,
                }
                for t in (st.tasks if st else ())
            ],
            "topics": {"configured": list(self.topics_configured), "active": self.topics_active},
        }


def collect_status(
    client: ConnectClient, files: Sequence[ConnectorFile], scope: str, everything: bool = False
) -> tuple[list[ConnectorReport], Masker]:
    """Status of the files' connectors and of the scope's orphans (``everything``: every connector on the worker)."""
    from streamer.connect.client import ConnectorStatus

    current = client.configs()
    masker = Masker([*(f.config for f in files), *current.values()])
    by_name = {f.name: f for f in files}
    names = list(by_name)
    extra = sorted(
        n for n, cfg in current.items() if n not in by_name and (everything or cfg.get(SCOPE_KEY) == scope)
    )
    reports = []
    for name in [*names, *extra]:
        file = by_name.get(name)
        config = current.get(name) or (file.config if file else {})
        status: ConnectorStatus | None = None
        active: list[str] | None = None
        if name in current:
            try:
                status = client.status(name)
                active = client.topics(name)
            except ConnectorNotFoundError:  # created a moment ago: no status written yet
                status = ConnectorStatus(name, "NO STATUS YET", "", "", ())
        reports.append(
            ConnectorReport(
                name,
                file.path if file else None,
                status,
                tuple(configured_topics(config)),
                tuple(active) if active is not None else None,
            )
        )
    return reports, masker


_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


def resolve_env(value: Any, env: Mapping[str, str]) -> str | None:
    """A connector setting with ``${env:NAME}`` references resolved; None if one is not set."""
    text = str(value)
    missing = [m.group(1) for m in _ENV_REF.finditer(text) if m.group(1) not in env]
    if missing or "${" in _ENV_REF.sub("", text):
        return None
    return _ENV_REF.sub(lambda m: env[m.group(1)], text)
