"""``streamer validate --repair``: re-copy from the source exactly the key ranges that differ.

The copy is the loader's (:class:`streamer.load.loader.Loader` with ``ranges``), so it has the loader's
guarantees while consumers run: the table is marked loading and every live consumer holds it
(the barrier of :mod:`streamer.apply.holds`) before one exported snapshot of the source is read; each
range's rows are written with the snapshot's version through the version guard, so a row the
stream has already moved past the snapshot is left as it is; then rows inside those ranges that
are older than the snapshot and were not in it (gone at the source, or added to the target by
hand) are deleted. Rows outside the differing ranges are neither read nor written. The ranges
are then compared again and the result reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Engine

from streamer.core.errors import EXIT_SETTINGS, StreamerError
from streamer.validate.core import TableDiff
from streamer.validate.fast import Range


class RepairError(StreamerError):
    """A repair cannot be planned (a sample); the message says why. Exit 2."""

    exit_code = EXIT_SETTINGS
    headline = "cannot repair"


@dataclasses.dataclass
class RepairReport:
    table: str
    ranges: list[Range]
    key_columns: tuple[str, ...]
    kinds: dict[str, str]
    dry_run: bool
    rows_copied: int = 0
    swept: int = 0
    after: TableDiff | None = None

    def range_text(self, rng: Range) -> str:
        """``id > 100 AND id <= 20100`` (composite keys as row comparisons)."""
        from streamer.validate.report import sql_text

        def side(values: Sequence[Any]) -> str:
            cols = [self.kinds.get(k, "text") for k in self.key_columns]
            if len(values) == 1:
                return sql_text(cols[0], values[0])
            return "(" + ", ".join(sql_text(k, v) for k, v in zip(cols, values, strict=True)) + ")"

        key = self.key_columns[0] if len(self.key_columns) == 1 else "(" + ", ".join(self.key_columns) + ")"
        parts = []
        if rng.lo is not None:
            parts.append(f"{key} > {side(rng.lo)}")
        if rng.hi is not None:
            parts.append(f"{key} <= {side(rng.hi)}")
        return " AND ".join(parts) or "all keys"

    @property
    def equal_after(self) -> bool:
        return self.after is not None and self.after.equal

    def lines(self, table: str) -> list[str]:
        out = []
        verb = "would re-copy" if self.dry_run else "re-copied"
        for rng in self.ranges:
            out.append(f"REPAIR table={table} {verb} range {self.range_text(rng)}")
        if not self.dry_run:
            after = self.after
            state = "equal" if self.equal_after else "STILL DIFFERENT"
            detail = (
                f" missing={len(after.missing)} extra={len(after.extra)} changed={len(after.changed)}"
                if after is not None and not after.equal
                else ""
            )
            out.append(
                f"REPAIR table={table} ranges={len(self.ranges)} rows_copied={self.rows_copied} "
                f"rows_deleted={self.swept} checked_again={state}{detail}"
            )
        return out

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dry_run": self.dry_run, "ranges": [self.range_text(r) for r in self.ranges]}
        if not self.dry_run:
            out.update(rows_copied=self.rows_copied, rows_deleted=self.swept, equal_after=self.equal_after)
        return out


def plan(table: str, diff: TableDiff) -> RepairReport:
    """What a repair of ``diff`` copies: the ranges that differ."""
    if diff.method == "sample":
        raise RepairError(
            f"{table}: --repair needs the whole comparison, not a sample: run streamer validate --repair without --sample"
        )
    return RepairReport(table, list(diff.differing_ranges), diff.key_columns, dict(diff.kinds), dry_run=True)


def repair(
    report: RepairReport,
    source_url: str,
    sink: Any,
    source: Engine,
    source_table: tuple[str, str],
    target_table: tuple[str | None, str],
    *,
    rename: Any = None,
    drop: Any = (),
    hold_timeout_s: float = 60.0,
    member_expiry_s: float = 30.0,
    workers: int = 2,
) -> RepairReport:
    """Re-copy ``report.ranges`` (the loader, version-guarded, under the hold barrier), then compare them again."""
    from streamer.load.loader import Loader
    from streamer.validate.compare import validate_table

    report.dry_run = False
    if not report.ranges:
        report.after = TableDiff(key_columns=report.key_columns, kinds=report.kinds)
        return report
    name = f"{source_table[0]}.{source_table[1]}"
    loader = Loader(
        source_url,
        sink,
        workers=workers,
        ranges={name: [(r.lo, r.hi) for r in report.ranges]},
        hold_timeout_s=hold_timeout_s,
        member_expiry_s=member_expiry_s,
    )
    (loaded,) = loader.run([name])
    report.rows_copied, report.swept = loaded.rows, loaded.swept
    report.after = validate_table(
        source, source_table, sink.engine, target_table, rename=rename, drop=drop, ranges=report.ranges
    )
    return report
