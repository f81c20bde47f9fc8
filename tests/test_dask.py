"""Dask as the executor (``campaignkit[dask]``): a run's shards sent by tasks on a
``distributed`` LocalCluster (bound to 127.0.0.1, no dashboard), the ledger on the real
PostgreSQL server, the providers the loopback sandbox's fakes. The run's outcomes and
report are those of ``Pipeline.run()`` in one process; every message is sent once;
a task run twice sends nothing twice."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")

from campaignkit.integrations.dask import run_on_dask, work_task  # noqa: E402
from campaignkit.testing.sandbox import Sandbox  # noqa: E402
from test_run_steps import (  # noqa: E402
    CHANNELS,
    LOGICAL_DATE,
    comparable,
    received,
    run_in_process,
    write_campaign,
)
from test_workers import _configure, _fresh_schema  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@contextlib.contextmanager
def cluster() -> Iterator[distributed.Client]:
    """Two worker processes on 127.0.0.1 (they inherit this environment: the tokens)."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as local,
        distributed.Client(local) as client,
    ):
        yield client


def test_shards_sent_as_dask_tasks_give_the_run_of_one_process(
    tmp_path: Path, postgres_url: str
) -> None:
    whole, _, by_run = run_in_process(tmp_path / "whole")
    _fresh_schema(postgres_url)
    with Sandbox(providers=list(CHANNELS.values())) as box:
        config = write_campaign(tmp_path / "dask", box)
        _configure(config, ledger=postgres_url, shards=6)
        os.environ.update(box.env())
        with cluster() as client:
            date = datetime.fromisoformat(LOGICAL_DATE)
            report = run_on_dask(config, client, logical_date=date)
            assert comparable(report.to_dict()) == comparable(whole)
            assert received(box) == by_run and max(by_run.values()) == 1
            # A task run again (Dask retries a lost task) sends nothing more.
            again = client.submit(work_task, str(config), report.run_id, pure=False).result()
            assert again == report.run_id
            assert received(box) == by_run
