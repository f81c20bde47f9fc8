"""Information: ``validate``, ``preview``, ``channels``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .._config import PipelineConfig, load_config
from .._pipeline import (
    CampaignCheck,
    Pipeline,
    RowCheck,
    check_campaign,
)
from .._plugins import Registry
from ._group import EPILOG, main
from ._options import CONFIG_PATH, block_option, plugin_manager
from ._output import (
    EXIT_INPUT_ERROR,
    EXIT_OK,
    fail,
    fits,
    format_counts,
    format_rate,
    input_errors,
    make_console,
    message_dict,
    package_label,
    print_heading,
    print_message,
    problem_sections,
    single_line,
)


def _print_summary(out: Console, config: Path, check: CampaignCheck, cfg: PipelineConfig) -> None:
    summary = check.summary
    assert summary is not None
    by_name = {c.name: c for c in cfg.channels}
    out.print(f"{config}: valid")
    out.print(f"  pipeline: {summary.pipeline}")
    out.print(f"  source:   {cfg.source.type} {summary.source}")
    out.print(f"  fields:   {', '.join(sorted(summary.fields))}")
    out.print("  channels:")
    for name, provider in summary.channels.items():
        channel = by_name[name]
        target = (
            f", at most {channel.target_customers} recipients"
            if channel.target_customers is not None
            else ""
        )
        if channel.filter:
            target += f", filter: {channel.filter}"
        out.print(f"    {name} -> {provider} (token: ${channel.token_variable}{target})")
    for name in summary.disabled:
        out.print(f"    {name} -> {by_name[name].provider} (disabled)")


def _print_rows(out: Console, rows: RowCheck) -> None:
    """The ``--rows`` report: counts by reason, then the first rows of each kind."""
    out.print(
        f"Rows: {rows.source}: {rows.rows_read} read, {rows.accepted} accepted, "
        f"{rows.rejected} rejected"
    )
    if rows.reasons:
        out.print(f"  rejected: {format_counts(rows.reasons)}")
        shown = len(rows.examples)
        more = f" (first {shown} of {rows.rejected})" if shown < rows.rejected else ""
        if shown:
            out.print(f"  rejected rows{more}:")
        for example in rows.examples:
            out.print(f"    {single_line(str(example))}")
    invalid = {k: v for k, v in rows.invalid_addresses.items() if v}
    if invalid:
        out.print(f"  invalid addresses (skipped as invalid_address): {format_counts(invalid)}")
        total = sum(invalid.values())
        shown = len(rows.address_examples)
        more = f" (first {shown} of {total})" if shown < total else ""
        if shown:
            out.print(f"  invalid addresses{more}:")
        for example in rows.address_examples:
            out.print(f"    {single_line(str(example))}")


@main.command(epilog=EPILOG)
@click.argument("config", type=CONFIG_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the result (problems, rows) as JSON.")
@click.option(
    "--rows",
    is_flag=True,
    help="Also read the whole segment as a run would (nothing is sent or recorded) and "
    "report the rows it would reject and the invalid addresses, with file, line and field.",
)
@click.option(
    "--examples",
    type=click.IntRange(min=0),
    metavar="N",
    help="With --rows: list at most N rejected rows and N invalid addresses (default 20).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="With --rows: exit 2 when any row is rejected or any address is invalid.",
)
@block_option
def validate(
    config: Path,
    as_json: bool,
    rows: bool,
    examples: int | None,
    strict: bool,
    block: tuple[str, ...],
) -> None:
    """Check CONFIG without sending: schema, plugins, provider options, tokens, the
    segment's header and every template; every problem is listed, grouped, with its key
    path and file:line (exit 2 when there is one).

    With --rows the whole segment is read too (as a run reads it, without sending or
    recording anything) and its rejected rows and invalid addresses are reported."""
    if (strict or examples is not None) and not rows:
        raise click.UsageError("--strict and --examples need --rows")
    with input_errors(config):
        pm = plugin_manager(block)
        check = check_campaign(
            config, rows=rows, examples=20 if examples is None else examples, plugins=pm
        )
    rejected = check.rows is not None and (
        check.rows.rejected > 0 or any(check.rows.invalid_addresses.values())
    )
    code = EXIT_INPUT_ERROR if check.problems or (strict and rejected) else EXIT_OK
    if as_json:
        click.echo(json.dumps(check.to_dict(), indent=2))
        raise SystemExit(code)
    out = make_console()
    if check.summary is not None:
        with input_errors(config):
            _print_summary(out, config, check, load_config(config))
    if check.rows is not None:
        _print_rows(out, check.rows)
    if len(check.problems) == 1:
        fail(str(check.problems[0]), EXIT_INPUT_ERROR)
    if check.problems:
        click.echo(f"campaignkit: error: {config}: {len(check.problems)} problems", err=True)
        for line in problem_sections(check.problems):
            click.echo(line, err=True)
    raise SystemExit(code)


@main.command(epilog=EPILOG)
@click.argument("config", type=CONFIG_PATH)
@click.option("--channel", "-c", required=True, help="The channel to render (email, sms, ...).")
@click.option(
    "-n",
    "count",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="How many recipients.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the messages as a JSON list.")
@block_option
def preview(config: Path, channel: str, count: int, as_json: bool, block: tuple[str, ...]) -> None:
    """Render CHANNEL's messages for the first eligible recipients of CONFIG.

    Sends nothing and needs no token.
    """
    with input_errors(config):
        pipeline = Pipeline.from_file(config, plugins=plugin_manager(block))
        messages = pipeline.preview(channel, count)
    if as_json:
        click.echo(json.dumps([message_dict(m) for m in messages], indent=2, ensure_ascii=False))
        return
    out = make_console()
    if not messages:
        out.print(f"No eligible recipient for channel {channel!r}.")
        return
    for i, message in enumerate(messages, 1):
        print_heading(
            out, f"{channel} {i}/{len(messages)}: {message.recipient_id} -> {message.address}"
        )
        print_message(out, message)
    out.print(f"{len(messages)} message(s) rendered; nothing was sent.")


# -- channels ------------------------------------------------------------------------------


def _provider_rows(providers: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per channel provider, as ``channels --json`` prints them."""
    rows = []
    for name, info in providers.items():
        cls = info.factory
        rows.append(
            {
                "provider": name,
                "package": info.package,
                "address_field": cls.address_field,
                "max_batch_size": cls.max_batch_size,
                "idempotency_keys": bool(cls.supports_idempotency_keys),
                "default_rate": format_rate(cls.default_rate),
                "token_required": bool(cls.token_required),
            }
        )
    return rows


def _print_channels(
    out: Console, rows: Sequence[Mapping[str, Any]], source_rows: Sequence[Mapping[str, str]]
) -> None:
    """The tables of ``channels`` (one block per provider on a narrow terminal)."""
    table = Table(box=None, pad_edge=False)
    for header in (
        "provider",
        "package",
        "address",
        "batch",
        "idempotent",
        "default rate",
        "token",
    ):
        table.add_column(header, justify="right" if header == "batch" else "left", no_wrap=True)
    blocks = []
    for row in rows:
        cells = [
            row["provider"],
            package_label(row["package"]),
            row["address_field"],
            str(row["max_batch_size"]),
            "yes" if row["idempotency_keys"] else "no",
            row["default_rate"],
            "required" if row["token_required"] else "optional",
        ]
        table.add_row(*cells)
        blocks.append(
            [
                f"{cells[0]} ({cells[1]})",
                f"  address {cells[2]} · batch {cells[3]} · idempotent {cells[4]}",
                f"  default rate {cells[5]} · token {cells[6]}",
            ]
        )
    out.print("Channel providers")
    if fits(out, table):
        out.print(table)
    else:  # a narrow terminal: one block per provider, nothing cut
        for provider_lines in blocks:
            for line in provider_lines:
                out.print(line)
    sources_table = Table(box=None, pad_edge=False)
    sources_table.add_column("type", no_wrap=True)
    sources_table.add_column("package", no_wrap=True)
    for source in source_rows:
        sources_table.add_row(source["type"], package_label(source["package"]))
    out.print("Source types")
    if fits(out, sources_table):
        out.print(sources_table)
    else:
        for source in source_rows:
            out.print(f"{source['type']} ({package_label(source['package'])})")


@main.command(epilog=EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Print the providers as JSON.")
@block_option
def channels(as_json: bool, block: tuple[str, ...]) -> None:
    """List the channel providers and source types that are installed."""
    with input_errors():
        registry = Registry(plugin_manager(block))
        providers = dict(sorted(registry.channels.items()))
        sources = dict(sorted(registry.sources.items()))
    rows = _provider_rows(providers)
    source_rows = [{"type": n, "package": i.package} for n, i in sources.items()]
    if as_json:
        click.echo(json.dumps({"channels": rows, "sources": source_rows}, indent=2))
        return
    _print_channels(make_console(), rows, source_rows)
