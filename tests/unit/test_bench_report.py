"""The bench table (issue 14): pass/fail of each figure against its floor, and the tuned settings."""

from __future__ import annotations

import json
import math
from pathlib import Path

from streamer.bench.capture import OLD, new_settings
from streamer.bench.delay import connector_config
from streamer.bench.report import Figure, render
from streamer.stack.local import CONNECT_PRODUCER

ROOT = Path(__file__).resolve().parents[2]


def test_rate_figures_pass_at_or_above_their_floor() -> None:
    assert Figure("b", "x", 70, "ev/s", "plain", 100, 0.7).passed
    assert not Figure("b", "x", 69, "ev/s", "plain", 100, 0.7).passed
    assert Figure("b", "x", 69, "ev/s", "plain", 100, None).passed  # reported only


def test_delay_figures_pass_at_or_below_their_floor() -> None:
    assert Figure("d", "p99", 999, "ms", "target", 1000, 1.0, at_most=True).passed
    assert not Figure("d", "p99", 1001, "ms", "target", 1000, 1.0, at_most=True).passed


def test_a_figure_without_a_measured_value_fails() -> None:
    assert not Figure("b", "did not run", math.nan, "", "", math.nan, 1.0).passed
    assert not Figure("b", "x", math.nan, "ev/s", "plain", 100, 0.7).passed


def test_render_one_row_per_figure_with_ratio_floor_and_result() -> None:
    table = render(
        [
            Figure("consume", "consume", 7000, "ev/s", "plain read", 10000, 0.7),
            Figure("delay", "p50", 450, "ms", "target", 300, 1.0, at_most=True),
        ]
    ).splitlines()
    assert len(table) == 4
    assert [c.strip() for c in table[2].strip("|").split("|")] == [
        "consume",
        "consume",
        "7,000 ev/s",
        "plain read 10,000 ev/s",
        "0.70",
        ">= 0.7",
        "PASS",
    ]
    assert [c.strip() for c in table[3].strip("|").split("|")][-3:] == ["1.50", "<= 1", "FAIL"]


def test_capture_bench_compares_defaults_with_the_shipped_settings() -> None:
    inventory = json.loads((ROOT / "connectors" / "inventory.json").read_text())["config"]
    new = new_settings()
    for key, value in CONNECT_PRODUCER.items():
        assert new[f"producer.override.{key}"] == value
        assert OLD[f"producer.override.{key}"] != value
    for key in ("max.batch.size", "max.queue.size", "poll.interval.ms"):
        assert new[key] == inventory[key] != OLD[key]


def test_delay_bench_connector_is_inventory_json_on_its_own_tables() -> None:
    inventory = json.loads((ROOT / "connectors" / "inventory.json").read_text())["config"]
    config = connector_config("bdelx", "bdelx")
    assert config["table.include.list"] == "bdelx.customers,bdelx.products,bdelx.orders"
    assert (config["slot.name"], config["publication.name"], config["topic.prefix"]) == (
        "bdelx_slot",
        "bdelx_pub",
        "bdelx",
    )
    same = {
        k
        for k in inventory
        if k not in ("table.include.list", "slot.name", "publication.name", "topic.prefix")
    }
    assert {k: config[k] for k in same} == {k: inventory[k] for k in same}
