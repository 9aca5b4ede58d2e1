"""streamer.connect.publications pure logic: which listed tables are checked, which source is read."""

from __future__ import annotations

from pathlib import Path

from streamer.connect.files import ConnectorFile
from streamer.connect.publications import _listed, _params


def test_listed_takes_literal_schema_table_names_only() -> None:
    config = {"table.include.list": "public.payment, public.customer,public.log_.*,nodot,s.t$"}
    assert _listed(config) == [("public", "payment"), ("public", "customer")]


def test_params_use_the_file_then_a_source_url_of_the_same_database() -> None:
    config = {
        "database.hostname": "${env:H}",
        "database.port": "5432",
        "database.user": "u",
        "database.password": "p",
        "database.dbname": "inventory",
    }
    f = ConnectorFile(Path("c.json"), "c", config)
    assert _params(f, "", {"H": "db"}) == {
        "host": "db",
        "port": "5432",
        "user": "u",
        "password": "p",
        "dbname": "inventory",
    }
    url = "postgresql://a:b@127.0.0.1:15432/inventory"
    fallback = _params(f, url, {})  # H unset: the source_url of the same database
    assert fallback is not None and fallback["host"] == "127.0.0.1"
    other = ConnectorFile(Path("c.json"), "c", {**config, "database.dbname": "billing"})
    assert _params(other, url, {}) is None  # another database: not guessed
