"""Hostile tests of workers sharing a PostgreSQL ledger (issue 12): the CLI's
``[execution] workers = N`` and ``campaignkit worker`` on the real path (real
PostgreSQL, worker processes, the loopback sandbox), under what users do to them:
quiet hours, interrupts, crashes, resumes while workers live, a missing token.

Each test says the claim it attacks; a test of a bug not fixed here is skipped with
a reason that starts with ``BUG:``.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from campaignkit._ledger import PostgresLedger
from campaignkit._models import DeliveryStatus
from campaignkit.testing.sandbox import Sandbox
from test_run_steps import CHANNELS, LOGICAL_DATE, received, write_campaign
from test_workers import (
    _assert_once_and_nothing_skipped,
    _configure,
    _fresh_schema,
    _opened,
    _tokens,
    _worker,
    ledger_env,
    pipeline_of,
    sandbox,
)

__all__ = ["ledger_env", "sandbox"]  # fixtures, used by name

pytestmark = pytest.mark.timeout(300)


def _cli(
    config: Path, box: Sandbox, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> tuple[int | None, str]:
    """``campaignkit ARGS`` in a session of its own; ``(None, output)`` if it did not
    end within ``timeout`` (then it and the workers it started are killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignkit", *args],
        cwd=config.parent,
        env=env if env is not None else {**os.environ, **box.env(), "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return None, proc.communicate()[0]
    return proc.returncode, out


def _states(config: Path, box: Sandbox, run_id: str) -> collections.Counter[DeliveryStatus]:
    return collections.Counter(r.status for r in pipeline_of(config, box).results(run_id))


def _latest_run(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT run_id FROM campaignkit.runs ORDER BY id DESC LIMIT 1")
        found = row.fetchone()
    assert found is not None
    return str(found[0])


def _quiet_now(config: Path, channel: str) -> None:
    """Quiet hours on ``channel`` that hold every recipient for hours from now."""
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=3))
    table = (
        f"\n[channels.{channel}.quiet_hours]\n"
        f'start = "{start}"\nend = "{end.strftime("%H:%M")}"\ntimezone = "UTC"\n'
    )
    text = config.read_text()
    marker = f"[channels.{channel}.template]"
    config.write_text(text.replace(marker, table.lstrip() + "\n" + marker))


def test_quiet_hours_do_not_keep_the_workers_waiting(
    tmp_path: Path, sandbox: Sandbox, ledger_env: str
) -> None:
    """``campaignkit run`` with workers and a channel in quiet hours: as with one
    process, the run ends with the held messages ``deferred`` (a resume sends them
    later); the workers do not wait hours for the window to end."""
    _fresh_schema(ledger_env)
    config = write_campaign(tmp_path / "pg", sandbox)
    _configure(config, workers=2, shards=4)
    _quiet_now(config, "sms")
    code, out = _cli(config, sandbox, "run", str(config), "--logical-date", LOGICAL_DATE, timeout=60)
    assert code is not None, "the run was still waiting after 60 s:\n" + out[-3000:]
    assert code in (0, 1), out
    states = _states(config, sandbox, _latest_run(ledger_env))
    assert states[DeliveryStatus.DEFERRED] > 0, states
    assert not states[DeliveryStatus.PENDING] and not states[DeliveryStatus.IN_FLIGHT], states
    assert max(received(sandbox).values()) == 1
