"""The Pipeline: extraction first, then every channel in parallel."""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pluggy

from ._config import (
    Channel,
    Execution,
    PipelineConfig,
    Schedule,
    SourceConfig,
    load_config,
)
from ._engine import ChannelPlan, ChannelRunner, ProgressCallback, ResultWriter
from ._models import ChannelResult, Message, Rate, Recipient, RunReport, RunStatus, Secret
from ._notifier import ChannelSettings, Notifier
from ._plugins import Registry, get_plugin_manager
from ._segment import extract
from ._source import MODEL_FIELDS, Source
from ._templates import compile_template
from .exceptions import ConfigError, PluginError

__all__ = ["Pipeline", "ValidationSummary"]

log = logging.getLogger("campaignkit")


@attrs.frozen
class ValidationSummary:
    """What :meth:`Pipeline.validate` checked."""

    pipeline: str
    source: str
    fields: frozenset[str]
    channels: Mapping[str, str]  # enabled channel -> provider
    disabled: tuple[str, ...]


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
        execution, schedule: execution and schedule parameters.
        base_dir: directory that relative paths (output dir, source path) are read
            against; defaults to the configuration file's directory or the cwd.
        plugins: the plugin manager; by default :func:`get_plugin_manager` builds one
            (built-ins plus installed entry points).
        env: where provider tokens are read from; defaults to ``os.environ``.
        sleep: how retry waits sleep; tests pass a function that does not wait.
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
        self.schedule = schedule or Schedule()
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        self._plugins = plugins
        self._registry: Registry | None = None
        self._env = env
        self.sleep = sleep
        self._source_arg = source
        self._source: Source | None = source if not isinstance(source, SourceConfig) else None

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: PipelineConfig, **kwargs: Any) -> Pipeline:
        """Build a pipeline from a structured configuration."""
        return cls(
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
            if cls.token_required:
                raise ConfigError(
                    f"environment variable {channel.token_variable} is not set "
                    f"(the {cls.name} token)",
                    path=f"channels.{channel.name}.token_env",
                )
            return None
        return Secret(value)

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
        template = compile_template(channel.template, channel=channel.name, fields=fields)
        return ChannelPlan(
            channel=channel,
            notifier=notifier,
            template=template,
            retry=channel.retry or self.execution.retry,
            rate=channel.rate or cls.default_rate or Rate(),
            batch_size=channel.batch_size or cls.max_batch_size,
        )

    # -- public operations ---------------------------------------------------------------
    def validate(self) -> ValidationSummary:
        """Check everything that can be checked without sending.

        Builds every enabled channel's notifier (options), reads its token from the
        environment, reads the source's header and compiles every template against it.

        Raises:
            ConfigError, TemplateError, SourceError, PluginError: the first problem.
        """
        fields = self.source.fields()
        for channel in self.enabled_channels:
            self._plan(channel, fields)
        records = self.source.records(self._required())
        try:
            next(iter(records), None)  # the header and required columns are checked first
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                close()
        return ValidationSummary(
            pipeline=self.name,
            source=self.source.describe(),
            fields=fields,
            channels={c.name: c.provider for c in self.enabled_channels},
            disabled=tuple(c.name for c in self.channels if not c.enabled),
        )

    def preview(self, channel: str, n: int = 3) -> list[Message]:
        """Render the messages of the first ``n`` eligible recipients; sends nothing.

        Tokens are not required for a preview.
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
        runner = ChannelRunner(plan, run_id="preview", writer=ResultWriter(None))
        required = self._required()
        out: list[Message] = []
        recipients = (r for r in self.source.records(required) if isinstance(r, Recipient))
        for item in runner.messages(recipients):
            if isinstance(item, Message):
                out.append(item)
                if len(out) >= n:
                    break
        return out

    def _required(self) -> set[str]:
        required = set()
        for channel in self.enabled_channels:
            field = str(
                channel.options.get("address_field")
                or self.registry.notifier_class(channel.provider).address_field
            )
            if field in MODEL_FIELDS:
                required.add(field)
        return required

    def run(
        self,
        *,
        run_id: str | None = None,
        output_dir: str | Path | None = None,
        progress: ProgressCallback | None = None,
        on_extracted: Callable[[int, Mapping[str, int]], None] | None = None,
    ) -> RunReport:
        """Run the campaign: validate, extract the whole segment, then send every
        enabled channel in parallel.

        Nothing is sent unless validation and extraction both succeed. Delivery
        problems never raise: they are in the report (and per recipient in
        ``<output_dir>/<run_id>/<channel>.jsonl``).

        Args:
            run_id: the run's id (default: a new, time-ordered id).
            output_dir: overrides ``execution.output_dir``.
            progress: called as ``progress(channel, recipients_done)`` from channel
                threads.
            on_extracted: called with (recipients, rejected reasons) after extraction.

        Raises:
            ConfigError, TemplateError, SourceError, PluginError: before any send.
        """
        started = datetime.now(UTC)
        run_id = run_id or f"{started:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
        fields = self.source.fields()
        plans = [self._plan(c, fields) for c in self.enabled_channels]
        root = (
            Path(output_dir)
            if output_dir is not None
            else self.base_dir / self.execution.output_dir
        )
        run_dir = root / run_id
        run_dir.mkdir(parents=True, exist_ok=False)
        spool = run_dir / "segment.spool"
        segment, stats = extract(
            self.source, required=self._required(), spool=spool, rejects=run_dir / "rejected.csv"
        )
        log.info(
            "%s: extracted %d recipient(s), rejected %d row(s)",
            run_id,
            stats.recipients,
            stats.rejected,
        )
        if on_extracted is not None:
            on_extracted(stats.recipients, stats.rejected_reasons)
        hook = self.plugin_manager.hook
        hook.campaignkit_run_started(
            run_id=run_id, pipeline=self.name, channels=[p.channel.name for p in plans]
        )
        deadline = (
            time.monotonic() + self.execution.timeout_seconds
            if self.execution.timeout_seconds
            else None
        )
        results: dict[str, ChannelResult] = {}
        errors: dict[str, str] = {}
        cancel = threading.Event()

        def run_channel(plan: ChannelPlan) -> ChannelResult:
            writer = ResultWriter(run_dir / f"{plan.channel.name}.jsonl")
            try:
                runner = ChannelRunner(
                    plan,
                    run_id=run_id,
                    writer=writer,
                    sleep=self.sleep,
                    deadline=deadline,
                    progress=progress,
                    cancel=cancel,
                )
                result = runner.run(segment)
            finally:
                writer.close()
            _call_observer(hook.campaignkit_channel_finished, run_id=run_id, result=result)
            return result

        workers = min(len(plans), self.execution.max_workers or len(plans)) or 1
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ck-channel") as pool:
            futures = {plan.channel.name: pool.submit(run_channel, plan) for plan in plans}
            try:
                futures_wait(futures.values())
            except KeyboardInterrupt:
                # Stop starting batches; in-flight requests finish and are recorded.
                log.warning("%s: interrupted; finishing in-flight requests", run_id)
                cancel.set()
                futures_wait(futures.values())
                raise
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except Exception as exc:
                    log.exception("channel %s crashed", name)
                    errors[name] = f"{type(exc).__name__}: {exc}"
        spool.unlink(missing_ok=True)
        if errors:
            status = RunStatus.FAILED
        elif any(r.reasons.get("timed_out") for r in results.values()):
            status = RunStatus.TIMED_OUT
        elif any(r.failed for r in results.values()):
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
            output_dir=str(run_dir),
            errors=errors,
        )
        (run_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        _call_observer(hook.campaignkit_run_finished, report=report)
        return report


def _call_observer(hook: Any, **kwargs: Any) -> None:
    """Call an observer hook; what it raises is logged and ignored (messages were sent)."""
    try:
        hook(**kwargs)
    except Exception:
        log.exception("an observer hook raised; ignored")
