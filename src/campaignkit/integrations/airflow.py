"""A campaign as an Airflow 3 DAG (``pip install 'campaignkit[airflow]'``).

:func:`to_dag` turns a campaign (a TOML path or an import reference
``"package.module:attribute"``) into a DAG built with ``airflow.sdk``::

    # dags/spring_sale.py
    from campaignkit.integrations.airflow import to_dag

    dag = to_dag("/opt/campaigns/spring_sale.toml", ledger_conn_id="campaignkit_ledger")

The DAG's tasks are the steps of :mod:`campaignkit.integrations.tasks`::

    load_customer_segment_csv            opens the run for Airflow's logical date (counts only)
      -> send_email_campaign[0..n)       one mapped task instance per shard of the channel
      -> email_campaign_results          the channel's outcomes, read from the ledger
      ... (the same for every channel, in parallel)
      -> finish_campaign_run             records the run's status (trigger rule ``all_done``)

The ledger is the only truth: an Airflow retry, a cleared task or the same logical date
run by ``campaignkit run`` sends only what the ledger says is still owed. Every task
process re-imports the DAG file, so building the DAG reads the campaign's configuration
and nothing else, and two builds give the same DAG.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from airflow.sdk import DAG, Connection, TriggerRule, XComArg, get_current_context, task, timezone
from airflow.sdk.definitions.xcom_arg import PlainXComArg

try:
    from airflow.sdk import CronDataIntervalTimetable
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 3.1: these are airflow-core's
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef,unused-ignore]
    from airflow.timetables.interval import (  # type: ignore[assignment,unused-ignore]
        CronDataIntervalTimetable,
    )

from campaignkit.exceptions import (
    AudienceGuardError,
    ConfigError,
    PluginError,
    SourceError,
    TemplateError,
)
from campaignkit.integrations import tasks
from campaignkit.integrations.tasks import PipelineSpec

__all__ = ["FINISH_TASK", "LEDGER_URL_ENV", "to_dag"]

#: The id of the task that records the run's final status.
FINISH_TASK = "finish_campaign_run"
#: The environment variable a task sets to the ledger URL of ``ledger_conn_id``.
LEDGER_URL_ENV = "CAMPAIGNKIT_LEDGER_URL"
#: Errors that another attempt cannot fix: the task fails without Airflow's retries.
_FINAL_ERRORS = (AudienceGuardError, ConfigError, PluginError, SourceError, TemplateError)
#: Task instance states that mean a channel's send did not finish.
_FAILED_STATES = ["failed", "upstream_failed"]


def to_dag(campaign: str, *, ledger_conn_id: str | None = None, **overrides: Any) -> DAG:
    """The DAG of ``campaign``, with its schedule, retries and limits.

    Args:
        campaign: a campaign TOML path or an import reference
            ``"package.module:attribute"`` (task processes re-import it).
        ledger_conn_id: an Airflow connection whose URI (``postgresql://``) is the
            ledger's URL; it is read when a task runs, never at parse time, and set
            as ``CAMPAIGNKIT_LEDGER_URL`` for that task only. Default: the
            environment's ``CAMPAIGNKIT_LEDGER_URL``, else the campaign's config.
        **overrides: any ``DAG`` keyword argument (``dag_id``, ``schedule``...), plus
            ``retries`` and ``retry_delay`` (a ``timedelta``) for every task.

    Returns:
        The DAG; its id is the campaign's name unless ``dag_id`` is overridden.

    Raises:
        ConfigError: the campaign's configuration is invalid.
    """
    spec = tasks.describe(campaign)
    default_args = {
        "owner": spec.owner,
        "depends_on_past": spec.depends_on_past,
        "retries": overrides.pop("retries", spec.retries),
        "retry_delay": overrides.pop("retry_delay", spec.retry_delay),
    }
    default_args.update(overrides.pop("default_args", {}))
    arguments = _dag_arguments(spec, campaign) | {"default_args": default_args} | overrides
    with DAG(**arguments) as dag:
        _add_tasks(spec, campaign, ledger_conn_id)
    return dag


def _dag_arguments(spec: PipelineSpec, campaign: str) -> dict[str, Any]:
    """The ``DAG`` keyword arguments that the campaign's spec decides.

    The schedule is a ``CronDataIntervalTimetable``: a logical date is the start of its
    interval, as campaignkit's is (Airflow 3's default for a cron string would make it
    the fire time, a day later with ``@daily``, and the CLI and Airflow would then take
    the same day for two different runs).
    """
    schedule = spec.schedule
    arguments: dict[str, Any] = {
        "dag_id": spec.name,
        "description": spec.description or None,
        "doc_md": _doc_md(spec, campaign),
        "schedule": CronDataIntervalTimetable(schedule.cron, timezone=schedule.timezone),
        "start_date": _in_zone(schedule.start_date, schedule.timezone),
        "end_date": _in_zone(schedule.end_date, schedule.timezone),
        "catchup": schedule.catchup,
        "dagrun_timeout": spec.timeout,
        "tags": list(spec.tags),
    }
    if spec.max_active_runs is not None:
        arguments["max_active_runs"] = spec.max_active_runs
    return arguments


def _in_zone(moment: datetime | None, zone: str) -> datetime | None:
    """``moment`` as a pendulum date in the campaign's time zone (Airflow's DAG zone)."""
    if moment is None:
        return None
    zoned: datetime = timezone.coerce_datetime(moment).in_timezone(zone)
    return zoned


def _doc_md(spec: PipelineSpec, campaign: str) -> str:
    """The DAG's documentation in the Airflow UI: what the campaign is and sends."""
    channels = ", ".join(channel.name for channel in spec.channels)
    lines = [
        f"# {spec.name}",
        "",
        spec.description,
        "",
        f"- campaign: `{campaign}`",
        f"- channels: {channels} ({spec.shards} shards each)",
        f"- owner: {spec.owner}",
        "",
        "Built by `campaignkit.integrations.airflow.to_dag`; the campaignkit ledger is the "
        "record of every recipient's outcome.",
    ]
    return "\n".join(lines)


def _add_tasks(spec: PipelineSpec, campaign: str, conn_id: str | None) -> None:
    """Add the run's tasks to the DAG being defined."""
    extract = task(task_id=spec.extract_task, multiple_outputs=True)(_open_run)
    opened = cast(PlainXComArg, extract(campaign=campaign, conn_id=conn_id, shards=spec.shards))
    campaign_run = opened["run_id"]
    common: dict[str, Any] = {
        "campaign": campaign,
        "conn_id": conn_id,
        "campaign_run": campaign_run,
    }
    results: list[XComArg] = []
    for channel in spec.channels:
        send = task(task_id=channel.send_task, max_active_tis_per_dagrun=spec.parallel_shards)
        sent = (
            send(_send_shard)
            .partial(**common, status=opened["status"], channel=channel.name, shards=spec.shards)
            .expand(shard=list(range(spec.shards)))
        )
        publish = task(task_id=channel.results_key, trigger_rule=TriggerRule.ALL_DONE)
        published = publish(_channel_results)(**common, channel=channel.name)
        sent >> published
        results.append(published)
    finish = task(task_id=FINISH_TASK, trigger_rule=TriggerRule.ALL_DONE)(_finish_run)
    send_tasks = [channel.send_task for channel in spec.channels]
    results >> finish(**common, send_tasks=send_tasks)


@contextlib.contextmanager
def _ledger_env(conn_id: str | None) -> Iterator[None]:
    """Within: ``CAMPAIGNKIT_LEDGER_URL`` is the URI of connection ``conn_id`` (if any)."""
    if conn_id is None:
        yield
        return
    uri = Connection.get(conn_id).get_uri()
    if uri.startswith("postgres://"):
        uri = "postgresql://" + uri.removeprefix("postgres://")
    previous = os.environ.get(LEDGER_URL_ENV)
    os.environ[LEDGER_URL_ENV] = uri
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(LEDGER_URL_ENV, None)
        else:
            os.environ[LEDGER_URL_ENV] = previous


@contextlib.contextmanager
def _step(conn_id: str | None) -> Iterator[None]:
    """Run a campaignkit step: the ledger of ``conn_id``; final errors skip retries."""
    with _ledger_env(conn_id):
        try:
            yield
        except _FINAL_ERRORS as error:
            raise AirflowFailException(f"{type(error).__name__}: {error}") from None


def _logical_date(campaign: str, context: Mapping[str, Any]) -> datetime:
    """The campaign's logical date: Airflow's; for a run without one (a manual trigger),
    the latest complete interval when it was triggered, by campaignkit's rule (as
    ``campaignkit run`` takes it: the same trigger twice is the same run, never a
    second send)."""
    moment = context.get("logical_date")
    if moment is None:
        run_after = getattr(context.get("dag_run"), "run_after", None) or datetime.now(UTC)
        return tasks.logical_date(campaign, run_after)
    return datetime.fromtimestamp(moment.timestamp(), UTC)


def _open_run(campaign: str, conn_id: str | None, shards: int) -> dict[str, Any]:
    """Open (or take up, or replay) the run of this logical date; counts only.

    Raises:
        AirflowFailException: the run has a shard beyond the DAG's ``shards`` mapped
            send task instances (the campaign changed since the DAG was parsed).
    """
    logical_date = _logical_date(campaign, get_current_context())
    with _step(conn_id):
        opened = tasks.open_run(campaign, logical_date)
    for channel, numbers in opened["shards"].items():
        if any(not 0 <= number < shards for number in numbers):
            raise AirflowFailException(
                f"channel {channel} has shards {numbers}, the DAG maps {shards}: re-parse the DAG"
            )
    return opened


def _send_shard(
    campaign: str,
    conn_id: str | None,
    campaign_run: str,
    status: str,
    channel: str,
    shards: int,
    shard: int,
) -> dict[str, Any]:
    """Send what shard ``shard`` of ``channel`` still owes (``ShardIncomplete``: retry);
    nothing when the extract task replayed a finished run (as the CLI does)."""
    if status == "replay":
        return {"run_id": campaign_run, "channel": channel, "shard": shard, "replay": True}
    with _step(conn_id):
        return tasks.send_shard(campaign, campaign_run, channel, shard, shards)


def _channel_results(
    campaign: str, conn_id: str | None, campaign_run: str, channel: str
) -> dict[str, Any]:
    """The outcomes of ``channel`` in the run, read from the ledger."""
    with _step(conn_id):
        return tasks.channel_results(campaign, campaign_run, channel)


def _finish_run(
    campaign: str, conn_id: str | None, campaign_run: str, send_tasks: list[str]
) -> dict[str, Any]:
    """Record the run's final status; fail if it failed or a channel's send did not finish.

    Raises:
        AirflowFailException: the run failed, or a send task failed for good.
    """
    with _step(conn_id):
        finished = tasks.finish_run(campaign, campaign_run)
    ti = get_current_context()["ti"]
    unfinished = ti.get_ti_count(
        dag_id=ti.dag_id, task_ids=send_tasks, run_ids=[ti.run_id], states=_FAILED_STATES
    )
    if finished["status"] == "failed" or unfinished:
        raise AirflowFailException(
            f"campaign run {campaign_run} is {finished['status']}; "
            f"{unfinished} send task instance(s) did not finish"
        )
    return finished
