"""Peak memory of a whole 3-channel run: 100k rows against 1M rows.

Usage::

    python benchmarks/bench_memory.py [--rows 100000 1000000] [--rounds R] [--check]

Each configuration runs ``Pipeline.run`` in a fresh process: the generated segment
(``gen_segment.py``) through ``CsvSource``, extraction to the spool, then email, SMS
and push channels in parallel, all three on the recording channel (which counts
messages without keeping them), with per-recipient results written to disk as in a
real run. Reported: peak RSS (``VmHWM``, whole process), wall time and recipients/s.

Goals (foundation issue): peak RSS <= 150 MB at 1M rows, and less than 20% growth
from 100k to 1M rows. The "ratio" column is each size's peak RSS over the smallest
size's, paired per round.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Config, Timer, emit, print_table, run_rounds, summarize
from gen_segment import ensure_segment

GOAL_MB = 150.0
GOAL_GROWTH = 0.20


def worker(path: str) -> None:
    from campaignkit import Channel, CsvSource, Pipeline, Template, get_plugin_manager
    from campaignkit.testing import Outbox, recording_plugin

    recorder = recording_plugin(Outbox(keep=False))
    pm = get_plugin_manager(load_entrypoints=False, plugins=[recorder])
    source = CsvSource(
        path,
        columns={"id": "customer_id"},
        consent={"email": "opted_in_email", "sms": "opted_in_sms", "push": "opted_in_push"},
    )
    channels = [
        Channel(
            name="email",
            provider="recording",
            template=Template(
                subject="{{ first_name }}, your {{ segment }} offer",
                body="Hello {{ first_name }}, deals for {{ country }}.",
                html="<p>Hello {{ first_name }}, deals for {{ country }}.</p>",
            ),
            options={"address_field": "email"},
        ),
        Channel(
            name="sms",
            provider="recording",
            template=Template(body="{{ first_name }}: 20% off today. STOP to opt out"),
            options={"address_field": "phone"},
            batch_size=100,
        ),
        Channel(
            name="push",
            provider="recording",
            template=Template(
                title="Sale", body="Hi {{ first_name }}", data={"seg": "{{ segment }}"}
            ),
            options={"address_field": "push_token"},
            batch_size=100,
        ),
    ]
    with tempfile.TemporaryDirectory() as out:
        pipeline = Pipeline("bench_memory", source, channels, plugins=pm, env={}, base_dir=out)
        with Timer() as t:
            report = pipeline.run()
        ledger = pipeline.state_path
        ledger_bytes = sum(
            p.stat().st_size for p in ledger.parent.glob(ledger.name + "*") if p.is_file()
        )
    rows = report.rows_read
    deliveries = sum(c.total for c in report.channels.values())
    emit(
        t.result(
            rows=rows,
            rows_per_s=rows / t.secs,
            sent=sum(c.sent for c in report.channels.values()),
            recorded=recorder.outbox.count,
            deliveries=deliveries,
            ledger_mb=ledger_bytes / 1e6,
            ledger_mb_per_1m_deliveries=ledger_bytes / 1e6 / deliveries * 1e6,
        )
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="peak RSS of a 3-channel run")
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    ap.add_argument("--worker", metavar="FILE", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.worker)
        return 0
    sizes = sorted(a.rows)
    configs = [
        Config(
            f"{n:,} rows",
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(ensure_segment(n))],
        )
        for n in sizes
    ]
    print(f"== memory: 3-channel run (recording channel), {a.rounds} rounds")
    results = run_rounds(configs, a.rounds)
    base = configs[0].name
    print_table(
        summarize(results, "peak_mb", baseline=base),
        "peak RSS MB",
        baseline=base,
        value_format="{:,.1f}",
    )
    print_table(
        summarize(results, "rows_per_s", baseline=base),
        "rows/s",
        baseline=base,
        columns=(("secs", "seconds", "{:.1f}"), ("box_pct", "box%", "{:.0f}")),
    )
    for name, runs in results.items():
        r = runs[0]
        print(
            f"ledger for {name}: {r['ledger_mb']:.0f} MB for {r['deliveries']:,} deliveries "
            f"(snapshot included) = {r['ledger_mb_per_1m_deliveries']:.0f} MB per 1M deliveries"
        )
    peaks = summarize(results, "peak_mb", baseline=base)
    largest, growth = peaks[-1], peaks[-1].ratio - 1.0
    ok = largest.median <= GOAL_MB and growth < GOAL_GROWTH
    print(
        f"peak RSS at {configs[-1].name}: {largest.median:.1f} MB (goal <= {GOAL_MB:.0f}); "
        f"growth from {base}: {growth:+.1%} (goal < {GOAL_GROWTH:.0%}): "
        f"{'OK' if ok else 'MISSED'}"
    )
    return 1 if a.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
