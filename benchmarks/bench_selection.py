"""Audience selection and rendering: a dry run over 1M recipients x 3 channels.

Usage::

    python benchmarks/bench_selection.py [--rows N] [--rounds R] [--check]

Configurations, each in a fresh process per round (see ``_harness``):

* ``dictreader`` (baseline): ``for row in csv.DictReader(f): pass`` over the same file;
* ``plan``: ``Pipeline.plan()``, the dry run: extraction into the ledger, selection for
  email (SendGrid), SMS (Twilio) and push (Expo): address validation (email-validator
  and phonenumbers), consent, suppression, de-duplication, a segment filter on the
  email channel, frequency caps and targets in SQL, quiet hours; then every eligible
  message rendered (subject, text and HTML for email, with List-Unsubscribe headers)
  and checked (SMS segments, push payload size). Nothing is sent.

Prints rows/s (CSV rows per second for the whole dry run), the paired ratio to the
DictReader loop (goal >= 0.3) and peak RSS (goal: under the foundation's 150 MB).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Config, Timer, emit, print_table, run_rounds, summarize
from gen_segment import ensure_segment

BASELINE = "dictreader"
GOAL = 0.3
GOAL_MB = 150.0


def work_dictreader(path: str) -> dict[str, float]:
    n = 0
    with open(path, newline="", encoding="utf-8") as f:
        for _ in csv.DictReader(f):
            n += 1
    return {"rows": n}


def work_plan(path: str) -> dict[str, float]:
    from campaignkit import Channel, CsvSource, Pipeline, Template
    from campaignkit._config import QuietHoursConfig

    source = CsvSource(
        path,
        columns={"id": "customer_id"},
        consent={"email": "opted_in_email", "sms": "opted_in_sms", "push": "opted_in_push"},
    )
    channels = [
        Channel(
            name="email",
            provider="sendgrid",
            filter='segment != "dormant"',
            template=Template(
                subject="{{ first_name }}, your {{ segment }} offer",
                body="Hello {{ first_name }}, this week's deals for {{ country }}.",
                html="<p>Hello <b>{{ first_name }}</b>, this week's deals for {{ country }}.</p>",
            ),
            unsubscribe_url="https://example.com/u/{{ id }}",
            options={"from_email": "news@example.com"},
        ),
        Channel(
            name="sms",
            provider="twilio",
            template=Template(body="{{ first_name }}: 20% off today. Reply STOP to opt out"),
            max_sms_segments=2,
            price_per_segment=0.0079,
            options={"account_sid": "AC" + "0" * 32, "from": "+15005550006"},
        ),
        Channel(
            name="push",
            provider="expo",
            template=Template(
                title="Sale", body="Hi {{ first_name }}", data={"s": "{{ segment }}"}
            ),
            quiet_hours=QuietHoursConfig(start="22:00", end="07:00"),
        ),
    ]
    env = {"EMAIL_API_TOKEN": "x", "SMS_API_TOKEN": "x"}
    with tempfile.TemporaryDirectory() as base:
        pipeline = Pipeline("bench_selection", source, channels, env=env, base_dir=base)
        plan = pipeline.plan()
    eligible = sum(c.eligible for c in plan.channels.values())
    return {"rows": plan.rows_read, "eligible": eligible}


WORK = {"dictreader": work_dictreader, "plan": work_plan}


def worker(mode: str, path: str) -> None:
    if mode == "plan":  # keep import time out of the figure
        import campaignkit  # noqa: F401
    with Timer() as t:
        counts = WORK[mode](path)
    emit(t.result(mode=mode, rows_per_s=counts["rows"] / t.secs, **counts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="selection + rendering benchmark (dry run)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--check", action="store_true", help="exit 1 when below a goal")
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "FILE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(*a.worker)
        return 0
    path = ensure_segment(a.rows)
    print(f"== selection + rendering (dry run): {a.rows:,} rows x 3 channels, {a.rounds} rounds")
    configs = [
        Config(name, [sys.executable, str(Path(__file__).resolve()), "--worker", name, str(path)])
        for name in WORK
    ]
    results = run_rounds(configs, a.rounds)
    rows = summarize(results, "rows_per_s", baseline=BASELINE)
    print_table(rows, "rows/s", baseline=BASELINE)
    plan = next(s for s in rows if s.name == "plan")
    peak = plan.medians.get("peak_mb", 0.0)
    ok = plan.ratio >= GOAL and peak <= GOAL_MB
    print(
        f"plan / {BASELINE}: {plan.ratio:.2f} (goal >= {GOAL}); peak RSS {peak:.0f} MB "
        f"(goal <= {GOAL_MB:.0f}); eligible messages {results['plan'][0]['eligible']:,}: "
        f"{'OK' if ok else 'MISSED'}"
    )
    return 1 if a.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
