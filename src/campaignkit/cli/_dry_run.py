"""``run --dry-run``: a plan that sends nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import click
import pluggy
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._config import ENV_NAME, PipelineConfig
from .._content import sms_segments
from .._models import (
    Reason,
)
from .._notifier import placeholder_token
from .._pipeline import (
    ChannelPlanSummary,
    Pipeline,
    PlanReport,
    audience_drift,
)
from .._plugins import Registry
from ..exceptions import ConfigError, PluginError
from ._campaign import build_pipeline
from ._output import (
    EXIT_INPUT_ERROR,
    EXIT_OK,
    Where,
    fits,
    format_counts,
    format_lines,
    input_errors,
    is_quiet,
    make_console,
    print_heading,
    print_message,
    top_counts,
)
from ._progress import RunProgress, drive

# -- dry run -------------------------------------------------------------------------------

#: Skip reasons in the order selection applies them (others follow, by name).
_SELECTION_ORDER = (
    Reason.MISSING_ADDRESS.value,
    Reason.INVALID_ADDRESS.value,
    Reason.NO_CONSENT.value,
    Reason.SUPPRESSED.value,
    Reason.DUPLICATE.value,
    Reason.FILTERED.value,
    Reason.FREQUENCY_CAPPED.value,
    Reason.OVER_TARGET.value,
    Reason.DEFERRED.value,
)

#: What a failure reason of the dry run means, for the notes under the table.
_FAILURE_MEANING = {
    "too_many_segments": "the SMS would be longer than max_sms_segments",
    "payload_too_large": "the push payload would exceed the provider's size limit",
    "render_error": "the template cannot be rendered for the recipient",
    "invalid_unsubscribe_url": "the rendered unsubscribe_url is not a valid https URL",
}


def _in_selection_order(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    rank = {reason: i for i, reason in enumerate(_SELECTION_ORDER)}
    return sorted(
        ((k, v) for k, v in counts.items() if v),
        key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]),
    )


def _dry_run_env(
    config: PipelineConfig, pm: pluggy.PluginManager, env: Mapping[str, str] | None
) -> tuple[dict[str, str], list[str]]:
    """The environment of a dry run: a placeholder for every required token that is not
    set (a dry run sends nothing), and a note for each, since a real run would stop."""
    out = dict(env if env is not None else os.environ)
    notes = []
    registry = Registry(pm)
    for channel in config.channels:
        if not channel.enabled or out.get(channel.token_variable):
            continue
        try:
            cls = registry.notifier_class(channel.provider)
        except PluginError:
            continue  # the plan reports the unknown provider
        if cls.token_required:
            out[channel.token_variable] = placeholder_token("dry-run").reveal()
            variable = channel.token_variable
            if not ENV_NAME.match(variable):  # maybe the token itself: never shown
                variable = f"token_env of channel {channel.name} (not a variable name)"
            notes.append(
                f"Note:      {variable} is not set: the dry run does not need "
                f"it, but a real run would stop before sending (channel {channel.name})"
            )
    return out, notes


def _plan_path(pipeline: Pipeline, output_dir: Path | None, created: datetime) -> Path:
    """``<output_dir>/plan-<timestamp>.json``, not overwriting an earlier plan."""
    root = pipeline.output_root(output_dir)
    stamp = created.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = root / f"plan-{stamp}.json"
    n = 1
    while path.exists():
        n += 1
        path = root / f"plan-{stamp}-{n}.json"
    return path


def _write_plan(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the plan to {path}: {exc.strerror or exc}") from None


def dry_run_plan(
    config: PipelineConfig,
    pm: pluggy.PluginManager,
    env: Mapping[str, str] | None,
    path: Path,
    *,
    as_json: bool,
    samples: int,
    plan_output: Path | None,
    output_dir: Path | None,
    sandboxed: bool = False,
) -> int:
    """Plan the run (:meth:`Pipeline.plan`), print and write the plan; exit 0."""
    with input_errors(path):
        env, notes = _dry_run_env(config, pm, env)
    pipeline = build_pipeline(config, pm, env, rehearsal=sandboxed)
    out = make_console()
    progress = RunProgress(out, [], show=False)

    def plan() -> PlanReport:
        if out.is_terminal and not as_json and not is_quiet():
            with out.status("Dry run: extracting the segment, selecting and rendering..."):
                return pipeline.plan(samples=samples)
        return pipeline.plan(samples=samples)

    report = drive(
        plan,
        progress,
        config=path,
        interrupted=lambda: "dry run interrupted; nothing was sent",
    )
    notes += _guard_notes(config, report)
    target = plan_output or _plan_path(pipeline, output_dir, report.created_at)
    text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"
    with input_errors(path):
        _write_plan(target, text)
    if as_json:
        click.echo(text, nl=False)
        err = make_console(stderr=True)
        for note in notes:
            err.print(note)
        err.print(f"Plan:      {target}")
        return EXIT_OK
    if not is_quiet():
        _plan_summary(out, report, samples=samples)
        for note in notes:
            out.print(note)
    out.print(f"Plan:      {target}")
    if not is_quiet():
        where = Where(path, sandboxed)
        out.print(
            f"Nothing was sent. {where.command('run', flags='--limit N')} sends a canary "
            f"first; {where.command('run')} sends it all."
        )
    out.print(f"Status: dry run (exit {EXIT_OK})")
    return EXIT_OK


def _guard_notes(config: PipelineConfig, report: PlanReport) -> list[str]:
    """The ``expected_audience`` guards a run of this plan would trip (a dry run does not
    stop for them)."""
    notes = []
    for channel in config.channels:
        summary = report.channels.get(channel.name)
        if summary is None:
            continue
        # As the run counts it: every recipient selected, sent now or later.
        eligible = summary.eligible + summary.deferred + sum(summary.failures.values())
        drift = audience_drift(channel, eligible)
        if drift is not None:
            notes.append(
                f"Guard:     {drift}: a run would stop before sending (exit {EXIT_INPUT_ERROR})"
            )
    return notes


def _plan_table(
    channels: Sequence[ChannelPlanSummary],
) -> tuple[Table, list[list[str | Text]]]:
    """The per-channel table of a plan, and the same as one block of lines per channel
    (for a terminal too narrow for the table)."""
    table = Table(box=box.SIMPLE_HEAD)
    deferred = any(c.deferred for c in channels)
    segments = any(c.sms_segments is not None for c in channels)
    priced = any(c.estimated_cost is not None for c in channels)
    headers = ["channel", "provider", "eligible"]
    headers += ["deferred"] if deferred else []
    headers += ["skipped", "skip reasons", "would fail"]
    headers += ["SMS segments"] if segments else []
    headers += ["est. cost"] if priced else []
    numeric = {"eligible", "deferred", "skipped", "SMS segments", "est. cost"}
    for header in headers:
        table.add_column(header, justify="right" if header in numeric else "left", no_wrap=True)
    blocks: list[list[str | Text]] = []
    for c in channels:
        reasons = [f"{reason} {n}" for reason, n in _in_selection_order(c.skipped)]
        failures = [f"{reason} {n}" for reason, n in top_counts(c.failures, len(c.failures))]
        cells: list[str | Text] = [c.channel, c.provider, str(c.eligible)]
        cells += [str(c.deferred)] if deferred else []
        cells += [
            str(sum(c.skipped.values())),
            "\n".join(reasons) or "-",
            Text("\n".join(failures), style="red") if failures else "-",
        ]
        segments_text = "-" if c.sms_segments is None else str(c.sms_segments)
        cost_text = "-" if c.estimated_cost is None else f"{c.estimated_cost:,.2f}"
        cells += [segments_text] if segments else []
        cells += [cost_text] if priced else []
        table.add_row(*cells)
        head = [f"{c.eligible} eligible"]
        head += [f"{c.deferred} deferred"] if deferred else []
        head += [f"{sum(c.skipped.values())} skipped"]
        head += [f"{segments_text} SMS segments"] if c.sms_segments is not None else []
        head += [f"est. cost {cost_text}"] if c.estimated_cost is not None else []
        block: list[str | Text] = [f"{c.channel} ({c.provider}): {', '.join(head)}"]
        block += [f"  skipped: {', '.join(reasons)}"] if reasons else []
        block += [Text(f"  would fail: {', '.join(failures)}", style="red")] if failures else []
        blocks.append(block)
    return table, blocks


def _plan_summary(console: Console, report: PlanReport, *, samples: int) -> None:
    """The per-channel plan table, what the failures mean, and the rendered samples."""
    channels = list(report.channels.values())
    console.print(f"{report.pipeline} · dry run · nothing sent")
    deferred = any(c.deferred for c in channels)
    table, blocks = _plan_table(channels)
    if fits(console, table):
        console.print(table)
    else:  # a narrow terminal: one block per channel, every line whole
        for lines in blocks:
            for line in lines:
                console.print(line)
    rejected = f" ({format_counts(report.rejected_reasons)})" if report.rejected_reasons else ""
    console.print(
        f"Segment:   {report.rows_read} row(s) read, {report.rows_rejected} rejected{rejected}"
    )
    if report.lines:
        console.print(format_lines(report.lines))
    costs = [c.estimated_cost for c in channels if c.estimated_cost is not None]
    if len(costs) > 1:
        console.print(
            f"Cost:      {sum(costs):,.2f} estimated in total "
            f"(price_per_message, price_per_segment; unpriced channels not counted)"
        )
    if deferred:
        console.print(
            "Deferred:  held back by quiet hours; a run now would send them later, by a "
            "resume once the window opens"
        )
    failing = sorted({reason for c in channels for reason in c.failures})
    for reason in failing:
        meaning = _FAILURE_MEANING.get(reason, "the message breaks a content rule")
        console.print(f"Would fail: {reason}: {meaning}")
    if samples:
        for c in channels:
            _print_samples(console, c)


def _print_samples(console: Console, summary: ChannelPlanSummary) -> None:
    total = len(summary.samples)
    for i, message in enumerate(summary.samples, 1):
        print_heading(
            console,
            f"{summary.channel} sample {i}/{total}: {message.recipient_id} -> {message.address}",
        )
        print_message(console, message, html=False)
        if summary.sms_segments is not None:
            info = sms_segments(message.body)
            console.print(
                f"(SMS: {info.segments} segment(s), {info.encoding}, "
                f"{info.characters} character(s))"
            )
