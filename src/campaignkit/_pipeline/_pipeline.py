"""The Pipeline: a campaign, and its run as a composition of explicit steps."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pluggy

from .._config import (
    Channel,
    Execution,
    PipelineConfig,
    ReceiptsConfig,
    Schedule,
    SourceConfig,
    load_config,
)
from .._engine import ChannelPlan, ProgressCallback
from .._ledger import Ledger, MaxActiveRunsReached, RunInProgress, is_postgres_url, open_ledger
from .._models import RunReport, Secret
from .._notifier import Notifier
from .._plugins import Registry, get_plugin_manager
from .._rehearsal import (
    in_shared_sandbox,
    is_rehearsal,
    rehearsal_execution,
    rehearsal_output_root,
    sandbox_channels,
    sandbox_switch,
)
from .._schedule import manual_logical_date
from .._source import Source
from ..exceptions import ConfigError, PluginError
from . import _sending as sending
from . import _steps as steps
from . import _workers as workers
from ._checking import Checks
from ._checks import channel_plans, prepare_channel, read_token
from ._location import ledger_location, shown_location
from ._run_steps import RunSteps
from ._scheduled import due_runs
from ._values import OpenedRun, ScheduledRuns

__all__ = ["Pipeline"]

log = logging.getLogger("campaignkit")


class Pipeline(Checks, RunSteps):
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
        description: free text (reports, an orchestrator's DAG).
        tags: free labels.
        owner: who answers for the campaign (an orchestrator's task owner).
        execution: execution parameters.
        schedule: schedule parameters.
        receipts: where delivery receipts arrive (the ``[receipts]`` table).
        base_dir: directory that relative paths (output dir, source path) are read
            against; defaults to the configuration file's directory or the cwd.
        plugins: the plugin manager; by default :func:`get_plugin_manager` builds one
            (built-ins plus installed entry points).
        env: where provider tokens, and settings channels read from variables (such
            as Twilio's ``TWILIO_ACCOUNT_SID``), are read from; defaults to ``os.environ``.
        sleep: how retry waits sleep; tests pass a function that does not wait. By
            default a real wait, which an interrupt cuts short.
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
        owner: str = "",
        execution: Execution | None = None,
        schedule: Schedule | None = None,
        receipts: ReceiptsConfig | None = None,
        base_dir: str | Path | None = None,
        plugins: pluggy.PluginManager | None = None,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] | None = None,
        rehearsal: bool | None = None,
        rows_per_customer: str | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.tags = tuple(tags)
        self.owner = owner
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
        self.receipts = receipts or ReceiptsConfig()
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
        """Build a pipeline from a structured configuration.

        With ``CAMPAIGNKIT_SANDBOX=1`` in the environment (and no ``rehearsal=``
        given) it is a rehearsal against this process's own loopback sandbox
        (:func:`~campaignkit.testing.sandbox.shared_sandbox`): its channels point at
        the fake providers, their tokens are the fakes', and it records into the
        rehearsal's own state; nothing reaches a real provider.

        Raises:
            ConfigError: ``CAMPAIGNKIT_SANDBOX`` holds neither an on nor an off value,
                or the sandbox has no fake for an enabled channel's provider.
        """
        sandboxed = kwargs.get("rehearsal") is None and not is_rehearsal(config.execution)
        if sandboxed and sandbox_switch():
            config, kwargs = in_shared_sandbox(config, kwargs)
        pipeline = cls(
            config.name,
            config.source,
            config.channels,
            description=config.description,
            tags=config.tags,
            owner=config.owner,
            execution=config.execution,
            schedule=config.schedule,
            receipts=config.receipts,
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

    @property
    def environ(self) -> Mapping[str, str]:
        """The environment channels read their tokens and settings from (``env``, else
        the process's)."""
        return self._env if self._env is not None else os.environ

    def token(self, channel: Channel, cls: type[Notifier[Any]]) -> Secret | None:
        """The channel's token, from the variable its ``token_env`` names (``None``
        for a channel that needs none and has none).

        Raises:
            ConfigError: it is required and not set, or not a usable token (never quoted).
        """
        return read_token(self.environ, channel, cls)

    def channel_plan(self, channel: Channel, fields: frozenset[str] | None) -> ChannelPlan:
        """Everything needed to run ``channel``: its notifier (options, token),
        template, content rules and audience rules, checked against ``fields``.

        Raises:
            ConfigError, TemplateError, SourceError, PluginError: the first problem.
        """
        return prepare_channel(self, channel, fields)

    # -- the ledger and the output ---------------------------------------------------------
    @property
    def state_path(self) -> Path:
        """The SQLite ledger file (``execution.state_path`` against ``base_dir``)."""
        return self.base_dir / self.execution.state_path

    @property
    def ledger_location(self) -> str | Path:
        """Where the ledger is: ``execution.ledger``'s URL or path, else the
        ``CAMPAIGNKIT_LEDGER_URL`` variable of ``env``, else :attr:`state_path`; a
        rehearsal's is always its own file (see :func:`ledger_location`)."""
        return ledger_location(
            self.execution, self.environ, self.base_dir, rehearsal=self.rehearsal
        )

    @property
    def ledger_shown(self) -> str:
        """:attr:`ledger_location` for messages (a URL's password hidden)."""
        return shown_location(self.ledger_location)

    def ledger(self) -> Ledger:
        """Open this pipeline's ledger (the caller closes it)."""
        return open_ledger(self.ledger_location)

    @property
    def sends_in_shards(self) -> bool:
        """Whether several processes send this campaign's runs at once: more than one
        of ``execution.workers`` and a ledger they share (PostgreSQL)."""
        return self.execution.workers > 1 and is_postgres_url(str(self.ledger_location))

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
            "channels": [c.sent_settings() for c in self.enabled_channels],
        }
        if self.rows_per_customer != "one":  # the default keeps earlier runs' fingerprints
            data["rows_per_customer"] = self.rows_per_customer
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    # -- runs: compositions of the steps (see _steps) ---------------------------------------
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
        on_opened: Callable[[OpenedRun], None] | None = None,
    ) -> RunReport:
        """Run the campaign for a logical date: check everything, extract the whole
        segment into the ledger, decide every channel's audience, then send every
        enabled channel in parallel. Nothing is sent unless checks and extraction
        succeed; delivery problems never raise (they are in the report and, per
        recipient, in the ledger). A logical date is run once: its finished run's
        report is returned (nothing sent), its unfinished run resumed; ``force=True``
        starts a new run deliberately.

        Args:
            logical_date: the run's logical date; by default the latest complete
                schedule interval (as a manual Airflow trigger).
            force: start a new run even if the logical date has one.
            run_id: the new run's id (default ``<pipeline>__<logical date>``).
            output_dir: overrides ``execution.output_dir`` for report and rejects.
            progress: called as ``progress(channel, recipients_done)`` (channel threads).
            on_extracted: called with (recipients, rejected reasons) after extraction.
            on_opened: called with the :class:`OpenedRun` once the run is open (begun,
                taken up, or found finished), before anything is planned or sent.
            limit: a canary: the first ``limit`` eligible recipients per channel only;
                the full run (the same logical date again) sends the rest.

        Raises:
            ConfigError, TemplateError, SourceError, PluginError: before any send.
            AudienceGuardError: ``expected_audience`` drifted; nothing was sent.
            MaxActiveRunsReached: the pipeline has ``max_active_runs`` runs going.
        """
        date = logical_date or manual_logical_date(self.schedule, datetime.now(UTC))
        plans = self.checked_plans()  # every problem, before anything
        workers.check_workers(self)
        with steps.run_ledger(self, canary=limit is not None) as ledger:
            opened = steps.open_run(
                self, ledger, plans, date.astimezone(UTC), force, run_id, output_dir
            )
            if on_opened is not None:
                on_opened(opened)
            if opened.replay is not None:  # the logical date ran already
                return opened.replay
            if opened.extracted is not None and on_extracted is not None and not opened.resumed:
                on_extracted(opened.extracted.recipients, opened.extracted.rejected_reasons)
            context = steps.RunContext(self, ledger, opened.run_id)
            now = datetime.now(UTC)
            for plan in plans:  # every audience is decided before anything is sent
                steps.plan_channel(context, plan, now)
            sending.start_sending(context, plans)
            interrupted = workers.send_run(context, plans, limit=limit, progress=progress)
            report = sending.finish_run(context, output_dir=output_dir, interrupted=interrupted)
        if interrupted:
            raise KeyboardInterrupt
        return report

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
        ones never are. The steps are :meth:`run`'s, the opening aside.

        Args:
            channels: only these channels (default: every enabled channel).

        Raises:
            LedgerError: no such run, or it is being run by another live process.
        """
        plans = channel_plans(self, channels)
        workers.check_workers(self)
        with steps.run_ledger(self) as ledger:
            opened = steps.reopen_run(
                self,
                ledger,
                plans,
                run_id,
                retry_failed=retry_failed,
                resend_unknown=resend_unknown,
                output_dir=output_dir,
            )
            if opened.replay is not None:  # finished, nothing owed
                return opened.replay
            context = steps.RunContext(self, ledger, run_id)
            now = datetime.now(UTC)
            for plan in plans:  # a channel planned before keeps its audience
                steps.plan_channel(context, plan, now)
            sending.start_sending(context, plans)
            interrupted = workers.send_run(context, plans, limit=limit, progress=progress)
            report = sending.finish_run(context, output_dir=output_dir, interrupted=interrupted)
        if interrupted:
            raise KeyboardInterrupt
        return report

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
        due = due_runs(self, now)
        reports = []
        for orphan in due.resume:
            try:
                reports.append(self.resume(orphan.run_id, progress=progress))
            except RunInProgress as exc:  # another process claimed it meanwhile
                log.info("%s", exc)
        for interval in due.plan.start:
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
        for blocked in due.plan.blocked:
            log.info("%s: %s not started: %s", self.name, blocked.interval.start, blocked.reason)
        plan = due.plan
        return ScheduledRuns(
            reports=tuple(reports), skipped=plan.skip, blocked=plan.blocked, next_due=plan.next_due
        )
