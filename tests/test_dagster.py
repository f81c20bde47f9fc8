"""The Dagster integration (``campaignkit[dagster]``): the example campaign as assets,
materialised with ``dagster.materialize()`` (Dagster's in-process executor, which honours
the assets' RetryPolicy) against the loopback sandbox (``CAMPAIGNKIT_SANDBOX=1``). The
ledger is the only truth: the assets' metadata is its counts, every message reaches the
fake provider once, a Dagster retry re-sends only what was owed, and a logical date the
CLI ran first sends nothing more."""

from __future__ import annotations

import collections
import re
import runpy
import shutil
import subprocess
import sys
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

dg = pytest.importorskip("dagster", reason="the dagster extra is not installed")

from campaignkit.integrations import tasks  # noqa: E402
from campaignkit.integrations.dagster import (  # noqa: E402
    CAMPAIGN_TAG,
    UnsupportedFieldWarning,
    definitions,
)

EXAMPLE = Path(__file__).parent.parent / "examples" / "multi_channel_campaign"
CHANNELS = {
    "email_campaign_results": ("email", "sendgrid"),
    "sms_campaign_results": ("sms", "twilio"),
    "push_notification_results": ("push", "expo"),
}
PARTITION = "2024-01-02"
NO_DELAY = timedelta(0)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox switch on (before anything is built), Dagster's telemetry off, and
    the process-wide fake Twilio reset: asked whether an in-doubt SMS arrived, it must
    not find another test's message to the same number."""
    monkeypatch.setenv("CAMPAIGNKIT_SANDBOX", "1")
    monkeypatch.setenv("DAGSTER_DISABLE_TELEMETRY", "1")
    tasks.sandbox().servers["twilio"].reset()


@pytest.fixture
def campaign(tmp_path: Path) -> Path:
    """A copy of the example campaign with a ledger of its own."""
    target = tmp_path / "campaign"
    ignore = shutil.ignore_patterns(".campaignkit", "campaignkit-results")
    shutil.copytree(EXAMPLE, target, ignore=ignore)
    return target / "campaign.toml"


def edited(config: Path, **replacements: str) -> Path:
    """``config`` with lines ``key = ...`` of the schedule and execution replaced."""
    lines = config.read_text().splitlines()
    for key, value in replacements.items():
        lines = [f"{key} = {value}" if line.startswith(f"{key} =") else line for line in lines]
        if not any(line.startswith(f"{key} =") for line in lines):
            index = lines.index("[schedule]")
            lines.insert(index + 1, f"{key} = {value}")
    config.write_text("\n".join(lines) + "\n")
    return config


def build(config: Path, **kwargs: Any) -> Any:
    """The definitions of ``config``, ignoring the expected max_active_runs warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "campaign .*max_active_runs", UnsupportedFieldWarning)
        return definitions(str(config), retry_delay=NO_DELAY, **kwargs)


def mark() -> dict[str, int]:
    """How many messages each fake provider has accepted so far in this process."""
    box = tasks.sandbox()
    return {provider: len(box.servers[provider].messages) for _, provider in CHANNELS.values()}


def arrived(since: dict[str, int]) -> collections.Counter[tuple[str, str]]:
    """The messages the fake providers accepted after ``since``, by (provider, to)."""
    box = tasks.sandbox()
    return collections.Counter(
        (provider, str(m["to"]))
        for provider, start in since.items()
        for m in box.servers[provider].messages[start:]
    )


def materialize(defs: Any, partition: str = PARTITION) -> Any:
    return dg.materialize(list(defs.assets), partition_key=partition, raise_on_error=False)


def metadata(result: Any, asset: str) -> dict[str, Any]:
    (event,) = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in event.metadata.items()}


def asset(defs: Any, name: str) -> Any:
    (found,) = [a for a in defs.assets if a.key == dg.AssetKey(name)]
    return found


def ledger_states(config: Path, run_id: str, channel: str) -> dict[str, int]:
    pipeline = tasks.sandbox().pipeline(config)
    return dict(collections.Counter(str(r.status) for r in pipeline.results(run_id, channel)))


# -- structure ---------------------------------------------------------------------------------
def test_assets_deps_retry_policy_schedule_and_partitions(campaign: Path) -> None:
    defs = build(campaign)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {"customer_segment_records", "campaign_run_report", *CHANNELS}
    segment = dg.AssetKey("customer_segment_records")
    for name in CHANNELS:
        assert graph.get(dg.AssetKey(name)).parent_keys == {segment}
        sending = asset(defs, name)
        assert sending.op.retry_policy == dg.RetryPolicy(max_retries=2, delay=0)
        assert sending.group_names_by_key[sending.key] == "multi_channel_marketing_campaign"
        assert "spring-sale" in sending.tags_by_key[sending.key]
    report = graph.get(dg.AssetKey("campaign_run_report"))
    assert report.parent_keys == {segment, *(dg.AssetKey(a) for a in CHANNELS)}

    job = defs.resolve_job_def("multi_channel_marketing_campaign")
    assert job.tags[CAMPAIGN_TAG] == "multi_channel_marketing_campaign"
    schedule = defs.resolve_schedule_def("multi_channel_marketing_campaign_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("@daily", "UTC")
    partitions = asset(defs, "customer_segment_records").partitions_def
    assert partitions.start == datetime(2024, 1, 1, tzinfo=UTC)
    assert partitions.get_first_partition_key() == "2024-01-01"


def test_a_key_prefix_keeps_the_graph(campaign: Path) -> None:
    graph = build(campaign, key_prefix="spring").resolve_asset_graph()
    segment = dg.AssetKey(["spring", "customer_segment_records"])
    report = graph.get(dg.AssetKey(["spring", "campaign_run_report"]))
    assert report.parent_keys == {segment, *(dg.AssetKey(["spring", a]) for a in CHANNELS)}
    assert graph.get(dg.AssetKey(["spring", "sms_campaign_results"])).parent_keys == {segment}


def test_production_retry_delay_is_the_campaigns(campaign: Path) -> None:
    with pytest.warns(UnsupportedFieldWarning, match="max_active_runs=1"):
        defs = definitions(str(campaign))
    assert asset(defs, "sms_campaign_results").op.retry_policy == dg.RetryPolicy(
        max_retries=2, delay=300
    )


@pytest.mark.parametrize(
    ("cron", "timezone", "first", "second"),
    [
        ('"0 6 * * *"', '"Europe/Paris"', "2024-01-01", datetime(2024, 1, 2, 5, tzinfo=UTC)),
        ('"@hourly"', '"UTC"', "2024-01-01-00:00", datetime(2024, 1, 1, 1, tzinfo=UTC)),
        ('"@weekly"', '"UTC"', "2024-01-07", datetime(2024, 1, 14, tzinfo=UTC)),
    ],
)
def test_partitions_follow_any_cron(
    campaign: Path, cron: str, timezone: str, first: str, second: datetime
) -> None:
    defs = build(edited(campaign, cron=cron, timezone=timezone))
    partitions = asset(defs, "sms_campaign_results").partitions_def
    keys = partitions.get_partition_keys(current_time=datetime(2024, 3, 1, tzinfo=UTC))
    assert keys[0] == first
    assert partitions.time_window_for_partition_key(keys[1]).start == second
    schedule = defs.resolve_schedule_def("multi_channel_marketing_campaign_schedule")
    assert schedule.cron_schedule == cron.strip('"')
    assert schedule.execution_timezone == timezone.strip('"')


def test_end_date_is_the_last_logical_date(campaign: Path) -> None:
    defs = build(edited(campaign, end_date="2024-01-10T12:00:00Z"))
    partitions = asset(defs, "email_campaign_results").partitions_def
    keys = partitions.get_partition_keys()
    assert (keys[0], keys[-1], len(keys)) == ("2024-01-01", "2024-01-10", 10)


def test_fields_dagster_cannot_express_warn(campaign: Path) -> None:
    config = edited(campaign, depends_on_past="true", catchup="true", max_lateness_minutes="30")
    with pytest.warns(UnsupportedFieldWarning) as caught:
        definitions(str(config))
    messages = "\n".join(str(w.message) for w in caught)
    for field in ("max_active_runs=1", "depends_on_past", "catchup", "max_lateness_minutes"):
        assert field in messages
    assert "tag_concurrency_limits" in messages


def test_no_warning_when_everything_maps(campaign: Path) -> None:
    config = edited(campaign, max_active_runs="1")
    text = config.read_text().replace("max_active_runs = 1\n", "")
    config.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedFieldWarning)
        definitions(str(config))


# -- materialisation against the sandbox ----------------------------------------------------------
def test_materialize_sends_each_message_once_and_shows_the_ledger(campaign: Path) -> None:
    defs = build(campaign)
    before = mark()
    result = materialize(defs)
    assert result.success
    opened = metadata(result, "customer_segment_records")
    assert opened["status"] == "opened"
    assert opened["logical_date"] == "2024-01-02T00:00:00+00:00"
    run_id = opened["run_id"]
    new = arrived(before)
    assert all(count == 1 for count in new.values())
    for asset, (channel, provider) in CHANNELS.items():
        shown = metadata(result, asset)
        states = ledger_states(campaign, run_id, channel)
        assert shown["run_id"] == run_id
        assert {s: shown[s] for s in states} == states
        assert sum(1 for p, _ in new if p == provider) == states["sent"]
        assert sum(shown["reasons"].values()) >= states.get("skipped", 0)
    assert metadata(result, "campaign_run_report")["status"] == "partial"
    # the same partition again replays the finished run: nothing more is sent
    again = materialize(defs)
    assert again.success
    assert metadata(again, "customer_segment_records")["status"] == "replay"
    assert arrived(before) == new


def test_a_provider_failing_first_succeeds_on_dagsters_retry(campaign: Path) -> None:
    defs = build(campaign)
    before = mark()
    tasks.sandbox().servers["twilio"].faults.fail_next(503, 503)
    result = materialize(defs, "2024-01-03")
    assert result.success
    restarts = [
        e
        for e in result.all_events
        if e.event_type_value == "STEP_RESTARTED" and e.step_key == "sms_campaign_results"
    ]
    assert restarts  # Dagster retried the SMS step: the fake Twilio refused twice
    new = arrived(before)
    sms = [to for provider, to in new if provider == "twilio"]
    assert all(count == 1 for count in new.values())
    run_id = metadata(result, "customer_segment_records")["run_id"]
    assert len(sms) == ledger_states(campaign, run_id, "sms")["sent"] > 0


def test_a_logical_date_the_cli_ran_sends_nothing_from_dagster(campaign: Path) -> None:
    command = [sys.executable, "-m", "campaignkit", "run", str(campaign), "--sandbox"]
    cli = subprocess.run(
        [*command, "--logical-date", "2024-01-04", "--retry-delay", "0", "-q"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert cli.returncode == 1, cli.stderr  # partial, as the README says
    before = mark()
    result = materialize(build(campaign), "2024-01-04")
    assert result.success
    assert metadata(result, "customer_segment_records")["status"] == "replay"
    assert mark() == before
    assert metadata(result, "campaign_run_report")["status"] == "partial"


def test_no_secret_in_metadata(campaign: Path) -> None:
    result = materialize(build(campaign), "2024-01-05")
    tokens = [v for k, v in tasks.sandbox().env().items() if k.endswith("TOKEN") and v]
    assert tokens
    shown = repr([e.event_specific_data for e in result.all_events])
    assert not any(token in shown for token in tokens)


# -- the documentation's examples ---------------------------------------------------------------
def snippet(marker: str) -> str:
    """The fenced block after ``<!-- doctest: marker -->`` in docs/dagster.md."""
    text = (Path(__file__).parent.parent / "docs" / "dagster.md").read_text()
    found = re.search(rf"<!-- doctest: {re.escape(marker)} -->\n```python\n(.*?)```", text, re.S)
    assert found, f"no doctest block {marker!r} in docs/dagster.md"
    return found.group(1)


def test_the_documented_code_location_and_the_example_load(campaign: Path) -> None:
    code = snippet("dagster-definitions")
    example = Path(__file__).parent.parent / "examples" / "dagster" / "definitions.py"
    (campaign.parent / "definitions.py").write_text(code)
    with pytest.warns(UnsupportedFieldWarning, match="max_active_runs"):
        documented = runpy.run_path(str(campaign.parent / "definitions.py"))
    with pytest.warns(UnsupportedFieldWarning, match="max_active_runs"):
        shipped = runpy.run_path(str(example))
    for namespace in (documented, shipped):
        job = namespace["defs"].resolve_job_def("multi_channel_marketing_campaign")
        assert len(job.asset_layer.executable_asset_keys) == 5


def test_the_documented_rehearsal_runs(
    campaign: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(campaign.parent)
    with pytest.warns(UnsupportedFieldWarning, match="max_active_runs"):
        exec(compile(snippet("dagster-rehearsal"), "docs/dagster.md", "exec"), {})
    assert capsys.readouterr().out.splitlines()[-1] == "True partial"


def test_an_error_a_retry_cannot_mend_fails_the_step_once(campaign: Path) -> None:
    defs = build(campaign)
    assets = list(defs.assets)
    with dg.instance_for_test() as instance:
        first = dg.materialize(
            assets, instance=instance, partition_key=PARTITION, selection="customer_segment_records"
        )
        assert first.success
        campaign.write_text(
            campaign.read_text().replace('provider = "twilio"', 'provider = "nope"')
        )
        sms = dg.materialize(
            assets,
            instance=instance,
            partition_key=PARTITION,
            selection="sms_campaign_results",
            raise_on_error=False,
        )
    assert not sms.success
    kinds = [e.event_type_value for e in sms.all_events if e.step_key == "sms_campaign_results"]
    assert "STEP_FAILURE" in kinds
    assert "STEP_RESTARTED" not in kinds and "STEP_UP_FOR_RETRY" not in kinds
    (failure,) = [e for e in sms.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "ConfigError" in failure.event_specific_data.error.message
