"""Audience: ``suppress``, ``suppressions``."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import click
import pluggy
from rich import box
from rich.table import Table

from .._address import AddressValidator
from .._audience import channel_validator
from .._config import Channel, PipelineConfig, load_config
from .._controls import control_detail, find_control
from .._csvio import safe_csv_writer
from .._notifier import ChannelSettings, Notifier, placeholder_token
from .._plugins import Registry
from .._suppression import read_entries
from ..exceptions import CampaignKitError, ConfigError, PluginError
from ._campaign import build_pipeline, look, open_ledger
from ._group import EPILOG, main
from ._options import CONFIG_PATH, block_option, plugin_manager, sandbox_ledger_option
from ._output import EXIT_INPUT_ERROR, fail, fits, input_errors, is_quiet, make_console

# -- suppress and suppressions ------------------------------------------------------------


def _channel(config: PipelineConfig, name: str) -> Channel:
    for channel in config.channels:
        if channel.name == name:
            return channel
    have = ", ".join(c.name for c in config.channels)
    raise ConfigError(f"no channel named {name!r} (channels: {have})", path=f"channels.{name}")


def _address_validator(
    config: PipelineConfig, channel: Channel, pm: pluggy.PluginManager
) -> tuple[str, AddressValidator]:
    """The channel's address kind (its notifier's ``address_field``, the ledger's
    suppression kind) and the validator selection uses for it."""
    try:
        cls = Registry(pm).notifier_class(channel.provider)
    except PluginError as exc:
        raise ConfigError(str(exc), path=f"channels.{channel.name}.provider") from None
    field = str(channel.options.get("address_field") or cls.address_field)
    try:  # a notifier may take its address field from its options
        notifier: Notifier[Any] = cls(
            ChannelSettings(
                channel=channel.name,
                options=channel.options,
                token=placeholder_token("suppress") if cls.token_required else None,
                timeout=channel.timeout_seconds,
                base_dir=config.base_dir,
            )
        )
        field = notifier.address_field
    except CampaignKitError:
        pass  # e.g. an account id read from an unset variable: not needed here
    return field, channel_validator(channel, cls.name, field)


#: What an address of each kind is called in messages: (one, several).
_KIND_NOUN = {
    "email": ("e-mail address", "e-mail address(es)"),
    "phone": ("phone number", "phone number(s)"),
    "push_token": ("push token", "push token(s)"),
}


def _suppress_inputs(
    addresses: Sequence[str], files: Sequence[Path], kind: str
) -> list[tuple[str, str]]:
    """``(where, value)`` of every address given: on the command line, or in files read
    like suppression files (plain text, or CSV with an ``address`` or ``kind`` column;
    ``#`` comments)."""
    out = [("argument", a) for a in addresses]
    for file in files:
        for entry in read_entries(str(file), kind):
            out.append((f"{file}:{entry.line}", entry.value))
    return out


def _suppression_keys(
    inputs: Sequence[tuple[str, str]], validator: AddressValidator, target: Channel
) -> dict[str, str]:
    """The suppression key of every address given (to the value as given, first time);
    if any is invalid, the command exits 2 naming them and nothing is suppressed."""
    keys: dict[str, str] = {}  # key -> the value as given (first time)
    invalid: list[str] = []
    for where, value in inputs:
        normalized = validator.normalize_value(value.strip())
        if normalized is None:
            invalid.append(repr(value) if where == "argument" else f"{where}: {value!r}")
        else:
            keys.setdefault(validator.key(normalized), value)
    noun, _ = _KIND_NOUN.get(validator.kind, ("address", "address(es)"))
    if invalid:
        shown = ", ".join(invalid[:10]) + (f" and {len(invalid) - 10} more" if invalid[10:] else "")
        hint = ""
        if validator.kind == "phone" and target.phone_region is None:
            hint = f" (numbers without +country code need channels.{target.name}.phone_region)"
        fail(
            f"not a valid {noun} for channel {target.name!r}: {shown}{hint}; "
            "nothing was suppressed",
            EXIT_INPUT_ERROR,
        )
    return keys


@main.command(epilog=EPILOG)
@click.argument("config", type=CONFIG_PATH)
@click.argument("addresses", nargs=-1)
@click.option("--channel", "-c", required=True, help="The channel whose recipients are suppressed.")
@click.option(
    "--reason",
    default="unsubscribed",
    show_default=True,
    help="Why (kept with the entry; an address already suppressed keeps its reason).",
)
@click.option(
    "--from-file",
    "files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Also read addresses from FILE, one per line or a CSV with an 'address' column "
    "(or one named like the kind: email, phone, push_token). Repeatable.",
)
@click.option(
    "--sandbox",
    "use_sandbox",
    is_flag=True,
    help="Add to the sandbox's ledger (runs made with --sandbox).",
)
@block_option
def suppress(
    config: Path,
    addresses: tuple[str, ...],
    channel: str,
    reason: str,
    files: tuple[Path, ...],
    use_sandbox: bool,
    block: tuple[str, ...],
) -> None:
    """Add ADDRESS... to the ledger's suppression list of CHANNEL's kind of address:
    no later run (or dry run) messages them, on any channel sending to that kind of
    address; they are skipped as `suppressed`.

    Addresses are validated and normalized as selection does (e-mail syntax, phone
    numbers to E.164 with the channel's phone_region, push tokens for the provider);
    if any is invalid, none is added and the command exits 2 naming them. The list is
    per kind (email, phone, push_token), so it holds for every channel sending to that
    kind of address.
    """
    if not addresses and not files:
        raise click.UsageError("give the addresses to suppress, or --from-file FILE")
    if not reason.strip():
        raise click.BadParameter("must not be empty", param_hint="--reason")
    if (found := find_control(reason, strict=True)) is not None:
        # One line of text: no escape sequence for the terminal, no line for a report.
        raise click.BadParameter(control_detail("the reason", *found), param_hint="--reason")
    with input_errors(config):
        cfg = load_config(config)
        if not cfg.execution.ledger:
            raise ConfigError(
                "execution.ledger = false: runs of this campaign keep no ledger, so they "
                "would never read a suppression recorded there; use the channel's "
                "suppression_files instead",
                path="execution.ledger",
            )
        target = _channel(cfg, channel)
        kind, validator = _address_validator(cfg, target, plugin_manager(block))
        inputs = _suppress_inputs(addresses, files, validator.kind)
    keys = _suppression_keys(inputs, validator, target)
    pipeline = build_pipeline(cfg, None, None, rehearsal=use_sandbox)
    with input_errors(config):
        ledger = pipeline.ledger()
        try:
            known = {address: why for _, address, why, _ in ledger.suppressions(kind)}
            for key in keys:
                if key not in known:
                    ledger.suppress(kind, key, reason=reason, source="campaignkit suppress")
        finally:
            ledger.close()
    _, nouns = _KIND_NOUN.get(validator.kind, ("address", "address(es)"))
    out = make_console()
    added = [k for k in keys if k not in known]
    for key in keys if not is_quiet() else ():
        state = f"already suppressed ({known[key]})" if key in known else f"added ({reason})"
        out.print(f"  {key}  {state}")
    out.print(
        f"Suppressed: {len(added)} {nouns} added, {len(keys) - len(added)} already there, "
        f"in {pipeline.ledger_shown}; later runs skip them (suppressed) on every channel "
        f"sending to {kind}."
    )


@main.command(epilog=EPILOG)
@click.argument("config", type=CONFIG_PATH)
@click.option("--kind", help="Only this kind of address: email, phone, push_token.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="table; json: a list of {kind, address, reason, source}; csv: a header and one "
    "row per entry, safe to open in a spreadsheet.",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --format json or csv: write to this file instead of stdout.",
)
@sandbox_ledger_option
def suppressions(
    config: Path,
    kind: str | None,
    fmt: str,
    as_json: bool,
    output: Path | None,
    use_sandbox: bool,
) -> None:
    """List the ledger's suppression list of campaign CONFIG: the addresses added by
    `campaignkit suppress` and by providers' "stop" answers (an unsubscribed number,
    an unregistered device, a hard bounce), with why and where from.

    Channels' suppression_files are read by every run as well; they are named here but
    not listed.
    """
    if as_json:
        if fmt not in ("table", "json"):
            raise click.UsageError(f"--json and --format {fmt} contradict each other")
        fmt = "json"
    if output is not None and fmt == "table":
        raise click.UsageError("--output needs --format json or csv")
    pipeline = look(config, use_sandbox)
    entries: list[tuple[str, str, str, str | None]] = []
    with input_errors(config), open_ledger(pipeline, required=False) as ledger:
        if ledger is not None:
            entries = ledger.suppressions(kind or None)
    if fmt != "table":
        with input_errors(config):
            _export_suppressions(entries, fmt, output)
        if output is not None:
            click.echo(f"{len(entries)} suppressed address(es) written to {output}", err=True)
        return
    out = make_console()
    if entries:
        out.print(f"Suppressed addresses ({pipeline.ledger_shown})")
        table = Table(box=box.SIMPLE_HEAD)
        for header in ("kind", "address", "reason", "source"):
            table.add_column(header, no_wrap=True)
        for k, a, r, src in entries:
            table.add_row(k, a, r, src or "-")
        if fits(out, table):
            out.print(table)
        else:  # a narrow terminal: one block per address, nothing broken or cut
            for k, a, r, src in entries:
                out.print(f"{k} {a}")
                out.print(f"  reason {r} · source {src or '-'}")
    what = f"{kind} " if kind else ""
    out.print(f"{len(entries)} suppressed {what}address(es) in the ledger.")
    for channel in pipeline.channels:
        if channel.suppression_files:
            out.print(
                f"Channel {channel.name} also skips the addresses in its suppression_files: "
                f"{', '.join(channel.suppression_files)}"
            )


_SUPPRESSION_FIELDS = ("kind", "address", "reason", "source")


def _export_suppressions(
    entries: Sequence[tuple[str, str, str, str | None]], fmt: str, output: Path | None
) -> None:
    """The suppression list as JSON or CSV (neutralised cells), to ``output`` or stdout."""
    with contextlib.ExitStack() as stack:
        stream: IO[str] = sys.stdout
        if output is not None:
            try:
                stream = stack.enter_context(output.open("w", encoding="utf-8", newline=""))
            except OSError as exc:
                raise ConfigError(f"cannot write {output}: {exc.strerror}") from None
        if fmt == "csv":
            writer = safe_csv_writer(stream)
            writer.writerow(_SUPPRESSION_FIELDS)
            writer.writerows(entries)
        else:
            rows = [dict(zip(_SUPPRESSION_FIELDS, entry, strict=True)) for entry in entries]
            stream.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
