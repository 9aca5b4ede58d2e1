"""The "not captured" part of validate's outputs: plain lines, JSON, and the verdict left alone."""

from __future__ import annotations

import pytest

from streamer.connect.publications import capture_drops
from streamer.validate.core import TableDiff
from streamer.validate.report import TableResult, as_json, not_captured_lines, print_plain


def _result() -> TableResult:
    diff = TableDiff(source_rows=3, target_rows=3, key_columns=("id",), not_captured={"fulltext": "tsvector"})
    return TableResult("public.film", "public.film", diff)


def test_not_captured_columns_leave_the_verdict_equal_and_are_listed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    r = _result()
    assert r.equal
    print_plain([r], limit=10, show_values=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("NOT_CAPTURED table=public.film column=fulltext type=tsvector: ")
    assert "column.exclude.list: public.film.fulltext" in lines[1]
    assert lines[-1] == "RESULT equal tables=1 different=0 not_captured=1"
    assert not_captured_lines(r) == [lines[1]]


def test_json_lists_them_with_the_fix() -> None:
    doc = as_json([_result()], limit=10, show_values=False)
    assert doc["ok"] is True
    (entry,) = doc["tables"][0]["not_captured"]
    assert (entry["column"], entry["type"]) == ("fulltext", "tsvector")
    assert "managed table" in entry["fix"]


def test_the_catalog_knowledge_is_the_connectors_one() -> None:
    assert capture_drops("tsvector", "b") and capture_drops("regclass", "b") and capture_drops("pair", "c")
    assert (
        not capture_drops("text", "b") and not capture_drops("inet", "b") and not capture_drops("mood", "e")
    )


def test_the_terminal_lists_them_under_the_table() -> None:
    import io

    from rich.console import Console

    from streamer.validate.report import print_terminal

    buf = io.StringIO()
    console = Console(file=buf, width=300, force_terminal=False, color_system=None)
    print_terminal([_result()], limit=10, show_values=False, title="t", console=console)
    text = buf.getvalue()
    assert "public.film -> public.film:" in text
    line = next(x for x in text.splitlines() if "not captured" in x)
    assert line.startswith("  not captured fulltext type=tsvector: the capture sends no value")
    assert "equal" in text
