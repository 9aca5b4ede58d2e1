"""Connector files: loading, shape checks, planning, diffs, masking and topics, without Connect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamer.connect.client import ConnectorPlugin
from streamer.connect.files import (
    MASK,
    SCOPE_KEY,
    ConnectorFile,
    KeyChange,
    Masker,
    configured_topics,
    diff,
    display_value,
    is_placeholder_only,
    is_secret_key,
    key_positions,
    literal_secrets,
    load_dir,
    make_plan,
    parse_file,
    scope_of,
    unknown_classes,
)
from streamer.core.errors import ConnectorFileError

PG = "io.debezium.connector.postgresql.PostgresConnector"


def good(name: str = "inv", **extra: str) -> dict[str, object]:
    config: dict[str, str] = {
        "connector.class": PG,
        "database.hostname": "${env:STREAMER_SOURCE_HOST}",
        "database.password": "${env:STREAMER_SOURCE_PASSWORD}",
        "table.include.list": "public.a",
        "topic.prefix": name,
    }
    config.update(extra)
    return {"name": name, "config": config}


def write(directory: Path, filename: str, content: object) -> Path:
    path = directory / filename
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2) + "\n")
    return path


def parse(text: str, path: Path = Path("c/x.json")) -> tuple[ConnectorFile | None, list[str]]:
    loaded, problems = parse_file(path, text)
    return loaded, [str(p) for p in problems]


def as_file(data: dict[str, object], path: str = "c/inv.json") -> ConnectorFile:
    loaded, problems = parse(json.dumps(data, indent=2), Path(path))
    assert loaded is not None, problems
    return loaded


# ---------------------------------------------------------------------- loading
def test_syntax_error_names_file_line_and_column() -> None:
    text = '{\n  "name": "x",\n  "config": {\n    "a": "1"\n    "b": "2"\n  }\n}\n'
    loaded, problems = parse(text)
    assert loaded is None
    assert problems == ["c/x.json:5:5: invalid JSON: Expecting ',' delimiter"]


def test_trailing_comma_and_empty_file_are_located() -> None:
    assert parse('{"name": "x", "config": {"a": "1",}}')[1] == [
        "c/x.json:1:35: invalid JSON: Expecting property name enclosed in double quotes"
    ]
    assert parse("")[1] == ["c/x.json:1:1: invalid JSON: Expecting value"]


def test_non_string_values_are_errors_with_their_position_and_the_quoted_form() -> None:
    text = '{\n  "name": "x",\n  "config": {\n    "connector.class": "C",\n    "tasks.max": 1,\n    "x.enable": true,\n    "y": null,\n    "z": {"a": "b"}\n  }\n}\n'
    loaded, problems = parse(text)
    assert loaded is None
    assert problems == [
        "c/x.json:5:5: config key 'tasks.max': value must be a string (Connect takes strings), got a number 1; write \"1\"",
        "c/x.json:6:5: config key 'x.enable': value must be a string (Connect takes strings), got a boolean true; write \"true\"",
        "c/x.json:7:5: config key 'y': value must be a string (Connect takes strings), got null null",
        'c/x.json:8:5: config key \'z\': value must be a string (Connect takes strings), got an object {"a": "b"}',
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([1, 2], 'c/x.json:1:1: a connector file holds one JSON object: {"name": ..., "config": {...}}'),
        ({"config": {"connector.class": "C"}}, 'c/x.json:1:1: missing "name" (the connector\'s name)'),
        ({"name": "x"}, 'c/x.json:1:1: missing "config" (an object of string values)'),
        (
            {"name": "", "config": {"connector.class": "C"}},
            'c/x.json:1:2: "name" must be a non-empty string, got str',
        ),
        (
            {"name": 5, "config": {"connector.class": "C"}},
            'c/x.json:1:2: "name" must be a non-empty string, got a number',
        ),
        (
            {"name": "a/b", "config": {"connector.class": "C"}},
            "c/x.json:1:2: \"name\" 'a/b' has leading/trailing",
        ),
        ({"name": "x", "config": "C"}, 'c/x.json:1:15: "config" must be an object of string values, got str'),
        ({"name": "x", "config": {"tasks.max": "1"}}, 'c/x.json:1:15: config has no "connector.class"'),
        ({"name": "x", "config": {"connector.class": " "}}, 'c/x.json:1:26: "connector.class" is empty'),
        (
            {"name": "x", "config": {"connector.class": "C", "name": "y"}},
            "c/x.json:1:50: config \"name\" 'y' differs from the connector's \"name\" 'x'",
        ),
        (
            {"name": "x", "config": {"connector.class": "C"}, "tasks": []},
            "c/x.json:1:51: unknown top-level key 'tasks'",
        ),
        (
            {"name": "x", "config": {"connector.class": "C", SCOPE_KEY: "s"}},
            'c/x.json:1:50: "streamer.scope" is set by `streamer connectors apply`: remove it',
        ),
    ],
)
def test_shape_errors(data: object, expected: str) -> None:
    loaded, problems = parse(json.dumps(data))
    assert loaded is None
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems[0]


def test_duplicate_keys_are_reported_at_the_second_occurrence() -> None:
    text = '{"name": "x",\n "config": {"connector.class": "C",\n  "slot.name": "a",\n  "slot.name": "b"}}'
    loaded, problems = parse(text)
    assert loaded is None
    assert problems == ["c/x.json:4:3: duplicate key 'config.slot.name' (JSON keeps only the last)"]


def test_a_good_file_keeps_values_and_placeholders_exactly() -> None:
    data = good(**{"database.port": "${env:STREAMER_SOURCE_PORT}", "name": "inv"})
    f = as_file(data)
    assert f.name == "inv"
    assert f.connector_class == PG
    assert f.config["database.password"] == "${env:STREAMER_SOURCE_PASSWORD}"
    assert f.config["database.port"] == "${env:STREAMER_SOURCE_PORT}"
    assert f.desired("connectors") == {**f.config, "name": "inv", SCOPE_KEY: "connectors"}
    assert f.connect_config() == {**f.config, "name": "inv"}
    assert str(f.at("table.include.list", "bad")) == "c/inv.json:7:5: bad"
    assert str(f.at("not.in.file", "bad")) == "c/inv.json: bad"


def test_key_positions_follow_nesting_and_skip_arrays() -> None:
    text = '{"a": {"b": "1", "c": [{"d": "2"}]},\n "e": "3", "b": "4"}'
    pos = key_positions(text)
    assert pos[("a",)] == [(1, 2)]
    assert pos[("a", "b")] == [(1, 8)]
    assert pos[("a", "c")] == [(1, 18)]
    assert ("a", "c", "d") not in pos and ("d",) not in pos
    assert pos[("e",)] == [(2, 2)]
    assert pos[("b",)] == [(2, 12)]


def test_load_dir_reports_every_file_and_duplicate_names(tmp_path: Path) -> None:
    write(tmp_path, "a.json", good("one"))
    write(tmp_path, "b.json", good("one"))
    write(tmp_path, "c.json", '{"name": "c", "config": {"connector.class": "C", "n": 3}}')
    write(tmp_path, "d.json", "{oops")
    write(tmp_path, "notes.txt", "not a connector")
    write(tmp_path, ".hidden.json", "{oops")
    with pytest.raises(ConnectorFileError) as err:
        load_dir(tmp_path)
    lines = str(err.value).splitlines()
    assert lines == [
        f"{tmp_path}/c.json:1:50: config key 'n': value must be a string (Connect takes strings), got a number 3; write \"3\"",
        f"{tmp_path}/d.json:1:2: invalid JSON: Expecting property name enclosed in double quotes",
        f"{tmp_path}/b.json:2:3: connector name 'one' is also used by {tmp_path}/a.json",
    ]


def test_load_dir_sorted_and_missing_dir(tmp_path: Path) -> None:
    write(tmp_path, "b.json", good("b"))
    write(tmp_path, "a.json", good("a"))
    assert [f.name for f in load_dir(tmp_path)] == ["a", "b"]
    (tmp_path / "empty").mkdir()
    assert load_dir(tmp_path / "empty") == []
    with pytest.raises(ConnectorFileError, match="does not exist"):
        load_dir(tmp_path / "nope")


def test_load_dir_rejects_non_utf8(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_bytes(b'{"name": "\xff"}')
    with pytest.raises(ConnectorFileError, match=r"x\.json: not UTF-8"):
        load_dir(tmp_path)


def test_scope_is_the_directory_name(tmp_path: Path) -> None:
    (tmp_path / "connectors").mkdir()
    assert scope_of(tmp_path / "connectors") == "connectors"
    assert scope_of(tmp_path / "connectors" / ".") == "connectors"


# ---------------------------------------------------------------------- masking
@pytest.mark.parametrize(
    "key",
    [
        "database.password",
        "database.sslpassword",
        "ssl.key.password",
        "ssl.keystore.password",
        "connection.passwd",
        "aws.secret.access.key",
        "client.secret",
        "transforms.x.api.key",
        "value.converter.basic.auth.user.info",
        "basic.auth.user.info",
        "sasl.jaas.config",
        "oauth.token.endpoint.secret",
        "auth_token",
        "gcp.credentials.json",
        "apikey",
        "database.sslkey",
        "DATABASE.PASSWORD",
    ],
)
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "key.converter",
        "key.converter.schemas.enable",
        "message.key.columns",
        "primary.key.mode",
        "primary.key.fields",
        "transforms.unwrap.drop.tombstones",
        "tombstones.on.delete",
        "database.user",
        "database.sslcert",
        "ssl.keystore.location",
        "aws.access.key.id",
        "topic.prefix",
        "slot.name",
    ],
)
def test_not_secret_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_display_keeps_placeholders_masks_literal_secrets() -> None:
    assert display_value("database.password", "${env:PW}") == "${env:PW}"
    assert display_value("basic.auth.user.info", "${env:U}:${env:P}") == MASK  # a literal ':' in between
    assert (
        display_value("sasl.jaas.config", "${file:/etc/jaas:conf}${env:X}")
        == "${file:/etc/jaas:conf}${env:X}"
    )
    assert display_value("database.password", "hunter22") == MASK
    assert display_value("database.password", "${env:PW}suffix") == MASK
    assert display_value("key.converter", "org.apache.kafka.connect.json.JsonConverter") == (
        "org.apache.kafka.connect.json.JsonConverter"
    )
    assert display_value("database.user", "") == '""'
    assert is_placeholder_only("${env:A}${env:B}")
    assert not is_placeholder_only("x${env:A}")
    assert not is_placeholder_only("")


def test_masker_scrubs_literal_secrets_from_text_only() -> None:
    masker = Masker([{"database.password": "hunter22", "database.user": "postgres", "api.key": "${env:K}"}])
    masker.add({"ssl.key.password": "sslpw-123"})
    text = "auth failed for user postgres with hunter22 (ssl sslpw-123) ${env:K}"
    assert masker.scrub(text) == f"auth failed for user postgres with {MASK} (ssl {MASK}) ${{env:K}}"


def test_literal_secret_warnings() -> None:
    f = as_file(good(**{"database.password": "hunter22", "api.key": "${env:K}", "key.converter": "x"}))
    warnings = [str(w) for w in literal_secrets([f])]
    assert warnings == [
        "c/inv.json:6:5: database.password is a literal secret; prefer a placeholder such as ${env:NAME}"
    ]


# ---------------------------------------------------------------------- diff and plan
def test_diff_added_removed_changed_sorted() -> None:
    changes = diff({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "20", "d": "4"})
    assert changes == [KeyChange("b", "2", "20"), KeyChange("c", "3", None), KeyChange("d", None, "4")]
    assert [c.render() for c in changes] == ["~ b: 2 -> 20", "- c: 3", "+ d: 4"]
    assert diff({"a": "1"}, {"a": "1"}) == []


def test_diff_rendering_masks_secrets_but_keeps_placeholders() -> None:
    assert KeyChange("database.password", "old-secret", "new-secret").render() == (
        f"~ database.password: {MASK} -> {MASK} (secret changed)"
    )
    assert (
        KeyChange("database.password", "${env:A}", "lit-secret").render()
        == f"~ database.password: ${{env:A}} -> {MASK}"
    )
    assert KeyChange("api.key", None, "abc").render() == f"+ api.key: {MASK}"
    assert KeyChange("key.converter", "a", "b").render() == "~ key.converter: a -> b"


def stored(f: ConnectorFile, changes: dict[str, str | None] | None = None) -> dict[str, str]:
    """The config as Connect stores it after an apply, with ``changes`` (None removes a key)."""
    config = f.desired("connectors")
    for key, value in (changes or {}).items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


def test_plan_create_update_unchanged_and_orphans_without_prune() -> None:
    new = as_file(good("new"), "c/new.json")
    upd = as_file(good("upd", **{"table.include.list": "public.a,public.b"}), "c/upd.json")
    same = as_file(good("same"), "c/same.json")
    current = {
        "upd": stored(upd, {"table.include.list": "public.a", "snapshot.mode": "initial"}),
        "same": stored(same),
        "gone": {"name": "gone", "connector.class": PG, SCOPE_KEY: "connectors"},
        "elsewhere": {"name": "elsewhere", "connector.class": PG, SCOPE_KEY: "other"},
        "by-hand": {"name": "by-hand", "connector.class": PG},
    }
    plan = make_plan([new, upd, same], current, "connectors")
    assert [(a.kind, a.name) for a in plan.actions] == [
        ("create", "new"),
        ("update", "upd"),
        ("unchanged", "same"),
    ]
    assert plan.orphans == ("gone",)
    upd_action = plan.actions[1]
    assert upd_action.changes == (
        KeyChange("snapshot.mode", "initial", None),
        KeyChange("table.include.list", "public.a", "public.a,public.b"),
    )
    assert plan.changes_anything
    assert plan.summary() == "Plan: 1 to create, 1 to update, 1 unchanged, 0 to delete."


def test_plan_prune_deletes_only_this_scopes_connectors_without_a_file() -> None:
    keep = as_file(good("keep"))
    current = {
        "keep": stored(keep),
        "gone": {"name": "gone", "connector.class": PG, SCOPE_KEY: "connectors"},
        "elsewhere": {"name": "elsewhere", "connector.class": PG, SCOPE_KEY: "other"},
        "by-hand": {"name": "by-hand", "connector.class": PG},
    }
    plan = make_plan([keep], current, "connectors", prune=True)
    assert [(a.kind, a.name) for a in plan.actions] == [("unchanged", "keep"), ("delete", "gone")]
    assert plan.orphans == ()
    assert not make_plan([keep], {"keep": stored(keep)}, "connectors", prune=True).changes_anything


def test_plan_adopts_a_connector_created_by_hand_with_the_scope_marker() -> None:
    f = as_file(good("inv"))
    by_hand = stored(f, {SCOPE_KEY: None})
    plan = make_plan([f], {"inv": by_hand}, "connectors")
    assert [(a.kind, a.changes) for a in plan.actions] == [
        ("update", (KeyChange(SCOPE_KEY, None, "connectors"),))
    ]


def test_plan_render_is_terraform_like_and_masks_literal_secrets() -> None:
    new = as_file(good("new", **{"database.password": "hunter22"}), "c/new.json")
    upd = as_file(good("upd", **{"database.password": "s3cret-new"}), "c/upd.json")
    same = as_file(good("same"), "c/same.json")
    current = {
        "upd": stored(upd, {"database.password": "s3cret-old", "heartbeat.interval.ms": "10000"}),
        "same": stored(same),
        "gone": {"name": "gone", "connector.class": PG, SCOPE_KEY: "connectors"},
    }
    lines = make_plan([new, upd, same], current, "connectors", prune=True).render()
    text = "\n".join(lines)
    assert "hunter22" not in text and "s3cret" not in text
    assert lines == [
        "+ create new  (c/new.json)",
        f"    + connector.class: {PG}",
        "    + database.hostname: ${env:STREAMER_SOURCE_HOST}",
        f"    + database.password: {MASK}",
        "    + streamer.scope: connectors",
        "    + table.include.list: public.a",
        "    + topic.prefix: new",
        "~ update upd  (c/upd.json)",
        f"    ~ database.password: {MASK} -> {MASK} (secret changed)",
        "    - heartbeat.interval.ms: 10000",
        "= unchanged same  (c/same.json)",
        "- delete gone  (no file; streamer.scope=connectors)",
        "Plan: 1 to create, 1 to update, 1 unchanged, 1 to delete.",
    ]


def test_plan_render_notes_orphans_and_shows_placeholders() -> None:
    f = as_file(good("a"))
    current = {"a": stored(f, {"database.password": "${env:OLD_PW}"}), "b": {SCOPE_KEY: "connectors"}}
    lines = make_plan([f], current, "connectors").render()
    assert lines == [
        "~ update a  (c/inv.json)",
        "    ~ database.password: ${env:OLD_PW} -> ${env:STREAMER_SOURCE_PASSWORD}",
        "note: 1 connector(s) with streamer.scope=connectors have no file and are kept (--prune deletes them): b",
        "Plan: 0 to create, 1 to update, 0 unchanged, 0 to delete.",
    ]


# ---------------------------------------------------------------------- topics and classes
def test_configured_topics_of_debezium_and_sinks() -> None:
    debezium = {
        "topic.prefix": "inventory",
        "table.include.list": "public.customers, public.orders,public\\.x,public.order_.*",
        "heartbeat.interval.ms": "10000",
    }
    assert configured_topics(debezium) == [
        "inventory.public.customers",
        "inventory.public.orders",
        "inventory.public.x",
        "regex:inventory\\.public.order_.*",
        "__debezium-heartbeat.inventory",
    ]
    assert configured_topics({"topic.prefix": "p", "heartbeat.interval.ms": "0"}) == ["regex:p\\..*"]
    assert configured_topics({"topics": "a, b", "topics.regex": "c.*"}) == ["a", "b", "regex:c.*"]
    assert configured_topics({"topic": "t"}) == ["t"]
    assert configured_topics({}) == []


def test_unknown_class_lists_the_workers_classes_and_accepts_aliases() -> None:
    plugins = [
        ConnectorPlugin(PG, "source", "3.1.1.Final"),
        ConnectorPlugin("org.apache.kafka.connect.file.FileStreamSinkConnector", "sink", "3.9.0"),
    ]
    assert plugins[0].aliases() == {PG, "PostgresConnector", "Postgres"}
    ok = [as_file({"name": n, "config": {"connector.class": c}}) for n, c in [("a", PG), ("b", "Postgres")]]
    assert unknown_classes(ok, plugins) == []
    bad = as_file({"name": "x", "config": {"connector.class": "com.example.Nope"}}, "c/x.json")
    assert [str(p) for p in unknown_classes([bad], plugins)] == [
        "c/x.json:4:5: connector.class 'com.example.Nope' is not installed on the worker; it has: "
        f"{PG}, org.apache.kafka.connect.file.FileStreamSinkConnector"
    ]
