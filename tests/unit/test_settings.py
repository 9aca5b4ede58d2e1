from __future__ import annotations

from pathlib import Path

import pytest

from streamer.core.errors import SettingsError
from streamer.settings import load_settings


def test_defaults_derive_endpoints_from_stack_ports(tmp_path: Path) -> None:
    s = load_settings(env={}) if not (tmp_path / "streamer.toml").exists() else None
    assert s is not None
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.connect_url == "http://127.0.0.1:8083"
    assert s.source_url == "postgresql://postgres:postgres@127.0.0.1:15432/inventory"
    assert s.stack.source_port != 5432


def test_file_then_env_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "streamer.toml"
    cfg.write_text('bootstrap_servers = "file:1"\n[stack]\nbroker_port = 19092\nconnect_port = 18083\n')
    s = load_settings(
        cfg, env={"STREAMER_BOOTSTRAP_SERVERS": "env:2", "STREAMER_STACK__CONNECT_PORT": "28083"}
    )
    assert s.bootstrap_servers == "env:2"  # env wins over the file
    assert s.stack.broker_port == 19092  # from the file
    assert s.stack.connect_port == 28083  # env wins inside a section too
    assert s.connect_url == "http://127.0.0.1:28083"  # derived from the effective port


def test_overrides_win_over_env() -> None:
    s = load_settings(env={"STREAMER_TARGET_URL": "sqlite:///a"}, overrides={"target_url": "sqlite:///b"})
    assert s.target_url == "sqlite:///b"


def test_bad_env_value_names_the_key_and_variable() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(env={"STREAMER_STACK__BROKER_PORT": "ninety"})
    msg = str(err.value)
    assert "stack.broker_port" in msg
    assert "$STREAMER_STACK__BROKER_PORT" in msg
    assert "'ninety'" in msg


def test_out_of_range_value_in_file_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "streamer.toml"
    cfg.write_text("[consumer]\nbatch_max_events = 0\n")
    with pytest.raises(
        SettingsError, match=rf"consumer.batch_max_events in {cfg}: .*greater than or equal to 1"
    ):
        load_settings(cfg, env={})


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "streamer.toml"
    cfg.write_text("[stack]\nbroker_prot = 1\n")
    with pytest.raises(SettingsError, match=r"stack.broker_prot .*unknown setting"):
        load_settings(cfg, env={})


def test_bad_toml_and_missing_explicit_file(tmp_path: Path) -> None:
    cfg = tmp_path / "streamer.toml"
    cfg.write_text("[stack\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(cfg, env={})
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(env={"STREAMER_CONFIG": str(tmp_path / "nope.toml")})


def test_unknown_env_variables_are_ignored() -> None:
    s = load_settings(env={"STREAMER_SOURCE_PASSWORD": "secret", "STREAMER_NOPE__X": "1"})
    assert s.consumer.group == "streamer"


def test_literal_choice_error() -> None:
    with pytest.raises(SettingsError, match=r"consumer.error_policy from \$STREAMER_CONSUMER__ERROR_POLICY"):
        load_settings(env={"STREAMER_CONSUMER__ERROR_POLICY": "ignore"})
