"""``make bench``: every benchmark in one run, one table of figures against their limits; exit 1 on a miss.

decode (issue 3), consume (issue 4), load (issue 5), replicate (issue 7), validate, capture and
delay, memory (issue 14). Each module's ``figures(argv)`` measures (printing its own details) and returns
its rows; this runner prints them all in one table (:func:`streamer.bench.report.render`) with the
machine's load average, since the machine may be shared. A module with only ``main(argv)`` (its own
table) is one row: its exit status. Numbers are measured on the machine at hand; a module that
fails to run is a FAIL row.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time

from streamer.bench.report import Figure, render

BENCHES = ("decode", "consume", "load", "replicate", "validate", "capture", "delay", "memory")


def main() -> int:
    figures: list[Figure] = []
    seconds: dict[str, float] = {}
    started_all = time.monotonic()
    print("load average at the start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    for name in BENCHES:
        try:
            module = importlib.import_module(f"streamer.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"streamer.bench.{name}":
                continue
            raise
        print(f"\n===== bench: {name} =====", flush=True)
        started = time.monotonic()
        try:
            if hasattr(module, "figures"):
                figures.extend(module.figures([]))
            else:
                code = int(module.main([]) or 0)
                figures.append(
                    Figure(name, "exit status (its table above)", float(code == 0), "", "pass", 1, 1)
                )
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            print(f"bench {name} failed: {type(exc).__name__}: {exc}", flush=True)
            figures.append(
                Figure(name, f"did not run: {type(exc).__name__}", math.nan, "", "", math.nan, 1.0)
            )
        seconds[name] = time.monotonic() - started
    print("\n===== make bench =====")
    print(render(figures))
    took = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\ntook {time.monotonic() - started_all:.0f} s ({took}); load average at the end: {load}")
    failed = [f for f in figures if not f.passed]
    print("PASS" if not failed else f"FAIL: {len(failed)} figure(s) missed their floor")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
