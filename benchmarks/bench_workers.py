"""Workers on a PostgreSQL ledger: aggregate msg/s of the send step with 1, 2 and 4
worker processes.

Usage::

    python benchmarks/bench_workers.py [--rows 200000] [--workers 1 2 4] [--rounds R]
        [--postgres URL]

Each round of each configuration runs in a fresh process with a fresh PostgreSQL
database (created on ``--postgres``'s server, default ``CAMPAIGNKIT_BENCH_POSTGRES_URL``
or ``postgresql://postgres@127.0.0.1:5432/test``, dropped after): it opens the run of a
3-channel campaign on the recording channel (extraction, snapshot, plans), splits each
channel into shards, then starts W processes that each call ``Pipeline.work(run_id)``
(lease shards, send, let go), and times them from start to the last exit: that is the
send step, reported as messages per second over all channels. ``ratio`` is each
configuration's msg/s over ``workers=1`` in the same round.

Goals (scale-out issue): ``workers=2`` >= 1.8x ``workers=1``; 4 workers not below 2 on
this 2-core machine (no lock-contention collapse). Note that the PostgreSQL server
shares the machine's cores with the workers.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Config, Summary, Timer, emit, print_table, run_rounds, summarize
from gen_segment import ensure_segment

DEFAULT_URL = os.environ.get(
    "CAMPAIGNKIT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def build(path: str, url: str, out: str, workers: int) -> object:
    """The benchmark's campaign (3 channels on the recording channel), its ledger at ``url``."""
    from campaignkit import Channel, CsvSource, Pipeline, Template, get_plugin_manager
    from campaignkit._config import Execution
    from campaignkit.testing import Outbox, recording_plugin

    recorder = recording_plugin(Outbox(keep=False))
    pm = get_plugin_manager(load_entrypoints=False, plugins=[recorder])
    source = CsvSource(
        path,
        columns={"id": "customer_id"},
        consent={"email": "opted_in_email", "sms": "opted_in_sms", "push": "opted_in_push"},
    )
    fields = {"email": "email", "sms": "phone", "push": "push_token"}
    templates = {
        "email": Template(subject="{{ first_name }}, offer", body="Hello {{ first_name }}."),
        "sms": Template(body="{{ first_name }}: 20% off today. STOP to opt out"),
        "push": Template(title="Sale", body="Hi {{ first_name }}"),
    }
    channels = [
        Channel(
            name=name,
            provider="recording",
            template=templates[name],
            options={"address_field": field},
            batch_size=100,
        )
        for name, field in fields.items()
    ]
    return Pipeline(
        "bench_workers",
        source,
        channels,
        plugins=pm,
        env={},
        base_dir=out,
        execution=Execution(ledger=url, workers=workers),
        rehearsal=False,
    )


def _database(server: str) -> tuple[str, str]:
    """A fresh database on ``server``: (its URL, its name)."""
    import psycopg

    name = f"ck_bench_{secrets.token_hex(6)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base, _, _ = server.rpartition("/")
    return f"{base}/{name}", name


def _drop(server: str, name: str) -> None:
    import psycopg

    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def one_round(path: str, server: str, workers: int) -> None:
    """Open and plan the run, then time ``workers`` worker processes sending it."""
    url, name = _database(server)
    try:
        with tempfile.TemporaryDirectory() as out:
            pipeline = build(path, url, out, workers)
            run_id = pipeline.open_run().run_id  # type: ignore[attr-defined]
            for channel in ("email", "sms", "push"):
                pipeline.plan_channel(run_id, channel)  # type: ignore[attr-defined]
            pipeline.shard_channels(run_id, workers=workers)  # type: ignore[attr-defined]
            me = str(Path(__file__).resolve())
            command = [sys.executable, me, "--work", path, url, out, run_id, str(workers)]
            children, pg_before = _children_cpu(), _postgres_cpu()
            with Timer() as t:
                procs = [subprocess.Popen(command) for _ in range(workers)]
                codes = [p.wait() for p in procs]
            worker_cpu, server_cpu = _children_cpu() - children, _postgres_cpu() - pg_before
            report = pipeline.finish_run(run_id)  # type: ignore[attr-defined]
    finally:
        _drop(server, name)
    assert codes == [0] * workers, codes
    sent = sum(c.sent for c in report.channels.values())
    emit(
        t.result(
            sent=sent,
            msgs_per_s=sent / t.secs,
            status=str(report.status),
            worker_us=worker_cpu / sent * 1e6,
            server_us=server_cpu / sent * 1e6,
        )
    )


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _postgres_cpu() -> float:
    """CPU seconds (user + system) of the PostgreSQL server on this machine: its live
    processes' (backends, WAL writer, checkpointer...) and, through the postmaster's
    reaped-children counters, those of backends that exited since it started."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone since the listing
        if "(postgres)" not in text[: text.rfind(")") + 1]:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        # utime, stime, cutime, cstime (fields 14 to 17 of the line)
        total += sum(int(f) for f in fields[11:15])
    return total / tick


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="aggregate msg/s of 1, 2 and 4 workers")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--postgres", default=DEFAULT_URL)
    ap.add_argument("--round", nargs=3, metavar=("FILE", "URL", "W"), help=argparse.SUPPRESS)
    ap.add_argument("--work", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.work:
        path, url, out, run_id, workers = a.work
        build(path, url, out, int(workers)).work(run_id)  # type: ignore[attr-defined]
        return 0
    if a.round:
        one_round(a.round[0], a.round[1], int(a.round[2]))
        return 0
    segment = str(ensure_segment(a.rows))
    me = str(Path(__file__).resolve())
    configs = [
        Config(f"workers={w}", [sys.executable, me, "--round", segment, a.postgres, str(w)])
        for w in a.workers
    ]
    print(f"== workers: send step of a {a.rows:,}-row 3-channel run, PostgreSQL ledger")
    results = run_rounds(configs, a.rounds)
    base = configs[0].name
    rows = summarize(results, "msgs_per_s", baseline=base)
    columns = (
        ("secs", "seconds", "{:.1f}"),
        ("box_pct", "box%", "{:.0f}"),
        ("worker_us", "worker CPU µs/msg", "{:.1f}"),
        ("server_us", "PostgreSQL CPU µs/msg", "{:.1f}"),
    )
    print_table(rows, "msg/s", baseline=base, columns=columns)
    by_name = {r.name: r for r in rows}
    two, four = by_name.get("workers=2"), by_name.get("workers=4")
    if two is not None:
        print(f"workers=2 / workers=1: {two.ratio:.2f}x (goal >= 1.8x)")
    one = by_name.get(base)
    if one is not None and two is not None:
        _bound(one, two)
    if four is not None and two is not None:
        print(f"workers=4 / workers=2: {four.median / two.median:.2f}x (goal: not below 1)")
    return 0


def _bound(one: Summary, two: Summary) -> None:
    """What two workers could reach on this machine's cores, from the measured CPU
    cost per message: the workers' and the PostgreSQL server's share the cores."""
    cores = os.cpu_count() or 1
    worker, server = two.medians["worker_us"], two.medians["server_us"]
    best = min(2 / worker, cores / (worker + server)) * 1e6
    print(
        f"CPU per message with 2 workers: {worker:.1f} µs in the workers + {server:.1f} µs "
        f"in PostgreSQL; on {cores} cores at most {best:,.0f} msg/s = "
        f"{best / one.median:.2f}x workers=1"
    )


if __name__ == "__main__":
    sys.exit(main())
