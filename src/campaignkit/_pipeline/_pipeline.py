"""The Pipeline: extraction first, then every channel in parallel."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pluggy

from .._audience import build_audience, content_check
from .._config import (
    ENV_NAME,
    Channel,
    Execution,
    PipelineConfig,
    Schedule,
    SourceConfig,
    check_config,
    key_lines,
    line_of,
    load_config,
)
from .._content import sms_segments
from .._csvio import restore
from .._engine import ChannelPlan, ChannelRunner, ProgressCallback, result_from_ledger
from .._ledger import (
    LedgerError,
    MaxActiveRunsReached,
    PlanRules,
    RunInProgress,
    RunRecord,
    SqliteLedger,
)
from .._models import (
    ChannelResult,
    DeliveryResult,
    Message,
    Rate,
    Recipient,
    RunReport,
    RunStatus,
    Secret,
)
from .._notifier import ChannelSettings, Notifier, placeholder_token
from .._plugins import Registry, get_plugin_manager
from .._redact import token_problem
from .._rehearsal import (
    is_rehearsal,
    rehearsal_execution,
    rehearsal_output_root,
    sandbox_channels,
)
from .._schedule import Blocked, Interval, manual_logical_date, plan_due_runs
from .._segment import ExtractionStats, extract
from .._source import MODEL_FIELDS, Source
from .._sources import SourceLines
from .._states import ACTIVE_STATUSES, RESUMABLE_STATUSES, DeliveryStatus
from .._templates import compile_template, template_problems
from ..exceptions import (
    PROBLEM_GROUPS,
    AudienceGuardError,
    CampaignKitError,
    ConfigError,
    PluginError,
    Problem,
    SourceError,
    TemplateError,
)

__all__ = [
    "CampaignCheck",
    "ChannelPlanSummary",
    "Pipeline",
    "PlanReport",
    "RowCheck",
    "RowExample",
    "ScheduledRuns",
    "ValidationSummary",
    "audience_drift",
    "check_campaign",
    "problem_line",
    "stored_report",
]

log = logging.getLogger("campaignkit")


@attrs.frozen
class ScheduledRuns:
    """What :meth:`Pipeline.run_scheduled` did."""

    reports: tuple[RunReport, ...] = ()
    skipped: tuple[Interval, ...] = ()  # recorded as skipped_late
    blocked: tuple[Blocked, ...] = ()  # due, held back (depends_on_past, max_active_runs)
    next_due: datetime | None = None


@attrs.frozen
class ChannelPlanSummary:
    """One channel of a dry run (:meth:`Pipeline.plan`)."""

    channel: str
    provider: str
    eligible: int  # would be sent now
    deferred: int  # held by quiet hours, sent later
    skipped: Mapping[str, int]  # by reason
    failures: Mapping[str, int]  # messages that would fail (render, content rules)
    sms_segments: int | None
    estimated_cost: float | None
    samples: tuple[Message, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "provider": self.provider,
            "eligible": self.eligible,
            "deferred": self.deferred,
            "skipped": dict(sorted(self.skipped.items())),
            "failures": dict(sorted(self.failures.items())),
            "sms_segments": self.sms_segments,
            "estimated_cost": self.estimated_cost,
            "samples": [attrs.asdict(m) for m in self.samples],
        }


@attrs.frozen
class PlanReport:
    """What a run would do (:meth:`Pipeline.plan`); nothing was sent."""

    pipeline: str
    created_at: datetime
    rows_read: int
    rows_rejected: int
    rejected_reasons: Mapping[str, int]
    channels: Mapping[str, ChannelPlanSummary]
    lines: Mapping[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "created_at": self.created_at.isoformat(),
            "extraction": {
                "rows_read": self.rows_read,
                "rows_rejected": self.rows_rejected,
                "rejected_reasons": dict(sorted(self.rejected_reasons.items())),
                "lines": None if self.lines is None else dict(self.lines),
            },
            "channels": {name: c.to_dict() for name, c in self.channels.items()},
        }


@attrs.frozen
class ValidationSummary:
    """What :meth:`Pipeline.validate` checked."""

    pipeline: str
    source: str
    fields: frozenset[str]
    channels: Mapping[str, str]  # enabled channel -> provider
    disabled: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "source": self.source,
            "fields": sorted(self.fields),
            "channels": dict(self.channels),
            "disabled": list(self.disabled),
        }


@attrs.frozen
class RowExample:
    """One row that a run would not message (:meth:`Pipeline.check_rows`): where it
    is and why, never the row's other values.

    Attributes:
        file: the segment (as configured).
        line: the 1-based line where the row starts.
        reason: ``malformed_row``, ``control_character``, ``duplicate_id``,
            ``invalid_address`` ...
        field: the field at fault, if one.
        detail: a human explanation (it may quote the offending field's value).
        channel: for ``invalid_address``, the channel whose address it is.
    """

    file: str
    line: int
    reason: str
    field: str | None
    detail: str
    channel: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: "
        field = f"{self.field}: " if self.field else ""
        channel = f"[{self.channel}] " if self.channel else ""
        return f"{where}{channel}{field}{self.reason}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class RowCheck:
    """The whole segment read as a run reads it (:meth:`Pipeline.check_rows`);
    nothing was sent or recorded.

    Attributes:
        source: the segment's description (its path as configured).
        rows_read, accepted, rejected: rows read, recipients and rejected rows
            (``accepted + rejected == rows_read``).
        reasons: rejected rows by reason.
        examples: the first rejected rows (at most the limit asked for).
        invalid_addresses: per enabled channel, accepted recipients whose address
            for that channel is invalid (a run skips them as ``invalid_address``).
        address_examples: the first of those, across channels.
        lines: how the file's physical lines were accounted for, when the source
            counts them.
    """

    source: str
    rows_read: int
    accepted: int
    rejected: int
    reasons: Mapping[str, int]
    examples: tuple[RowExample, ...]
    invalid_addresses: Mapping[str, int]
    address_examples: tuple[RowExample, ...]
    lines: Mapping[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "reasons": dict(self.reasons),
            "examples": [e.to_dict() for e in self.examples],
            "invalid_addresses": dict(self.invalid_addresses),
            "address_examples": [e.to_dict() for e in self.address_examples],
            "lines": None if self.lines is None else dict(self.lines),
        }


@attrs.frozen
class CampaignCheck:
    """What :func:`check_campaign` found.

    Attributes:
        problems: every problem, grouped in the order of :data:`PROBLEM_GROUPS`.
        summary: what was checked, when there is no problem.
        rows: the segment's rows, when asked for and the segment could be read.
    """

    problems: tuple[Problem, ...]
    summary: ValidationSummary | None = None
    rows: RowCheck | None = None

    @property
    def valid(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "problems": [p.to_dict() for p in self.problems],
            "summary": None if self.summary is None else self.summary.to_dict(),
            "rows": None if self.rows is None else self.rows.to_dict(),
        }


@attrs.frozen
class _Finding:
    """A problem, and the error it came from (raised as is when it is the only one)."""

    problem: Problem
    error: CampaignKitError


def _problems_of(exc: CampaignKitError, group: str) -> list[Problem]:
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


def _ordered(problems: Iterable[Problem]) -> tuple[Problem, ...]:
    """Grouped in the order of :data:`PROBLEM_GROUPS`, by line within a group."""
    rank = {g: i for i, g in enumerate(PROBLEM_GROUPS)}
    listed = list(dict.fromkeys(problems))
    return tuple(
        sorted(listed, key=lambda p: (rank.get(p.group, len(rank)), p.file or "", p.line or 0))
    )


def _raise_findings(findings: Sequence[_Finding], file: str | None) -> None:
    """Raise the only error there is as it is, else one ConfigError listing them all."""
    if not findings:
        return
    errors = {id(f.error): f.error for f in findings}
    if len(errors) == 1:
        error = findings[0].error
        if isinstance(error, ConfigError):  # its problems with their file and line
            error.problems = tuple(f.problem for f in findings)
        raise error
    raise ConfigError.of(_ordered(f.problem for f in findings), file=file)


def check_campaign(
    path: str | Path,
    *,
    rows: bool = False,
    examples: int = 20,
    **kwargs: Any,
) -> CampaignCheck:
    """Check a campaign file without sending, and report every problem at once.

    Every check runs whatever the others found: the file's schema (every unknown key,
    with a suggestion for a near miss, wrong type and bad value), then, on what could
    be structured, every enabled channel's provider, options and token, every
    template part of every channel, the content rules and the segment's header (see
    :meth:`Pipeline.problems`). A file that is not TOML is one problem.

    Args:
        rows: also read the whole segment as a run would (:meth:`Pipeline.check_rows`)
            when it can be read.
        examples: with ``rows``, rejected rows (and invalid addresses) listed at most.
        kwargs: passed to :class:`Pipeline` (``plugins``, ``env``).
    """
    checked = check_config(path)
    problems = list(checked.problems)
    if checked.config is None:
        return CampaignCheck(_ordered(problems))
    pipeline = Pipeline.from_config(checked.config, **kwargs)
    shown = str(path)
    for problem in pipeline.problems():
        if problem.file == pipeline.config_file:
            problem = attrs.evolve(problem, file=shown)
        problems.append(problem)
    row_check = None
    if rows and not any(p.group == "source" for p in problems):
        try:
            row_check = pipeline.check_rows(examples=examples)
        except CampaignKitError as exc:
            problems.extend(_problems_of(exc, "source"))
    summary = None
    if not problems:
        summary = pipeline.summary()
    return CampaignCheck(_ordered(problems), summary, row_check)


class Pipeline:
    """A multi-channel campaign: one source fanned out to channels in parallel.

    Build it from a TOML file with :meth:`from_file`, or in Python::

        Pipeline(
            name="spring_sale",
            source=CsvSource("customers.csv", columns={"id": "customer_id"}),
            channels=[
                Channel(
                    name="sms",
                    provider="twilio",
                    template=Template(body="Hi {{ first_name }}"),
                    options={"from": "+15005550006"},
                )
            ],
        ).run()

    Args:
        name: the pipeline's name (used in run ids and reports).
        source: a :class:`~campaignkit.Source`, or a :class:`SourceConfig` naming a
            registered source type.
        channels: the channels; their names must be unique.
        execution: execution parameters.
        schedule: schedule parameters.
        base_dir: directory that relative paths (output dir, source path) are read
            against; defaults to the configuration file's directory or the cwd.
        plugins: the plugin manager; by default :func:`get_plugin_manager` builds one
            (built-ins plus installed entry points).
        env: where provider tokens, and settings channels read from variables (such
            as Twilio's ``TWILIO_ACCOUNT_SID``), are read from; defaults to ``os.environ``.
        sleep: how retry waits sleep; tests pass a function that does not wait.
        rehearsal: a rehearsal records into its own state, never the real one: the
            ledger ``ledger.sandbox.db`` beside ``execution.state_path`` (runs,
            deliveries, suppression list) and run directories under
            ``<output dir>/sandbox/``. By default (``None``) a pipeline is a rehearsal
            when its execution already is (a configuration from ``Sandbox.apply()``)
            or when an enabled channel points at a campaignkit sandbox server running
            in this process. ``False`` keeps the configured state whatever the
            channels point at.
        rows_per_customer: ``"one"`` or ``"many"`` rows per customer id (by default
            the :class:`SourceConfig`'s, else ``"one"``); see ``[source]`` in the
            configuration reference.
    """

    def __init__(
        self,
        name: str,
        source: Source | SourceConfig,
        channels: Sequence[Channel],
        *,
        description: str = "",
        tags: Sequence[str] = (),
        execution: Execution | None = None,
        schedule: Schedule | None = None,
        base_dir: str | Path | None = None,
        plugins: pluggy.PluginManager | None = None,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rehearsal: bool | None = None,
        rows_per_customer: str | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.tags = tuple(tags)
        self.channels = tuple(channels)
        seen: set[str] = set()
        for ch in self.channels:
            if ch.name in seen:
                raise ConfigError("channel defined twice", path=f"channels.{ch.name}")
            seen.add(ch.name)
        if not self.channels:
            raise ConfigError("at least one channel is required", path="channels")
        self.execution = execution or Execution()
        if rehearsal is None:
            sandboxed = sandbox_channels(self.channels)
            rehearsal = bool(sandboxed)
            others = [c.name for c in self.channels if c.enabled and c.name not in sandboxed]
            if sandboxed and others:
                log.warning(
                    "%s: channels %s send to the campaignkit sandbox, so this is a rehearsal "
                    "with its own ledger, but channels %s do not point at it",
                    name,
                    ", ".join(sandboxed),
                    ", ".join(others),
                )
        if rehearsal:
            self.execution = rehearsal_execution(self.execution)
        self.schedule = schedule or Schedule()
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        self._plugins = plugins
        self._registry: Registry | None = None
        self._env = env
        self.sleep = sleep
        self._source_arg = source
        self._source: Source | None = source if not isinstance(source, SourceConfig) else None
        if rows_per_customer is None:
            rows_per_customer = (
                source.rows_per_customer if isinstance(source, SourceConfig) else "one"
            )
        #: the identity rule: ``"one"`` row per customer id (a repeat is rejected as
        #: ``duplicate_id``) or ``"many"`` (each row a recipient, e.g. one per device)
        self.rows_per_customer = SourceConfig(rows_per_customer=rows_per_customer).rows_per_customer
        #: the configuration file the pipeline came from, if any (recorded with runs)
        self.config_file: str | None = None

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: PipelineConfig, **kwargs: Any) -> Pipeline:
        """Build a pipeline from a structured configuration."""
        pipeline = cls(
            config.name,
            config.source,
            config.channels,
            description=config.description,
            tags=config.tags,
            execution=config.execution,
            schedule=config.schedule,
            base_dir=config.base_dir,
            **kwargs,
        )
        pipeline.config_file = str(Path(config.file).resolve()) if config.file else None
        return pipeline

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> Pipeline:
        """Build a pipeline from a campaign TOML file.

        Keyword arguments are passed to the constructor (``plugins``, ``env``, ``sleep``).

        Raises:
            ConfigError: the file is unreadable or invalid, naming the key path.
        """
        return cls.from_config(load_config(path), **kwargs)

    def __repr__(self) -> str:
        names = ", ".join(c.name for c in self.channels)
        return f"<Pipeline {self.name!r} channels=[{names}]>"

    # -- plugins and parts ---------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        """The channels and sources available to this pipeline."""
        if self._registry is None:
            pm = self._plugins if self._plugins is not None else get_plugin_manager()
            self._plugins = pm
            self._registry = Registry(pm)
        return self._registry

    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        self.registry  # noqa: B018 - builds the manager on first use
        assert self._plugins is not None
        return self._plugins

    @property
    def source(self) -> Source:
        """The source, built from its configuration on first use."""
        if self._source is None:
            config = self._source_arg
            assert isinstance(config, SourceConfig)
            try:
                factory = self.registry.source_factory(config.type)
            except PluginError as exc:
                raise ConfigError(str(exc), path="source.type") from None
            self._source = factory.from_config(config.options, base_dir=self.base_dir)
        return self._source

    @property
    def enabled_channels(self) -> tuple[Channel, ...]:
        return tuple(c for c in self.channels if c.enabled)

    def _token(self, channel: Channel, cls: type[Notifier[Any]]) -> Secret | None:
        env = self._env if self._env is not None else os.environ
        value = env.get(channel.token_variable)
        if not value:
            if cls.token_required and not ENV_NAME.match(channel.token_variable):
                raise ConfigError(  # never quote it: it may be the token itself
                    "expected an environment variable name (letters, digits and '_') that "
                    f"holds the {cls.name} token; the value written is not shown, as it may "
                    "be the token",
                    path=f"channels.{channel.name}.token_env",
                )
            if cls.token_required:
                raise ConfigError(
                    f"environment variable {channel.token_variable} is not set "
                    f"(the {cls.name} token)",
                    path=f"channels.{channel.name}.token_env",
                )
            return None
        problem = token_problem(value)
        if problem is not None:  # never quote the value
            raise ConfigError(
                f"environment variable {channel.token_variable} (the {cls.name} token) {problem}",
                path=f"channels.{channel.name}.token_env",
            )
        return Secret(value)

    @property
    def _environ(self) -> Mapping[str, str]:
        """The environment channels read their settings from (``env``, else the process's)."""
        return self._env if self._env is not None else os.environ

    def _plan(self, channel: Channel, fields: frozenset[str] | None) -> ChannelPlan:
        path = f"channels.{channel.name}"
        try:
            cls = self.registry.notifier_class(channel.provider)
        except PluginError as exc:
            raise ConfigError(str(exc), path=f"{path}.provider") from None
        if channel.batch_size is not None and channel.batch_size > cls.max_batch_size:
            raise ConfigError(
                f"{cls.name} accepts at most {cls.max_batch_size} message(s) per request",
                path=f"{path}.batch_size",
            )
        settings = ChannelSettings(
            channel=channel.name,
            options=channel.options,
            token=self._token(channel, cls),
            timeout=channel.timeout_seconds,
            base_dir=self.base_dir,
            env=self._environ,
        )
        notifier = cls(settings)
        # A missing model-field column is the source's file-level error (file, line, column).
        field = notifier.address_field
        if fields is not None and field not in MODEL_FIELDS and field not in fields:
            raise ConfigError(
                f"{cls.name} sends to the recipient field {notifier.address_field!r}, which the "
                f"source does not provide (fields: {', '.join(sorted(fields))})",
                path=f"{path}.provider",
            )
        template = compile_template(
            channel.template,
            channel=channel.name,
            fields=fields,
            extra={
                "unsubscribe_url": channel.unsubscribe_url,
                "unsubscribe_mailto": channel.unsubscribe_mailto,
            },
        )
        content = content_check(channel, notifier, template, fields)
        return ChannelPlan(
            channel=channel,
            notifier=notifier,
            template=template,
            retry=channel.retry or self.execution.retry,
            rate=channel.rate or cls.default_rate or Rate(),
            batch_size=channel.batch_size or cls.max_batch_size,
            audience=build_audience(channel, notifier, fields, self.base_dir),
            rules=PlanRules(
                kind=notifier.address_field,
                cap=channel.frequency_cap.max_messages if channel.frequency_cap else None,
                cap_since=(
                    time.time() - channel.frequency_cap.window_hours * 3600
                    if channel.frequency_cap
                    else 0.0
                ),
                target=channel.target_customers,
                sample_seed=channel.sample_seed if channel.selection == "sample" else None,
            ),
            content=content,
        )

    # -- public operations ---------------------------------------------------------------
    def validate(self) -> ValidationSummary:
        """Check everything that can be checked without sending.

        Builds every enabled channel's notifier (options), reads its token from the
        environment, compiles every template part of every enabled channel against the
        source's header, checks the content rules, the audience rules and the header's
        required columns. Every check runs whatever the others found
        (:meth:`problems` lists them all).

        Raises:
            ConfigError, TemplateError, SourceError, PluginError: the problem, when
                there is one; a :class:`ConfigError` listing every problem
                (:attr:`ConfigError.problems`) when there are several.
        """
        _raise_findings(self._findings(), self.config_file)
        return self.summary()

    def summary(self) -> ValidationSummary:
        """What :meth:`validate` checks: pipeline, source, fields and channels."""
        return ValidationSummary(
            pipeline=self.name,
            source=self.source.describe(),
            fields=self.source.fields(),
            channels={c.name: c.provider for c in self.enabled_channels},
            disabled=tuple(c.name for c in self.channels if not c.enabled),
        )

    def problems(self) -> tuple[Problem, ...]:
        """Every problem :meth:`validate` finds, grouped (see :class:`Problem`): no
        check stops another (a missing token does not hide a broken template). Key
        paths get the line where they are written in the configuration file, when the
        pipeline came from one (:attr:`config_file`)."""
        return _ordered(f.problem for f in self._findings())

    def _findings(self) -> list[_Finding]:
        findings: list[_Finding] = []

        def add(exc: CampaignKitError, group: str) -> None:
            findings.extend(_Finding(p, exc) for p in _problems_of(exc, group))

        fields = None
        try:
            fields = self.source.fields()
        except ConfigError as exc:  # the [source] options
            add(exc, "config")
        except CampaignKitError as exc:
            add(exc, "source")
        for channel in self.enabled_channels:
            for error, group in self._channel_problems(channel, fields):
                if isinstance(error, SourceError) and group == "channels":
                    # a suppression list: at the key naming it, then its file and line
                    key = f"channels.{channel.name}.suppression_files"
                    findings.append(_Finding(Problem(str(error), path=key, group=group), error))
                else:
                    add(error, group)
        if fields is not None:
            try:
                self._check_header()
            except CampaignKitError as exc:
                add(exc, "source")
        return self._located(findings)

    def _check_header(self) -> None:
        """Read the source up to its first record: the header and the columns the
        channels' address fields need are checked there."""
        required = set()
        for channel in self.enabled_channels:
            try:
                required |= self._required_of(channel)
            except PluginError:
                continue  # an unknown provider: reported with the channel
        records = self.source.records(required)
        try:
            next(iter(records), None)
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                close()

    def _channel_problems(
        self, channel: Channel, fields: frozenset[str] | None
    ) -> list[tuple[CampaignKitError, str]]:
        """Every problem of one channel, each with its group; the checks that need a
        notifier are skipped when it cannot be built (its problem is listed)."""
        path = f"channels.{channel.name}"
        out: list[tuple[CampaignKitError, str]] = []
        try:
            cls = self.registry.notifier_class(channel.provider)
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
                token = self._token(channel, cls)
            except ConfigError as exc:
                out.append((exc, "tokens"))
            if token is None and cls.token_required:
                token = placeholder_token("validate")  # the options are still checked
            settings = ChannelSettings(
                channel=channel.name,
                options=channel.options,
                token=token,
                timeout=channel.timeout_seconds,
                base_dir=self.base_dir,
                env=self._environ,
            )
            try:
                notifier = cls(settings)
            except CampaignKitError as exc:
                out.append((exc, "channels"))
        if notifier is not None:
            field = notifier.address_field
            if fields is not None and field not in MODEL_FIELDS and field not in fields:
                message = (
                    f"{notifier.name} sends to the recipient field {field!r}, which the "
                    f"source does not provide (fields: {', '.join(sorted(fields))})"
                )
                out.append((ConfigError(message, path=f"{path}.provider"), "source"))
        extra = {
            "unsubscribe_url": channel.unsubscribe_url,
            "unsubscribe_mailto": channel.unsubscribe_mailto,
        }
        errors = template_problems(
            channel.template, channel=channel.name, fields=fields, extra=extra
        )
        out.extend((exc, "templates") for exc in errors)
        if notifier is None:
            return out
        if not errors:
            template = compile_template(
                channel.template, channel=channel.name, fields=fields, extra=extra
            )
            try:
                content_check(channel, notifier, template, fields)
            except CampaignKitError as exc:
                out.append((exc, "content"))
        try:
            build_audience(channel, notifier, fields, self.base_dir)
        except CampaignKitError as exc:
            out.append((exc, "channels"))
        return out

    def _located(self, findings: list[_Finding]) -> list[_Finding]:
        """Problems about the configuration get its file and the line of their key."""
        if self.config_file is None:
            return findings
        try:
            lines = key_lines(Path(self.config_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            lines = {}
        out = []
        for finding in findings:
            problem = finding.problem
            if problem.file is None:
                line = problem_line(lines, problem)
                problem = attrs.evolve(problem, file=self.config_file, line=line)
            out.append(_Finding(problem, finding.error))
        return out

    def check_rows(self, *, examples: int = 20) -> RowCheck:
        """Read the whole segment as a run does and report the rows a run would not
        message; nothing is sent and nothing is kept (no ledger, no run directory).

        Extraction is the run's own (the rows the source rejects, repeated customer ids
        as ``duplicate_id``), in a scratch database in a temporary directory, so memory
        stays bounded whatever the segment's size; then every accepted recipient's
        address is checked as each enabled channel's selection would (``invalid_address``).
        Only the first ``examples`` rows of each kind are kept, with file, line, field
        and reason, never the rest of the row.

        Raises:
            ConfigError, SourceError, PluginError: the segment cannot be read.
        """
        now = datetime.now(UTC)
        run_id = f"{self.name}__rows__{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
        shown = self.source.describe()
        with tempfile.TemporaryDirectory(prefix="campaignkit-") as scratch:
            ledger = SqliteLedger(Path(scratch) / "ledger.db", durable=False)
            try:
                ledger.begin_run(
                    run_id=run_id,
                    pipeline=f"{self.name}#rows",
                    logical_date=now,
                    fingerprint="",
                    config_file=self.config_file,
                    max_active_runs=None,
                )
                rejects = Path(scratch) / "rejected.csv"
                stats = self._extract(ledger, run_id, rejects)
                rejected = _rejected_examples(rejects, shown, examples)
                invalid, address_examples = self._address_rows(
                    ledger.snapshot(run_id), shown, examples
                )
            finally:
                ledger.close()
        return RowCheck(
            source=shown,
            rows_read=stats.rows_read,
            accepted=stats.recipients,
            rejected=stats.rejected,
            reasons=stats.rejected_reasons,
            examples=rejected,
            invalid_addresses=invalid,
            address_examples=address_examples,
            lines=None if stats.lines is None else stats.lines.to_dict(),
        )

    def _address_rows(
        self, snapshot: Iterable[tuple[int, Recipient]], shown: str, limit: int
    ) -> tuple[dict[str, int], tuple[RowExample, ...]]:
        """Recipients whose address is invalid for a channel, as its selection decides."""
        audiences = []
        for channel in self.enabled_channels:
            try:
                cls = self.registry.notifier_class(channel.provider)
                settings = ChannelSettings(
                    channel=channel.name,
                    options=channel.options,
                    token=placeholder_token("validate"),
                    timeout=channel.timeout_seconds,
                    base_dir=self.base_dir,
                    env=self._environ,
                )
                notifier = cls(settings)
                audience = build_audience(channel, notifier, None, self.base_dir)
            except CampaignKitError:
                continue  # listed as a problem of the channel
            audiences.append((channel.name, audience))
        counts = dict.fromkeys((name for name, _ in audiences), 0)
        found: list[RowExample] = []
        for _, recipient in snapshot:
            for name, audience in audiences:
                raw = recipient.address(audience.address_field)
                if not raw or audience.normalize(raw, recipient) is not None:
                    continue
                counts[name] += 1
                if len(found) < limit:
                    field = audience.address_field
                    found.append(
                        RowExample(
                            shown,
                            recipient.line,
                            "invalid_address",
                            field,
                            f"not a valid {field.replace('_', ' ')}: {raw!r}",
                            channel=name,
                        )
                    )
        return counts, tuple(found)

    def preview(self, channel: str, n: int = 3) -> list[Message]:
        """Render the messages of the first ``n`` eligible recipients; sends nothing.

        Tokens are not required for a preview. Messages that cannot be rendered (or
        break a content rule) are left out.

        Raises:
            TemplateError: eligible recipients exist but none of their messages could
                be rendered (naming the first failure).
        """
        matches = [c for c in self.channels if c.name == channel]
        if not matches:
            raise ConfigError(f"no channel named {channel!r}", path=f"channels.{channel}")
        fields = self.source.fields()
        env = dict(self._env if self._env is not None else os.environ)
        ch = matches[0]
        env.setdefault(ch.token_variable, "preview-token")
        saved, self._env = self._env, env
        try:
            plan = self._plan(ch, fields)
        finally:
            self._env = saved
        # A preview decides per recipient only (no ledger: no de-duplication or caps).
        runner = ChannelRunner(plan, run_id="preview", ledger=None)  # type: ignore[arg-type]
        required = self._required()
        out: list[Message] = []
        failed: list[DeliveryResult] = []
        recipients = (r for r in self.source.records(required) if isinstance(r, Recipient))
        for item in runner.messages(recipients, datetime.now(UTC)):
            if isinstance(item, Message):
                out.append(item)
            else:
                failed.append(item)
            if len(out) >= n or (not out and len(failed) >= n):
                break
        if failed and not out:
            first = failed[0]
            raise TemplateError(
                f"no message could be rendered: {len(failed)} eligible recipient(s) "
                f"failed, the first ({first.recipient_id}) with {first.reason}: {first.error}",
                channel=channel,
            )
        return out

    def _required(self) -> set[str]:
        required = set()
        for channel in self.enabled_channels:
            required |= self._required_of(channel)
        return required

    def _required_of(self, channel: Channel) -> set[str]:
        """The model field ``channel`` sends to, when it is one (the source must have
        its column)."""
        field = str(
            channel.options.get("address_field")
            or self.registry.notifier_class(channel.provider).address_field
        )
        return {field} if field in MODEL_FIELDS else set()

    # -- runs ---------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        """The ledger file (``execution.state_path`` against ``base_dir``)."""
        return self.base_dir / self.execution.state_path

    def ledger(self) -> SqliteLedger:
        """Open this pipeline's ledger (the caller closes it)."""
        return SqliteLedger(self.state_path)

    @property
    def rehearsal(self) -> bool:
        """Whether this pipeline rehearses against the sandbox, with its own ledger
        (``ledger.sandbox.db``) and output folder (``<output dir>/sandbox/``)."""
        return is_rehearsal(self.execution)

    def output_root(self, output_dir: str | Path | None = None) -> Path:
        """Where run directories and plans go: ``output_dir``, or
        ``execution.output_dir`` against ``base_dir``; a rehearsal's ``sandbox/``
        folder inside it."""
        root = (
            Path(output_dir)
            if output_dir is not None
            else self.base_dir / self.execution.output_dir
        )
        return rehearsal_output_root(root) if self.rehearsal else root

    def fingerprint(self) -> str:
        """A digest of everything that decides what is sent (source, channels and their
        options and templates); a resume warns when it changed. Tokens are not part of it."""
        data = {
            "name": self.name,
            "source": self.source.describe(),
            "channels": [attrs.asdict(c) for c in self.enabled_channels],
        }
        if self.rows_per_customer != "one":  # the default keeps earlier runs' fingerprints
            data["rows_per_customer"] = self.rows_per_customer
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def run(
        self,
        *,
        logical_date: datetime | None = None,
        force: bool = False,
        run_id: str | None = None,
        output_dir: str | Path | None = None,
        progress: ProgressCallback | None = None,
        on_extracted: Callable[[int, Mapping[str, int]], None] | None = None,
        limit: int | None = None,
    ) -> RunReport:
        """Run the campaign for a logical date: validate, extract the whole segment into
        the ledger, decide every channel's audience, then send every enabled channel in
        parallel.

        Nothing is sent unless validation and extraction both succeed. Delivery
        problems never raise: they are in the report and, per recipient, in the
        ledger (``campaignkit report RUN_ID``).

        A logical date is run once: when the ledger already has a finished run for it,
        that run's report is returned and nothing is sent; an unfinished one is resumed.
        ``force=True`` starts a new run deliberately.

        Args:
            logical_date: the run's logical date; by default the latest complete
                schedule interval (as a manual Airflow trigger).
            force: start a new run even if the logical date has one.
            run_id: the new run's id (default ``<pipeline>__<logical date>``).
            output_dir: overrides ``execution.output_dir`` for report and rejects.
            progress: called as ``progress(channel, recipients_done)`` from channel
                threads.
            on_extracted: called with (recipients, rejected reasons) after extraction.
            limit: a canary: send to the first ``limit`` eligible recipients per channel
                only; the run stays resumable and the full run (the same logical date
                again) sends the rest, never these twice.

        Raises:
            ConfigError, TemplateError, SourceError, PluginError: before any send.
            AudienceGuardError: ``expected_audience`` drifted; nothing was sent.
            MaxActiveRunsReached: the pipeline has ``max_active_runs`` runs going.
        """
        now = datetime.now(UTC)
        if logical_date is None:
            logical_date = manual_logical_date(self.schedule, now)
        logical_date = logical_date.astimezone(UTC)
        if limit is not None and not self.execution.ledger:
            raise ConfigError(
                "a canary (limit) needs the ledger: without it the full run would message "
                "the canary's recipients again",
                path="execution.ledger",
            )
        _raise_findings(self._findings(), self.config_file)  # every problem, before anything
        fields = self.source.fields()
        plans = [self._plan(c, fields) for c in self.enabled_channels]
        scratch = None
        if self.execution.ledger:
            ledger = self.ledger()
        else:  # a throwaway ledger: same selection and sending, nothing kept
            scratch = tempfile.TemporaryDirectory(prefix="campaignkit-")
            ledger = SqliteLedger(Path(scratch.name) / "ledger.db", durable=False)
        try:
            while True:
                previous = ledger.find_runs(self.name, logical_date)
                if previous and not force:
                    last = previous[-1]
                    if last.status in ACTIVE_STATUSES or last.status in RESUMABLE_STATUSES:
                        log.info("%s: resuming run %s", self.name, last.run_id)
                        ledger.close()
                        return self.resume(
                            last.run_id, progress=progress, output_dir=output_dir, limit=limit
                        )
                    log.info(
                        "%s: %s already ran (%s); nothing was sent now",
                        self.name,
                        logical_date.isoformat(),
                        last.run_id,
                    )
                    return _replay(last)
                new_id = run_id
                if new_id is None:
                    new_id = f"{self.name}__{logical_date:%Y%m%dT%H%M%SZ}"
                    if previous:
                        new_id += f"__{len(previous) + 1}"
                try:
                    run = ledger.begin_run(
                        run_id=new_id,
                        pipeline=self.name,
                        logical_date=logical_date,
                        fingerprint=self.fingerprint(),
                        config_file=self.config_file,
                        max_active_runs=self.execution.max_active_runs,
                    )
                except RunInProgress:
                    raise
                except LedgerError:
                    # Another process began this run (and let go of it) since we looked:
                    # decide again from what the ledger says now.
                    if (
                        run_id is not None
                        or force
                        or new_id
                        not in {r.run_id for r in ledger.find_runs(self.name, logical_date)}
                    ):
                        raise
                    continue
                break
            run_dir = self._run_dir(run.run_id, output_dir)
            try:
                stats = self._extract(ledger, run.run_id, run_dir / "rejected.csv")
            except BaseException as exc:
                ledger.finish_run(run.run_id, "failed", json.dumps({"error": str(exc)}))
                raise
            log.info(
                "%s: extracted %d recipient(s), rejected %d row(s)",
                run.run_id,
                stats.recipients,
                stats.rejected,
            )
            if on_extracted is not None:
                on_extracted(stats.recipients, stats.rejected_reasons)
            return self._execute(
                plans,
                run.run_id,
                run_dir,
                ledger,
                stats,
                progress,
                lambda: ledger.snapshot(run.run_id),
                limit=limit,
            )
        finally:
            ledger.close()
            if scratch is not None:
                scratch.cleanup()

    def resume(
        self,
        run_id: str,
        *,
        resend_unknown: bool = False,
        retry_failed: bool = False,
        channels: Sequence[str] | None = None,
        progress: ProgressCallback | None = None,
        output_dir: str | Path | None = None,
        limit: int | None = None,
    ) -> RunReport:
        """Continue a run: send every ``pending`` delivery exactly once; never re-send
        one recorded as sent. Deferred deliveries whose quiet hours are over go too.

        Deliveries left ``in_flight`` by a crash are re-sent with the same idempotency
        key where the provider supports one; otherwise they become ``unknown`` and are
        re-sent only with ``resend_unknown=True``. With ``retry_failed=True`` transient
        failures (retries exhausted, rejected credentials) are re-driven too; permanent
        ones never are.

        Args:
            channels: only these channels (default: every enabled channel).

        Raises:
            LedgerError: no such run, or it is being run by another live process.
        """
        fields = self.source.fields()
        selected = [c for c in self.enabled_channels if channels is None or c.name in channels]
        if channels is not None:
            unknown = set(channels) - {c.name for c in self.enabled_channels}
            if unknown:
                raise ConfigError(f"no enabled channel {sorted(unknown)[0]!r}", path="channels")
        plans = [self._plan(c, fields) for c in selected]
        ledger = self.ledger()
        try:
            previous = ledger.get_run(run_id)
            if previous.status == RunStatus.SKIPPED_LATE.value:
                raise LedgerError(
                    f"run {run_id!r} was skipped as too late; start the logical date again "
                    "deliberately (run with force) if it should still be sent"
                )
            finished = not (
                previous.status in ACTIVE_STATUSES or previous.status in RESUMABLE_STATUSES
            )
            names = [p.channel.name for p in plans]
            if finished and not ledger.owed(
                run_id, names, failed=retry_failed, unknown=resend_unknown
            ):
                log.info("%s: finished (%s); nothing was sent now", run_id, previous.status)
                return _replay(previous)
            run = ledger.claim_run(run_id)
            if run.pipeline != self.name:
                raise LedgerError(f"run {run_id!r} belongs to pipeline {run.pipeline!r}")
            if run.fingerprint != self.fingerprint():
                log.warning("%s: the configuration changed since the run started", run_id)
            run_dir = self._run_dir(run_id, output_dir, exist_ok=True)
            if not ledger.has_snapshot(run_id):  # crashed during extraction: extract again
                stats = self._extract(ledger, run_id, run_dir / "rejected.csv")
            else:
                stats = _stored_stats(ledger, run)
            for plan in plans:
                if not ledger.is_planned(run_id, plan.channel.name):
                    continue
                resend = plan.notifier.supports_idempotency_keys
                n = ledger.resolve_in_flight(run_id, plan.channel.name, resend=resend)
                if n:
                    log.warning(
                        "%s/%s: %d message(s) were in flight at the crash; %s",
                        run_id,
                        plan.channel.name,
                        n,
                        "re-sending with the same idempotency keys"
                        if resend
                        else "recorded as unknown",
                    )
                ledger.requeue(
                    run_id, plan.channel.name, failed=retry_failed, unknown=resend_unknown
                )
            return self._execute(
                plans,
                run_id,
                run_dir,
                ledger,
                stats,
                progress,
                lambda: ledger.snapshot(run_id),
                limit=limit,
            )
        finally:
            ledger.close()

    def run_scheduled(
        self, *, now: datetime | None = None, progress: ProgressCallback | None = None
    ) -> ScheduledRuns:
        """Run whatever the schedule says is due at ``now`` (default: the clock), then
        return; for cron (``campaignkit run CONFIG --scheduled``) and the scheduler.

        Follows :func:`~campaignkit._schedule.plan_due_runs`: ``catchup``, ``start_date``
        / ``end_date``, ``depends_on_past``, ``max_active_runs`` (rechecked atomically
        by the ledger when each run starts) and ``max_lateness_minutes`` (a run due
        longer ago is recorded as ``skipped_late`` and not sent). Unfinished runs whose
        process died are resumed first.
        """
        now = now or datetime.now(UTC)
        if not self.schedule.enabled:
            return ScheduledRuns(next_due=None)
        ledger = self.ledger()
        try:
            runs = ledger.find_runs(self.name)
            plan = plan_due_runs(self.schedule, self.execution, now=now, runs=runs)
            for interval in plan.skip:
                ledger.record_run(
                    run_id=f"{self.name}__{interval.start:%Y%m%dT%H%M%SZ}",
                    pipeline=self.name,
                    logical_date=interval.start,
                    status=RunStatus.SKIPPED_LATE.value,
                    fingerprint=self.fingerprint(),
                    report=json.dumps(
                        {
                            "reason": f"due at {interval.end.isoformat()}, "
                            f"more than max_lateness_minutes ago"
                        }
                    ),
                )
                log.warning("%s: %s skipped: due too long ago", self.name, interval.start)
            # Runs to continue: those whose process died, and deferred ones whose quiet
            # hours are over.
            orphans = [r for r in runs if r.status in ACTIVE_STATUSES and not r.in_progress]
            for r in runs:
                if r.status == RunStatus.DEFERRED.value:
                    due = ledger.next_deferred(r.run_id)
                    if due is not None and due <= now.timestamp():
                        orphans.append(r)
        finally:
            ledger.close()
        reports = []
        for orphan in orphans:
            try:
                reports.append(self.resume(orphan.run_id, progress=progress))
            except RunInProgress as exc:  # another process claimed it meanwhile
                log.info("%s", exc)
        for interval in plan.start:
            try:
                report = self.run(logical_date=interval.start, progress=progress)
            except RunInProgress as exc:  # another process runs this logical date
                log.info("%s", exc)
                continue
            except MaxActiveRunsReached as exc:  # another process started one meanwhile
                log.info("%s", exc)
                break
            if not report.replayed:  # another process ran it meanwhile
                reports.append(report)
        for blocked in plan.blocked:
            log.info("%s: %s not started: %s", self.name, blocked.interval.start, blocked.reason)
        return ScheduledRuns(
            reports=tuple(reports), skipped=plan.skip, blocked=plan.blocked, next_due=plan.next_due
        )

    # -- the dry run ---------------------------------------------------------------------
    def plan(
        self,
        *,
        samples: int = 3,
        output: str | Path | None = None,
        on_extracted: Callable[[int, Mapping[str, int]], None] | None = None,
    ) -> PlanReport:
        """A dry run: extraction and selection exactly as a run would do them (with the
        ledger's suppression list and frequency caps), every message rendered and
        checked; nothing is sent and nothing is kept in the ledger.

        Args:
            samples: rendered messages to keep per channel.
            output: also write the plan as JSON there.

        Raises:
            ConfigError, TemplateError, SourceError, PluginError: as :meth:`run`.
        """
        _raise_findings(self._findings(), self.config_file)  # every problem, before anything
        fields = self.source.fields()
        plans = [self._plan(c, fields) for c in self.enabled_channels]
        now = datetime.now(UTC)
        run_id = f"{self.name}__dryrun__{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
        history = None
        if self.execution.ledger and self.state_path.exists():
            self.ledger().close()  # brought to this version's schema, if older
            history = self.state_path
        # Planned in a scratch ledger that reads the real one's suppression list and send
        # history: a dry run never writes to (or waits for) the real ledger.
        with tempfile.TemporaryDirectory(prefix="campaignkit-") as scratch:
            ledger = SqliteLedger(Path(scratch) / "ledger.db", durable=False, history=history)
            try:
                ledger.begin_run(
                    run_id=run_id,
                    pipeline=f"{self.name}#dry-run",
                    logical_date=manual_logical_date(self.schedule, now),
                    fingerprint=self.fingerprint(),
                    config_file=self.config_file,
                    max_active_runs=None,
                )
                stats = self._extract(ledger, run_id, Path(scratch) / "rejected.csv")
                if on_extracted is not None:
                    on_extracted(stats.recipients, stats.rejected_reasons)
                channels = {
                    plan.channel.name: self._plan_channel(plan, run_id, ledger, now, samples)
                    for plan in plans
                }
            finally:
                ledger.close()
        report = PlanReport(
            pipeline=self.name,
            created_at=now,
            rows_read=stats.rows_read,
            rows_rejected=stats.rejected,
            rejected_reasons=stats.rejected_reasons,
            channels=channels,
            lines=None if stats.lines is None else stats.lines.to_dict(),
        )
        if output is not None:
            Path(output).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        return report

    def _plan_channel(
        self, plan: ChannelPlan, run_id: str, ledger: SqliteLedger, now: datetime, samples: int
    ) -> ChannelPlanSummary:
        runner = ChannelRunner(plan, run_id=run_id, ledger=ledger)
        runner.plan_audience(ledger.snapshot(run_id), now)
        counts = ledger.counts(run_id, plan.channel.name)
        reasons = counts.reasons
        rendered = segments = 0
        failures: dict[str, int] = {}
        kept: list[Message] = []
        for seq, recipient, address, _, _ in ledger.pending(run_id, plan.channel.name):
            item = runner.render(seq, recipient, address)
            if isinstance(item, tuple):  # a message that would fail: render or content rule
                reason = str(item[1].reason)
                failures[reason] = failures.get(reason, 0) + 1
                continue
            rendered += 1
            if plan.notifier.address_field == "phone":
                segments += sms_segments(item.message.body).segments
            if len(kept) < samples:
                kept.append(item.message)
        channel = plan.channel
        cost = None
        if channel.price_per_message is not None or channel.price_per_segment is not None:
            cost = rendered * (channel.price_per_message or 0.0) + segments * (
                channel.price_per_segment or 0.0
            )
        deferred = counts[DeliveryStatus.DEFERRED]
        return ChannelPlanSummary(
            channel=channel.name,
            provider=channel.provider,
            eligible=rendered,
            deferred=deferred,
            skipped={k: v for k, v in reasons.items() if k != "deferred"},
            failures=failures,
            sms_segments=segments if plan.notifier.address_field == "phone" else None,
            estimated_cost=cost,
            samples=tuple(kept),
        )

    def results(self, run_id: str, channel: str | None = None) -> list[DeliveryResult]:
        """Per-recipient outcomes of a run from the ledger (one channel, or all)."""
        ledger = self.ledger()
        try:
            return list(ledger.deliveries(run_id, channel))
        finally:
            ledger.close()

    def runs(self, limit: int = 50) -> list[RunRecord]:
        """This pipeline's runs in the ledger, newest first."""
        ledger = self.ledger()
        try:
            return ledger.list_runs(self.name, limit)
        finally:
            ledger.close()

    def retry_failed(
        self,
        run_id: str,
        *,
        channels: Sequence[str] | None = None,
        progress: ProgressCallback | None = None,
    ) -> RunReport:
        """Re-drive a run's transient failures (retries exhausted, rejected
        credentials), on some channels or all; permanent failures are never re-sent."""
        return self.resume(run_id, retry_failed=True, channels=channels, progress=progress)

    def _extract(self, ledger: SqliteLedger, run_id: str, rejects: Path) -> ExtractionStats:
        """Read the whole source into the run's snapshot (with its counts, durably);
        rejected rows, repeated customer ids included, go to ``rejects``."""
        return extract(
            self.source,
            required=self._required(),
            rejects=rejects,
            store=lambda recipients, rejected: ledger.write_snapshot(
                run_id, recipients, rows_per_customer=self.rows_per_customer, rejects=rejected
            ),
        )

    def _run_dir(
        self, run_id: str, output_dir: str | Path | None, *, exist_ok: bool = False
    ) -> Path:
        run_dir = self.output_root(output_dir) / run_id
        run_dir.mkdir(parents=True, exist_ok=exist_ok)
        return run_dir

    def _execute(
        self,
        plans: list[ChannelPlan],
        run_id: str,
        run_dir: Path,
        ledger: SqliteLedger,
        stats: ExtractionStats,
        progress: ProgressCallback | None,
        segment: Callable[[], Iterable[tuple[int, Recipient]]],
        *,
        limit: int | None = None,
    ) -> RunReport:
        """Plan every channel's audience, check the guards, then send the channels in
        parallel; write the report and finish the run."""
        started = datetime.now(UTC)
        hook = self.plugin_manager.hook
        now = datetime.now(UTC)
        try:
            runners = [
                ChannelRunner(
                    plan,
                    run_id=run_id,
                    ledger=ledger,
                    sleep=self.sleep,
                    progress=progress,
                    limit=limit,
                )
                for plan in plans
            ]
            # Every audience is decided before anything is sent; the guards check the
            # audiences decided now (a resume's were checked when its run started).
            fresh = [r.plan for r in runners if r.plan_audience(segment(), now)]
            self._check_guards(fresh, run_id, ledger)
            hook.campaignkit_run_started(
                run_id=run_id, pipeline=self.name, channels=[p.channel.name for p in plans]
            )
        except BaseException as exc:
            ledger.finish_run(run_id, "failed", json.dumps({"error": str(exc)}))
            raise
        deadline = (
            time.monotonic() + self.execution.timeout_seconds
            if self.execution.timeout_seconds
            else None
        )
        results: dict[str, ChannelResult] = {}
        errors: dict[str, str] = {}
        cancel = threading.Event()
        for runner in runners:
            runner.deadline, runner.cancel = deadline, cancel

        def run_channel(runner: ChannelRunner) -> ChannelResult:
            result = runner.run()
            _call_observer(hook.campaignkit_channel_finished, run_id=run_id, result=result)
            return result

        workers = min(len(plans), self.execution.max_workers or len(plans)) or 1
        interrupted = False
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ck-channel") as pool:
            futures = {r.name: pool.submit(run_channel, r) for r in runners}
            try:
                futures_wait(futures.values())
            except KeyboardInterrupt:
                # Stop starting batches; in-flight requests finish and are recorded.
                log.warning("%s: interrupted; finishing in-flight requests", run_id)
                cancel.set()
                interrupted = True
                futures_wait(futures.values())
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except Exception as exc:
                    log.exception("channel %s crashed", name)
                    errors[name] = f"{type(exc).__name__}: {exc}"
        # A resume of some channels reports on the run as a whole: the others as recorded.
        sent_now = {p.channel.name for p in plans}
        for channel in self.enabled_channels:
            if channel.name not in sent_now and ledger.is_planned(run_id, channel.name):
                results[channel.name] = result_from_ledger(ledger, run_id, channel)
        stops = {r.stopped for r in results.values() if r.stopped}
        if errors or any(s.startswith("credentials") for s in stops):
            status = RunStatus.FAILED
        elif interrupted or "cancelled" in stops:
            status = RunStatus.CANCELLED
        elif "timed_out" in stops:
            status = RunStatus.TIMED_OUT
        elif limit is not None and any(r.pending for r in results.values()):
            status = RunStatus.CANARY
        elif any(r.deferred for r in results.values()):
            status = RunStatus.DEFERRED
        elif any(r.failed or r.unknown for r in results.values()):
            status = RunStatus.PARTIAL
        else:
            status = RunStatus.SUCCEEDED
        report = RunReport(
            run_id=run_id,
            pipeline=self.name,
            status=status,
            started_at=started,
            finished_at=datetime.now(UTC),
            channels=results,
            rows_read=stats.rows_read,
            rows_rejected=stats.rejected,
            rejected_reasons=stats.rejected_reasons,
            lines=None if stats.lines is None else stats.lines.to_dict(),
            output_dir=str(run_dir),
            errors=errors,
        )
        text = json.dumps(report.to_dict(), indent=2)
        (run_dir / "report.json").write_text(text + "\n")
        ledger.finish_run(run_id, status.value, text)
        _call_observer(hook.campaignkit_run_finished, report=report)
        if interrupted:
            raise KeyboardInterrupt
        return report

    def _check_guards(self, plans: list[ChannelPlan], run_id: str, ledger: SqliteLedger) -> None:
        """``expected_audience``: abort before any send when the eligible count drifts
        further than the tolerance."""
        for plan in plans:
            counts = ledger.counts(run_id, plan.channel.name)
            drift = audience_drift(plan.channel, counts.eligible)
            if drift is not None:
                raise AudienceGuardError(f"{drift}; nothing was sent")


def audience_drift(channel: Channel, eligible: int) -> str | None:
    """``expected_audience``: what is wrong when ``eligible`` recipients drift from the
    channel's expected audience further than its tolerance, else ``None``."""
    expected = channel.expected_audience
    if expected is None:
        return None
    tolerance = channel.audience_tolerance
    if abs(eligible - expected) <= tolerance * expected:
        return None
    return (
        f"channels.{channel.name}: {eligible} eligible recipient(s), expected "
        f"{expected} ± {tolerance:.0%}"
    )


def _stored_report(run: RunRecord) -> RunReport:
    """The report a finished run stored in the ledger."""
    return RunReport.from_dict(json.loads(run.report or "{}"), run)


def stored_report(run: RunRecord) -> RunReport | None:
    """The report a run stored in the ledger when it last finished, if any: ``None``
    when it has none or it cannot be read (a run that is going or crashed)."""
    if not run.report:
        return None
    try:
        data = json.loads(run.report)
        if not isinstance(data, dict) or "status" not in data:
            return None
        return RunReport.from_dict(data, run)
    except (ValueError, TypeError, KeyError, StopIteration):
        return None


def _replay(run: RunRecord) -> RunReport:
    """The stored report of a finished run, marked as a replay: nothing was sent now."""
    return attrs.evolve(_stored_report(run), replayed=True)


def _stored_stats(ledger: SqliteLedger, run: RunRecord) -> ExtractionStats:
    """The counts of the run's extraction, as its snapshot recorded them (a run
    snapshotted before ledger schema 4: as its last report had them)."""
    info = ledger.snapshot_info(run.run_id)
    if info is not None:
        return ExtractionStats(
            info.rows_read,
            info.recipients,
            info.rejected,
            dict(info.rejected_reasons),
            None if info.lines is None else SourceLines(**info.lines),
        )
    data = json.loads(run.report or "{}").get("extraction") or {}
    recipients = run.recipients or 0
    rejected = int(data.get("rows_rejected", 0))
    try:
        lines: SourceLines | None = SourceLines(**data["lines"])
    except (KeyError, TypeError):  # a report without line counts
        lines = None
    return ExtractionStats(
        recipients + rejected, recipients, rejected, dict(data.get("rejected_reasons", {})), lines
    )


def _call_observer(hook: Any, **kwargs: Any) -> None:
    """Call an observer hook; what it raises is logged and ignored (messages were sent)."""
    try:
        hook(**kwargs)
    except Exception:
        log.exception("an observer hook raised; ignored")


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


def _rejected_examples(rejects: Path, shown: str, limit: int) -> tuple[RowExample, ...]:
    """The first ``limit`` rows of a ``rejected.csv`` (line, reason, field, detail; the
    raw values are not read)."""
    found: list[RowExample] = []
    if limit <= 0:
        return ()
    with rejects.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader, None)  # the header
        for row in reader:
            line, reason, field, detail = (restore(cell) for cell in row[:4])
            found.append(RowExample(shown, int(line), reason, field or None, detail))
            if len(found) >= limit:
                break
    return tuple(found)
