"""Prefect (``campaignkit[prefect]``): the example campaign as a real Prefect flow run on
a temporary Prefect server (one ``prefect_test_harness`` per session, on 127.0.0.1),
sending to the loopback sandbox (``CAMPAIGNKIT_SANDBOX=1``). Each message arrives once,
a provider failing first is retried by Prefect and sends nothing twice, a logical date
the CLI ran already sends nothing more, and the deployment carries the schedule."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import pytest

# Before Prefect reads its settings: state in a temporary home, no analytics, and a
# generous start-up timeout for its temporary server (5-12 s on a loaded 2-core box).
if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="ck-prefect-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

prefect = pytest.importorskip("prefect", reason="the prefect extra is not installed")

from prefect import Flow, get_client  # noqa: E402
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId  # noqa: E402
from prefect.client.schemas.objects import State, TaskRun  # noqa: E402
from prefect.client.schemas.schedules import CronSchedule  # noqa: E402
from prefect.flows import load_flow_from_entrypoint  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from campaignkit.integrations import tasks  # noqa: E402
from campaignkit.integrations.prefect import (  # noqa: E402
    CampaignFlowError,
    PrefectFieldWarning,
    campaign_deployment,
    campaign_flow,
)

EXAMPLE = Path(__file__).parent.parent / "examples" / "multi_channel_campaign"
PROVIDERS = {"email": "sendgrid", "sms": "twilio", "push": "expo"}
RESULTS = {
    "email": "email_campaign_results",
    "sms": "sms_campaign_results",
    "push": "push_notification_results",
}
CLI_DATE = ("--logical-date", "2024-01-04", "--retry-delay", "0", "--json")
#: how many messages each fake provider held when the test began (the sandbox is process-wide)
BASELINE: dict[str, int] = {}
pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect server (SQLite in PREFECT_HOME) for the whole session."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def campaign(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The example campaign copied to ``tmp_path`` (its rehearsal ledger is fresh), the
    sandbox switch on, no fault left scripted and what the fake providers hold noted."""
    monkeypatch.setenv("CAMPAIGNKIT_SANDBOX", "1")
    # Never a developer's state: the example's own ledger and runs stay behind.
    leave = shutil.ignore_patterns(".campaignkit", "campaignkit-results")
    shutil.copytree(EXAMPLE, tmp_path / "campaign", ignore=leave)
    sandbox = tasks.sandbox()
    assert sandbox is not None
    for provider in PROVIDERS.values():
        server = sandbox.servers[provider]
        if hasattr(server, "reset"):
            # Fake Twilio answers "was this sent?" lookups (after a 503) from what it
            # holds: an earlier test's message to the same number would answer yes.
            server.reset()
        server.faults.script.clear()
        BASELINE[provider] = len(server.messages)
    return str(tmp_path / "campaign" / "campaign.toml")


def arrived(provider: str) -> list[dict[str, Any]]:
    """What the fake provider accepted since the test began."""
    sandbox = tasks.sandbox()
    assert sandbox is not None
    return list(sandbox.servers[provider].messages[BASELINE[provider] :])


def run(campaign: str, day: int) -> State[Any]:
    """A Prefect flow run of the campaign for 2024-01-``day``, with no retry delay."""
    flow = campaign_flow(campaign, retry_delay=timedelta(0))
    state = flow(logical_date=datetime(2024, 1, day, tzinfo=UTC), return_state=True)
    return cast("State[Any]", state)


def task_runs(campaign: str, state: State[Any]) -> dict[str, list[TaskRun]]:
    """The task runs of a finished flow run by task name, as the Prefect server recorded
    them. Task run states reach the server as events, a little after the flow returns:
    wait (at most 30 s) until the server has every task run of the flow finished."""
    spec = tasks.describe(campaign)
    expected = 2 + len(spec.channels) * (spec.shards + 1)  # open, sends, results, finish
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            found = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            done = [t for t in found if t.state is not None and t.state.is_final()]
            if len(done) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    named: dict[str, list[TaskRun]] = {}
    for run_ in done:
        named.setdefault(run_.name.rsplit("-", 1)[0], []).append(run_)
    return named


def test_flow_run_sends_each_message_once_and_publishes_the_ledger_counts(
    campaign: str,
) -> None:
    config = Path(campaign)
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[execution]\n", "[execution]\nshards = 2\n"), encoding="utf-8")
    assert tasks.describe(campaign).shards == 2
    state = run(campaign, 2)
    assert state.is_completed()
    out = state.result()
    assert out["run"]["status"] == "partial"  # the sample segment holds refused addresses
    for channel, provider in PROVIDERS.items():
        results = out["results"][RESULTS[channel]]
        assert results == tasks.channel_results(campaign, out["run"]["run_id"], channel)
        assert results["states"]["sent"] == len(arrived(provider)) > 0
    recipients = Counter(m["to"] for m in arrived("twilio"))
    assert recipients.most_common(1)[0][1] == 1
    names = {name: len(runs) for name, runs in task_runs(campaign, state).items()}
    shards = 2
    assert names == {
        "load_customer_segment_csv": 1,
        "send_email_campaign": shards,
        "send_sms_campaign": shards,
        "send_push_notification": shards,
        "email_campaign_results": 1,
        "sms_campaign_results": 1,
        "push_notification_results": 1,
        "finish_run": 1,
    }


def test_a_provider_failing_first_is_retried_by_prefect_and_sends_each_message_once(
    campaign: str,
) -> None:
    sandbox = tasks.sandbox()
    assert sandbox is not None
    sandbox.servers["twilio"].faults.fail_next(503, 503)
    state = run(campaign, 3)
    assert state.is_completed()
    sms = state.result()["results"]["sms_campaign_results"]
    numbers = [m["to"] for m in arrived("twilio")]
    assert len(numbers) == len(set(numbers)) == sms["states"]["sent"] > 0
    retried = task_runs(campaign, state)["send_sms_campaign"]
    assert max(t.run_count for t in retried) >= 2  # Prefect's retry, not campaignkit's


def test_a_provider_failing_past_the_retries_fails_the_flow_but_records_the_run(
    campaign: str,
) -> None:
    sandbox = tasks.sandbox()
    assert sandbox is not None
    sandbox.servers["twilio"].faults.fail_next(*[503] * 1000)
    state = run(campaign, 5)
    assert state.is_failed()
    with pytest.raises(CampaignFlowError, match="sms shard"):
        state.result()
    names = task_runs(campaign, state)
    for name in ("finish_run", "email_campaign_results", "sms_campaign_results"):
        [task_run] = names[name]
        assert task_run.state is not None and task_run.state.is_completed(), name
    assert all(t.state and t.state.is_failed() for t in names["send_sms_campaign"])
    assert len(arrived("sendgrid")) > 0 and arrived("twilio") == []


def test_a_logical_date_the_cli_ran_sends_nothing_more(campaign: str) -> None:
    cli = subprocess.run(
        [sys.executable, "-m", "campaignkit", "run", campaign, "--sandbox", *CLI_DATE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 1, cli.stderr  # partial, as the README says
    state = run(campaign, 4)
    assert state.is_completed()
    out = state.result()
    assert all(arrived(provider) == [] for provider in PROVIDERS.values())
    assert out["results"]["sms_campaign_results"]["states"]["sent"] > 0  # the CLI's sends


def test_the_deployment_carries_the_schedule_and_the_concurrency_limit(campaign: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrefectFieldWarning)
        deployment = campaign_deployment(campaign, entrypoint="flow.py:flow")
    assert deployment.name == "multi_channel_marketing_campaign"
    assert deployment.entrypoint == "flow.py:flow"
    assert deployment.schedules is not None
    [schedule] = deployment.schedules
    assert isinstance(schedule.schedule, CronSchedule)
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("@daily", "UTC")
    assert schedule.active
    limit = deployment.concurrency_limit
    assert limit == 1 or getattr(limit, "limit", None) == 1
    deployment_id = deployment.apply()
    assert isinstance(deployment_id, UUID)
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(deployment_id)
    assert [s.schedule.cron for s in stored.schedules] == ["@daily"]  # type: ignore[union-attr]
    assert "marketing" in (stored.tags or [])


def test_fields_prefect_cannot_express_warn_when_the_deployment_is_built(campaign: str) -> None:
    config = Path(campaign)
    text = config.read_text(encoding="utf-8")
    text = text.replace("start_date = 2024-01-01T00:00:00Z", "start_date = 2999-01-01T00:00:00Z")
    text = text.replace("catchup = false", "catchup = true\nend_date = 2999-12-31T00:00:00Z")
    text = text.replace("depends_on_past = false", "depends_on_past = true")
    config.write_text(text, encoding="utf-8")
    with pytest.warns(PrefectFieldWarning) as caught:
        campaign_deployment(campaign)
    said = " ".join(str(w.message) for w in caught)
    for field in ("start_date", "end_date", "catchup", "depends_on_past"):
        assert field in said


def test_without_a_logical_date_the_flow_takes_the_latest_complete_interval(
    campaign: str,
) -> None:
    flow = campaign_flow(campaign, retry_delay=timedelta(0))
    state = cast("State[Any]", flow(return_state=True))
    assert state.is_completed()
    expected = tasks.logical_date(campaign, datetime.now(UTC))
    assert state.result()["run"]["run_id"].endswith(expected.strftime("%Y%m%dT%H%M%SZ"))


def test_a_worker_loads_the_example_flow_from_its_entrypoint() -> None:
    example = Path(__file__).parent.parent / "examples" / "prefect" / "flow.py"
    loaded: Flow[..., Any] = load_flow_from_entrypoint(f"{example}:flow")
    assert loaded.name == "multi_channel_marketing_campaign"
    assert set(loaded.parameters.properties) == {"logical_date"}
