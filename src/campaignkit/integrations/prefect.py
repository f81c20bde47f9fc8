"""A campaign as a Prefect 3 flow (``pip install 'campaignkit[prefect]'``).

:func:`campaign_flow` builds the flow, :func:`campaign_deployment` its scheduled
deployment::

    from campaignkit.integrations.prefect import campaign_deployment, campaign_flow

    flow = campaign_flow("campaign.toml")        # a Prefect flow named as the campaign
    flow(logical_date=datetime(2024, 1, 2, tzinfo=UTC))   # one run, in this process
    campaign_deployment("campaign.toml", entrypoint="flow.py:flow").apply()

The flow runs the steps of :mod:`campaignkit.integrations.tasks` as tasks named as in
the seed: the extract task (``load_customer_segment_csv``) opens the run; per channel
its send task (``send_email_campaign``...) is mapped over the channel's shards, with the
campaign's retries and retry delay (campaignkit's own retry rounds are off: a Prefect
retry re-sends only what the ledger says is owed); then the channel's results task
(``email_campaign_results``...) reads the ledger; ``finish_run`` records the run even
when a channel failed. The ledger is the only truth: the flow passes run ids and small
counts between tasks, never recipients or tokens, and Prefect's result cache is off.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from prefect import Flow, Task, flow, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments.runner import RunnerDeployment
from prefect.futures import PrefectFuture, wait
from prefect.runtime import flow_run
from prefect.schedules import Cron
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import allow_failure, unmapped

from campaignkit.exceptions import CampaignKitError
from campaignkit.integrations import tasks

__all__ = [
    "CampaignFlowError",
    "PrefectFieldWarning",
    "campaign_deployment",
    "campaign_flow",
    "deployment_warnings",
]

Result = dict[str, Any]


class PrefectFieldWarning(UserWarning):
    """A campaign field the Prefect deployment cannot express: it has no effect there."""


class CampaignFlowError(CampaignKitError):
    """Send tasks of the flow run failed after their retries (the run is recorded)."""


def _task(
    name: str, fn: Callable[..., Result], retries: int, delay: timedelta
) -> Task[..., Result]:
    """A Prefect task running ``fn``: the campaign's retries, no result cache (a re-run
    must ask the ledger), no persisted result (the ledger holds them)."""
    decorate = task(
        name=name,
        retries=retries,
        retry_delay_seconds=delay.total_seconds(),
        cache_policy=NO_CACHE,
        persist_result=False,
    )
    return decorate(fn)


def _aware(value: datetime) -> datetime:
    """``value`` as an aware datetime (naive means UTC, as in the configuration file)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def default_logical_date(campaign: str) -> datetime:
    """The logical date of the current flow run: the start of the latest complete
    schedule interval at its scheduled start time (a deployment's schedule fires at an
    interval's end, so this is the interval that just ended), or at now outside a flow
    run, as the CLI picks it. campaignkit's own cron arithmetic decides (never Prefect's):
    the CLI and Prefect must agree on a date, daylight-saving days included."""
    started = flow_run.scheduled_start_time
    at = datetime.fromisoformat(started.isoformat()) if started else datetime.now(UTC)
    return tasks.logical_date(campaign, _aware(at))


def campaign_flow(campaign: str, *, retry_delay: timedelta | None = None) -> Flow[..., Result]:
    """The campaign ``campaign`` as a Prefect flow named as the campaign.

    The flow takes one parameter, ``logical_date`` (default: see
    :func:`default_logical_date`), and returns ``{"run": ..., "results": {results key:
    channel results}}``. Shards run on a thread pool of ``parallel_shards`` threads: the
    bound needs no server-side concurrency limit, and a SQLite ledger (one process holds
    a run at a time) gets exactly one.

    Args:
        campaign: a campaign TOML path or an import reference ``"package.module:attr"``
            (never a live object: a worker re-imports it).
        retry_delay: overrides the campaign's retry delay (tests: ``timedelta(0)``).

    Returns:
        The flow; calling it runs the campaign in this process.

    Raises:
        ConfigError: the campaign is invalid (when the flow is built).
    """
    spec = tasks.describe(campaign)
    delay = spec.retry_delay if retry_delay is None else retry_delay
    extract = _task(spec.extract_task, tasks.open_run, spec.retries, delay)
    sends = {
        c.name: _task(c.send_task, tasks.send_shard, spec.retries, delay) for c in spec.channels
    }
    results = {
        c.name: _task(c.results_key, tasks.channel_results, spec.retries, delay)
        for c in spec.channels
    }
    finish = _task("finish_run", tasks.finish_run, spec.retries, delay)

    def run_campaign(logical_date: datetime | None = None) -> Result:
        date = _aware(logical_date) if logical_date else default_logical_date(campaign)
        opened = extract(campaign, date)
        run_id = opened["run_id"]
        sent: dict[str, list[PrefectFuture[Result]]] = {}
        for channel, send in sends.items():
            shards = opened["shards"].get(channel, [])
            sent[channel] = list(
                send.map(campaign, run_id, channel, shards, unmapped(max(len(shards), 1)))
            )
        read = {
            c.results_key: results[c.name].submit(
                campaign, run_id, c.name, wait_for=[allow_failure(f) for f in sent[c.name]]
            )
            for c in spec.channels
        }
        wait([*read.values()])
        outcome = finish(campaign, run_id)
        _raise_failed(sent, outcome)
        return {"run": outcome, "results": {key: f.result() for key, f in read.items()}}

    # TaskRunner is invariant in its future type, so Prefect's own stubs need the cast.
    runner = cast(
        "TaskRunner[PrefectFuture[Any]]", ThreadPoolTaskRunner(max_workers=spec.parallel_shards)
    )
    decorate = flow(
        name=spec.name,
        description=spec.description or None,
        task_runner=runner,
        timeout_seconds=spec.timeout.total_seconds() if spec.timeout else None,
        persist_result=False,
        validate_parameters=True,
    )
    return decorate(run_campaign)


def _raise_failed(sent: dict[str, list[PrefectFuture[Result]]], outcome: Result) -> None:
    """Fail the flow run when send tasks failed after their retries."""
    failed = [
        f"{channel} shard {i}"
        for channel, futures in sent.items()
        for i, f in enumerate(futures)
        if f.state.is_failed() or f.state.is_crashed()
    ]
    if failed:
        raise CampaignFlowError(
            f"run {outcome.get('run_id')} ({outcome.get('status')}): "
            f"{', '.join(failed)} failed after their retries"
        )


def deployment_warnings(campaign: str, *, now: datetime | None = None) -> list[str]:
    """What of the campaign's schedule a Prefect deployment cannot express.

    Args:
        campaign: as :func:`campaign_flow`.
        now: the time the deployment is built (default: now); a ``start_date`` after
            it is not honoured (Prefect's ``Cron`` has no start).

    Returns:
        One sentence per field, empty when the deployment expresses everything.
    """
    spec = tasks.describe(campaign)
    schedule = spec.schedule
    notes: list[str] = []
    start = schedule.start_date
    if start is not None and _aware(start) > (now or datetime.now(UTC)):
        notes.append(
            f"schedule.start_date {start.isoformat()} is in the future: Prefect's Cron has "
            "no start, so the deployment fires from now on (pause it until then)"
        )
    if schedule.end_date is not None:
        notes.append(
            f"schedule.end_date {schedule.end_date.isoformat()}: Prefect's Cron has no end; "
            "the deployment keeps firing after it (pause or delete it then)"
        )
    if schedule.catchup:
        notes.append(
            "schedule.catchup = true: a Prefect deployment never backfills missed intervals; "
            "run them with `campaignkit run --scheduled` or the flow's logical_date parameter"
        )
    if spec.depends_on_past:
        notes.append(
            "execution.depends_on_past = true: Prefect starts a flow run whatever the "
            "previous one did; `campaignkit run --scheduled` holds such a run back"
        )
    if getattr(schedule, "max_lateness_minutes", None) is not None:
        notes.append("schedule.max_lateness_minutes: Prefect runs a late flow run anyway")
    return notes


def campaign_deployment(
    campaign: str,
    *,
    entrypoint: str | None = None,
    name: str | None = None,
    retry_delay: timedelta | None = None,
    **kwargs: Any,
) -> RunnerDeployment:
    """The campaign's flow as a deployment on its cron schedule.

    The schedule is ``Cron(cron, timezone=...)`` (paused when the campaign's schedule is
    disabled) and ``concurrency_limit`` is ``execution.max_active_runs``. Each field the
    deployment cannot express warns (:class:`PrefectFieldWarning`, see
    :func:`deployment_warnings`).

    Args:
        campaign: as :func:`campaign_flow`.
        entrypoint: ``"path/flow.py:attribute"`` of the module-level flow built by
            :func:`campaign_flow`, from where workers run it (the builder's closure
            cannot be loaded by name). Needed to apply or serve the deployment.
        name: the deployment's name (default: the campaign's name).
        retry_delay: as :func:`campaign_flow`.
        **kwargs: passed to :meth:`prefect.Flow.to_deployment` (``work_pool_name``,
            ``parameters``...).

    Returns:
        The deployment (``.apply()`` registers it; ``prefect.serve(...)`` serves it).
    """
    spec = tasks.describe(campaign)
    for note in deployment_warnings(campaign):
        warnings.warn(note, PrefectFieldWarning, stacklevel=2)
    built = campaign_flow(campaign, retry_delay=retry_delay)
    schedule = Cron(
        spec.schedule.cron,
        timezone=spec.schedule.timezone,
        active=bool(getattr(spec.schedule, "enabled", True)),
    )
    kwargs.setdefault("tags", list(spec.tags))
    kwargs.setdefault("description", spec.description or None)
    deployment = RunnerDeployment.from_flow(
        built,
        name or spec.name,
        schedules=[schedule],
        concurrency_limit=spec.max_active_runs,
        **kwargs,
    )
    if entrypoint is not None:
        deployment.entrypoint = entrypoint
    return deployment
