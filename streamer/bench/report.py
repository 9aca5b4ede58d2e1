"""The one table `make bench` prints: each figure, its limit measured in the same run, ratio, floor.

A benchmark module returns :class:`Figure` rows from ``figures(argv)``; ``main`` of the module
and ``python -m streamer.bench`` render them with :func:`render` and exit 1 when one misses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Figure:
    """One measured figure against its limit.

    ``ratio = value / limit``. With ``at_most`` False (rates) the figure passes when the ratio is at
    least ``floor``; with ``at_most`` True (delays) when it is at most ``floor``. ``floor`` None:
    reported only, always passes.
    """

    bench: str
    name: str
    value: float
    unit: str
    limit_name: str
    limit: float
    floor: float | None
    at_most: bool = False

    @property
    def ratio(self) -> float:
        return self.value / self.limit if self.limit else math.nan

    @property
    def passed(self) -> bool:
        if self.floor is None:
            return True
        if math.isnan(self.ratio):
            return False
        return self.ratio <= self.floor if self.at_most else self.ratio >= self.floor


def _num(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}"


def render(figures: Sequence[Figure]) -> str:
    """A plain-text table (also valid Markdown) of the figures."""
    head = ("bench", "figure", "value", "limit (same run)", "ratio", "floor", "result")
    rows = [head]
    for f in figures:
        floor = "report" if f.floor is None else f"{'<=' if f.at_most else '>='} {f.floor:g}"
        rows.append(
            (
                f.bench,
                f.name,
                f"{_num(f.value)} {f.unit}",
                f"{f.limit_name} {_num(f.limit)} {f.unit}".strip(),
                "n/a" if math.isnan(f.ratio) else f"{f.ratio:.2f}",
                floor,
                "PASS" if f.passed else "FAIL",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def run_module(figures: Callable[[Sequence[str] | None], list[Figure]], argv: Sequence[str] | None) -> int:
    """``main`` of one benchmark module: measure, print the table, 0 when every figure passes."""
    results = figures(argv)
    print()
    print(render(results))
    return 0 if all(f.passed for f in results) else 1
