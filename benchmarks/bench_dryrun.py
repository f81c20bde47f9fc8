"""The dry run (``Pipeline.plan()``) against the plain ``csv.DictReader`` loop.

Usage::

    python benchmarks/bench_dryrun.py [--rows N] [--rounds R] [--postgres URL] [--check]
    python benchmarks/bench_dryrun.py --phases [--rows N] [--postgres URL]

The campaign is :mod:`bench_selection`'s (email on SendGrid with a filter and
List-Unsubscribe, SMS on Twilio with a price, push on Expo with quiet hours; a
generated segment). Configurations, each in a fresh process per round (``_harness``):

* ``dictreader`` (baseline): ``for row in csv.DictReader(f): pass`` over the file;
* ``dryrun``: ``Pipeline.plan()`` with the embedded ledger (a scratch SQLite file);
* ``dryrun_postgres`` (with ``--postgres URL``): the same campaign on a PostgreSQL
  ledger at ``URL``: the dry run plans in a scratch schema of that database.

Prints rows/s, the paired ratio to the DictReader loop (goal: ``dryrun`` >= 0.1x,
issue 12) and peak RSS. ``--phases`` times one dry run in this process, phase by
phase (extraction into the scratch ledger; per channel the audience's plan, then
rendering and checking its pending messages), to show where the time goes.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Config, Timer, emit, print_table, run_rounds, summarize
from bench_selection import work_dictreader, work_plan
from gen_segment import ensure_segment

BASELINE = "dictreader"
GOAL = 0.1


def work_dryrun_postgres(path: str, url: str) -> dict[str, float]:
    """``work_plan`` with the campaign's ledger at ``url``."""
    import campaignkit
    from campaignkit import Execution

    real = campaignkit.Pipeline

    def on_postgres(*args: Any, **kwargs: Any) -> Any:
        return real(*args, execution=Execution(ledger=url), **kwargs)

    campaignkit.Pipeline = on_postgres  # type: ignore[misc,assignment]
    try:
        return work_plan(path)
    finally:
        campaignkit.Pipeline = real  # type: ignore[misc]


def worker(mode: str, path: str, url: str | None) -> None:
    if mode != BASELINE:  # keep import time out of the figure
        import campaignkit  # noqa: F401
    with Timer() as t:
        if mode == "dryrun_postgres":
            assert url is not None
            counts = work_dryrun_postgres(path, url)
        else:
            counts = {"dictreader": work_dictreader, "dryrun": work_plan}[mode](path)
    emit(t.result(mode=mode, rows_per_s=counts["rows"] / t.secs, **counts))


def phases(path: str, url: str | None) -> None:
    """Time one dry run phase by phase (wrappers around the dry run's steps)."""
    from campaignkit._pipeline import _dry_run

    spent: dict[str, float] = {}

    def timed(label: Callable[..., str], f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                key = label(*args)
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - start

        return wrapper

    _dry_run.extract_into = timed(
        lambda *a: "extract into the scratch ledger", _dry_run.extract_into
    )  # type: ignore[assignment]
    _dry_run.decide_audience = timed(
        lambda c, p, n: f"{p.channel.name}: plan (decide + SQL rules)", _dry_run.decide_audience
    )  # type: ignore[assignment]
    _dry_run._summary = timed(
        lambda c, p, *a: f"{p.channel.name}: whole channel", _dry_run._summary
    )  # type: ignore[assignment]
    start = time.perf_counter()
    counts = work_plan(path) if url is None else work_dryrun_postgres(path, url)
    total = time.perf_counter() - start
    rows = counts["rows"]
    print(f"== dry run phases: {rows:,.0f} rows, {total:.2f} s, {rows / total:,.0f} rows/s")
    for key, secs in spent.items():
        print(f"  {key:<45} {secs:7.2f} s  {100 * secs / total:5.1f}%")
    print("  (a channel's render + check = its whole channel - its plan)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="dry run benchmark")
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--postgres", metavar="URL", help="also time a dry run on this ledger")
    ap.add_argument("--phases", action="store_true", help="where one dry run's time goes")
    ap.add_argument("--check", action="store_true", help="exit 1 when below the goal")
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "FILE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(*a.worker, a.postgres)
        return 0
    path = ensure_segment(a.rows)
    if a.phases:
        phases(str(path), a.postgres)
        return 0
    modes = ["dictreader", "dryrun"] + (["dryrun_postgres"] if a.postgres else [])
    print(f"== dry run: {a.rows:,} rows x 3 channels, {a.rounds} rounds")
    script = str(Path(__file__).resolve())
    extra = ["--postgres", a.postgres] if a.postgres else []
    configs = [Config(m, [sys.executable, script, "--worker", m, str(path), *extra]) for m in modes]
    results = run_rounds(configs, a.rounds)
    rows = summarize(results, "rows_per_s", baseline=BASELINE)
    print_table(rows, "rows/s", baseline=BASELINE)
    dry = next(s for s in rows if s.name == "dryrun")
    ok = dry.ratio >= GOAL
    print(
        f"dryrun / {BASELINE}: {dry.ratio:.3f} (goal >= {GOAL}); eligible messages "
        f"{results['dryrun'][0]['eligible']:,}: {'OK' if ok else 'MISSED'}"
    )
    return 1 if a.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
