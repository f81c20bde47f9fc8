"""A small benchmark harness for a shared, noisy machine.

Method (as in the project's perf baselines): every configuration runs in a **fresh
process** for every round; configurations are **interleaved** round by round, with the
order **rotated** each round; figures are **medians** over rounds with min-max; a ratio
to the baseline is computed **per round** (paired) and then its median is taken, never
as a ratio of two medians. Peak memory is ``VmHWM`` of the worker process.

Runner side::

    from _harness import Config, run_rounds, summarize, print_table

    configs = [Config("baseline", [sys.executable, __file__, "--worker", "baseline"]), ...]
    results = run_rounds(configs, rounds=5)
    rows = summarize(results, "rows_per_s", baseline="baseline")
    print_table(rows, "rows/s", baseline="baseline")

Worker side (the command a :class:`Config` runs), timing only the work::

    from _harness import Timer, emit

    with Timer() as t:
        n = do_the_work()
    emit(t.result(rows=n, rows_per_s=n / t.secs))

A worker prints exactly one JSON object as the last line of its standard output;
:func:`emit` adds ``peak_mb`` (VmHWM) to it. The runner adds ``box_pct``, the whole
machine's CPU use during the run (100 = one core busy), to help spot noisy rounds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Config",
    "Summary",
    "Timer",
    "emit",
    "print_table",
    "rss_mb",
    "run_rounds",
    "summarize",
    "vm_hwm_mb",
]


# -- worker side ------------------------------------------------------------------------------


def vm_hwm_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``VmHWM``).

    Not ``ru_maxrss``: after fork+exec it may carry the parent's RSS.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    """Current resident set size of this process, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Timer:
    """Wall time (``perf_counter``) and CPU time (``process_time``, all threads) of a block.

    ``base_mb`` is the RSS when the block starts, so ``peak_mb - base_mb`` is what the
    block itself added.
    """

    secs: float = 0.0
    cpu: float = 0.0
    base_mb: float = 0.0

    def __enter__(self) -> Timer:
        self.base_mb = rss_mb()
        self._c0, self._t0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.secs = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._c0

    def result(self, **fields: Any) -> dict[str, Any]:
        """The timing as a result dict (``secs``, ``cpu``, ``cpu_pct``, ``base_mb``) plus
        ``fields``."""
        return {
            "secs": self.secs,
            "cpu": self.cpu,
            "cpu_pct": self.cpu / self.secs * 100 if self.secs else 0.0,
            "base_mb": round(self.base_mb, 1),
            **fields,
        }


def emit(result: Mapping[str, Any]) -> None:
    """Print a worker's result as one JSON line, with ``peak_mb`` added."""
    out = dict(result)
    out.setdefault("peak_mb", round(vm_hwm_mb(), 1))
    print(json.dumps(out), flush=True)


# -- runner side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One configuration: a name and the command that runs it once.

    Attributes:
        name: label in tables, and the key of its results.
        argv: the command (``[sys.executable, "-m", "pkg.mod", ...]`` or a script); it
            must print one JSON object as the last line of its standard output.
        env: extra environment variables for the command.
        timeout: seconds before the run is killed and the benchmark fails.
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None


def _machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def run_once(config: Config) -> dict[str, Any]:
    """Run ``config`` once in a fresh process and return its JSON result (plus
    ``box_pct``).

    Raises:
        RuntimeError: the command failed or printed no JSON line.
    """
    env = {**os.environ, **config.env} if config.env else None
    busy0, total0 = _machine_ticks()
    proc = subprocess.run(
        list(config.argv), capture_output=True, text=True, env=env, timeout=config.timeout
    )
    busy1, total1 = _machine_ticks()
    if proc.returncode != 0:
        raise RuntimeError(f"{config.name} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RuntimeError(
            f"{config.name} printed no JSON result:\n{proc.stdout[-2000:]}"
        ) from None
    result["box_pct"] = (busy1 - busy0) / max(1, total1 - total0) * 100 * (os.cpu_count() or 1)
    return result


def run_rounds(
    configs: Sequence[Config], rounds: int, *, pause: float = 0.2, progress: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """Run every config once per round, interleaved, rotating the order each round.

    Returns:
        results by config name: one result dict per round, in round order (each with a
        ``round`` key), so that results of the same round can be paired.
    """
    results: dict[str, list[dict[str, Any]]] = {c.name: [] for c in configs}
    if len(results) != len(configs):
        raise ValueError("config names must be unique")
    for r in range(rounds):
        k = r % len(configs)
        for config in [*configs[k:], *configs[:k]]:
            result = run_once(config)
            result["round"] = r
            results[config.name].append(result)
            time.sleep(pause)
        if progress:
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return results


@dataclass(frozen=True)
class Summary:
    """One config's figures over the rounds.

    ``median``/``low``/``high`` are of the metric; ``ratio``/``ratio_low``/``ratio_high``
    are of the per-round ratio metric(config) / metric(baseline); ``medians`` holds the
    median of every other numeric field of the results (``peak_mb``, ``cpu_pct`` ...).
    """

    name: str
    rounds: int
    median: float
    low: float
    high: float
    ratio: float
    ratio_low: float
    ratio_high: float
    medians: Mapping[str, float]


def summarize(
    results: Mapping[str, Sequence[Mapping[str, Any]]], metric: str, *, baseline: str
) -> list[Summary]:
    """Medians, min-max and paired ratios against ``baseline`` for ``metric``."""
    base = results[baseline]
    out = []
    for name, runs in results.items():
        values = [float(r[metric]) for r in runs]
        ratios = [float(a[metric]) / float(b[metric]) for a, b in zip(runs, base, strict=True)]
        numeric = {
            key
            for r in runs
            for key, v in r.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and key != "round"
        }
        medians = {k: statistics.median(float(r[k]) for r in runs if k in r) for k in numeric}
        out.append(
            Summary(
                name=name,
                rounds=len(runs),
                median=statistics.median(values),
                low=min(values),
                high=max(values),
                ratio=statistics.median(ratios),
                ratio_low=min(ratios),
                ratio_high=max(ratios),
                medians=medians,
            )
        )
    return out


def print_table(
    rows: Sequence[Summary],
    metric_label: str,
    *,
    baseline: str,
    columns: Sequence[tuple[str, str, str]] = (
        ("cpu_pct", "CPU%", "{:.0f}"),
        ("base_mb", "base MB", "{:.1f}"),
        ("peak_mb", "peak MB", "{:.1f}"),
        ("box_pct", "box%", "{:.0f}"),
    ),
    value_format: str = "{:,.0f}",
) -> None:
    """Print summaries as a table: median, min-max, paired ratio to ``baseline`` with
    its min-max, then ``columns`` (result key, heading, format) taken from the medians."""
    heads = [
        "config",
        f"median {metric_label}",
        "min",
        "max",
        f"x {baseline}",
        "ratio min-max",
        *(h for _, h, _ in columns),
    ]
    table = []
    for s in rows:
        table.append(
            [
                s.name,
                value_format.format(s.median),
                value_format.format(s.low),
                value_format.format(s.high),
                f"{s.ratio:.2f}",
                f"{s.ratio_low:.2f}-{s.ratio_high:.2f}",
                *(fmt.format(s.medians[k]) if k in s.medians else "-" for k, _, fmt in columns),
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(heads, *table, strict=True)]
    for i, line in enumerate([heads, *table]):
        cells = [
            c.ljust(w) if j == 0 else c.rjust(w)
            for j, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells))
        if i == 0:
            print("  ".join("-" * w for w in widths))
