"""streamer.apply.fetch pure logic: where the consumer reads values events lack, and the incomplete report."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from streamer.apply.fetch import IncompleteRow, build_fetcher, connector_sources, incomplete_text
from streamer.settings import load_settings


def _write(directory: Path, name: str, config: dict[str, str]) -> None:
    (directory / f"{name}.json").write_text(json.dumps({"name": name, "config": config}))


PG = "io.debezium.connector.postgresql.PostgresConnector"


def test_connector_sources_resolve_env_references(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "shop",
        {
            "connector.class": PG,
            "database.hostname": "${env:H}",
            "database.port": "5433",
            "database.user": "u",
            "database.password": "${env:PW}",
            "database.dbname": "shop",
        },
    )
    # a secret from another config provider cannot be read here: that source is left out
    _write(
        tmp_path,
        "vault",
        {"connector.class": PG, "database.password": "${vault:x}", "database.dbname": "other"},
    )
    _write(tmp_path, "mysql", {"connector.class": "io.debezium.connector.mysql.MySqlConnector"})
    found = connector_sources(tmp_path, {"H": "db.example", "PW": "s3cret"})
    assert found == {
        "shop": {"host": "db.example", "port": "5433", "user": "u", "password": "s3cret", "dbname": "shop"}
    }
    assert connector_sources(tmp_path, {"H": "db.example"}) == {}  # PW unset: not guessed


def test_source_url_wins_over_the_connector_files(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "inv",
        {"connector.class": PG, "database.hostname": "elsewhere", "database.dbname": "inventory"},
    )
    settings = load_settings(
        env={
            "STREAMER_SOURCE_URL": "postgresql://a:b@127.0.0.1:15432/inventory",
            "STREAMER_CONNECTORS_DIR": str(tmp_path),
        }
    )
    fetcher = build_fetcher(settings, env={})
    assert fetcher.sources["inventory"]["host"] == "127.0.0.1"
    assert fetcher.sources[None]["dbname"] == "inventory"


def test_incomplete_text_names_table_key_columns_and_next_step() -> None:
    row = IncompleteRow(
        "s.docs", ["7"], "s.docs", "0000000000000001", ["big"], "no source", dt.datetime(2026, 1, 1)
    )
    lines = incomplete_text([row.to_json()])
    assert lines[0] == (
        "incomplete row s.docs key ['7']: big not carried by the change at 0000000000000001 and not read "
        "from the source (no source)"
    )
    assert "next:" in lines[-1]
    assert incomplete_text([]) == []
