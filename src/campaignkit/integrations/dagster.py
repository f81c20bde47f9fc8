"""A campaign as a Dagster asset graph (``pip install 'campaignkit[dagster]'``).

:func:`definitions` turns a campaign (a TOML path or an import reference
``"package.module:attribute"``) into :class:`dagster.Definitions`::

    # definitions.py, the code location
    from campaignkit.integrations.dagster import definitions

    defs = definitions("campaign.toml")

``customer_segment_records`` opens the run of the partition's logical date (checks,
extraction, snapshot, audiences); one asset per channel (``email_campaign_results``...)
sends its shards and reads its outcome from the ledger; ``campaign_run_report`` finishes
the run once every channel succeeded. The ledger is the only truth: a Dagster retry, a
re-execution or ``campaignkit run`` of the same logical date sends nothing twice.
Partitions are the schedule's intervals (a partition's start is the logical date);
fields Dagster cannot express per job warn (:class:`UnsupportedFieldWarning`).
"""

# No ``from __future__ import annotations``: Dagster reads the assets' annotations at
# definition time (the ``context`` parameter's type must be a class, not a string).
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import attrs
import dagster as dg

from campaignkit import Schedule
from campaignkit.exceptions import CampaignKitError, ShardIncomplete
from campaignkit.integrations import tasks

__all__ = [
    "CAMPAIGN_TAG",
    "REPORT_ASSET",
    "SEGMENT_ASSET",
    "UnsupportedFieldWarning",
    "definitions",
]

#: The asset that opens the run (the seed's extract task).
SEGMENT_ASSET = "customer_segment_records"
#: The asset that finishes the run once every channel asset has succeeded.
REPORT_ASSET = "campaign_run_report"
#: The run tag naming the campaign, for ``tag_concurrency_limits`` in ``dagster.yaml``.
CAMPAIGN_TAG = "campaignkit/campaign"


class UnsupportedFieldWarning(UserWarning):
    """A campaign field that Dagster cannot express per job (see ``docs/dagster.md``)."""


@attrs.frozen
class _Channel:
    """One channel of the campaign and the key of its results asset."""

    name: str
    key: dg.AssetKey


@attrs.frozen
class _Labels:
    """The campaign's tags, owner and description, on every asset."""

    tags: dict[str, str]
    owners: list[str] | None
    description: str | None


@attrs.frozen
class _Campaign:
    """What every asset of one campaign shares (built once by :func:`definitions`)."""

    campaign: str
    name: str
    prefix: tuple[str, ...]
    channels: tuple[_Channel, ...]
    shards: int
    parallel_shards: int
    retry_policy: dg.RetryPolicy
    partitions: dg.TimeWindowPartitionsDefinition
    labels: _Labels

    def key(self, name: str) -> dg.AssetKey:
        """The asset key ``name`` under this campaign's prefix."""
        return dg.AssetKey([*self.prefix, name])

    def asset(
        self, key: dg.AssetKey, *, deps: Sequence[dg.AssetKey] = (), retry: bool = False
    ) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
        """The decorator of this campaign's asset ``key`` (partitioned, labelled), which
        takes the run opened by the segment asset as input ``opened`` unless it is it."""
        segment = self.key(SEGMENT_ASSET)
        decorator: Callable[[Callable[..., Any]], dg.AssetsDefinition] = dg.asset(
            key=key,
            ins={} if key == segment else {"opened": dg.AssetIn(key=segment)},
            deps=deps,
            partitions_def=self.partitions,
            group_name=self.name,
            retry_policy=self.retry_policy if retry else None,
            tags=self.labels.tags,
            owners=self.labels.owners,
            description=self.labels.description,
        )
        return decorator


def definitions(
    campaign: str,
    *,
    retry_delay: timedelta | None = None,
    key_prefix: str | Sequence[str] | None = None,
) -> dg.Definitions:
    """The campaign's assets, job and schedule as a Dagster code location.

    Args:
        campaign: a campaign TOML path or an import reference ``"package.module:attribute"``
            (never a live object: every step process re-reads it).
        retry_delay: overrides the campaign's retry delay (e.g. ``timedelta(0)`` in tests).
        key_prefix: puts every asset key under this prefix (several campaigns in one
            code location).

    Returns:
        The assets, a job named after the campaign and, when the campaign's schedule is
        enabled, its schedule (stopped until turned on, as Dagster's schedules are).

    Raises:
        ConfigError: the campaign does not load.
    """
    spec = tasks.describe(campaign)
    _warn_unsupported(spec)
    built = _built(campaign, spec, retry_delay, key_prefix)
    assets = [_segment_asset(built)]
    assets += [_channel_asset(built, channel) for channel in built.channels]
    assets.append(_report_asset(built))
    job = dg.define_asset_job(
        built.name,
        selection=dg.AssetSelection.assets(*assets),
        description=built.labels.description,
        tags=_job_tags(built.name, spec.timeout),
    )
    schedules = []
    if spec.schedule.enabled:
        schedules.append(dg.build_schedule_from_partitioned_job(job, name=f"{built.name}_schedule"))
    return dg.Definitions(assets=assets, jobs=[job], schedules=schedules)


def _built(
    campaign: str,
    spec: tasks.PipelineSpec,
    retry_delay: timedelta | None,
    key_prefix: str | Sequence[str] | None,
) -> _Campaign:
    """What the assets of ``campaign`` (described by ``spec``) share."""
    delay = spec.retry_delay if retry_delay is None else retry_delay
    prefix = (key_prefix,) if isinstance(key_prefix, str) else tuple(key_prefix or ())
    return _Campaign(
        campaign=campaign,
        name=_identifier(spec.name),
        prefix=prefix,
        channels=tuple(
            _Channel(c.name, dg.AssetKey([*prefix, c.results_key])) for c in spec.channels
        ),
        shards=spec.shards,
        parallel_shards=spec.parallel_shards,
        retry_policy=dg.RetryPolicy(max_retries=spec.retries, delay=delay.total_seconds()),
        partitions=_partitions(spec.schedule),
        labels=_labels(spec.tags, spec.owner, spec.description),
    )


def _partitions(schedule: Schedule) -> dg.TimeWindowPartitionsDefinition:
    """One partition per interval of the campaign's cron (its start is the logical date),
    from ``start_date`` to the interval that starts at or before ``end_date``."""
    daily = re.fullmatch(
        r"@(daily|midnight|weekly|monthly|yearly|annually)|\d+ \d+ .*", schedule.cron
    )

    def windows(end: datetime | None = None) -> dg.TimeWindowPartitionsDefinition:
        return dg.TimeWindowPartitionsDefinition(
            cron_schedule=schedule.cron,
            start=schedule.start_date,
            end=end,
            timezone=schedule.timezone,
            fmt="%Y-%m-%d" if daily else "%Y-%m-%d-%H:%M",
        )

    if schedule.end_date is None:
        return windows()
    last = windows().get_partition_key_for_timestamp(schedule.end_date.timestamp())
    return windows(windows().time_window_for_partition_key(last).end)


def _warn_unsupported(spec: tasks.PipelineSpec) -> None:
    """Warn about each campaign field the Dagster job does not express."""
    name, schedule = spec.name, spec.schedule
    problems = []
    if spec.max_active_runs is not None:
        problems.append(
            f"max_active_runs={spec.max_active_runs}: Dagster limits concurrent runs per "
            "instance, not per job; set tag_concurrency_limits for tag "
            f"{CAMPAIGN_TAG}={_identifier(name)} in dagster.yaml. The ledger still refuses a "
            "run over the limit when it opens."
        )
    if spec.depends_on_past:
        problems.append(
            "depends_on_past=true: Dagster runs each partition on its own and does not "
            "wait for the previous logical date to succeed."
        )
    if schedule.catchup:
        problems.append(
            "catchup=true: Dagster schedules never run missed intervals; launch a backfill "
            "of the missed partitions instead."
        )
    if schedule.max_lateness_minutes is not None:
        problems.append(
            "max_lateness_minutes: a Dagster schedule runs a late tick whenever its daemon "
            "gets to it; late logical dates are not skipped."
        )
    for problem in problems:
        warnings.warn(f"campaign {name!r}: {problem}", UnsupportedFieldWarning, stacklevel=3)


def _segment_asset(built: _Campaign) -> dg.AssetsDefinition:
    """``customer_segment_records``: opens the run of the partition's logical date."""

    @built.asset(built.key(SEGMENT_ASSET))
    def customer_segment_records(context: dg.AssetExecutionContext) -> dg.Output[dict[str, Any]]:
        logical_date: datetime = context.partition_time_window.start
        opened = _step(tasks.open_run, built.campaign, logical_date)
        shown = ("run_id", "logical_date", "status", "extracted", "rejected")
        return dg.Output(opened, metadata={key: opened[key] for key in shown})

    return customer_segment_records


def _channel_asset(built: _Campaign, channel: _Channel) -> dg.AssetsDefinition:
    """One channel's results asset: sends its shards, then reads its outcome."""

    @built.asset(channel.key, retry=True)
    def results(
        context: dg.AssetExecutionContext, opened: dict[str, Any]
    ) -> dg.MaterializeResult[None]:
        run_id = opened["run_id"]
        before = _step(tasks.channel_results, built.campaign, run_id, channel.name)
        if opened["status"] != "replay":
            _send_shards(built, run_id, channel.name, opened["shards"].get(channel.name, ()))
        outcome = _step(tasks.channel_results, built.campaign, run_id, channel.name)
        context.log.info("%s of run %s: %s", channel.name, run_id, outcome["states"])
        sent_now = outcome["states"].get("sent", 0) - before["states"].get("sent", 0)
        return dg.MaterializeResult(metadata=_results_metadata(outcome, sent_now))

    return results


def _report_asset(built: _Campaign) -> dg.AssetsDefinition:
    """``campaign_run_report``: finishes the run once every channel asset succeeded."""

    @built.asset(built.key(REPORT_ASSET), deps=[channel.key for channel in built.channels])
    def campaign_run_report(opened: dict[str, Any]) -> dg.MaterializeResult[None]:
        finished = _step(tasks.finish_run, built.campaign, opened["run_id"])
        metadata = {"run_id": finished["run_id"], "status": str(finished["status"])}
        if metadata["status"] == "failed":
            description = f"run {finished['run_id']} failed"
            raise dg.Failure(description, metadata=metadata, allow_retries=False)
        return dg.MaterializeResult(metadata=metadata)

    return campaign_run_report


def _send_shards(built: _Campaign, run_id: str, channel: str, shards: Sequence[int]) -> None:
    """Send every shard of ``channel`` (``parallel_shards`` at a time); a shard whose
    transient failures are left raises :class:`ShardIncomplete` after the others were
    sent, so that Dagster retries the step. ``shards`` are the run's (``open_run``'s),
    which may differ from the definitions' count: the run's count is passed."""
    count = len(shards)
    with ThreadPoolExecutor(max_workers=max(1, built.parallel_shards)) as pool:
        futures = [
            pool.submit(_step, tasks.send_shard, built.campaign, run_id, channel, i, count)
            for i in shards
        ]
    for future in futures:
        future.result()


def _step(function: Any, *args: Any) -> dict[str, Any]:
    """Call a run step; a failure a retry cannot mend fails the step for good.

    Raises:
        ShardIncomplete: transient failures are left (Dagster's retry policy applies).
        dagster.Failure: any other campaignkit error, with retries disallowed.
    """
    try:
        result: dict[str, Any] = function(*args)
    except ShardIncomplete:
        raise
    except CampaignKitError as exc:
        raise dg.Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False) from exc
    return result


def _results_metadata(outcome: Mapping[str, Any], sent_now: int) -> dict[str, Any]:
    """What the Dagster UI shows of a channel's outcome: the count per state (plotted
    over partitions), per skip or failure reason, the run id."""
    states: Mapping[str, int] = outcome["states"]
    reasons: Mapping[str, int] = outcome["reasons"]
    metadata: dict[str, Any] = {"run_id": outcome["run_id"], "sent_now": sent_now}
    metadata.update({state: int(count) for state, count in sorted(states.items())})
    metadata["reasons"] = dg.MetadataValue.json(dict(sorted(reasons.items())))
    return metadata


def _labels(tags: Sequence[str], owner: str, description: str) -> _Labels:
    """The campaign's tags, owner (an e-mail address or a team) and description."""
    owners = [owner if "@" in owner else f"team:{_identifier(owner)}"] if owner else None
    return _Labels({_tag(tag): "" for tag in tags}, owners, description or None)


def _job_tags(name: str, timeout: timedelta | None) -> dict[str, str]:
    """The job's run tags: the campaign (for concurrency limits) and the run timeout
    (``dagster/max_runtime``, applied by the daemon's run monitoring)."""
    tags = {CAMPAIGN_TAG: name}
    if timeout is not None:
        tags["dagster/max_runtime"] = str(int(timeout.total_seconds()))
    return tags


def _identifier(text: str) -> str:
    """``text`` as a Dagster name (letters, digits and underscores)."""
    return re.sub(r"\W", "_", text) or "campaign"


def _tag(text: str) -> str:
    """``text`` as a Dagster tag key."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:63]
