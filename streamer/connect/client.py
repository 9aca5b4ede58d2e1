"""A typed client of Kafka Connect's REST API (httpx), with retries where Connect asks for them.

Retried, with exponential backoff, until ``timeout`` seconds have passed: connection errors and
timeouts (the worker is down or still starting), HTTP 409 (a rebalance is in progress, Connect's
own advice is to retry), HTTP 500 for "a rebalance is expected" (Connect's RebalanceNeededException,
right after a connector was created or deleted) and HTTP 503 (the worker's herder has not joined its
group yet). Then one
:class:`ConnectError` line names the URL and the last failure. Any other error status becomes a
:class:`ConnectError` carrying Connect's own ``message`` (404 for a connector: :class:`ConnectorNotFoundError`).

Connector names are URL-quoted in paths. Nothing here masks secrets: callers that print configs
or Connect's messages mask them (see :mod:`streamer.connect.files`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from streamer.core.errors import ConnectError, ConnectorNotFoundError

DEFAULT_TIMEOUT = 30.0
RETRY_STATUSES = frozenset({409, 503})


@dataclasses.dataclass(frozen=True)
class ConnectorPlugin:
    """One entry of ``GET /connector-plugins``."""

    class_name: str
    type: str
    version: str

    def aliases(self) -> frozenset[str]:
        """Names Connect accepts for this class: the full name, the simple name, and it without ``Connector``."""
        simple = self.class_name.rsplit(".", 1)[-1]
        names = {self.class_name, simple}
        if simple.endswith("Connector") and simple != "Connector":
            names.add(simple[: -len("Connector")])
        return frozenset(names)


@dataclasses.dataclass(frozen=True)
class TaskStatus:
    """One task of ``GET /connectors/{name}/status``."""

    id: int
    state: str
    worker_id: str
    trace: str | None = None


@dataclasses.dataclass(frozen=True)
class ConnectorStatus:
    """``GET /connectors/{name}/status``: the connector instance's state and its tasks'."""

    name: str
    state: str
    worker_id: str
    type: str
    tasks: tuple[TaskStatus, ...]
    trace: str | None = None

    @property
    def running(self) -> bool:
        """The connector and at least one task are RUNNING, and no task is in another state."""
        return self.state == "RUNNING" and bool(self.tasks) and all(t.state == "RUNNING" for t in self.tasks)

    @property
    def failed(self) -> bool:
        return self.state == "FAILED" or any(t.state == "FAILED" for t in self.tasks)


@dataclasses.dataclass(frozen=True)
class ValidationResult:
    """``PUT /connector-plugins/{class}/config/validate``: Connect's error messages by config key."""

    class_name: str
    error_count: int
    errors: Mapping[str, tuple[str, ...]]


class ConnectClient:
    """Kafka Connect's REST API at ``url``. Use as a context manager, or call :meth:`close`."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT, request_timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(request_timeout, connect=min(5.0, max(timeout, 0.5))),
            headers={"Accept": "application/json"},
        )

    def __enter__(self) -> ConnectClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ transport
    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        connector: str | None = None,
    ) -> httpx.Response:
        """One request, retried on connection errors, 409 and 503; raises ConnectError for other errors."""
        retrying = Retrying(
            retry=retry_if_exception_type(_Retry),
            wait=wait_exponential(multiplier=0.25, max=4.0),
            stop=stop_after_delay(self.timeout),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    try:
                        resp = self._http.request(method, path, params=params, json=body)
                    except httpx.TransportError as exc:
                        raise _Retry(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
                    if resp.status_code in RETRY_STATUSES or _rebalance_needed(resp):
                        what = "worker not ready" if resp.status_code == 503 else "rebalance in progress"
                        raise _Retry(f"HTTP {resp.status_code} ({what}): {_message(resp)}")
        except _Retry as exc:
            raise ConnectError(
                f"Kafka Connect at {self.url} did not answer {method} {path} within {self.timeout:g}s: {exc.reason}"
            ) from None
        if resp.status_code == 404 and connector is not None:
            raise ConnectorNotFoundError(f"connector {connector!r} not found on Kafka Connect at {self.url}")
        if resp.status_code >= 400:
            raise ConnectError(
                f"Kafka Connect at {self.url}: {method} {path} failed with HTTP {resp.status_code}: {_message(resp)}"
            )
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._request(method, path, **kwargs)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as exc:
            raise ConnectError(
                f"Kafka Connect at {self.url}: {method} {path} answered with non-JSON: {resp.text[:200]!r}"
            ) from exc

    @staticmethod
    def _path(name: str, *rest: str) -> str:
        return "/".join(["/connectors", quote(name, safe=""), *rest])

    # ------------------------------------------------------------------ worker
    def server_info(self) -> dict[str, Any]:
        """``GET /``: version, commit and Kafka cluster id."""
        return dict(self._json("GET", "/"))

    def plugins(self) -> list[ConnectorPlugin]:
        """``GET /connector-plugins``: the connector classes installed on the worker."""
        return [
            ConnectorPlugin(str(p["class"]), str(p.get("type", "")), str(p.get("version", "")))
            for p in self._json("GET", "/connector-plugins")
        ]

    def validate(self, class_name: str, config: Mapping[str, str]) -> ValidationResult:
        """``PUT /connector-plugins/{class}/config/validate``. ``config`` must hold ``name`` and ``connector.class``."""
        data = self._json(
            "PUT", f"/connector-plugins/{quote(class_name, safe='')}/config/validate", body=dict(config)
        )
        errors: dict[str, tuple[str, ...]] = {}
        for entry in data.get("configs", []):
            value = entry.get("value", {})
            if value.get("errors"):
                errors[str(value["name"])] = tuple(str(e) for e in value["errors"])
        return ValidationResult(str(data.get("name", class_name)), int(data.get("error_count", 0)), errors)

    # ------------------------------------------------------------------ connectors
    def connectors(self) -> list[str]:
        """``GET /connectors``: the names of every connector on the worker."""
        return sorted(str(n) for n in self._json("GET", "/connectors"))

    def configs(self) -> dict[str, dict[str, str]]:
        """``GET /connectors?expand=info``: every connector's stored config (placeholders unresolved), by name."""
        data = self._json("GET", "/connectors", params={"expand": "info"})
        out: dict[str, dict[str, str]] = {}
        for name, entry in data.items():
            info = entry.get("info") or {}
            out[str(name)] = {str(k): str(v) for k, v in (info.get("config") or {}).items()}
        return out

    def config(self, name: str) -> dict[str, str]:
        """``GET /connectors/{name}/config``: the stored config, ``${...}`` placeholders as written."""
        return {
            str(k): str(v) for k, v in self._json("GET", self._path(name, "config"), connector=name).items()
        }

    def put_config(self, name: str, config: Mapping[str, str]) -> bool:
        """``PUT /connectors/{name}/config``: create or replace. True when Connect created the connector.

        Connect restarts the connector on every PUT, even with an identical config (KAFKA-17719):
        compare with :meth:`config` first.
        """
        resp = self._request("PUT", self._path(name, "config"), body=dict(config))
        return resp.status_code == 201

    def task_configs(self, name: str) -> list[dict[str, str]]:
        """``GET /connectors/{name}/tasks``: the task configs of the current generation, by task id."""
        tasks = self._json("GET", self._path(name, "tasks"), connector=name)
        ordered = sorted(tasks, key=lambda t: int(t["id"]["task"]))
        return [{str(k): str(v) for k, v in t.get("config", {}).items()} for t in ordered]

    def status(self, name: str) -> ConnectorStatus:
        """``GET /connectors/{name}/status``. Right after a create Connect may answer 404 for a while."""
        data = self._json("GET", self._path(name, "status"), connector=name)
        conn = data.get("connector", {})
        tasks = tuple(
            TaskStatus(int(t["id"]), str(t["state"]), str(t.get("worker_id", "")), t.get("trace"))
            for t in sorted(data.get("tasks", []), key=lambda t: int(t["id"]))
        )
        return ConnectorStatus(
            name=str(data.get("name", name)),
            state=str(conn.get("state", "UNKNOWN")),
            worker_id=str(conn.get("worker_id", "")),
            type=str(data.get("type", "")),
            tasks=tasks,
            trace=conn.get("trace"),
        )

    def topics(self, name: str) -> list[str] | None:
        """``GET /connectors/{name}/topics``: topics the connector has used; None if the worker does not answer it.

        The worker disables the endpoint with ``topic.tracking.allow.reset=false`` /
        ``topic.tracking.enable=false`` (then it answers with an error).
        """
        try:
            data = self._json("GET", self._path(name, "topics"), connector=name)
        except ConnectorNotFoundError:
            raise
        except ConnectError:
            return None
        entry = data.get(name) if isinstance(data, dict) else None
        if not isinstance(entry, dict):
            return None
        return sorted(str(t) for t in entry.get("topics", []))

    def restart(self, name: str, only_failed: bool = True) -> ConnectorStatus | None:
        """``POST /connectors/{name}/restart?includeTasks=true&onlyFailed=...``.

        Returns the status Connect answers with (202), or None when it had nothing to restart (204).
        """
        params = {"includeTasks": "true", "onlyFailed": "true" if only_failed else "false"}
        resp = self._request("POST", self._path(name, "restart"), params=params, connector=name)
        if resp.status_code == 204 or not resp.content:
            return None
        data = resp.json()
        conn = data.get("connector", {})
        return ConnectorStatus(
            name=str(data.get("name", name)),
            state=str(conn.get("state", "UNKNOWN")),
            worker_id=str(conn.get("worker_id", "")),
            type=str(data.get("type", "")),
            tasks=tuple(
                TaskStatus(int(t["id"]), str(t["state"]), str(t.get("worker_id", "")), t.get("trace"))
                for t in data.get("tasks", [])
            ),
            trace=conn.get("trace"),
        )

    def pause(self, name: str) -> None:
        """``PUT /connectors/{name}/pause``: the connector and its tasks stop processing (asynchronously)."""
        self._request("PUT", self._path(name, "pause"), connector=name)

    def resume(self, name: str) -> None:
        """``PUT /connectors/{name}/resume``."""
        self._request("PUT", self._path(name, "resume"), connector=name)

    def delete(self, name: str) -> None:
        """``DELETE /connectors/{name}``: stops it and removes its config (its offsets stay in Connect)."""
        self._request("DELETE", self._path(name), connector=name)


class _Retry(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _rebalance_needed(resp: httpx.Response) -> bool:
    """Connect's 500 for a RebalanceNeededException ("... because a rebalance is expected"): retry it like 409."""
    return resp.status_code == 500 and "rebalance is expected" in resp.text


def _message(resp: httpx.Response) -> str:
    """Connect's own error message (``{"error_code": ..., "message": ...}``), else the body's start."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or resp.reason_phrase
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return resp.text.strip()[:300]
