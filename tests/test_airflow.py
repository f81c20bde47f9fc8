"""Airflow 3 (``campaignkit[airflow]``): a campaign as a DAG, run by Airflow itself.

The DAGs run with ``dag.test()`` (every task in this process, on a private SQLite
metadata database) against the campaignkit loopback sandbox (``CAMPAIGNKIT_SANDBOX=1``):
the fake providers count what arrives, the rehearsal ledger is the truth. Airflow reads
its configuration when it is first imported, so this module points it at a private
``AIRFLOW_HOME`` before that (never at a developer's real Airflow).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("airflow") is None:
    pytest.skip("the airflow extra is not installed", allow_module_level=True)

_HOME = Path(tempfile.mkdtemp(prefix="campaignkit-airflow-"))
AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(_HOME / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
}
os.environ.update(AIRFLOW_ENV)

airflow = pytest.importorskip("airflow", reason="the airflow extra is not installed")

with warnings.catch_warnings():
    # Airflow 3.1 imports its own deprecated names (DeprecatedImportWarning).
    warnings.filterwarnings("ignore", "The `airflow", FutureWarning)
    try:
        from airflow.sdk import CronDataIntervalTimetable
    except ImportError:  # Airflow 3.1: the timetables are airflow-core's
        from airflow.timetables.interval import (  # type: ignore[assignment]
            CronDataIntervalTimetable,
        )

    from campaignkit.integrations import tasks
    from campaignkit.integrations.airflow import FINISH_TASK, to_dag

pytestmark = [
    pytest.mark.timeout(300),
    # Airflow's own dependency stack warns on import (not campaignkit's code).
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
    pytest.mark.filterwarnings("ignore:The `airflow:FutureWarning"),  # Airflow 3.1's own
]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EXAMPLE_CAMPAIGN = EXAMPLES / "multi_channel_campaign" / "campaign.toml"
DAY = datetime(2024, 1, 2, tzinfo=UTC)
SENDS = {
    "email": ("send_email_campaign", "email_campaign_results", "sendgrid"),
    "sms": ("send_sms_campaign", "sms_campaign_results", "twilio"),
    "push": ("send_push_notification", "push_notification_results", "expo"),
}


@pytest.fixture(scope="module", autouse=True)
def metadata_db() -> Iterator[None]:
    """Airflow's metadata database (SQLite in the private home), migrated once."""
    (_HOME / "dags").mkdir(exist_ok=True)
    env = {**os.environ, **AIRFLOW_ENV}
    airflow_cli = Path(sys.executable).with_name("airflow")
    subprocess.run([airflow_cli, "db", "migrate"], env=env, check=True, capture_output=True)
    yield
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture
def sandbox_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The campaignkit sandbox switch on, for this test only."""
    monkeypatch.setenv("CAMPAIGNKIT_SANDBOX", "1")


def campaign_copy(tmp_path: Path, **execution: Any) -> Path:
    """The example campaign copied under ``tmp_path`` (its own rehearsal state), with
    ``execution`` keys added (``shards=2``)."""
    target = tmp_path / "campaign"
    shutil.copytree(EXAMPLE_CAMPAIGN.parent, target, ignore=shutil.ignore_patterns(".campaignkit"))
    config = target / "campaign.toml"
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in execution.items())
    config.write_text(config.read_text().replace("[execution]\n", "[execution]\n" + lines))
    return config


def dag_file(config: Path | str, dag_id: str, **arguments: str) -> Any:
    """A DAG file in the DAGs folder (``dag.test()`` needs it there), imported."""
    path = _HOME / "dags" / f"{dag_id}.py"
    extra = "".join(f", {key}={value!r}" for key, value in arguments.items())
    path.write_text(
        "from datetime import timedelta\n"
        "from campaignkit.integrations.airflow import to_dag\n"
        f"dag = to_dag({str(config)!r}, dag_id={dag_id!r}, retry_delay=timedelta(0){extra})\n"
    )
    namespace: dict[str, Any] = {"__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace["dag"]


def return_values(run: Any) -> dict[str, Any]:
    """Every task's return value in DAG run ``run``: ``{task_id: value}`` (mapped:
    ``{task_id: {map_index: value}}``)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    values: dict[str, Any] = {}
    with create_session() as session:
        query = XComModel.get_many(run_id=run.run_id, key="return_value", dag_ids=run.dag_id)
        for row in session.scalars(query):
            value = XComModel.deserialize_value(row)
            if row.map_index < 0:
                values[row.task_id] = value
            else:
                values.setdefault(row.task_id, {})[row.map_index] = value
    return values


def tries(run: Any, task_id: str) -> list[int]:
    """The try numbers of ``task_id``'s instances in ``run``."""
    return [ti.try_number for ti in run.get_task_instances() if ti.task_id == task_id]


def arrived(provider: str, since: int = 0) -> Counter[str]:
    """Messages the sandbox's fake ``provider`` accepted (after the first ``since``),
    per recipient."""
    messages = tasks.sandbox().servers[provider].messages[since:]
    return Counter(str(message["to"]) for message in messages)


def counts() -> dict[str, int]:
    """How many messages each fake provider has accepted so far in this process."""
    return {
        provider: len(tasks.sandbox().servers[provider].messages) for *_, provider in SENDS.values()
    }


# -- parsing -------------------------------------------------------------------------------


def test_the_example_dags_folder_imports_without_errors() -> None:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.0/3.1
        from airflow.models.dagbag import DagBag

    bag = DagBag(dag_folder=EXAMPLES / "airflow" / "dags")
    assert bag.import_errors == {}
    assert list(bag.dag_ids) == ["multi_channel_marketing_campaign"]


def test_the_dag_has_the_campaigns_tasks_and_arguments() -> None:
    dag = to_dag(str(EXAMPLE_CAMPAIGN))
    spec = tasks.describe(str(EXAMPLE_CAMPAIGN))
    extract = "load_customer_segment_csv"
    assert dag.dag_id == "multi_channel_marketing_campaign"
    assert set(dag.task_ids) == {extract, FINISH_TASK}.union(*(s[:2] for s in SENDS.values()))
    for send, results, _ in SENDS.values():
        assert dag.get_task(extract).downstream_task_ids >= {send, results}
        assert dag.get_task(send).downstream_task_ids == {results}
        assert dag.get_task(results).downstream_task_ids == {FINISH_TASK}
        assert dag.get_task(send).max_active_tis_per_dagrun == spec.parallel_shards
        assert dag.get_task(results).trigger_rule == "all_done"
    assert dag.get_task(FINISH_TASK).trigger_rule == "all_done"
    assert dag.get_task(FINISH_TASK).downstream_task_ids == set()
    # A logical date is the start of its interval, as campaignkit's (and the CLI's) is.
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    timetable = dag.timetable
    expression = getattr(timetable, "expression", None) or timetable._expression  # 3.1: core's
    timezone = getattr(timetable, "timezone", None) or timetable._timezone
    assert (expression, str(timezone)) == ("0 0 * * *", "UTC")
    assert dag.start_date == datetime(2024, 1, 1, tzinfo=UTC)
    assert dag.timezone.name == "UTC"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.tags == {"marketing", "spring-sale", "email", "sms", "push"}
    assert dag.description == spec.description
    for task in dag.tasks:
        assert (task.owner, task.retries) == (spec.owner, 2)
        assert task.retry_delay == timedelta(minutes=5)
        assert task.depends_on_past is False


def test_overrides_reach_the_dag_and_every_task() -> None:
    dag = to_dag(
        str(EXAMPLE_CAMPAIGN),
        dag_id="canary",
        retries=0,
        retry_delay=timedelta(0),
        catchup=True,
        tags=["canary"],
    )
    assert (dag.dag_id, dag.catchup, dag.tags) == ("canary", True, {"canary"})
    assert {(task.retries, task.retry_delay) for task in dag.tasks} == {(0, timedelta(0))}


_SERIALISE = """
import json, sys
from airflow.serialization.serialized_objects import DagSerialization
from campaignkit.integrations.airflow import to_dag
dag = to_dag(sys.argv[1])
print(json.dumps(DagSerialization.to_dict(dag), sort_keys=True, default=str))
"""


def test_two_processes_build_the_same_serialised_dag() -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    command = [sys.executable, "-c", _SERIALISE, str(EXAMPLE_CAMPAIGN)]
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    other = subprocess.run(command, env=env, capture_output=True, check=False, timeout=120)
    assert other.returncode == 0, other.stderr.decode()[-2000:]
    here = DagSerialization.to_dict(to_dag(str(EXAMPLE_CAMPAIGN)))
    mine = json.loads(json.dumps(here, sort_keys=True, default=str))
    theirs = json.loads(other.stdout)
    assert theirs["dag"]["dag_id"] == "multi_channel_marketing_campaign"
    assert theirs == mine


# -- running -------------------------------------------------------------------------------


@pytest.mark.usefixtures("sandbox_env")
def test_dag_test_runs_the_campaign_with_two_shards(tmp_path: Path) -> None:
    config = campaign_copy(tmp_path, shards=2)
    before = counts()
    run = dag_file(config, "ck_two_shards").test(logical_date=DAY)
    assert run.state == "success"
    values = return_values(run)
    opened = values["load_customer_segment_csv"]
    assert opened["status"] == "opened"
    assert opened["logical_date"].startswith("2024-01-02T00:00:00")
    for channel, (send, results, provider) in SENDS.items():
        assert sorted(values[send]) == [0, 1]
        ledger = tasks.channel_results(str(config), opened["run_id"], channel)
        assert values[results] == ledger
        recipients = arrived(provider, since=before[provider])
        assert set(recipients.values()) == {1}
        assert sum(recipients.values()) == ledger["states"]["sent"] > 0
    assert values[FINISH_TASK]["status"] == "partial"


@pytest.mark.usefixtures("sandbox_env")
def test_a_provider_failing_first_is_retried_by_airflow_and_sends_once(tmp_path: Path) -> None:
    config = campaign_copy(tmp_path, shards=2)
    dag = dag_file(config, "ck_retry")
    # Forget earlier tests' messages: Twilio's reconciliation after a 5xx would find an
    # identical SMS sent to the same number seconds ago and count it as this one.
    twilio = tasks.sandbox().servers["twilio"]
    twilio.reset()
    twilio.faults.fail_next(503, 503)
    run = dag.test(logical_date=DAY)
    assert run.state == "success"
    assert max(tries(run, "send_sms_campaign")) > 1
    assert set(tries(run, "send_email_campaign")) == {1}
    sms = arrived("twilio")
    assert set(sms.values()) == {1}
    values = return_values(run)
    assert sum(sms.values()) == values["sms_campaign_results"]["states"]["sent"]


@pytest.mark.usefixtures("sandbox_env")
def test_a_logical_date_the_cli_ran_sends_nothing_more_from_airflow(tmp_path: Path) -> None:
    config = campaign_copy(tmp_path, shards=2)
    cli = Path(sys.executable).with_name("campaignkit")
    done = subprocess.run(
        [cli, "run", str(config), "--sandbox", "--logical-date", "2024-01-02", "--json"],
        capture_output=True,
        check=False,
        text=True,
    )
    assert done.returncode == 1, done.stderr  # partial: the sample's refused addresses
    before = counts()
    run = dag_file(config, "ck_after_cli").test(logical_date=DAY)
    assert run.state == "success"
    assert counts() == before
    values = return_values(run)
    assert values["load_customer_segment_csv"]["status"] == "replay"
    assert values["sms_campaign_results"]["states"]["sent"] > 0


def test_the_ledger_of_an_airflow_connection_is_used_and_never_shown(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    """Not a rehearsal (a rehearsal's ledger is always its own SQLite file): a campaign
    pointed at a sandbox of its own, the tokens in the environment, as in production;
    named by an import reference to a function returning its pipeline."""
    import psycopg

    from campaignkit.testing.sandbox import Sandbox
    from test_run_steps import CHANNELS, write_campaign

    password = f"pw-{secrets.token_hex(8)}"  # the server trusts 127.0.0.1: any password works
    uri = postgres_url.replace("postgresql://postgres@", f"postgres://postgres:{password}@")
    assert password in uri
    monkeypatch.setenv("AIRFLOW_CONN_CAMPAIGNKIT_LEDGER", uri)
    monkeypatch.delenv("CAMPAIGNKIT_LEDGER_URL", raising=False)
    monkeypatch.delenv("CAMPAIGNKIT_SANDBOX", raising=False)
    with Sandbox(providers=list(CHANNELS.values())) as box:
        tokens = box.env()
        for name, value in tokens.items():
            monkeypatch.setenv(name, value)
        config = write_campaign(tmp_path / "pg", box)
        (tmp_path / "ck_pg_campaign.py").write_text(
            "from campaignkit import Pipeline\n"
            f"def campaign():\n    return Pipeline.from_file({str(config)!r}, rehearsal=False)\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        dag = dag_file(
            "ck_pg_campaign:campaign", "ck_connection", ledger_conn_id="campaignkit_ledger"
        )
        run = dag.test(logical_date=DAY)
        sent = len(box.servers["twilio"].messages)
    assert run.state == "success"
    assert "CAMPAIGNKIT_LEDGER_URL" not in os.environ
    values = return_values(run)
    run_id = values["load_customer_segment_csv"]["run_id"]
    with psycopg.connect(postgres_url) as connection:
        found = connection.execute(
            "SELECT status FROM campaignkit.runs WHERE run_id = %s", (run_id,)
        ).fetchall()
    assert found == [(values[FINISH_TASK]["status"],)]
    assert values["sms_campaign_results"]["states"]["sent"] == sent > 0
    assert not (tmp_path / "pg" / "state" / "ledger.db").exists()
    shown = "".join(capfd.readouterr()) + json.dumps(values)
    assert password not in shown
    assert not [token for token in tokens.values() if token in shown]


@pytest.mark.usefixtures("sandbox_env")
def test_a_run_without_a_logical_date_takes_the_latest_complete_interval(tmp_path: Path) -> None:
    config = campaign_copy(tmp_path)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    run = dag_file(config, "ck_no_date").test(logical_date=None)
    opened = return_values(run)["load_customer_segment_csv"]
    # As `campaignkit run` without --logical-date: yesterday's interval, by its start.
    assert opened["logical_date"] == (today - timedelta(days=1)).isoformat()
