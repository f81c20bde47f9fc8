"""Attacks on the run steps (``open_run``, ``reopen_run``, ``plan_channel``,
``send_slice``, ``finish_run``) driven from separate processes: races between
steps, processes killed mid-step, a channel that crashes, canaries, the audience
guard, slices of different counts, and odd inputs.

Every step that crosses a process runs ``hostile_step_worker.py`` against the
loopback sandbox; SendGrid and Expo have no idempotency keys, so a message sent
twice would show in what their fakes received.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from campaignkit import (
    AudienceGuardError,
    Channel,
    Pipeline,
    Slice,
    StaticSource,
    Template,
    get_plugin_manager,
)
from campaignkit._engine._render import Renderer
from campaignkit._ledger import LedgerError, RunInProgress, SqliteLedger
from campaignkit._models import RunReport
from campaignkit.hookspecs import hookimpl
from campaignkit.testing import RecordingNotifier
from campaignkit.testing.sandbox import Faults, Sandbox

WORKER = Path(__file__).with_name("hostile_step_worker.py")
DATE = "2026-05-01T00:00:00+00:00"
LOGICAL_DATE = datetime.fromisoformat(DATE)
PROVIDERS = {"email": "sendgrid", "push": "expo"}


# -- the campaign and the processes -----------------------------------------------------
def write_campaign(
    directory: Path,
    box: Sandbox,
    *,
    n: int = 40,
    batch: int = 5,
    execution: str = "",
    email: str = "",
) -> Path:
    """``n`` customers with an email and a push token each; every one eligible."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["customer_id,email,push_token,first_name,ok"]
    lines += [f"c{i:03d},u{i}@example.com,ExponentPushToken[h{i:04d}],N{i},yes" for i in range(n)]
    (directory / "segment.csv").write_text("\n".join(lines) + "\n")
    text = f"""
[pipeline]
name = "hostile"

[source]
type = "csv"
path = "segment.csv"

[source.columns]
id = "customer_id"

[source.consent]
email = "ok"
push = "ok"

[execution]
state_path = "state/ledger.db"
output_dir = "results"
{execution}

[execution.retry]
retries = 0
"""
    templates = {
        "email": 'subject = "Hi {{ first_name }}"\nbody = "Deals, {{ first_name }}"',
        "push": 'title = "Spring"\nbody = "Hi {{ first_name }}"',
    }
    for channel, provider in PROVIDERS.items():
        options = "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in box.channel_options(provider).items()
        )
        text += f"""
[channels.{channel}]
provider = "{provider}"
batch_size = {batch}
concurrency = 1
rate = {{}}
{email if channel == "email" else ""}
[channels.{channel}.template]
{templates[channel]}

[channels.{channel}.options]
{options}"""
    path = directory / "campaign.toml"
    path.write_text(text)
    return path


def env_of(box: Sandbox, **extra: str) -> dict[str, str]:
    return {**os.environ, **box.env(), **extra}


def spawn(config: Path, box: Sandbox, *args: str, **extra: str) -> subprocess.Popen[str]:
    """One step in a fresh process (the tokens in its environment), started."""
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_of(box, **extra),
    )


def outcome(process: subprocess.Popen[str]) -> dict[str, Any]:
    """What a step process did: its JSON result (``raised`` if it raised)."""
    out, err = process.communicate(timeout=60)
    assert process.returncode in (0, 3), err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def step(config: Path, box: Sandbox, *args: str, **extra: str) -> dict[str, Any]:
    """One step in a fresh process; its result, which must not be an exception."""
    result = outcome(spawn(config, box, *args, **extra))
    assert "raised" not in result, result
    return result


def pipeline_of(config: Path, box: Sandbox) -> Pipeline:
    plugins = get_plugin_manager(load_entrypoints=False)
    return Pipeline.from_file(config, plugins=plugins, env=box.env(), rehearsal=False)


def received(box: Sandbox) -> collections.Counter[tuple[str, str]]:
    return collections.Counter(
        (provider, str(m["to"]))
        for provider in PROVIDERS.values()
        for m in box.servers[provider].messages
    )


def states(config: Path, channel: str | None = None) -> collections.Counter[str]:
    """The run's deliveries (of one channel, or all) counted by state."""
    sql = "SELECT d.state FROM deliveries d JOIN channels c ON c.run = d.run AND c.code = d.channel"
    with sqlite3.connect(config.parent / "state" / "ledger.db") as conn:
        if channel:
            rows = conn.execute(sql + " WHERE c.channel = ?", (channel,)).fetchall()
        else:
            rows = conn.execute(sql).fetchall()
    return collections.Counter(state for (state,) in rows)


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.01)


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with Sandbox(providers=list(PROVIDERS.values())) as sandbox:
        yield sandbox


def opened_and_planned(config: Path, box: Sandbox) -> tuple[Pipeline, str]:
    """The run of :data:`DATE` opened and every channel planned (in this process)."""
    pipeline = pipeline_of(config, box)
    run_id = pipeline.open_run(logical_date=LOGICAL_DATE).run_id
    for channel in PROVIDERS:
        pipeline.plan_channel(run_id, channel)
    return pipeline, run_id


# -- 1. two processes on one run at once ------------------------------------------------
@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("email",), ("email",)),  # the same slice
        (("email", "1/2"), ("email", "2/2")),  # another slice of the channel
        (("email",), ("push",)),  # another channel
    ],
    ids=["same-slice", "other-slice", "other-channel"],
)
def test_a_second_send_while_one_is_sending_is_refused(
    tmp_path: Path, box: Sandbox, first: tuple[str, ...], second: tuple[str, ...]
) -> None:
    config = write_campaign(tmp_path, box)
    _, run_id = opened_and_planned(config, box)
    # Slow enough that the send is still going when the second process (started after
    # five messages, an interpreter's start-up on a loaded machine) claims the run.
    box.servers["sendgrid"].faults = Faults(latency=1.5)
    sending = spawn(config, box, "send", run_id, *first)
    wait_for(lambda: len(box.servers["sendgrid"].messages) >= 5)  # mid-send
    refused = outcome(spawn(config, box, "send", run_id, *second))
    assert refused["raised"] == "RunInProgress", refused
    done = outcome(sending)
    assert "raised" not in done
    assert len(box.servers["expo"].messages) == 0
    assert max(received(box).values()) == 1


def test_sends_started_at_the_same_instant_never_send_twice(tmp_path: Path, box: Sandbox) -> None:
    config = write_campaign(tmp_path, box)
    _, run_id = opened_and_planned(config, box)
    box.servers["sendgrid"].faults = Faults(latency=0.05)
    racers = [spawn(config, box, "send", run_id, "email", part) for part in ("1/1", "1/2", "1/1")]
    results = [outcome(p) for p in racers]
    # Each either sent (alone: the claims are serialised) or was refused as busy.
    assert all(r.get("raised") in (None, "RunInProgress") for r in results), results
    assert any("raised" not in r for r in results)
    assert max(received(box).values()) == 1
    assert states(config, "email")["in_flight"] == 0


def test_two_finishes_at_once_record_one_report(tmp_path: Path, box: Sandbox) -> None:
    config = write_campaign(tmp_path, box, n=10)
    pipeline, run_id = opened_and_planned(config, box)
    for channel in PROVIDERS:
        pipeline.send_slice(run_id, channel)
    racers = [spawn(config, box, "finish", run_id) for _ in range(3)]
    results = [outcome(p) for p in racers]
    finished = [r for r in results if "raised" not in r]
    assert len(finished) == 1, results
    # The others were refused: busy, or the run finished meanwhile.
    for r in results:
        if "raised" in r:
            assert r["raised"] in ("RunInProgress", "LedgerError"), r
            assert r["raised"] == "RunInProgress" or "finished" in r["message"]
    run = pipeline.runs()[0]
    assert run.status == finished[0]["status"] == "succeeded"
    assert json.loads(run.report or "{}")["finished_at"] == finished[0]["report"]["finished_at"]


def test_plan_and_finish_racing_a_send_are_refused(tmp_path: Path, box: Sandbox) -> None:
    config = write_campaign(tmp_path, box)
    pipeline = pipeline_of(config, box)
    run_id = pipeline.open_run(logical_date=LOGICAL_DATE).run_id
    pipeline.plan_channel(run_id, "email")
    box.servers["sendgrid"].faults = Faults(latency=1.5)  # still sending after 2 start-ups
    sending = spawn(config, box, "send", run_id, "email")
    wait_for(lambda: len(box.servers["sendgrid"].messages) >= 5)
    planning = outcome(spawn(config, box, "plan", run_id, "push"))
    assert planning["raised"] == "RunInProgress"
    finishing = outcome(spawn(config, box, "finish", run_id))
    assert finishing["raised"] == "RunInProgress"
    assert "raised" not in outcome(sending)
    # In this very process too (another thread, another claim).
    with pytest.raises(LedgerError, match="not planned"):
        pipeline.send_slice(run_id, "push")
    assert pipeline.runs()[0].status == "running"
    assert max(received(box).values()) == 1


def test_a_step_in_another_thread_of_the_same_process_is_refused(
    tmp_path: Path, box: Sandbox
) -> None:
    config = write_campaign(tmp_path, box)
    pipeline, run_id = opened_and_planned(config, box)
    box.servers["sendgrid"].faults = Faults(latency=0.1)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            pipeline_of(config, box).send_slice(run_id, "email")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    wait_for(lambda: len(box.servers["sendgrid"].messages) >= 5)
    with pytest.raises(RunInProgress):
        pipeline.send_slice(run_id, "email")
    with pytest.raises(RunInProgress):
        pipeline.finish_run(run_id)
    thread.join()
    assert not errors
    assert sorted(received(box).values()) == [1] * 40


# -- 2. a process killed mid-step --------------------------------------------------------
def test_a_send_killed_mid_slice_is_taken_up_without_a_message_twice(
    tmp_path: Path, box: Sandbox
) -> None:
    config = write_campaign(tmp_path, box)
    _, run_id = opened_and_planned(config, box)
    box.servers["sendgrid"].faults = Faults(latency=0.1)
    sending = spawn(config, box, "send", run_id, "email")
    wait_for(lambda: len(box.servers["sendgrid"].messages) >= 10)
    sending.send_signal(signal.SIGKILL)
    sending.communicate()
    box.servers["sendgrid"].faults = Faults()
    before = states(config, "email")
    assert before["in_flight"] > 0  # the kill caught a request in flight

    step(config, box, "reopen", run_id)
    after_reopen = states(config, "email")
    assert after_reopen["in_flight"] == 0
    assert after_reopen["unknown"] == before["in_flight"]  # no idempotency keys: unknown
    for channel in PROVIDERS:
        step(config, box, "send", run_id, channel)
    report = step(config, box, "finish", run_id)["report"]

    got = received(box)
    assert max(got.values()) == 1
    email = report["email_campaign_results"]
    ledger = states(config, "email")
    assert email["sent"] == ledger["sent"] and email["unknown"] == ledger["unknown"]
    assert ledger["sent"] + ledger["unknown"] == 40
    # Every address the provider got is sent or unknown in the ledger, never pending.
    assert ledger["sent"] <= sum(1 for (p, _) in got if p == "sendgrid") <= 40
    assert report["status"] == "partial"  # the unknown ones


def test_a_send_killed_mid_slice_then_sent_again_without_reopening(
    tmp_path: Path, box: Sandbox
) -> None:
    """Skipping ``reopen_run``: the next send sends what is pending (never what was
    in flight); finishing then is refused (it used to record ``succeeded`` with the
    in-flight messages unresolved) until ``reopen_run`` settles them."""
    config = write_campaign(tmp_path, box)
    _, run_id = opened_and_planned(config, box)
    box.servers["sendgrid"].faults = Faults(latency=0.1)
    sending = spawn(config, box, "send", run_id, "email")
    wait_for(lambda: len(box.servers["sendgrid"].messages) >= 10)
    sending.send_signal(signal.SIGKILL)
    sending.communicate()
    box.servers["sendgrid"].faults = Faults()
    assert states(config, "email")["in_flight"] > 0
    for channel in PROVIDERS:
        step(config, box, "send", run_id, channel)
    refused = outcome(spawn(config, box, "finish", run_id))
    assert refused["raised"] == "LedgerError" and "in flight at a crash" in refused["message"]
    assert pipeline_of(config, box).runs()[0].status == "running"
    step(config, box, "reopen", run_id)
    finished = step(config, box, "finish", run_id)
    assert max(received(box).values()) == 1
    assert finished["status"] == "partial"  # the unknown ones
    assert states(config, "email")["sent"] + states(config, "email")["unknown"] == 40


@pytest.mark.parametrize("after", ["open", "plan"])
def test_a_step_process_killed_before_it_lets_the_run_go(
    tmp_path: Path, box: Sandbox, after: str
) -> None:
    config = write_campaign(tmp_path, box, n=10)
    die = {"HOSTILE_DIE": "1"}
    if after == "open":
        died = spawn(config, box, "open", DATE, **die)
    else:
        run_id = pipeline_of(config, box).open_run(logical_date=LOGICAL_DATE).run_id
        died = spawn(config, box, "plan", run_id, "email", **die)
    died.communicate(timeout=60)
    assert died.returncode == -signal.SIGKILL
    # Its claim is still recorded, its owner dead: the next step takes the run.
    run_id = step(config, box, "open", DATE)["run_id"]
    for channel in PROVIDERS:
        step(config, box, "plan", run_id, channel)
    for channel in PROVIDERS:
        step(config, box, "send", run_id, channel)
    finished = step(config, box, "finish", run_id)
    assert finished["status"] == "succeeded"
    assert sorted(received(box).values()) == [1] * 20


# -- 3. a channel that crashes in a step of its own ------------------------------------
def test_a_channel_crashing_in_its_own_process_fails_the_run_without_its_token(
    tmp_path: Path, box: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The send's crash text used to be stored in the ledger as it was; the finish in
    another process, which never read the token, put it in the report unredacted."""
    config = write_campaign(tmp_path, box, n=10, batch=1)
    token = box.servers["sendgrid"].token
    _, run_id = opened_and_planned(config, box)
    crashed = outcome(
        spawn(
            config,
            box,
            "send",
            run_id,
            "email",
            HOSTILE_CRASH="email",
            HOSTILE_TOKEN_VAR="EMAIL_API_TOKEN",
        )
    )
    assert crashed["raised"] == "RuntimeError"
    step(config, box, "send", run_id, "push")
    finished = step(config, box, "finish", run_id)
    assert finished["status"] == "failed"
    assert "RuntimeError: renderer blew up" in finished["report"]["errors"]["email"]
    written = (config.parent / "results" / run_id / "report.json").read_text()
    assert token not in written and token not in json.dumps(finished)
    with sqlite3.connect(config.parent / "state" / "ledger.db") as conn:
        dump = "\n".join(conn.iterdump())
    assert token not in dump
    assert max(received(box).values()) == 1
    # As Pipeline.run reports the same crash in one process.
    whole = pipeline_run_with_a_crash(tmp_path / "whole", monkeypatch)
    assert whole.status == finished["status"]
    assert whole.errors["email"] == finished["report"]["errors"]["email"]


def pipeline_run_with_a_crash(directory: Path, monkeypatch: pytest.MonkeyPatch) -> RunReport:
    """``Pipeline.run()`` of the campaign whose email rendering crashes after its
    first message, against a sandbox of its own."""
    original = Renderer.render
    calls = {"n": 0}

    def render(self: Renderer, *args: Any, **kwargs: Any) -> Any:
        if self.name == "email":
            calls["n"] += 1
            if calls["n"] > 1:
                raise RuntimeError(f"renderer blew up near {os.environ['EMAIL_API_TOKEN']}")
        return original(self, *args, **kwargs)

    with Sandbox(providers=list(PROVIDERS.values())) as other:
        config = write_campaign(directory, other, n=10, batch=1)
        monkeypatch.setenv("EMAIL_API_TOKEN", other.servers["sendgrid"].token)
        monkeypatch.setattr(Renderer, "render", render)
        report = pipeline_of(config, other).run(logical_date=LOGICAL_DATE)
        assert other.servers["sendgrid"].token not in json.dumps(report.to_dict())
        return report


class _Crashy(RecordingNotifier):
    name = "crashy"

    def connect(self) -> None:
        raise RuntimeError("cannot connect")


class _NoneReturning(RecordingNotifier):
    name = "none_returning"

    def send_batch(self, conn: Any, messages: Any) -> Any:
        super().send_batch(conn, messages)
        return None  # a plugin bug: not a list of outcomes


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("cls", "code"), [(_Crashy, "RuntimeError"), (_NoneReturning, "plugin_error")]
)
def test_a_notifier_bug_fails_its_batches_and_never_hangs_the_run(
    tmp_path: Path, cls: type[RecordingNotifier], code: str
) -> None:
    """A notifier whose connect() raises something other than DeliveryError, or whose
    send_batch returns no list: each batch is recorded failed with the cause, nothing
    is left in flight or pending, and the run ends (with more batches than the queue
    between the producer and the workers holds: a dead worker once hung the run)."""

    class Plugin:
        @hookimpl
        def campaignkit_register_channels(self, register: Any) -> None:
            register(cls)

    plugins = get_plugin_manager(load_entrypoints=False, plugins=[Plugin()])
    source = StaticSource.from_dicts(
        [{"id": f"c{i}", "email": f"u{i}@example.com"} for i in range(40)]
    )
    channel = Channel(
        name="email",
        provider=cls.name,
        template=Template(body="hi"),
        batch_size=2,
        concurrency=2,
        require_consent=False,
    )
    pipeline = Pipeline("p", source, [channel], plugins=plugins, base_dir=tmp_path)
    report = pipeline.run()
    result = report.channels["email"]
    assert report.status == "partial"
    assert (result.failed, result.pending, result.sent) == (40, 0, 0)
    assert result.error_codes == {code: 40}


# -- 4. a canary through the steps ------------------------------------------------------
def test_a_canary_through_steps_then_the_full_run_sends_the_rest_once(
    tmp_path: Path, box: Sandbox
) -> None:
    config = write_campaign(tmp_path, box, n=20)
    _, run_id = opened_and_planned(config, box)
    for channel in PROVIDERS:
        step(config, box, "send", run_id, channel, "--limit", "3")
    canary = step(config, box, "finish", run_id)
    assert canary["status"] == "canary"
    assert len(box.servers["sendgrid"].messages) == 3 == len(box.servers["expo"].messages)
    # Sending without reopening is refused: the run is finished (as a canary).
    refused = outcome(spawn(config, box, "send", run_id, "email"))
    assert refused["raised"] == "LedgerError" and "canary" in refused["message"]
    again = step(config, box, "open", DATE)
    assert again["resumed"] and again["run_id"] == run_id
    for channel in PROVIDERS:
        step(config, box, "plan", run_id, channel)
        step(config, box, "send", run_id, channel)
    full = step(config, box, "finish", run_id)
    assert full["status"] == "succeeded"
    assert sorted(received(box).values()) == [1] * 40


# -- 5. the audience guard --------------------------------------------------------------
def test_a_guard_that_fails_stops_the_steps_and_what_comes_next(
    tmp_path: Path, box: Sandbox
) -> None:
    config = write_campaign(tmp_path, box, n=10, email="expected_audience = 1000\n")
    pipeline = pipeline_of(config, box)
    run_id = pipeline.open_run(logical_date=LOGICAL_DATE).run_id
    pipeline.plan_channel(run_id, "push")
    with pytest.raises(AudienceGuardError, match="nothing was sent"):
        pipeline.plan_channel(run_id, "email")
    assert pipeline.runs()[0].status == "failed"
    assert sum(received(box).values()) == 0
    # The next steps: sending is refused, the run is finished (failed)...
    with pytest.raises(LedgerError, match="finished"):
        pipeline.send_slice(run_id, "push")
    with pytest.raises(LedgerError, match="finished"):
        pipeline.plan_channel(run_id, "email")
    with pytest.raises(LedgerError, match="finished"):
        pipeline.finish_run(run_id)
    assert sum(received(box).values()) == 0
    # ...and opening the logical date again takes the failed run up; the channel keeps
    # the audience it decided, and as it has sent nothing its guard is checked again:
    # still failed, nothing sent, until the configuration is fixed.
    again = pipeline.open_run(logical_date=LOGICAL_DATE)
    assert again.resumed and again.run_id == run_id
    with pytest.raises(AudienceGuardError, match="nothing was sent"):
        pipeline.plan_channel(run_id, "email")
    assert sum(received(box).values()) == 0
    fixed = config.read_text().replace("expected_audience = 1000", "expected_audience = 10")
    config.write_text(fixed)
    pipeline = pipeline_of(config, box)
    assert pipeline.open_run(logical_date=LOGICAL_DATE).resumed
    pipeline.plan_channel(run_id, "email")
    pipeline.send_slice(run_id, "email")
    assert len(box.servers["sendgrid"].messages) == 10


# -- 6. slices ----------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["1/", "/3", "1.0/2", "1/2.0", " / ", "2/1", "0x1/2", "1//2"])
def test_slice_parse_refuses_edges(text: str) -> None:
    with pytest.raises(ValueError, match="N/M"):
        Slice.parse(text)


@pytest.mark.parametrize(
    ("text", "index", "count"),
    [("+1/+2", 0, 2), ("1_0/2_0", 9, 20), ("٣/٤", 2, 4), ("\t1/2\n", 0, 2)],
)
def test_slice_parse_takes_what_int_takes(text: str, index: int, count: int) -> None:
    """Lenient (``int()``: signs, underscores, other scripts' digits), never a slice
    that does not exist."""
    assert Slice.parse(text) == Slice(index=index, count=count)


def test_slices_of_different_counts_on_one_channel(tmp_path: Path, box: Sandbox) -> None:
    config = write_campaign(tmp_path, box, n=30, batch=2)
    pipeline, run_id = opened_and_planned(config, box)
    for part in ("1/2", "1/3", "2/5", "3/3", "2/2", "4/5", "1/1"):
        pipeline.send_slice(run_id, "email", Slice.parse(part))
        assert max(received(box).values()) == 1
    assert states(config, "email") == {"sent": 30}
    pipeline.send_slice(run_id, "push")
    report = pipeline.finish_run(run_id)
    assert report.channels["email"].sent == 30 and report.status == "succeeded"
    assert sorted(received(box).values()) == [1] * 60


def test_a_crash_resumed_batch_stays_in_one_slice(tmp_path: Path, box: Sandbox) -> None:
    """Members of a batch re-sent together (a telnyx-like provider with idempotency
    keys would re-send them under the same keys) are in one slice of any count."""
    config = write_campaign(tmp_path, box, n=30, batch=4)
    _, run_id = opened_and_planned(config, box)
    ledger = SqliteLedger(config.parent / "state" / "ledger.db")
    try:
        ledger.claim_run(run_id)
        ledger.mark_in_flight(run_id, "email", [5, 6, 7, 8])
        ledger.resolve_in_flight(run_id, "email", resend=True)
        for count in (2, 3, 4, 7):
            owners = {
                i
                for i in range(count)
                for d in ledger.pending(run_id, "email", Slice(index=i, count=count))
                if d.seq in (5, 6, 7, 8)
            }
            assert len(owners) == 1
    finally:
        ledger.close()


# -- 7. anything else ------------------------------------------------------------------------
def test_finish_is_refused_while_messages_are_owed_unsent(tmp_path: Path, box: Sandbox) -> None:
    """It used to record ``succeeded`` with every message pending: opening the
    logical date again then replayed it, and nothing was ever sent."""
    config = write_campaign(tmp_path, box, n=10, batch=1)
    pipeline = pipeline_of(config, box)
    run_id = pipeline.open_run(logical_date=LOGICAL_DATE).run_id
    with pytest.raises(LedgerError, match=r"email: not planned; push: not planned"):
        pipeline.finish_run(run_id)
    pipeline.plan_channel(run_id, "email")
    pipeline.plan_channel(run_id, "push")
    with pytest.raises(LedgerError, match=r"still owes messages \(email: 10 pending; push: 10"):
        pipeline.finish_run(run_id)
    pipeline.send_slice(run_id, "email", Slice.parse("1/2"))  # half of one channel
    pipeline.send_slice(run_id, "push")
    with pytest.raises(LedgerError, match=r"\(email: 5 pending\)"):
        pipeline.finish_run(run_id)
    assert pipeline.runs()[0].status == "running"
    # Nothing was recorded: the logical date is taken up, not replayed.
    again = pipeline.open_run(logical_date=LOGICAL_DATE)
    assert again.replay is None and again.resumed
    pipeline.send_slice(run_id, "email", Slice.parse("2/2"))
    assert pipeline.finish_run(run_id).status == "succeeded"
    assert sorted(received(box).values()) == [1] * 20


def test_finish_after_a_timeout_in_another_process_and_the_rest_later(
    tmp_path: Path, box: Sandbox
) -> None:
    """``execution.timeout_seconds`` in a separate-process send: the slice stops,
    ``timed_out`` reaches the finish in a third process; the date is taken up later."""
    config = write_campaign(tmp_path, box, execution="timeout_seconds = 0.5")
    _, run_id = opened_and_planned(config, box)
    box.servers["sendgrid"].faults = Faults(latency=0.2)
    sent = step(config, box, "send", run_id, "email")
    assert sent["stopped"] == "timed_out" and sent["pending"] > 0
    step(config, box, "send", run_id, "push")
    assert step(config, box, "finish", run_id)["status"] == "timed_out"
    box.servers["sendgrid"].faults = Faults()
    assert step(config, box, "open", DATE)["resumed"]
    step(config, box, "send", run_id, "email")
    assert step(config, box, "finish", run_id)["status"] == "succeeded"
    assert sorted(received(box).values()) == [1] * 80


def test_a_step_in_a_live_process_lets_the_next_step_run_in_another(
    tmp_path: Path, box: Sandbox
) -> None:
    """An orchestrator opens and plans in its own (long-lived) process, workers send.
    Letting a run go used to keep its pid: the run then read as owned by that live
    process (a run from before owners were), and every worker got RunInProgress."""
    config = write_campaign(tmp_path, box, n=5)
    pipeline, run_id = opened_and_planned(config, box)
    for channel in PROVIDERS:
        assert step(config, box, "send", run_id, channel)["sent"] == 5
    pipeline.send_slice(run_id, "email")  # and back in this process
    assert step(config, box, "finish", run_id)["status"] == "succeeded"


def test_steps_on_a_skipped_late_run_are_refused(tmp_path: Path, box: Sandbox) -> None:
    config = write_campaign(tmp_path, box, n=5)
    pipeline = pipeline_of(config, box)
    ledger = pipeline.ledger()
    try:
        ledger.record_run(
            run_id="late",
            pipeline="hostile",
            logical_date=LOGICAL_DATE,
            status="skipped_late",
            fingerprint=pipeline.fingerprint(),
        )
    finally:
        ledger.close()
    with pytest.raises(LedgerError, match="too late"):
        pipeline.reopen_run("late")
    for call in (
        lambda: pipeline.plan_channel("late", "email"),
        lambda: pipeline.send_slice("late", "email"),
        lambda: pipeline.finish_run("late"),
    ):
        with pytest.raises(LedgerError, match="finished \\(skipped_late\\)"):
            call()
    # Opening its logical date replays it: nothing is sent.
    assert pipeline.open_run(logical_date=LOGICAL_DATE).replay is not None
    assert sum(received(box).values()) == 0


@pytest.mark.parametrize("run_id", ["r 1;DROP TABLE runs--", "ünïc'o\"de %s {0}", "-r"])
def test_a_run_id_with_odd_characters(tmp_path: Path, box: Sandbox, run_id: str) -> None:
    config = write_campaign(tmp_path, box, n=5)
    pipeline = pipeline_of(config, box)
    opened = pipeline.open_run(logical_date=LOGICAL_DATE, run_id=run_id)
    for channel in PROVIDERS:
        pipeline.plan_channel(opened.run_id, channel)
        step(config, box, "send", run_id, channel)
    report = pipeline.finish_run(opened.run_id)
    assert report.status == "succeeded" and report.run_id == run_id
    assert Path(report.output_dir) == tmp_path / "results" / run_id


@pytest.mark.parametrize("run_id", ["../escape", "a/b", "..", ".", "", "a\\b", "a\0b"])
def test_a_run_id_that_would_put_its_directory_elsewhere_is_refused(
    tmp_path: Path, box: Sandbox, run_id: str
) -> None:
    """``run_id="../escape"`` used to write the run's report and rejects outside the
    output directory (``results/../escape``)."""
    config = write_campaign(tmp_path / "c", box, n=5)
    pipeline = pipeline_of(config, box)
    with pytest.raises(LedgerError, match="cannot name the run's directory"):
        pipeline.open_run(logical_date=LOGICAL_DATE, run_id=run_id)
    assert pipeline.runs() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_steps_on_a_run_of_another_pipeline_are_refused(tmp_path: Path, box: Sandbox) -> None:
    config = write_campaign(tmp_path, box, n=5)
    pipeline, run_id = opened_and_planned(config, box)
    other = tmp_path / "other.toml"
    other.write_text(config.read_text().replace('name = "hostile"', 'name = "other"'))
    stranger = pipeline_of(other, box)
    for call in (
        lambda: stranger.plan_channel(run_id, "email"),
        lambda: stranger.send_slice(run_id, "email"),
        lambda: stranger.finish_run(run_id),
        lambda: stranger.reopen_run(run_id),
    ):
        with pytest.raises(LedgerError, match="belongs to pipeline 'hostile'"):
            call()
    assert sum(received(box).values()) == 0
    # The refusals left the run to its owner pipeline.
    pipeline.send_slice(run_id, "email")
    pipeline.send_slice(run_id, "push")
    assert pipeline.finish_run(run_id).channels["email"].sent == 5
