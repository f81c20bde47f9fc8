"""The steps an orchestrator's tasks run, for Airflow, Dagster, Prefect or your own.

A campaign is one run per logical date in the ledger, which is the only truth: the
orchestrator hands its tasks references (the campaign, a run id, a channel, a shard),
never records or live objects, since each task may run in a process of its own::

    spec = describe("campaign.toml")                 # the DAG's shape; reads the file only
    opened = open_run("campaign.toml", logical_date)  # the extract task
    for channel in spec.channels:                     # in parallel, each channel...
        for shard in opened["shards"][channel.name]:  # ...mapped over its shards
            send_shard("campaign.toml", opened["run_id"], channel.name, shard, spec.shards)
        channel_results("campaign.toml", opened["run_id"], channel.name)
    finish_run("campaign.toml", opened["run_id"])     # trigger rule: all done

``campaign`` is a campaign file's path or an import reference ``"package.module:name"``
naming a :class:`~campaignkit.PipelineConfig`, a :class:`~campaignkit.Pipeline` or a
function returning one (imported again in every task process).

**Retries are the orchestrator's.** :func:`send_shard` sends once, without
campaignkit's own retry rounds; transient failures left raise :class:`ShardIncomplete`,
and the orchestrator retries the task after the campaign's delay (``describe(...).retries``
and ``.retry_delay``, the campaign's ``[execution.retry]``). A retry, a cleared task or
the same logical date run again (by the CLI or the orchestrator) sends only what the
ledger says is owed: each message once.

**Parallel shards need PostgreSQL.** By default (``[execution] workers = 1``) one
process sends a run at a time: the tasks of one run take turns on it (a task waits
while another holds it; ``describe(...).parallel_shards`` is 1), each task's sends
running in parallel threads. With ``workers = N`` above 1 and a PostgreSQL ledger,
the extract task splits each channel into shards (``[execution] shards``, default
``4 * N``) and each send task leases its shard alone, fenced as workers are, so that
``N`` shards send at once, across processes and hosts; a task whose shard another
worker's live lease holds waits for it. (A rehearsal records into its own SQLite
ledger, so its tasks take turns.)

**The sandbox switch.** With ``CAMPAIGNKIT_SANDBOX=1`` in the tasks' environment, every
campaign built from a configuration sends to the process's own loopback sandbox
(:func:`~campaignkit.testing.sandbox.shared_sandbox`: fake providers, fake tokens) and
records into the rehearsal's own state, so an example DAG runs end to end on a fresh
machine with no token; :func:`sandbox` returns that sandbox, for tests.
"""

from __future__ import annotations

import importlib
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .. import CsvSource, Pipeline, PipelineConfig, RunStatus, Schedule, Slice, load_config
from .._ledger import LedgerError, RunInProgress, sharded
from .._schedule import manual_logical_date
from ..exceptions import ConfigError, ShardIncomplete

if TYPE_CHECKING:
    from ..testing.sandbox import Sandbox

__all__ = [
    "ChannelTask",
    "LedgerError",
    "PipelineSpec",
    "RunInProgress",
    "ShardIncomplete",
    "channel_results",
    "describe",
    "finish_run",
    "load",
    "logical_date",
    "open_run",
    "sandbox",
    "send_shard",
]

#: how long a send task waits for its turn on the run (another task holds it)
TURN_WAIT_SECONDS = 6 * 3600.0
#: the most shards a channel is split into (orchestrators choke on wide maps)
MAX_SHARDS = 64
_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
#: the seed's task names for its three channels
_SEED_NAMES = {
    "email": ("send_email_campaign", "email_campaign_results"),
    "sms": ("send_sms_campaign", "sms_campaign_results"),
    "push": ("send_push_notification", "push_notification_results"),
}


@attrs.frozen
class ChannelTask:
    """A channel as an orchestrator's tasks: ``send_task`` sends its shards and
    ``results_key`` names what the channel's results are published as."""

    name: str
    send_task: str
    results_key: str

    @classmethod
    def of(cls, name: str) -> ChannelTask:
        """``email`` -> ``send_email_campaign`` / ``email_campaign_results`` (the
        seed's names for email, sms and push; ``send_<name>_campaign`` and
        ``<name>_campaign_results`` for any other channel)."""
        send, results = _SEED_NAMES.get(name, (f"send_{name}_campaign", f"{name}_campaign_results"))
        return cls(name, send, results)


@attrs.frozen
class PipelineSpec:
    """What an orchestrator needs to build a campaign's job (:func:`describe`)."""

    name: str
    description: str
    tags: tuple[str, ...]
    owner: str
    schedule: Schedule
    max_active_runs: int | None
    depends_on_past: bool
    retries: int
    retry_delay: timedelta
    timeout: timedelta | None
    channels: tuple[ChannelTask, ...]
    shards: int
    parallel_shards: int
    extract_task: str


def load(campaign: str | os.PathLike[str]) -> Pipeline:
    """The campaign as a :class:`~campaignkit.Pipeline` (``CAMPAIGNKIT_SANDBOX``
    honoured): a file's path or an import reference ``"package.module:name"``.

    Raises:
        ConfigError: the file is invalid, the reference names nothing usable, or the
            switch is on and it names a Pipeline that is not a rehearsal (one built in
            Python: the switch cannot re-point it, and it must not send for real).
    """
    found = _resolve(campaign)
    if not isinstance(found, Pipeline):
        return Pipeline.from_config(found)
    from ..testing.sandbox import sandbox_switch

    if not found.rehearsal and sandbox_switch():
        # The switch re-points configurations; a pipeline built in Python is built
        # already, and with the switch on nothing may reach a real provider.
        raise ConfigError(
            f"CAMPAIGNKIT_SANDBOX is on but campaign {os.fspath(campaign)!r} is a Pipeline "
            "built in Python that is not a rehearsal: name its configuration (a path, a "
            "PipelineConfig) or build it with Pipeline.from_config so that the switch applies",
            path="campaign",
        )
    return found


def describe(campaign: str | os.PathLike[str]) -> PipelineSpec:
    """The campaign's schedule, execution parameters, channels and shards, read from
    its configuration alone (no ledger, no source, no network): deterministic.

    Raises:
        ConfigError: as :func:`load`.
    """
    found = _resolve(campaign)
    execution, retry = found.execution, found.execution.retry
    workers = execution.workers
    shards = min(MAX_SHARDS, execution.shards or (4 * workers if workers > 1 else 1))
    return PipelineSpec(
        name=found.name,
        description=found.description,
        tags=tuple(found.tags),
        owner=found.owner,
        schedule=found.schedule,
        max_active_runs=execution.max_active_runs,
        depends_on_past=execution.depends_on_past,
        retries=retry.retries,
        retry_delay=timedelta(seconds=retry.delay_seconds),
        timeout=timedelta(seconds=execution.timeout_seconds) if execution.timeout_seconds else None,
        channels=tuple(ChannelTask.of(c.name) for c in found.channels if c.enabled),
        shards=shards,
        parallel_shards=min(workers, shards),
        extract_task="load_customer_segment_csv" if _is_csv(found) else "load_customer_segment",
    )


def open_run(campaign: str | os.PathLike[str], logical_date: datetime) -> dict[str, Any]:
    """The extract task: check everything, open the run of ``logical_date`` (extract
    the segment into its snapshot) and decide every channel's audience. A logical
    date runs once: its unfinished run is taken up (``resumed``), its finished one
    replayed (``replay``: the send tasks then send nothing).

    Returns:
        ``run_id``, ``logical_date``, ``status`` (``opened``, ``resumed`` or
        ``replay``), ``extracted`` and ``rejected`` rows, and ``shards``: each
        channel's shard numbers, to map its send task over (with their count as
        ``send_shard``'s ``shards``): on PostgreSQL the run's own split, which an
        earlier attempt made once and keeps, whatever ``describe`` says now. None
        for a replay: like the CLI's, it sends nothing (a finished run's transient
        failures are sent again by clearing its send tasks, or by ``campaignkit
        resume --retry-failed``).

    Raises:
        ConfigError, TemplateError, SourceError: before the run begins.
        AudienceGuardError: a channel's audience drifted (nothing was sent).
        RunInProgress, MaxActiveRunsReached: another process runs the campaign.
    """
    pipeline = load(campaign)
    spec = describe(campaign)
    opened = pipeline.open_run(logical_date=_aware(logical_date))
    if opened.replay is None:
        for channel in spec.channels:
            pipeline.plan_channel(opened.run_id, channel.name)
        if pipeline.sends_in_shards:  # shards that the send tasks lease (PostgreSQL)
            pipeline.shard_channels(opened.run_id, shards=spec.shards)
    shards = _run_shards(pipeline, opened.run_id, spec)
    status = "replay" if opened.replay is not None else "resumed" if opened.resumed else "opened"
    stats = opened.extracted
    return {
        "run_id": opened.run_id,
        "logical_date": _aware(logical_date).isoformat(),
        "status": status,
        "extracted": stats.rows_read if stats else 0,
        "rejected": stats.rejected if stats else 0,
        # A replay sends nothing, as the CLI's does: no shard to send.
        "shards": {
            name: [] if opened.replay is not None else list(range(count))
            for name, count in shards.items()
        },
    }


def send_shard(
    campaign: str | os.PathLike[str],
    run_id: str,
    channel: str,
    shard: int,
    shards: int,
    *,
    wait: float = TURN_WAIT_SECONDS,
) -> dict[str, Any]:
    """A channel's send task, for shard ``shard`` of ``shards``: send what the shard
    owes, once (see the module's notes on retries); waits up to ``wait`` seconds for
    its turn on the run.

    Returns:
        The channel's totals after the attempt (``sent``, ``failed``, ``skipped``...).

    Raises:
        ShardIncomplete: transient failures are left, or the send stopped early
            (the deadline): the orchestrator's retry sends them.
        RunInProgress: another process held the run for all of ``wait``.
    """
    part = Slice(index=shard, count=shards)
    attempt = load(campaign).send_attempt(run_id, channel, part, wait=wait)
    summary = {"run_id": run_id, "shard": str(part), **attempt.result.to_dict()}
    if not attempt.complete:
        why = f"stopped: {attempt.stopped}" if attempt.stopped else "transient failures"
        raise ShardIncomplete(
            f"{channel} shard {part} of run {run_id}: {attempt.transient} message(s) owed "
            f"({why}); a retry sends them",
            channel=channel,
            shard=str(part),
            owed=attempt.transient,
        )
    return summary


def channel_results(campaign: str | os.PathLike[str], run_id: str, channel: str) -> dict[str, Any]:
    """A channel's results as the ledger has them: deliveries by state, by reason
    (skipped and failed ones) and by provider error code. No per-recipient data."""
    ledger = load(campaign).ledger()
    try:
        counts = ledger.counts(run_id, channel)
    finally:
        ledger.close()
    return {
        "run_id": run_id,
        "channel": channel,
        "total": counts.total,
        "states": dict(counts.states),
        "reasons": dict(counts.reasons),
        "error_codes": dict(counts.error_codes),
    }


def finish_run(campaign: str | os.PathLike[str], run_id: str) -> dict[str, Any]:
    """The last task: decide the run's status from the ledger and write its report;
    a run finished already answers with its recorded status (nothing is recorded).

    Raises:
        LedgerError: the run still owes messages that no task tried to send.
    """
    pipeline = load(campaign)
    ledger = pipeline.ledger()
    try:
        record = ledger.get_run(run_id)
    finally:
        ledger.close()
    if record.status != RunStatus.RUNNING:
        return {"run_id": run_id, "status": record.status, "finished": False}
    report = pipeline.finish_run(run_id)
    return {"run_id": run_id, "status": str(report.status), "finished": True}


def logical_date(campaign: str | os.PathLike[str], at: datetime) -> datetime:
    """The logical date a run started at ``at`` stands for when none is given: the
    latest complete interval of the campaign's schedule, by campaignkit's own cron
    arithmetic (as ``campaignkit run`` decides it), so that every entry point agrees
    on it, daylight-saving days included."""
    return manual_logical_date(describe(campaign).schedule, _aware(at))


def sandbox() -> Sandbox | None:
    """The process's sandbox when ``CAMPAIGNKIT_SANDBOX`` is on (else ``None``)."""
    from ..testing.sandbox import sandbox_switch, shared_sandbox

    return shared_sandbox() if sandbox_switch() else None


# -- helpers ------------------------------------------------------------------------------


def _resolve(campaign: str | os.PathLike[str]) -> PipelineConfig | Pipeline:
    """A campaign reference as a configuration (a file) or a pipeline."""
    text = os.fspath(campaign)
    if not _REFERENCE.match(text) or Path(text).exists():
        return load_config(text)
    module_name, _, attribute = text.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import campaign {text!r}: {exc}", path="campaign") from None
    if callable(found) and not isinstance(found, (type, Pipeline)):
        found = found()
    if isinstance(found, str | os.PathLike):
        return load_config(os.fspath(found))
    if isinstance(found, PipelineConfig | Pipeline):
        return found
    raise ConfigError(
        f"campaign {text!r} is a {type(found).__name__}, not a PipelineConfig, a Pipeline, "
        "a path or a function returning one",
        path="campaign",
    )


def _run_shards(pipeline: Pipeline, run_id: str, spec: PipelineSpec) -> dict[str, int]:
    """Each channel's shard count: where the campaign sends in shards, the run's own
    split in the ledger (made once per run: a run split by an earlier attempt, the CLI
    or another configuration keeps its shards, and every one of them must be sent),
    else ``spec.shards``."""
    counts = {c.name: spec.shards for c in spec.channels}
    if not pipeline.sends_in_shards:
        return counts
    ledger = pipeline.ledger()
    try:
        shared = sharded(ledger)
        leases = shared.shard_leases(run_id) if shared is not None else []
    finally:
        ledger.close()
    for name in counts:
        counts[name] = sum(info.channel == name for info in leases) or counts[name]
    return counts


def _is_csv(found: PipelineConfig | Pipeline) -> bool:
    if isinstance(found, PipelineConfig):
        return found.source.type == "csv"
    return isinstance(found.source, CsvSource)


def _aware(moment: datetime) -> datetime:
    """``moment`` with a time zone (a naive one is UTC, as orchestrators mean it)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
