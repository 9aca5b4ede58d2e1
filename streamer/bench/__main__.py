"""``make bench``: every benchmark in one run, each against its floors; exit 1 if any misses one.

decode (issue 3), consume (issue 4), load (issue 5), replicate (issue 7), validate (issue 14). Each module prints
its own table; this runner prints a summary. Numbers are measured on the machine at hand.
"""

from __future__ import annotations

import importlib
import sys
import time

BENCHES = ("decode", "consume", "load", "replicate", "validate")


def main() -> int:
    results: list[tuple[str, int, float]] = []
    for name in BENCHES:
        try:
            module = importlib.import_module(f"streamer.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"streamer.bench.{name}":
                continue
            raise
        print(f"\n===== bench: {name} =====", flush=True)
        started = time.monotonic()
        code = int(module.main([]) or 0)
        results.append((name, code, time.monotonic() - started))
    print("\n===== summary =====")
    for name, code, seconds in results:
        print(f"{name:<10} {'PASS' if code == 0 else 'FAIL'}  ({seconds:.0f} s)")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
