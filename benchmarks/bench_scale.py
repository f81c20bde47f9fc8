"""Scale: the PostgreSQL ledger against SQLite, the ledger's size, and a large run's memory.

Usage::

    python benchmarks/bench_scale.py [--compare-rows N] [--rounds R] [--rows N] [--check]
    python benchmarks/bench_scale.py --rows 10000000      # the 10M-recipient run
    python benchmarks/bench_scale.py --rows 10000000 --no-compare --backends sqlite

Every configuration runs ``Pipeline.run`` in a fresh process: the generated segment
(``gen_segment.py``) through ``CsvSource``, then email, SMS and push in parallel on
the recording channel (which counts messages without keeping them), as in
``bench_memory.py``; only ``run()`` is timed. Three parts:

- **compare** (``--compare-rows``, default 100,000): the same run on a SQLite ledger
  and on a PostgreSQL ledger, interleaved over ``--rounds``; deliveries per second and
  the paired ratio PostgreSQL / SQLite (goal >= 0.7).
- **size**: the ledger's size per 1M deliveries on both backends, from the compare
  runs (SQLite: the file with its WAL; PostgreSQL: ``pg_total_relation_size`` of the
  schema's tables after ``VACUUM ANALYZE``).
- **scale** (``--rows``, default 1,000,000; ``10000000`` for the issue's figure): one
  run per backend, peak RSS (goal <= 150 MB) and wall time, with the RSS sampled
  through the run and shown at 10%, 50% and 90% of the messages (flat memory).

PostgreSQL is ``CAMPAIGNKIT_BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``): each worker creates a database of its
own there and drops it after. Without a server the PostgreSQL rows are left out.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import threading
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Config, Timer, emit, print_table, rss_mb, run_rounds, summarize
from gen_segment import ensure_segment

GOAL_RATIO = 0.7
GOAL_MB = 150.0
POSTGRES_URL = os.environ.get(
    "CAMPAIGNKIT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
SAMPLE_EVERY = 0.25  # seconds between RSS samples


def channels() -> list[Any]:
    """Email, SMS and push on the recording channel (as ``bench_memory.py``)."""
    from campaignkit import Channel, Template

    def channel(name: str, field: str, template: Any, **kw: Any) -> Any:
        options = {"address_field": field}
        return Channel(name=name, provider="recording", template=template, options=options, **kw)

    return [
        channel(
            "email",
            "email",
            Template(
                subject="{{ first_name }}, your {{ segment }} offer",
                body="Hello {{ first_name }}, deals for {{ country }}.",
                html="<p>Hello {{ first_name }}, deals for {{ country }}.</p>",
            ),
        ),
        channel(
            "sms",
            "phone",
            Template(body="{{ first_name }}: 20% off today. STOP to opt out"),
            batch_size=100,
        ),
        channel(
            "push",
            "push_token",
            Template(title="Sale", body="Hi {{ first_name }}", data={"seg": "{{ segment }}"}),
            batch_size=100,
        ),
    ]


class Sampler(threading.Thread):
    """RSS against messages recorded so far, every :data:`SAMPLE_EVERY` seconds."""

    def __init__(self, outbox: Any) -> None:
        super().__init__(daemon=True)
        self.outbox, self.samples, self.done = outbox, [(0, rss_mb())], threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_EVERY):
            self.samples.append((self.outbox.count, rss_mb()))

    def at(self, fraction: float) -> float:
        """The RSS when ``fraction`` of the messages were recorded."""
        target = fraction * max(n for n, _ in self.samples)
        return next(mb for n, mb in self.samples if n >= target)


def postgres_database() -> tuple[str, Any]:
    """A new database on the benchmark's server: its URL and a function dropping it."""
    import psycopg

    name = f"ck_bench_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    parts = urllib.parse.urlsplit(POSTGRES_URL)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}")), drop


def postgres_bytes(url: str) -> int:
    """The ledger's tables (indexes and TOAST included) after ``VACUUM ANALYZE``."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'campaignkit' AND c.relkind = 'r'"
        ).fetchone()
    return int(row[0]) if row else 0


def worker(path: str, backend: str) -> None:
    from campaignkit import CsvSource, Execution, Pipeline, get_plugin_manager
    from campaignkit.testing import Outbox, recording_plugin

    recorder = recording_plugin(Outbox(keep=False))
    pm = get_plugin_manager(load_entrypoints=False, plugins=[recorder])
    source = CsvSource(
        path,
        columns={"id": "customer_id"},
        consent={"email": "opted_in_email", "sms": "opted_in_sms", "push": "opted_in_push"},
    )
    url, drop = postgres_database() if backend == "postgres" else (None, None)
    try:
        with tempfile.TemporaryDirectory() as out:
            execution = Execution(ledger=url) if url else Execution()
            pipeline = Pipeline(
                "bench_scale", source, channels(), plugins=pm, env={}, base_dir=out,
                execution=execution,
            )  # fmt: skip
            sampler = Sampler(recorder.outbox)
            sampler.start()
            with Timer() as t:
                report = pipeline.run()
            sampler.done.set()
            sampler.join()
            if url:
                size = postgres_bytes(url)
            else:
                ledger = pipeline.state_path
                size = sum(p.stat().st_size for p in ledger.parent.glob(ledger.name + "*"))
    finally:
        if drop is not None:
            drop()
    sent = sum(c.sent for c in report.channels.values())
    deliveries = sum(c.total for c in report.channels.values())
    emit(
        t.result(
            rows=report.rows_read,
            sent=sent,
            msg_per_s=sent / t.secs,
            deliveries=deliveries,
            ledger_mb_per_1m=size / 1e6 / deliveries * 1e6,
            rss_10=round(sampler.at(0.1), 1),
            rss_50=round(sampler.at(0.5), 1),
            rss_90=round(sampler.at(0.9), 1),
        )
    )


def postgres_answers() -> bool:
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=5).close()
    except Exception:  # no driver, no server: the SQLite rows only
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="PostgreSQL vs SQLite ledger, size, 10M run")
    ap.add_argument("--compare-rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1_000_000, help="the scale run's size")
    ap.add_argument("--no-scale", action="store_true", help="only the comparison")
    ap.add_argument("--no-compare", action="store_true", help="only the scale run")
    ap.add_argument(
        "--backends", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"]
    )
    ap.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    ap.add_argument("--worker", nargs=2, metavar=("FILE", "BACKEND"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(*a.worker)
        return 0
    backends = list(a.backends)
    if "postgres" in backends and not postgres_answers():
        print("no PostgreSQL answers at CAMPAIGNKIT_BENCH_POSTGRES_URL: SQLite only")
        backends.remove("postgres")
    ok = True
    if not a.no_compare and len(backends) > 1:
        ok = compare(a.compare_rows, a.rounds, backends)
    if not a.no_scale:
        ok = scale(a.rows, backends) and ok
    return 1 if a.check and not ok else 0


def configs(rows: int, backends: list[str]) -> list[Config]:
    path = str(ensure_segment(rows))
    me = str(Path(__file__).resolve())
    return [Config(b, [sys.executable, me, "--worker", path, b]) for b in backends]


def compare(rows: int, rounds: int, backends: list[str]) -> bool:
    print(f"== scale: compare, {rows:,} rows x 3 channels (recording), {rounds} rounds")
    results = run_rounds(configs(rows, backends), rounds)
    print_table(
        summarize(results, "msg_per_s", baseline="sqlite"),
        "msg/s",
        baseline="sqlite",
        columns=(
            ("secs", "seconds", "{:.1f}"),
            ("cpu_pct", "CPU%", "{:.0f}"),
            ("peak_mb", "peak MB", "{:.1f}"),
            ("ledger_mb_per_1m", "ledger MB/1M", "{:.0f}"),
            ("box_pct", "box%", "{:.0f}"),
        ),
    )
    if "postgres" not in results:
        return True
    ratio = summarize(results, "msg_per_s", baseline="sqlite")[-1].ratio
    print(f"postgres / sqlite: {ratio:.2f} (goal >= {GOAL_RATIO}): ", end="")
    print("OK" if ratio >= GOAL_RATIO else "MISSED")
    return ratio >= GOAL_RATIO


def scale(rows: int, backends: list[str]) -> bool:
    print(f"\n== scale: one run of {rows:,} rows x 3 channels per backend")
    results = run_rounds(configs(rows, backends), 1)
    ok = True
    for name, (r,) in results.items():
        print(
            f"{name}: {r['sent']:,} sent in {r['secs']:.0f} s ({r['msg_per_s']:,.0f} msg/s), "
            f"peak RSS {r['peak_mb']:.1f} MB (goal <= {GOAL_MB:.0f}); RSS at 10/50/90% of the "
            f"messages {r['rss_10']:.1f} / {r['rss_50']:.1f} / {r['rss_90']:.1f} MB; "
            f"ledger {r['ledger_mb_per_1m']:.0f} MB per 1M deliveries"
        )
        ok = ok and r["peak_mb"] <= GOAL_MB
    return ok


if __name__ == "__main__":
    sys.exit(main())
