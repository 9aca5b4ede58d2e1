"""docker-compose.yml cannot run here (no Docker engine): check it parses and agrees with the native stack."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from streamer.settings import load_settings
from streamer.stack.local import CONNECT_PRODUCER, MARIADB_GRANTS, POSTGRES_CONNECTOR, Stack

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _host_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[0]) for p in service.get("ports", [])}


def test_services_and_ports_match_native_defaults() -> None:
    services = _compose()["services"]
    s = load_settings(env={}).stack
    assert set(services) >= {"kafka", "connect", "source", "schema-registry"}
    assert _host_ports(services["kafka"]) == {s.broker_port}
    assert _host_ports(services["connect"]) == {s.connect_port}
    assert _host_ports(services["source"]) == {s.source_port}
    assert _host_ports(services["schema-registry"]) == {s.registry_port}
    for name, svc in services.items():
        assert "healthcheck" in svc, f"{name} has no healthcheck"


def test_kafka_is_kraft_apache_kafka() -> None:
    kafka = _compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert "broker" in env["KAFKA_PROCESS_ROLES"] and "controller" in env["KAFKA_PROCESS_ROLES"]
    assert not any("ZOOKEEPER" in k for k in env)
    s = load_settings(env={}).stack
    assert f"127.0.0.1:{s.broker_port}" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_connect_has_env_provider_and_source_credentials() -> None:
    services = _compose()["services"]
    connect = services["connect"]
    assert connect["image"].startswith("quay.io/debezium/connect:3.1")
    env = connect["environment"]
    assert env["CONNECT_CONFIG_PROVIDERS"] == "env"
    assert env["CONNECT_CONFIG_PROVIDERS_ENV_CLASS"].endswith("EnvVarConfigProvider")
    s = load_settings(env={}).stack
    src = services["source"]["environment"]
    assert env["STREAMER_SOURCE_USER"] == src["POSTGRES_USER"] == s.source_user
    assert env["STREAMER_SOURCE_PASSWORD"] == src["POSTGRES_PASSWORD"] == s.source_password
    assert env["STREAMER_SOURCE_DATABASE"] == src["POSTGRES_DB"] == s.source_database
    assert POSTGRES_CONNECTOR in " ".join(connect["healthcheck"]["test"])


def test_source_postgres_is_logical_and_makes_the_target_database() -> None:
    compose = _compose()
    src = compose["services"]["source"]
    assert src["image"].startswith("postgres:16")
    assert "wal_level=logical" in src["command"]
    s = load_settings(env={}).stack
    assert f"CREATE DATABASE {s.target_database}" in compose["configs"]["create-target-db"]["content"]


# ---------------------------------------------------------------- the streamer service (issue 6)
def test_streamer_service_runs_consume_from_the_repository() -> None:
    compose = _compose()
    svc = compose["services"]["streamer"]
    assert svc["image"] == "python:3.11-slim"
    assert "build" not in svc  # no Dockerfile: the top-level layout is fixed
    command = " ".join(svc["command"])
    assert "pip install" in command and "exec streamer consume" in command
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    for path in ("pyproject.toml", "README.md", "streamer", "connectors"):
        assert mounts[f"/src/{path}"] == f"./{path}"
        assert (ROOT / path).exists()
    # installed from a copy: the mounts are read-only, the build writes next to the sources
    assert all(v.endswith(":ro") for v in svc["volumes"] if v.startswith("./"))
    assert "cp -r /src/. /app" in command and "/app" in command.split("pip install", 1)[1]
    for volume in (v.split(":")[0] for v in svc["volumes"] if not v.startswith("./")):
        assert volume in compose["volumes"]


def test_streamer_service_is_scalable() -> None:
    svc = _compose()["services"]["streamer"]
    # --scale needs replicas that do not collide: no fixed name, host port or hostname
    assert "container_name" not in svc and "hostname" not in svc and "ports" not in svc
    assert svc["expose"] == ["9108"]
    assert "--metrics-port 9108" in " ".join(svc["command"])
    assert "9108/metrics" in " ".join(svc["healthcheck"]["test"])
    # one group for every replica; graceful stop long enough to finish a batch and leave the group
    assert svc["environment"]["STREAMER_CONSUMER__GROUP"]
    assert svc["stop_signal"] == "SIGTERM"
    assert int(str(svc["stop_grace_period"]).rstrip("s")) >= 30
    assert str(svc["restart"]).startswith("on-failure:")  # bounded: a poison record does not loop forever
    assert svc["profiles"] == ["streamer"]  # `make up` starts the stack only


def test_streamer_service_settings_point_at_the_compose_services() -> None:
    services = _compose()["services"]
    svc = services["streamer"]
    env = {k: str(v) for k, v in svc["environment"].items()}
    s = load_settings(env=env)  # every name is a real setting, every value valid
    kafka_env = services["kafka"]["environment"]
    assert f"INTERNAL://{s.bootstrap_servers}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert s.connect_url == "http://connect:8083"
    src = services["source"]["environment"]
    for url, database in ((s.source_url, src["POSTGRES_DB"]), (s.target_url, "target")):
        assert url == f"postgresql://{src['POSTGRES_USER']}:{src['POSTGRES_PASSWORD']}@source:5432/{database}"
    assert "CREATE DATABASE target" in _compose()["configs"]["create-target-db"]["content"]
    assert s.log_format == "json"
    for dep in ("kafka", "source", "connect"):
        assert svc["depends_on"][dep]["condition"] == "service_healthy"


# ---------------------------------------------------------------- the MariaDB source (issue 13)
def test_mariadb_source_matches_the_native_one() -> None:
    compose = _compose()
    services = compose["services"]
    s = load_settings(env={}).stack
    db = services["mariadb"]
    assert db["image"] == "mariadb:10.11"
    assert _host_ports(db) == {s.mariadb_port}
    for flag in ("--log-bin=binlog", "--binlog-format=ROW", "--binlog-row-image=FULL"):
        assert flag in db["command"]
    assert f"--server-id={s.mariadb_server_id}" in db["command"]
    env = db["environment"]
    assert env["MARIADB_ROOT_PASSWORD"] == s.mariadb_root_password
    assert (env["MARIADB_USER"], env["MARIADB_PASSWORD"]) == (s.mariadb_user, s.mariadb_password)
    assert env["MARIADB_DATABASE"] == s.mariadb_database
    grants = compose["configs"]["mariadb-replication-grants"]["content"]
    assert f"GRANT {MARIADB_GRANTS} ON *.* TO '{s.mariadb_user}'@'%'" in grants
    # the connector file's placeholders resolve on the compose worker as on the native one
    connect = services["connect"]
    assert connect["depends_on"]["mariadb"]["condition"] == "service_healthy"
    cenv = {k: str(v) for k, v in connect["environment"].items()}
    assert cenv["STREAMER_MARIADB_HOST"] == "mariadb" and cenv["STREAMER_MARIADB_PORT"] == "3306"
    assert (cenv["STREAMER_MARIADB_USER"], cenv["STREAMER_MARIADB_PASSWORD"]) == (
        s.mariadb_user,
        s.mariadb_password,
    )
    assert cenv["STREAMER_CONNECT_BOOTSTRAP_SERVERS"] == "kafka:29092"
    config = json.loads((ROOT / "connectors" / "mariadb-inventory.json").read_text())["config"]
    placeholders = set(re.findall(r"\$\{env:([A-Z_]+)\}", json.dumps(config)))
    assert placeholders and placeholders <= set(cenv)
    native = Stack(load_settings(env={})).connect_env()
    assert placeholders <= set(native)
    assert "mariadb-data" in compose["volumes"]


def test_connect_producer_matches_native_worker(tmp_path: Path) -> None:
    """The Connect service's CONNECT_PRODUCER_* equal the native worker's producer.* (issue 14)."""
    env = _compose()["services"]["connect"]["environment"]
    producer = {
        k.removeprefix("CONNECT_PRODUCER_").lower().replace("_", "."): str(v)
        for k, v in env.items()
        if k.startswith("CONNECT_PRODUCER_")
    }
    assert producer == CONNECT_PRODUCER
    assert env["CONNECT_CONNECTOR_CLIENT_CONFIG_OVERRIDE_POLICY"] == "All"
    stack = Stack(load_settings(env={}, overrides={"stack": {"dir": str(tmp_path)}}))
    stack.conf_dir.mkdir(parents=True)
    props_path, _log4j = stack._write_connect_conf()
    props = dict(
        line.split("=", 1)
        for line in props_path.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert {k.removeprefix("producer."): v for k, v in props.items() if k.startswith("producer.")} == producer
    assert props["connector.client.config.override.policy"] == "All"
