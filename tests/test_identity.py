"""Recipient identity: a customer id on several rows (``[source] rows_per_customer``),
idempotency keys unique per delivery, and the extraction counts a resume reports.

On the real path: a push export with two rows (two devices) per customer through the
Pipeline and the loopback OneSignal and Expo sandboxes."""

from __future__ import annotations

import collections
import csv
import json
import uuid
from pathlib import Path
from typing import Any

import pluggy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignkit import Channel, ConfigError, CsvSource, Pipeline, Template, get_plugin_manager
from campaignkit._config import parse_config
from campaignkit._ledger import SqliteLedger
from campaignkit.testing import recording_plugin
from campaignkit.testing.sandbox import Sandbox


def token(provider: str, n: int) -> str:
    if provider == "onesignal":
        return str(uuid.UUID(int=n + 1, version=4))
    return f"ExponentPushToken[dev{n:06d}]"


def push_export(path: Path, provider: str, customers: int = 6, devices: int = 2) -> Path:
    """One row per device: ``devices`` rows (tokens) for each customer id."""
    n = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["customer_id", "push_token", "first_name"])
        for c in range(customers):
            for _ in range(devices):
                w.writerow([f"c{c}", token(provider, n), f"N{c}"])
                n += 1
    return path


def push_pipeline(
    tmp_path: Path, sandbox: Sandbox, provider: str, segment: Path, **kw: Any
) -> Pipeline:
    channel = Channel(
        name="push",
        provider=provider,
        # Personalised: OneSignal makes one request per message, each with the key of
        # its one message; two devices of a customer are two requests.
        template=Template(title="Sale", body="Hi {{ first_name }} ({{ push_token }})"),
        options=sandbox.channel_options(provider),
        require_consent=False,
        batch_size=1 if provider == "onesignal" else 3,
    )
    return Pipeline(
        "push_export",
        CsvSource(segment, columns={"id": "customer_id"}),
        [channel],
        env={channel.token_variable: sandbox.servers[provider].token},
        plugins=get_plugin_manager(load_entrypoints=False),
        base_dir=tmp_path,
        sleep=lambda s: None,
        **kw,
    )


def sent_addresses(pipeline: Pipeline, run_id: str) -> collections.Counter[str]:
    return collections.Counter(
        r.address or "" for r in pipeline.results(run_id, "push") if r.status.value == "sent"
    )


@pytest.mark.parametrize("provider", ["onesignal", "expo"])
def test_every_device_of_a_customer_receives_under_many(tmp_path: Path, provider: str) -> None:
    segment = push_export(tmp_path / "devices.csv", provider)
    with Sandbox([provider]) as sandbox:
        pipeline = push_pipeline(tmp_path, sandbox, provider, segment, rows_per_customer="many")
        report = pipeline.run()
        server = sandbox.servers[provider]
        received = collections.Counter(m["to"] for m in server.messages)
        if provider == "onesignal":
            assert server.replays == 0 and server.key_reuses == 0
    assert report.status.value == "succeeded", report.to_dict()
    assert (report.rows_read, report.rows_rejected) == (12, 0)
    assert report.channels["push"].sent == 12
    # Both devices of every customer got the message, once each.
    assert received == collections.Counter(token(provider, n) for n in range(12))
    # Every "sent" in the ledger is a message the fake provider really accepted.
    assert sent_addresses(pipeline, report.run_id) == received
    results = pipeline.results(report.run_id, "push")
    # The report tells the two deliveries of a customer apart: line and address.
    c0 = [(r.recipient_id, r.line, r.address) for r in results if r.recipient_id == "c0"]
    assert c0 == [("c0", 2, token(provider, 0)), ("c0", 3, token(provider, 1))]
    assert len({(r.recipient_id, r.line) for r in results}) == 12


@pytest.mark.parametrize("provider", ["onesignal", "expo"])
def test_a_repeated_id_is_a_rejected_row_under_one(tmp_path: Path, provider: str) -> None:
    segment = push_export(tmp_path / "devices.csv", provider, customers=3)
    with Sandbox([provider]) as sandbox:
        pipeline = push_pipeline(tmp_path, sandbox, provider, segment)  # default: "one"
        assert pipeline.rows_per_customer == "one"
        report = pipeline.run()
        received = collections.Counter(m["to"] for m in sandbox.servers[provider].messages)
    # Nothing lost: every row read is a recipient or a rejected row.
    assert (report.rows_read, report.rows_rejected) == (6, 3)
    assert report.rejected_reasons == {"duplicate_id": 3}
    assert report.channels["push"].sent == 3
    assert received == collections.Counter(token(provider, n) for n in (0, 2, 4))
    assert sent_addresses(pipeline, report.run_id) == received
    text = (Path(report.output_dir or "") / "rejected.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(text.splitlines()))
    assert rows[0] == ["line", "reason", "field", "detail", "raw"]
    assert [r[:4] for r in rows[1:]] == [
        ["3", "duplicate_id", "id", "customer id 'c0' already on line 2"],
        ["5", "duplicate_id", "id", "customer id 'c1' already on line 4"],
        ["7", "duplicate_id", "id", "customer id 'c2' already on line 6"],
    ]
    assert rows[1][4:] == ["id=c0", f"push_token={token(provider, 1)}", "first_name=N0"]


def test_rows_per_customer_in_the_campaign_file(tmp_path: Path) -> None:
    base = {"pipeline": {"name": "p"}, "channels": {"e": {"provider": "recording"}}}
    config = parse_config(
        {**base, "source": {"path": "s.csv", "rows_per_customer": "many"}}, base_dir=tmp_path
    )
    assert config.source.rows_per_customer == "many"
    assert "rows_per_customer" not in config.source.options  # not a CSV option
    assert parse_config({**base, "source": {"path": "s.csv"}}, base_dir=tmp_path).source == (
        attrs_evolve(config.source, rows_per_customer="one")
    )
    for bad, message in ((["many"], "expected a string"), ("several", "expected one of")):
        with pytest.raises(ConfigError, match=message) as info:
            parse_config(
                {**base, "source": {"path": "s.csv", "rows_per_customer": bad}}, base_dir=tmp_path
            )
        assert info.value.path == "source.rows_per_customer"
    with pytest.raises(ConfigError, match="expected one of"):
        Pipeline(
            "p", CsvSource(tmp_path / "s.csv"), [Channel("e", "recording")], rows_per_customer="x"
        )


def attrs_evolve(value: Any, **changes: Any) -> Any:
    import attrs

    return attrs.evolve(value, **changes)


# -- extraction counts survive a crash ------------------------------------------------------


def test_a_resumed_run_reports_the_counts_of_its_extraction(tmp_path: Path, pm: Any) -> None:
    """Killed after extraction (here: stopped before any channel started), resumed:
    the report has the rows read and rejected, by reason, of the one extraction."""
    segment = tmp_path / "seg.csv"
    segment.write_text(
        "customer_id,email,ok\n"
        "c1,a@example.com,yes\n"
        "c2,b@example.com,maybe\n"  # bad consent value
        ",c@example.com,yes\n"  # empty id
        "c1,d@example.com,yes\n"  # repeated id
        "c5,e@example.com,yes\n",
        encoding="utf-8",
    )
    channel = Channel(
        name="email",
        provider="recording",
        template=Template(subject="Hi", body="Hi {{ id }}"),
        options={"address_field": "email"},
        require_consent=False,
    )

    def pipeline() -> Pipeline:
        return Pipeline(
            "counts",
            CsvSource(segment, columns={"id": "customer_id"}, consent={"email": "ok"}),
            [channel],
            plugins=pm,
            env={},
            base_dir=tmp_path,
        )

    def crash(recipients: int, reasons: Any) -> None:
        raise RuntimeError("killed after extraction")

    with pytest.raises(RuntimeError, match="killed"):
        pipeline().run(on_extracted=crash)
    (run,) = pipeline().runs()
    assert run.status == "running" and run.report is None
    report = pipeline().resume(run.run_id)
    expected = {"bad_consent_value": 1, "empty_required_field": 1, "duplicate_id": 1}
    assert (report.rows_read, report.rows_rejected) == (5, 3)
    assert dict(report.rejected_reasons) == expected
    assert report.channels["email"].sent == 2
    # And so does the report stored in the ledger (``campaignkit report``).
    (run,) = pipeline().runs()
    stored = json.loads(run.report or "{}")["extraction"]
    lines = {"total": 6, "header": 1, "blank": 0, "accepted": 2, "rejected": 3}
    assert stored == {
        "rows_read": 5,
        "rows_rejected": 3,
        "rejected_reasons": expected,
        "lines": lines,
    }
    assert report.lines == lines
    ledger = SqliteLedger(tmp_path / ".campaignkit" / "ledger.db")
    try:
        info = ledger.snapshot_info(run.run_id)
    finally:
        ledger.close()
    assert info is not None
    assert (info.rows_read, info.recipients, info.rejected) == (5, 2, 3)
    assert info.rows_per_customer == "one"


# -- no two deliveries of a run share an idempotency key -----------------------------------

IDS = st.lists(
    st.sampled_from(["a", "b", "c", "d", "a;1", "ünï", "=x"]), min_size=1, max_size=30
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ids=IDS, many=st.booleans(), canary=st.integers(min_value=0, max_value=5))
def test_no_two_deliveries_of_a_run_share_a_key(
    tmp_path_factory: pytest.TempPathFactory, ids: list[str], many: bool, canary: int
) -> None:
    """Generated segments with repeated ids, two channels, a canary then the full run
    (a resume): every message has a key of its own, across channels and sessions, and
    each sent delivery is one recorded message."""
    tmp = tmp_path_factory.mktemp("keys")
    segment = tmp / "seg.csv"
    with segment.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["customer_id", "email", "phone"])
        for i, rid in enumerate(ids):
            w.writerow([rid, f"u{i}@example.com", f"+141555501{i:02d}"])
    recorder = recording_plugin()
    pm: pluggy.PluginManager = get_plugin_manager(load_entrypoints=False, plugins=[recorder])
    channels = [
        Channel(
            name=name,
            provider="recording",
            template=Template(subject="Hi", body="Hi {{ id }}"),
            options={"address_field": field},
            require_consent=False,
            batch_size=2,
        )
        for name, field in (("email", "email"), ("sms", "phone"))
    ]
    pipeline = Pipeline(
        "keys",
        CsvSource(segment, columns={"id": "customer_id"}),
        channels,
        plugins=pm,
        env={},
        base_dir=tmp,
        rows_per_customer="many" if many else "one",
    )
    first = pipeline.run(limit=canary) if canary else None
    report = pipeline.run()  # the same logical date: resumes a canary
    assert first is None or first.run_id == report.run_id
    messages = recorder.outbox.messages
    keys = [m.idempotency_key for m in messages]
    assert len(set(keys)) == len(keys)
    expected = len(ids) if many else len(set(ids))
    assert (report.rows_read, report.rows_rejected) == (len(ids), len(ids) - expected)
    for name in ("email", "sms"):
        sent = [r for r in pipeline.results(report.run_id, name) if r.status.value == "sent"]
        assert len(sent) == expected
        assert sorted(r.address or "" for r in sent) == sorted(
            m.address for m in messages if m.channel == name
        )


@pytest.mark.parametrize("rows_per_customer", ["one", "many"])
def test_the_rule_holds_for_json_lines_too(
    tmp_path: Path, pm: pluggy.PluginManager, recorder: Any, rows_per_customer: str
) -> None:
    segment = tmp_path / "seg.jsonl"
    segment.write_text(
        '{"id": "c1", "email": "a@example.com"}\n'
        '{"id": "c1", "email": "b@example.com"}\n'
        "\n"
        '{"id": "c2", "email": "c@example.com"}\n',
        encoding="utf-8",
    )
    config = parse_config(
        {
            "pipeline": {"name": "jl"},
            "source": {
                "type": "jsonl",
                "path": "seg.jsonl",
                "rows_per_customer": rows_per_customer,
            },
            "channels": {
                "email": {
                    "provider": "recording",
                    "require_consent": False,
                    "template": {"subject": "Hi", "body": "Hi {{ id }}"},
                    "options": {"address_field": "email"},
                }
            },
        },
        base_dir=tmp_path,
    )
    pipeline = Pipeline.from_config(config, plugins=pm, env={})
    report = pipeline.run()
    sent = sorted(m.address for m in recorder.outbox.messages)
    if rows_per_customer == "many":
        assert (report.rows_read, report.rows_rejected) == (3, 0)
        assert sent == ["a@example.com", "b@example.com", "c@example.com"]
    else:
        assert (report.rows_read, report.rows_rejected) == (3, 1)
        assert sent == ["a@example.com", "c@example.com"]
        text = (Path(report.output_dir or "") / "rejected.csv").read_text(encoding="utf-8")
        assert "2,duplicate_id,id,customer id 'c1' already on line 1" in text


def test_after_a_kill_the_report_and_the_resume_keep_the_extraction_counts(
    tmp_path: Path,
) -> None:
    """SIGKILL while sending (the snapshot was written), then ``report`` and ``resume``
    from the command line: both show the rows read and rejected by the extraction."""
    import os
    import subprocess
    import sys
    import time

    from click.testing import CliRunner

    from campaignkit.cli import main
    from campaignkit.testing.sandbox.onesignal import OneSignalServer

    lines = ["customer_id,first_name,push_token"]
    lines += [f"C{i},N{i},{uuid.UUID(int=i)}" for i in range(1, 7)]
    lines += [f",Nobody,{uuid.UUID(int=99)}", f"C1,Again,{uuid.UUID(int=98)}"]
    (tmp_path / "segment.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with OneSignalServer() as server:
        config = tmp_path / "campaign.toml"
        config.write_text(
            '[pipeline]\nname = "killed"\n[source]\npath = "segment.csv"\n'
            '[source.columns]\nid = "customer_id"\n'
            '[channels.push]\nprovider = "onesignal"\nrequire_consent = false\n'
            'concurrency = 1\n[channels.push.template]\ntitle = "Hi"\n'
            'body = "Hi {{ first_name }}"\n[channels.push.options]\n'
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in server.channel_options().items()),
            encoding="utf-8",
        )
        env = {"PUSH_API_TOKEN": server.token}
        server.faults.latency = 1.0
        proc = subprocess.Popen(
            [sys.executable, "-m", "campaignkit", "run", str(config)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while len(server.request_times) < 2:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.005)
            proc.kill()
        finally:
            proc.wait(timeout=30)
        server.faults.latency = 0.0
        cli = CliRunner()
        listed = cli.invoke(main, ["runs", str(config), "--json"], env=env)
        [crashed] = json.loads(listed.stdout)
        assert crashed["status"] == "running"
        counts = "8 row(s) read, 2 rejected (duplicate_id 1, empty_required_field 1)"
        before = cli.invoke(main, ["report", str(config), crashed["run_id"]], env=env)
        assert before.exit_code == 0, before.output
        assert counts in before.stdout
        resumed = cli.invoke(main, ["resume", str(config), crashed["run_id"]], env=env)
        assert resumed.exit_code == 0, resumed.output
        assert counts in resumed.stdout
        after = cli.invoke(main, ["report", str(config), crashed["run_id"]], env=env)
        assert counts in after.stdout
        assert sorted(m["to"] for m in server.messages) == sorted(
            str(uuid.UUID(int=i)) for i in range(1, 7)
        )
