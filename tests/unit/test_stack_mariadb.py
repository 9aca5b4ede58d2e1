"""The MariaDB part of the native stack: part selection, prerequisites, init SQL, environment (pure)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from streamer.core.errors import PrerequisiteError, StackError
from streamer.settings import load_settings
from streamer.stack.local import MARIADB_GRANTS, Stack


def _stack(tmp_path: Path, **env: str) -> Stack:
    return Stack(
        load_settings(env={"STREAMER_STACK__DIR": str(tmp_path / "stack"), **env}), log=lambda _: None
    )


def test_parts_in_start_order_and_only_known_ones(tmp_path: Path) -> None:
    st = _stack(tmp_path)
    assert st.parts == ("source", "mariadb", "broker", "connect")
    assert st.select(["connect", "mariadb"]) == ("mariadb", "connect")
    assert st.select(None) == st.parts
    with pytest.raises(StackError, match="unknown stack part.*mysql"):
        st.select(["mysql"])
    off = _stack(tmp_path, STREAMER_STACK__MARIADB="false")
    assert off.parts == ("source", "broker", "connect")
    assert off.mariadb_env() == {} and "STREAMER_MARIADB_HOST" not in off.env()
    with pytest.raises(StackError, match=r"mariadb is off: stack.mariadb = false"):
        off.select(["mariadb"])


def test_missing_server_names_the_package_only_when_mariadb_is_wanted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_which = shutil.which

    def which(name: str, *args: object, **kw: object) -> str | None:
        if name in ("mariadbd", "mysqld", "mariadb-install-db", "mysql_install_db"):
            return None
        return real_which(name)

    monkeypatch.setattr("streamer.stack.local.shutil.which", which)
    st = _stack(tmp_path)
    with pytest.raises(
        PrerequisiteError, match="install the Debian package mariadb-server.*STREAMER_STACK__MARIADB=false"
    ):
        st.check_prerequisites(["mariadb"])
    # without MariaDB among the parts the next missing thing is reported (this dir has no artifacts)
    with pytest.raises(PrerequisiteError, match="stack artifacts not fetched"):
        st.check_prerequisites(["broker"])
    with pytest.raises(PrerequisiteError, match="stack artifacts not fetched"):
        _stack(tmp_path, STREAMER_STACK__MARIADB="false").check_prerequisites()


def test_init_sql_quotes_names_and_passwords(tmp_path: Path) -> None:
    st = _stack(
        tmp_path,
        STREAMER_STACK__MARIADB_USER="o'neil",
        STREAMER_STACK__MARIADB_PASSWORD="a'b\\c",
        STREAMER_STACK__MARIADB_ROOT_PASSWORD="r'",
        STREAMER_STACK__MARIADB_DATABASE="in`v",
    )
    st.conf_dir.mkdir(parents=True)
    path = st._mariadb_init_sql()
    assert path.stat().st_mode & 0o777 == 0o600
    sql = path.read_text().splitlines()
    assert "CREATE DATABASE IF NOT EXISTS `in``v` CHARACTER SET utf8mb4;" in sql
    assert "CREATE USER IF NOT EXISTS 'o''neil'@'%' IDENTIFIED BY 'a''b\\\\c';" in sql
    assert f"GRANT {MARIADB_GRANTS} ON *.* TO 'o''neil'@'%';" in sql
    assert "ALTER USER IF EXISTS 'root'@'127.0.0.1' IDENTIFIED BY 'r''';" in sql


def test_env_names_what_the_connector_file_reads(tmp_path: Path) -> None:
    st = _stack(tmp_path, STREAMER_STACK__MARIADB_PORT="13399", STREAMER_STACK__MARIADB_ROOT_PASSWORD="p@ss")
    env = st.env()
    assert env["STREAMER_MARIADB_PORT"] == "13399"
    assert env["STREAMER_MARIADB_USER"] == "streamer" and env["STREAMER_MARIADB_DATABASE"] == "inventory"
    assert env["STREAMER_MARIADB_URL"] == "mysql://root:p%40ss@127.0.0.1:13399/inventory"
    worker = st.connect_env()  # a value already in the environment wins
    assert worker["STREAMER_CONNECT_BOOTSTRAP_SERVERS"] == os.environ.get(
        "STREAMER_CONNECT_BOOTSTRAP_SERVERS", "127.0.0.1:9092"
    )
    for name, value in st.mariadb_env().items():
        assert worker[name] == os.environ.get(name, value)
