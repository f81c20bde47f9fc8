"""Dask as the executor of a campaign's send step (``pip install 'campaignkit[dask]'``).

:func:`run_on_dask` runs a campaign whose ledger is PostgreSQL with its shards sent as
tasks on a ``distributed`` cluster::

    from distributed import Client
    from campaignkit.integrations.dask import run_on_dask

    with Client("tcp://scheduler:8786") as client:
        report = run_on_dask("campaign.toml", client)

This process opens the run (checks, extraction, snapshot) and decides every channel's
audience, as :meth:`Pipeline.run` does; it splits each channel into shards, then submits
``tasks`` tasks, each one a worker (:meth:`Pipeline.work`) that leases shards until
nothing is left to lease, in the cluster's worker processes. When they are done it takes
over anything a lost task left (its leases expire) and writes the report. The ledger is
the only truth: a task that Dask retries or runs twice sends nothing twice, since every
send is leased and fenced. Retry delays stay in campaignkit (each send's retry rounds,
in the task that sent it): Dask has none.

A task re-reads the campaign file (``campaign`` is its path: a live object is never
shipped to the cluster) and the providers' tokens from its worker's environment.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distributed import Client, wait

from .._models import RunReport
from .._pipeline import Pipeline
from .._plugins import get_plugin_manager
from .._schedule import manual_logical_date

__all__ = ["run_on_dask", "work_task"]


def _pipeline(campaign: str | os.PathLike[str]) -> Pipeline:
    """The campaign of file ``campaign``, never a rehearsal: workers need the shared
    PostgreSQL ledger (a rehearsal with the sandbox runs in one process)."""
    return Pipeline.from_file(Path(campaign), plugins=get_plugin_manager(), rehearsal=False)


def work_task(campaign: str, run_id: str, channels: list[str] | None = None) -> str | None:
    """One worker of run ``run_id`` as a Dask task: lease shards and send them until
    nothing is left to lease now; returns the run worked on."""
    return _pipeline(campaign).work(run_id, channels=channels, until_idle=True)


def run_on_dask(
    campaign: str | os.PathLike[str],
    client: Client,
    *,
    logical_date: datetime | None = None,
    force: bool = False,
    tasks: int | None = None,
    output_dir: str | Path | None = None,
) -> RunReport:
    """Run the campaign of file ``campaign`` for ``logical_date`` (default: the latest
    complete schedule interval) with its shards sent by ``tasks`` Dask tasks (default:
    ``execution.workers``, at least the cluster's worker count).

    Raises:
        ConfigError: the ledger is not PostgreSQL (see :meth:`Pipeline.work`).
        As :meth:`Pipeline.run` before anything is sent.
    """
    pipeline = _pipeline(campaign)
    opened = pipeline.open_run(
        logical_date=logical_date or manual_logical_date(pipeline.schedule, datetime.now(UTC)),
        force=force,
        output_dir=output_dir,
    )
    if opened.replay is not None:
        return opened.replay
    run_id = opened.run_id
    for channel in pipeline.enabled_channels:
        pipeline.plan_channel(run_id, channel.name)
    count = tasks or max(pipeline.execution.workers, len(client.scheduler_info()["workers"]))
    pipeline.shard_channels(run_id, workers=count)
    path = str(Path(campaign).resolve())
    futures: list[Any] = [
        client.submit(work_task, path, run_id, pure=False, retries=0) for _ in range(count)
    ]
    wait(futures)  # a task that failed or was lost leaves leases that expire
    pipeline.work(run_id)  # what a lost task left, once its leases expire
    return pipeline.finish_run(run_id, output_dir=output_dir)
