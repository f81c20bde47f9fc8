"""CSV extraction: campaignkit's CsvSource against a bare csv.DictReader loop.

Usage::

    python benchmarks/bench_extraction.py [--rows N] [--rounds R] [--check]

Configurations, each in a fresh process per round (see ``_harness``):

* ``dictreader`` (baseline): ``for row in csv.DictReader(f): pass``;
* ``reader``: ``for row in csv.reader(f): pass``, the pure-Python floor, for context;
* ``campaignkit``: ``CsvSource`` with a ``columns`` mapping and consent columns for
  email, SMS and push, ``records(required={"email", "phone", "push_token"})`` consumed
  to the end, counting recipients and rejected rows;
* ``pipeline_extract``: the same plus what ``Pipeline.run`` adds before the channels
  start: every recipient spooled to disk and the rejected rows written.

Prints rows/s (median, min-max), the paired ratio to ``dictreader`` and peak RSS. The
goal: campaignkit >= 0.5x the DictReader loop. ``--check`` exits with status 1 when the
median ratio misses it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Config, Timer, emit, print_table, run_rounds, summarize
from gen_segment import ensure_segment

BASELINE = "dictreader"
CONFIGS = ("dictreader", "reader", "campaignkit", "pipeline_extract")
GOAL = 0.5


def work_dictreader(path: str) -> dict[str, int]:
    n = 0
    with open(path, newline="", encoding="utf-8") as f:
        for _ in csv.DictReader(f):
            n += 1
    return {"rows": n}


def work_reader(path: str) -> dict[str, int]:
    n = 0
    with open(path, newline="", encoding="utf-8") as f:
        r = csv.reader(f)
        next(r)
        for _ in r:
            n += 1
    return {"rows": n}


def work_campaignkit(path: str) -> dict[str, int]:
    from campaignkit._models import Recipient
    from campaignkit._sources import CsvSource

    source = CsvSource(
        path,
        columns={"id": "customer_id"},
        consent={"email": "opted_in_email", "sms": "opted_in_sms", "push": "opted_in_push"},
    )
    recipients = rejected = 0
    for item in source.records({"email", "phone", "push_token"}):
        if type(item) is Recipient:
            recipients += 1
        else:
            rejected += 1
    return {"rows": recipients + rejected, "recipients": recipients, "rejected": rejected}


def work_pipeline_extract(path: str) -> dict[str, int]:
    """What ``Pipeline.run`` does before any channel starts: the whole stream validated,
    stored as the run's snapshot in the ledger (SQLite, one transaction) and the
    rejects written (``campaignkit._segment.extract``)."""
    import tempfile
    from datetime import UTC, datetime

    from campaignkit._ledger import SqliteLedger
    from campaignkit._segment import extract
    from campaignkit._sources import CsvSource

    source = CsvSource(
        path,
        columns={"id": "customer_id"},
        consent={"email": "opted_in_email", "sms": "opted_in_sms", "push": "opted_in_push"},
    )
    with tempfile.TemporaryDirectory() as tmp:
        ledger = SqliteLedger(Path(tmp) / "ledger.db")
        ledger.begin_run(
            run_id="bench",
            pipeline="bench",
            logical_date=datetime(2026, 1, 1, tzinfo=UTC),
            fingerprint="-",
            config_file=None,
            max_active_runs=None,
        )
        stats = extract(
            source,
            required={"email", "phone", "push_token"},
            rejects=Path(tmp) / "rejected.csv",
            store=lambda recipients, rejected: ledger.write_snapshot(
                "bench", recipients, rejects=rejected
            ),
        )
        ledger.close()
    return {"rows": stats.rows_read, "recipients": stats.recipients, "rejected": stats.rejected}


WORK = {
    "dictreader": work_dictreader,
    "reader": work_reader,
    "campaignkit": work_campaignkit,
    "pipeline_extract": work_pipeline_extract,
}


def worker(mode: str, path: str) -> None:
    """Run one configuration in this (fresh) process and print its result line."""
    if mode in ("campaignkit", "pipeline_extract"):  # keep import time out of the figure
        import campaignkit._segment
        import campaignkit._sources  # noqa: F401
    with Timer() as t:
        counts = WORK[mode](path)
    emit(t.result(mode=mode, rows_per_s=counts["rows"] / t.secs, **counts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="CSV extraction benchmark")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--check", action="store_true", help="exit 1 when below the goal")
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "FILE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(*a.worker)
        return 0

    path = ensure_segment(a.rows, a.seed)
    with open(path, "rb") as f:  # warm the page cache
        while f.read(1 << 24):
            pass
    size_mb = path.stat().st_size / 1e6
    print(f"== extraction: {a.rows:,} rows, {size_mb:.1f} MB ({path.name}), {a.rounds} rounds")
    configs = [
        Config(name, [sys.executable, str(Path(__file__).resolve()), "--worker", name, str(path)])
        for name in CONFIGS
    ]
    results = run_rounds(configs, a.rounds)
    rows = summarize(results, "rows_per_s", baseline=BASELINE)
    print_table(rows, "rows/s", baseline=BASELINE)

    ck = results["campaignkit"][0]
    print(
        f"campaignkit: {ck['recipients']:,} recipients, {ck['rejected']:,} rejected "
        f"of {ck['rows']:,} rows"
    )
    counts = {name: {r["rows"] for r in runs} for name, runs in results.items()}
    if len(set().union(*counts.values())) != 1:
        print(f"WARNING: configurations read different row counts: {counts}")
    missed = False
    for name in ("campaignkit", "pipeline_extract"):
        ratio = next(s for s in rows if s.name == name)
        verdict = "OK" if ratio.ratio >= GOAL else "BELOW GOAL"
        missed |= ratio.ratio < GOAL
        print(
            f"{name} / {BASELINE} speed: {ratio.ratio:.2f} "
            f"(paired, min-max {ratio.ratio_low:.2f}-{ratio.ratio_high:.2f}; "
            f"goal >= {GOAL}): {verdict}"
        )
    return 1 if a.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
