"""Run campaignkit's benchmarks.

Usage::

    .venv/bin/python benchmarks/run.py                  # every benchmark
    .venv/bin/python benchmarks/run.py extraction       # some, by name
    .venv/bin/python benchmarks/run.py extraction --rows 100000 --rounds 3

Arguments that are not benchmark names are passed to each selected benchmark's
``main(argv)``; pass per-benchmark flags when running that benchmark alone.
The exit status is the highest any benchmark returned.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Benchmark name -> module in this directory whose ``main(argv) -> int`` runs it.
#: Adding a benchmark is one line here.
BENCHMARKS: dict[str, str] = {
    "extraction": "bench_extraction",
    "memory": "bench_memory",
    "selection": "bench_selection",
    "dryrun": "bench_dryrun",
    "http": "bench_http",
    "workers": "bench_workers",
    "scale": "bench_scale",
    "receipts": "bench_receipts",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args) and not any(a in BENCHMARKS for a in args):
        print(__doc__)
        print("benchmarks:", ", ".join(BENCHMARKS))
        return 0
    names = [a for a in args if a in BENCHMARKS]
    rest = [a for a in args if a not in BENCHMARKS]
    unknown = [a for a in rest if not a.startswith("-") and a.isidentifier()]
    if unknown and not names:
        print(f"unknown benchmark {unknown[0]!r} (known: {', '.join(BENCHMARKS)})")
        return 2
    status = 0
    for name in names or list(BENCHMARKS):
        module = importlib.import_module(BENCHMARKS[name])
        status = max(status, int(module.main(rest) or 0))
        print()
    return status


if __name__ == "__main__":
    sys.exit(main())
