"""Checking a campaign without sending: every problem at once, each with its group,
file and line; and preparing its channels (notifier, template, content rules,
audience) from what the checks built."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from .._audience import Audience, build_audience, content_check
from .._config import ENV_NAME, Channel, key_lines, line_of
from .._engine import ChannelPlan, ContentCheck
from .._ledger import PlanRules
from .._models import Rate, Secret
from .._notifier import ChannelSettings, Notifier, placeholder_token
from .._redact import token_problem
from .._source import MODEL_FIELDS
from .._templates import CompiledTemplate, compile_template, template_problems
from ..exceptions import (
    PROBLEM_GROUPS,
    CampaignKitError,
    ConfigError,
    PluginError,
    Problem,
    SourceError,
    TemplateError,
)
from ._campaign import Campaign

#: The token a preview's notifier gets when the channel's is not set (nothing is sent).
PREVIEW_TOKEN = "preview-token"  # noqa: S105 - a placeholder, never sent

__all__ = [
    "PREVIEW_TOKEN",
    "Checked",
    "Finding",
    "channel_plans",
    "check_campaign_parts",
    "ordered",
    "prepare_channel",
    "problem_line",
    "problems_of",
    "raise_findings",
    "read_token",
    "required_of",
]


@attrs.frozen
class Finding:
    """A problem, and the error it came from (raised as is when it is the only one)."""

    problem: Problem
    error: CampaignKitError


def problems_of(exc: CampaignKitError, group: str) -> list[Problem]:
    """``exc`` as problems of ``group`` (a ConfigError may carry several)."""
    if isinstance(exc, ConfigError):
        return [attrs.evolve(p, group=group) for p in exc.problems]
    if isinstance(exc, SourceError):
        column = f"column {exc.column!r}: " if exc.column is not None else ""
        return [Problem(column + exc.detail, file=exc.file, line=exc.line, group=group)]
    if isinstance(exc, TemplateError) and exc.path is not None:
        return [Problem(exc.detail, path=exc.path, group=group)]
    text = str(exc)
    head, sep, rest = text.partition(": ")
    if sep and head.startswith("channels.") and " " not in head:
        return [Problem(rest, path=head, group=group)]
    return [Problem(text, group=group)]


def ordered(problems: Iterable[Problem]) -> tuple[Problem, ...]:
    """Grouped in the order of :data:`PROBLEM_GROUPS`, by line within a group."""
    rank = {g: i for i, g in enumerate(PROBLEM_GROUPS)}
    listed = list(dict.fromkeys(problems))
    return tuple(
        sorted(listed, key=lambda p: (rank.get(p.group, len(rank)), p.file or "", p.line or 0))
    )


def raise_findings(findings: Sequence[Finding], file: str | None) -> None:
    """Raise the only error there is as it is, else one ConfigError listing them all."""
    if not findings:
        return
    errors = {id(f.error): f.error for f in findings}
    if len(errors) == 1:
        error = findings[0].error
        if isinstance(error, ConfigError):  # its problems with their file and line
            error.problems = tuple(f.problem for f in findings)
        raise error
    raise ConfigError.of(ordered(f.problem for f in findings), file=file)


def read_token(
    environ: Mapping[str, str], channel: Channel, cls: type[Notifier[Any]]
) -> Secret | None:
    """The channel's token, from the variable its ``token_env`` names.

    Raises:
        ConfigError: it is required and not set, or not a usable token (never quoted).
    """
    value = environ.get(channel.token_variable)
    path = f"channels.{channel.name}.token_env"
    if not value:
        if cls.token_required and not ENV_NAME.match(channel.token_variable):
            raise ConfigError(  # never quote it: it may be the token itself
                "expected an environment variable name (letters, digits and '_') that "
                f"holds the {cls.name} token; the value written is not shown, as it may "
                "be the token",
                path=path,
            )
        if cls.token_required:
            raise ConfigError(
                f"environment variable {channel.token_variable} is not set (the {cls.name} token)",
                path=path,
            )
        return None
    problem = token_problem(value)
    if problem is not None:  # never quote the value
        raise ConfigError(
            f"environment variable {channel.token_variable} (the {cls.name} token) {problem}",
            path=path,
        )
    return Secret(value)


def problem_line(lines: Mapping[str, int], problem: Problem) -> int | None:
    """The line of a problem's key path: a token's only when ``token_env`` is written;
    a template part's, else its ``<part>_file``, else the closest enclosing table's."""
    path = problem.path
    if path is None:
        return None
    if problem.group == "tokens":
        return lines.get(path)
    head, _, part = path.rpartition(".template.")
    if head and part and path not in lines:
        found = lines.get(f"{head}.template.{part}_file")
        if found is not None:
            return found
    return line_of(lines, path)


def _located(findings: list[Finding], config_file: str | None) -> list[Finding]:
    """Problems about the configuration get its file and the line of their key."""
    if config_file is None:
        return findings
    try:
        lines = key_lines(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        lines = {}
    out = []
    for finding in findings:
        problem = finding.problem
        if problem.file is None:
            line = problem_line(lines, problem)
            problem = attrs.evolve(problem, file=config_file, line=line)
        out.append(Finding(problem, finding.error))
    return out


@attrs.frozen
class Checked:
    """What checking a campaign found: every problem, and when a channel has none,
    its plan (built by the checks: a run uses it as it is)."""

    findings: tuple[Finding, ...]
    plans: Mapping[str, ChannelPlan]


def check_campaign_parts(campaign: Campaign) -> Checked:
    """Every problem of the campaign (see :meth:`Pipeline.problems`)."""
    findings: list[Finding] = []
    plans: dict[str, ChannelPlan] = {}

    def add(exc: CampaignKitError, group: str) -> None:
        findings.extend(Finding(p, exc) for p in problems_of(exc, group))

    fields = None
    try:
        fields = campaign.source.fields()
    except ConfigError as exc:  # the [source] options
        add(exc, "config")
    except CampaignKitError as exc:
        add(exc, "source")
    for channel in campaign.enabled_channels:
        errors, plan = _channel_problems(campaign, channel, fields)
        if plan is not None:
            plans[channel.name] = plan
        for error, group in errors:
            if isinstance(error, SourceError) and group == "channels":
                # a suppression list: at the key naming it, then its file and line
                key = f"channels.{channel.name}.suppression_files"
                findings.append(Finding(Problem(str(error), path=key, group=group), error))
            else:
                add(error, group)
    if fields is not None:
        try:
            _check_header(campaign)
        except CampaignKitError as exc:
            add(exc, "source")
    return Checked(tuple(_located(findings, campaign.config_file)), plans)


def required_of(campaign: Campaign, channel: Channel) -> set[str]:
    """The model field ``channel`` sends to, when it is one (the source must have
    its column)."""
    field = str(
        channel.options.get("address_field")
        or campaign.registry.notifier_class(channel.provider).address_field
    )
    return {field} if field in MODEL_FIELDS else set()


def _check_header(campaign: Campaign) -> None:
    """Read the source up to its first record: the header and the columns the
    channels' address fields need are checked there."""
    required = set()
    for channel in campaign.enabled_channels:
        try:
            required |= required_of(campaign, channel)
        except PluginError:
            continue  # an unknown provider: reported with the channel
    records = campaign.source.records(required)
    try:
        next(iter(records), None)
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()


def _settings(campaign: Campaign, channel: Channel, token: Any) -> ChannelSettings:
    return ChannelSettings(
        channel=channel.name,
        options=channel.options,
        token=token,
        timeout=channel.timeout_seconds,
        base_dir=campaign.base_dir,
        env=campaign.environ,
        receipts_url=campaign.receipts.url(channel.name),
    )


def _extra(channel: Channel) -> dict[str, str | None]:
    return {
        "unsubscribe_url": channel.unsubscribe_url,
        "unsubscribe_mailto": channel.unsubscribe_mailto,
    }


def _missing_field(notifier: Notifier[Any], fields: frozenset[str] | None, path: str) -> None:
    field = notifier.address_field
    if fields is not None and field not in MODEL_FIELDS and field not in fields:
        raise ConfigError(
            f"{notifier.name} sends to the recipient field {field!r}, which the "
            f"source does not provide (fields: {', '.join(sorted(fields))})",
            path=f"{path}.provider",
        )


def _channel_problems(
    campaign: Campaign, channel: Channel, fields: frozenset[str] | None
) -> tuple[list[tuple[CampaignKitError, str]], ChannelPlan | None]:
    """Every problem of one channel, each with its group (the checks that need a
    notifier are skipped when it cannot be built: its problem is listed); and the
    channel's plan when it has no problem."""
    path = f"channels.{channel.name}"
    out: list[tuple[CampaignKitError, str]] = []
    try:
        cls = campaign.registry.notifier_class(channel.provider)
    except PluginError as exc:
        out.append((ConfigError(str(exc), path=f"{path}.provider"), "channels"))
        cls = None
    notifier = None
    if cls is not None:
        if channel.batch_size is not None and channel.batch_size > cls.max_batch_size:
            message = f"{cls.name} accepts at most {cls.max_batch_size} message(s) per request"
            out.append((ConfigError(message, path=f"{path}.batch_size"), "channels"))
        token = None
        try:
            token = campaign.token(channel, cls)
        except ConfigError as exc:
            out.append((exc, "tokens"))
        if token is None and cls.token_required:
            token = placeholder_token("validate")  # the options are still checked
        try:
            notifier = cls(_settings(campaign, channel, token))
        except CampaignKitError as exc:
            out.append((exc, "channels"))
    if notifier is not None:
        try:
            _missing_field(notifier, fields, path)
        except ConfigError as exc:
            out.append((exc, "source"))
    extra = _extra(channel)
    errors = template_problems(channel.template, channel=channel.name, fields=fields, extra=extra)
    out.extend((exc, "templates") for exc in errors)
    if notifier is None:
        return out, None
    template = content = None
    if not errors:
        template = compile_template(
            channel.template, channel=channel.name, fields=fields, extra=extra
        )
        try:
            content = content_check(channel, notifier, template, fields)
        except CampaignKitError as exc:
            out.append((exc, "content"))
    audience = None
    try:
        audience = build_audience(channel, notifier, fields, campaign.base_dir)
    except CampaignKitError as exc:
        out.append((exc, "channels"))
    if out or template is None or audience is None:
        return out, None
    return out, _assemble(campaign, channel, notifier, template, content, audience)


def prepare_channel(
    campaign: Campaign,
    channel: Channel,
    fields: frozenset[str] | None,
    *,
    preview: bool = False,
) -> ChannelPlan:
    """Everything needed to run one channel (its notifier with its token and options,
    its template, content rules and audience rules). For a ``preview`` a token that
    is not set is not needed (a placeholder stands for it).

    Raises:
        ConfigError, TemplateError, SourceError, PluginError: the first problem.
    """
    path = f"channels.{channel.name}"
    try:
        cls = campaign.registry.notifier_class(channel.provider)
    except PluginError as exc:
        raise ConfigError(str(exc), path=f"{path}.provider") from None
    if channel.batch_size is not None and channel.batch_size > cls.max_batch_size:
        raise ConfigError(
            f"{cls.name} accepts at most {cls.max_batch_size} message(s) per request",
            path=f"{path}.batch_size",
        )
    if preview and channel.token_variable not in campaign.environ:
        token: Secret | None = Secret(PREVIEW_TOKEN)
    else:
        token = campaign.token(channel, cls)
    notifier = cls(_settings(campaign, channel, token))
    # A missing model-field column is the source's file-level error (file, line, column).
    _missing_field(notifier, fields, path)
    template = compile_template(
        channel.template, channel=channel.name, fields=fields, extra=_extra(channel)
    )
    content = content_check(channel, notifier, template, fields)
    audience = build_audience(channel, notifier, fields, campaign.base_dir)
    return _assemble(campaign, channel, notifier, template, content, audience)


def _assemble(
    campaign: Campaign,
    channel: Channel,
    notifier: Notifier[Any],
    template: CompiledTemplate,
    content: ContentCheck | None,
    audience: Audience,
) -> ChannelPlan:
    cls = type(notifier)
    cap = channel.frequency_cap
    return ChannelPlan(
        channel=channel,
        notifier=notifier,
        template=template,
        retry=channel.retry or campaign.execution.retry,
        rate=channel.rate or cls.default_rate or Rate(),
        batch_size=channel.batch_size or cls.max_batch_size,
        audience=audience,
        rules=PlanRules(
            kind=notifier.address_field,
            cap=cap.max_messages if cap else None,
            cap_since=time.time() - cap.window_hours * 3600 if cap else 0.0,
            target=channel.target_customers,
            sample_seed=channel.sample_seed if channel.selection == "sample" else None,
        ),
        content=content,
    )


def channel_plans(campaign: Campaign, channels: Sequence[str] | None) -> list[ChannelPlan]:
    """The plans of the enabled channels (of ``channels`` only, if given), each
    prepared on its own (:func:`prepare_channel`).

    Raises:
        ConfigError: ``channels`` names a channel that is not enabled; a channel's
            first problem.
    """
    if channels is not None:
        unknown = set(channels) - {c.name for c in campaign.enabled_channels}
        if unknown:
            raise ConfigError(f"no enabled channel {sorted(unknown)[0]!r}", path="channels")
    fields = campaign.source.fields()
    return [
        campaign.channel_plan(c, fields)
        for c in campaign.enabled_channels
        if channels is None or c.name in channels
    ]
