"""docker-compose.yml cannot run here (no Docker engine): check it parses and agrees with the native stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from streamer.settings import load_settings
from streamer.stack import POSTGRES_CONNECTOR

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
