"""What ``streamer validate`` prints: a terminal view, plain lines for logs, and JSON.

Keys read ``id=77777`` (composite: ``customer_id=5, order_no=12``) and values their SQL text
form (``20030``, ``12.5``, ``'text'``, ``true``, ``NULL``, ``'\\x00ff'``), never a Python repr.
The differing values themselves are shown only when asked for (``--show-values``): rows may hold
personal data.
"""

from __future__ import annotations

import dataclasses
import decimal
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from streamer.validate.captured import FIX
from streamer.validate.core import TableDiff


@dataclasses.dataclass
class TableResult:
    table: str  # the source's schema.table
    target: str
    diff: TableDiff
    repaired: Any = None  # a repair.RepairReport when --repair ran

    @property
    def equal(self) -> bool:
        """Equal as compared, or (after a repair) equal when its ranges were compared again."""
        if self.repaired is not None and not self.repaired.dry_run:
            return bool(self.repaired.equal_after)
        return self.diff.equal


def sql_text(kind: str, value: Any) -> str:
    """A normalized value (or a raw key value) in its SQL text form."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, decimal.Decimal):
        return format(value, "f") if value.is_finite() else f"'{str(value).lower()}'"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if kind == "bytes":
        text = "\\x" + text
    if kind == "number" and _is_number(text):
        return text
    return "'" + text.replace("'", "''") + "'"


def _is_number(text: str) -> bool:
    try:
        decimal.Decimal(text)
    except decimal.InvalidOperation:
        return False
    return True


def key_text(diff: TableDiff, key: Sequence[Any]) -> str:
    """``id=77777``; composite keys ``customer_id=5, order_no=12``."""
    return ", ".join(
        f"{name}={sql_text(diff.kinds.get(name, 'text'), v)}"
        for name, v in zip(diff.key_columns, key, strict=True)
    )


def json_value(value: Any) -> Any:
    """A key value for JSON: numbers as numbers, the rest as text."""
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, decimal.Decimal):
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value) if value.is_finite() else str(value)
    return str(value)


def _values_text(diff: TableDiff, key: tuple[Any, ...], columns: Sequence[str]) -> str:
    values = diff.values.get(key, {})
    parts = []
    for c in columns:
        if c in values:
            s, t = values[c]
            kind = diff.kinds.get(c, "text")
            parts.append(f"{c}: source {sql_text(kind, s)} target {sql_text(kind, t)}")
    return "; ".join(parts)


def difference_lines(r: TableResult, limit: int, show_values: bool) -> list[str]:
    """One ``DIFF`` line per difference (at most ``limit`` per table, then one line with what is left)."""
    d = r.diff
    lines: list[str] = []
    head = f"DIFF table={r.table} key="
    for k in d.missing:
        lines.append(f"{head}{key_text(d, k)} missing in target")
    for k in d.extra:
        lines.append(f"{head}{key_text(d, k)} extra in target")
    for k, cols in d.changed:
        line = f"{head}{key_text(d, k)} changed columns={','.join(cols)}"
        if show_values:
            line += " " + _values_text(d, k, cols)
        lines.append(line)
    if len(lines) > limit:
        rest = len(lines) - limit
        lines = lines[:limit] + [f"DIFF table={r.table} ... {rest} more (raise --limit to list them)"]
    return lines


def not_captured_lines(r: TableResult) -> list[str]:
    """One ``NOT_CAPTURED`` line per source column the comparison left out (validate.captured)."""
    return [
        f"NOT_CAPTURED table={r.table} column={column} type={type_name}: "
        + FIX.format(table=r.table, column=column)
        for column, type_name in r.diff.not_captured.items()
    ]


def not_captured_count(results: Sequence[TableResult]) -> int:
    return sum(len(r.diff.not_captured) for r in results)


def result_text(d: TableDiff) -> str:
    if d.equal:
        return "equal"
    if not (d.missing or d.extra or d.changed):
        return "DIFFERENT (row counts)"
    return "DIFFERENT"


def print_plain(results: Sequence[TableResult], *, limit: int, show_values: bool) -> None:
    """Lines for logs and pipes: never wrapped, never cut."""
    for r in results:
        d = r.diff
        print(
            f"TABLE table={r.table} target={r.target} source_rows={d.source_rows} target_rows={d.target_rows} "
            f"ranges={d.ranges} ranges_differing={d.ranges_differing} missing={len(d.missing)} "
            f"extra={len(d.extra)} changed={len(d.changed)} method={d.method or '-'} result={result_text(d).split()[0]}"
        )
        for line in difference_lines(r, limit, show_values):
            print(line)
        for line in not_captured_lines(r):
            print(line)
        if r.repaired is not None:
            for line in r.repaired.lines(r.table):
                print(line)
    ok = all(r.equal for r in results)
    different = sum(not r.equal for r in results)
    repaired = sum(r.repaired is not None and not r.repaired.dry_run and r.equal for r in results)
    uncaptured = not_captured_count(results)
    print(
        f"RESULT {'equal' if ok else 'DIFFERENT'} tables={len(results)} different={different}"
        + (f" repaired={repaired}" if repaired else "")
        + (f" not_captured={uncaptured}" if uncaptured else "")
    )


def print_terminal(
    results: Sequence[TableResult], *, limit: int, show_values: bool, title: str, console: Console
) -> None:
    """A summary table, then the differences listed under it."""
    out = Table(title=title)
    for col in (
        "table",
        "target",
        "source rows",
        "target rows",
        "ranges differing",
        "missing",
        "extra",
        "changed",
        "result",
    ):
        out.add_column(col, overflow="fold")
    for r in results:
        d = r.diff
        out.add_row(
            r.table,
            r.target,
            f"{d.source_rows:,}",
            f"{d.target_rows:,}",
            f"{d.ranges_differing}/{d.ranges}" if d.ranges else "-",
            str(len(d.missing)),
            str(len(d.extra)),
            str(len(d.changed)),
            "[green]equal[/]" if d.equal else f"[red]{result_text(d)}[/]",
        )
    console.print(out)
    for r in results:
        lines = difference_lines(r, limit, show_values)
        if lines:
            console.print(f"[bold]{r.table}[/] -> {r.target}:", highlight=False)
            for line in lines:
                console.print(
                    "  " + line.split(" key=", 1)[-1] if " key=" in line else "  " + line,
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )
        uncaptured = not_captured_lines(r)
        if uncaptured and not lines:
            console.print(f"[bold]{r.table}[/] -> {r.target}:", highlight=False)
        for line in uncaptured:
            console.print("  [yellow]not captured[/] ", end="", highlight=False)
            console.print(line.split(" column=", 1)[-1], highlight=False, markup=False, soft_wrap=True)
        if r.repaired is not None:
            for line in r.repaired.lines(r.table):
                console.print("  " + line, highlight=False, markup=False, soft_wrap=True)


def as_json(results: Sequence[TableResult], *, limit: int, show_values: bool) -> dict[str, Any]:
    """One document: typed keys (numbers as numbers), the differing columns, values only on request."""

    def key(d: TableDiff, k: Sequence[Any]) -> dict[str, Any]:
        return {n: json_value(v) for n, v in zip(d.key_columns, k, strict=True)}

    tables = []
    for r in results:
        d = r.diff
        changed = []
        for k, cols in d.changed[:limit]:
            item: dict[str, Any] = {"key": key(d, k), "columns": cols}
            if show_values:
                vals = d.values.get(k, {})
                item["values"] = {
                    c: {
                        "source": sql_text(d.kinds.get(c, "text"), vals[c][0]),
                        "target": sql_text(d.kinds.get(c, "text"), vals[c][1]),
                    }
                    for c in cols
                    if c in vals
                }
            changed.append(item)
        entry: dict[str, Any] = {
            "table": r.table,
            "target": r.target,
            "equal": d.equal,
            "key_columns": list(d.key_columns),
            "source_rows": d.source_rows,
            "target_rows": d.target_rows,
            "ranges": d.ranges,
            "ranges_differing": d.ranges_differing,
            "method": d.method,
            "missing_count": len(d.missing),
            "extra_count": len(d.extra),
            "changed_count": len(d.changed),
            "missing": [key(d, k) for k in d.missing[:limit]],
            "extra": [key(d, k) for k in d.extra[:limit]],
            "changed": changed,
            "not_captured": [
                {"column": c, "type": t, "fix": FIX.format(table=r.table, column=c)}
                for c, t in d.not_captured.items()
            ],
        }
        if r.repaired is not None:
            entry["repair"] = r.repaired.as_json()
        tables.append(entry)
    return {"ok": all(r.equal for r in results), "tables": tables}
