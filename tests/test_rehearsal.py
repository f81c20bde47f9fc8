"""Rehearsals from Python never touch the campaign's real state: a rehearsal against
the sandbox (Sandbox.pipeline, Sandbox.apply, the ck_sandbox fixture, or a Pipeline
built by hand pointing at a sandbox server) records into ledger.sandbox.db and
<output dir>/sandbox/, so the real run that follows sends everything, and a fake
provider's "stop" answer never reaches the real suppression list."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from campaignkit import Channel, Execution, Pipeline, Template, load_config
from campaignkit._rehearsal import (
    _endpoint,
    is_rehearsal,
    rehearsal_execution,
    rehearsal_output_root,
    sandbox_channels,
)
from campaignkit.exceptions import ConfigError
from campaignkit.testing import StaticSource
from campaignkit.testing.sandbox import Sandbox
from campaignkit.testing.sandbox.smtp import SmtpServer
from campaignkit.testing.sandbox.twilio import TwilioServer

DATE = datetime(2024, 5, 1, tzinfo=UTC)
RUN_ID = "rehearsed__20240501T000000Z"
UNSUBSCRIBED = "+15005550004"  # Twilio's magic number: 21610, the recipient sent STOP
ROWS = [
    ("c1", "ann@example.com", "+14155550101"),
    ("c2", "bob@example.com", UNSUBSCRIBED),
    ("c3", "cid@example.com", "+14155550103"),
]


def toml_table(values: dict[str, Any]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def write_campaign(tmp_path: Path, real: Sandbox) -> Path:
    """A campaign whose channels point at ``real``: the stand-in for the real providers."""
    lines = ["id,email,phone,first_name"] + [f"{i},{e},{p},N{i}" for i, e, p in ROWS]
    (tmp_path / "segment.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = tmp_path / "campaign.toml"
    config.write_text(
        '[pipeline]\nname = "rehearsed"\n\n[source]\ntype = "csv"\npath = "segment.csv"\n\n'
        '[channels.email]\nprovider = "sendgrid"\nrequire_consent = false\n'
        '[channels.email.template]\nsubject = "Hi"\nbody = "Hi {{ first_name }}"\n'
        "[channels.email.options]\n" + toml_table(real.channel_options("sendgrid")) + "\n"
        '[channels.sms]\nprovider = "twilio"\nrequire_consent = false\n'
        '[channels.sms.template]\nbody = "Hi {{ first_name }}"\n'
        "[channels.sms.options]\n" + toml_table(real.channel_options("twilio")),
        encoding="utf-8",
    )
    return config


@pytest.fixture
def real() -> Iterator[Sandbox]:
    """Fake providers standing in for the real ones (the campaign file points at them)."""
    with Sandbox(["sendgrid", "twilio"]) as sandbox:
        yield sandbox


def run_for_real(config: Path, real: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    """``campaignkit ARGS CONFIG`` in another process, as an operator would run it: the
    sandbox servers of this process are, to it, just providers at some address."""
    env = {
        **os.environ,
        "EMAIL_API_TOKEN": real.servers["sendgrid"].token,
        "SMS_API_TOKEN": real.servers["twilio"].token,
    }
    return subprocess.run(
        [sys.executable, "-m", "campaignkit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cli_json(config: Path, real: Sandbox, *args: str) -> Any:
    result = run_for_real(config, real, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_rehearsed(report: Any, rehearsal: Sandbox, tmp_path: Path) -> None:
    """The rehearsal went to ``rehearsal``'s servers and into the sandbox state only."""
    assert report.run_id == RUN_ID
    assert (report.channels["email"].sent, report.channels["sms"].sent) == (3, 2)
    assert report.channels["sms"].error_codes == {"21610": 1}
    assert {p: n for p, n in rehearsal.counts().items() if n} == {"sendgrid": 3, "twilio": 2}
    assert Path(report.output_dir) == tmp_path / "campaignkit-results" / "sandbox" / RUN_ID
    assert (Path(report.output_dir) / "rejected.csv").exists()
    assert (tmp_path / ".campaignkit" / "ledger.sandbox.db").exists()
    assert not (tmp_path / ".campaignkit" / "ledger.db").exists()
    assert not (tmp_path / "campaignkit-results" / RUN_ID).exists()


def assert_real_run_sends_everything(config: Path, real: Sandbox, tmp_path: Path) -> None:
    """The real run, in its own process: not "already ran", nobody suppressed by the
    rehearsal; its state is the real ledger, which holds this run only."""
    assert cli_json(config, real, "suppressions", str(config)) == []
    assert cli_json(config, real, "runs", str(config)) == []
    result = run_for_real(
        config, real, "run", str(config), "--json", "--logical-date", "2024-05-01"
    )
    assert result.returncode == 1, result.stderr  # the 21610 refusal: partial
    assert "Already ran" not in result.stderr
    report = json.loads(result.stdout)
    assert report["run_id"] == RUN_ID
    sms = report["sms_campaign_results"]
    # The unsubscribed number was tried at the provider, not skipped as suppressed.
    assert (sms["sent"], sms["failed"], sms["skipped"]) == (2, 1, 0)
    assert sms["error_codes"] == {"21610": 1}
    assert report["email_campaign_results"]["sent"] == 3
    assert real.counts() == {"sendgrid": 3, "twilio": 2}
    assert len(real.servers["twilio"].request_times) == 3
    assert report["output_dir"] == str(tmp_path / "campaignkit-results" / RUN_ID)
    runs = cli_json(config, real, "runs", str(config))
    assert [r["run_id"] for r in runs] == [RUN_ID]
    assert runs[0]["channels"]["sms"]["sent"] == 2
    # The real list now holds the real provider's answer, from the real run.
    real_list = cli_json(config, real, "suppressions", str(config))
    assert [(e["address"], e["source"]) for e in real_list] == [
        (UNSUBSCRIBED, f"twilio run {RUN_ID}")
    ]
    # The sandbox ledger still has the rehearsal, apart.
    rehearsals = cli_json(config, real, "runs", str(config), "--sandbox")
    assert [r["run_id"] for r in rehearsals] == [RUN_ID]


def test_rehearse_with_the_fixture_then_run_for_real(
    tmp_path: Path, ck_sandbox: Sandbox, real: Sandbox
) -> None:
    config = write_campaign(tmp_path, real)
    pipeline = ck_sandbox.pipeline(config, sleep=lambda s: None)
    assert pipeline.rehearsal
    assert pipeline.state_path == tmp_path / ".campaignkit" / "ledger.sandbox.db"
    report = pipeline.run(logical_date=DATE)
    assert_rehearsed(report, ck_sandbox, tmp_path)
    assert real.counts() == {"sendgrid": 0, "twilio": 0}
    # The fake Twilio's STOP went to the sandbox's suppression list.
    ledger = pipeline.ledger()
    try:
        assert [a for _, a, _, _ in ledger.suppressions("phone")] == [UNSUBSCRIBED]
    finally:
        ledger.close()
    # Rehearsing again is "already ran" in the sandbox, still nothing real.
    again = ck_sandbox.pipeline(config, sleep=lambda s: None).run(logical_date=DATE)
    assert again.run_id == RUN_ID and ck_sandbox.counts()["twilio"] == 2

    assert_real_run_sends_everything(config, real, tmp_path)


def test_rehearse_with_apply_then_run_for_real(tmp_path: Path, real: Sandbox) -> None:
    """The documented pattern: apply() then Pipeline.from_config with the sandbox env."""
    config = write_campaign(tmp_path, real)
    with Sandbox(["sendgrid", "twilio"]) as rehearsal:
        cfg = rehearsal.apply(load_config(config))
        assert cfg.execution.state_path == ".campaignkit/ledger.sandbox.db"
        assert cfg.execution.output_dir == "campaignkit-results/sandbox"
        assert rehearsal.apply(cfg) == cfg  # applying twice changes nothing more
        pipeline = Pipeline.from_config(cfg, env=rehearsal.env(cfg), sleep=lambda s: None)
        report = pipeline.run(logical_date=DATE)
        assert_rehearsed(report, rehearsal, tmp_path)
    assert_real_run_sends_everything(config, real, tmp_path)


def test_a_pipeline_pointed_at_a_sandbox_by_hand_is_a_rehearsal(
    tmp_path: Path, real: Sandbox
) -> None:
    """Options copied from the sandbox, a Pipeline built by hand, default arguments:
    the pipeline notices it talks to a sandbox server and keeps to the sandbox state."""
    config = write_campaign(tmp_path, real)
    with Sandbox(["sendgrid", "twilio"]) as rehearsal:
        cfg = load_config(config)
        channels = [
            attrs.evolve(c, options={**c.options, **rehearsal.channel_options(c.provider)})
            for c in cfg.channels
        ]
        assert rehearsal.url("twilio") == channels[1].options["base_url"]
        pipeline = Pipeline(
            "rehearsed",
            cfg.source,
            channels,
            base_dir=tmp_path,
            env=rehearsal.env(cfg),
            sleep=lambda s: None,
        )
        assert pipeline.rehearsal
        report = pipeline.run(logical_date=DATE)
        assert_rehearsed(report, rehearsal, tmp_path)
        # A campaign file pointing at a running sandbox server is a rehearsal too.
        pointed = Pipeline.from_file(config)
        assert pointed.rehearsal  # `real` is a sandbox of this process
        assert not Pipeline.from_file(config, rehearsal=False).rehearsal
    assert_real_run_sends_everything(config, real, tmp_path)


def test_rehearsal_false_is_the_real_state_in_process(tmp_path: Path, real: Sandbox) -> None:
    config = write_campaign(tmp_path, real)
    with Sandbox(["sendgrid", "twilio"]) as rehearsal:
        rehearsal.pipeline(config, sleep=lambda s: None).run(logical_date=DATE)
    env = {"EMAIL_API_TOKEN": "sandbox-token", "SMS_API_TOKEN": "sandbox-token"}
    pipeline = Pipeline.from_file(config, env=env, rehearsal=False, sleep=lambda s: None)
    assert not pipeline.rehearsal
    assert pipeline.state_path == tmp_path / ".campaignkit" / "ledger.db"
    report = pipeline.run(logical_date=DATE)
    assert report.channels["sms"].error_codes == {"21610": 1}  # tried, not suppressed
    assert real.counts() == {"sendgrid": 3, "twilio": 2}
    assert [r.run_id for r in pipeline.runs()] == [RUN_ID]


def test_same_output_dir_for_rehearsal_and_real_run(tmp_path: Path, real: Sandbox) -> None:
    """An explicit output_dir is isolated too: the rehearsal writes under its sandbox/
    folder, so the real run of the same run id can create its run directory."""
    config = write_campaign(tmp_path, real)
    out = tmp_path / "out"
    with Sandbox(["sendgrid", "twilio"]) as rehearsal:
        first = rehearsal.pipeline(config, sleep=lambda s: None)
        report = first.run(logical_date=DATE, output_dir=out)
        assert Path(report.output_dir) == out / "sandbox" / RUN_ID
        assert first.output_root(out / "sandbox") == out / "sandbox"
    env = {"EMAIL_API_TOKEN": "sandbox-token", "SMS_API_TOKEN": "sandbox-token"}
    pipeline = Pipeline.from_file(config, env=env, rehearsal=False, sleep=lambda s: None)
    real_report = pipeline.run(logical_date=DATE, output_dir=out)
    assert Path(real_report.output_dir) == out / RUN_ID
    assert real_report.channels["email"].sent == 3
    assert real.counts() == {"sendgrid": 3, "twilio": 2}


def test_cli_sandbox_and_python_rehearsals_share_the_sandbox_state(
    tmp_path: Path, real: Sandbox
) -> None:
    """A Python rehearsal is what `--sandbox` looks at: same ledger, same folders."""
    config = write_campaign(tmp_path, real)
    with Sandbox(["sendgrid", "twilio"]) as rehearsal:
        rehearsal.pipeline(config, sleep=lambda s: None).run(logical_date=DATE)
    rehearsals = cli_json(config, real, "runs", str(config), "--sandbox")
    assert [r["run_id"] for r in rehearsals] == [RUN_ID]
    listing = cli_json(config, real, "suppressions", str(config), "--sandbox")
    assert [e["address"] for e in listing] == [UNSUBSCRIBED]
    report = run_for_real(config, real, "report", str(config), RUN_ID, "--sandbox")
    assert report.returncode == 0, report.stderr
    assert "partial" in report.stdout
    assert not (tmp_path / ".campaignkit" / "ledger.db").exists()


# -- the pieces ----------------------------------------------------------------------------


def test_apply_refuses_a_channel_it_cannot_sandbox(tmp_path: Path, real: Sandbox) -> None:
    config = load_config(write_campaign(tmp_path, real))
    with Sandbox(["twilio"]) as only_sms:
        with pytest.raises(ConfigError, match="no server for provider 'sendgrid'") as error:
            only_sms.apply(config)
        assert error.value.path == "channels.email.provider"
        with pytest.raises(ConfigError):
            only_sms.pipeline(config)
        disabled = attrs.evolve(
            config,
            channels=tuple(
                attrs.evolve(c, enabled=False) if c.name == "email" else c for c in config.channels
            ),
        )
        assert only_sms.apply(disabled).execution.state_path.endswith("ledger.sandbox.db")
        with pytest.raises(ValueError, match="always a rehearsal"):
            only_sms.pipeline(disabled, rehearsal=False)


@pytest.mark.parametrize(
    ("state_path", "output_dir", "expected"),
    [
        (".campaignkit/ledger.db", "campaignkit-results", ".campaignkit/ledger.sandbox.db"),
        ("state/ledger", "out", "state/ledger.sandbox"),
        ("/abs/x.v2.db", "/abs/out", "/abs/x.v2.sandbox.db"),
        (".ledger", "o", ".ledger.sandbox"),
    ],
)
def test_rehearsal_execution(state_path: str, output_dir: str, expected: str) -> None:
    execution = Execution(state_path=state_path, output_dir=output_dir)
    assert not is_rehearsal(execution)
    rehearsed = rehearsal_execution(execution)
    assert rehearsed.state_path == expected
    assert rehearsed.output_dir == str(Path(output_dir) / "sandbox")
    assert is_rehearsal(rehearsed)
    assert rehearsal_execution(rehearsed) == rehearsed  # idempotent


def test_rehearsal_output_root() -> None:
    assert rehearsal_output_root(Path("out")) == Path("out/sandbox")
    assert rehearsal_output_root(Path("out/sandbox")) == Path("out/sandbox")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"base_url": "http://127.0.0.1:8080"}, ("127.0.0.1", 8080)),
        ({"base_url": "http://LOCALHOST:8080/v2"}, ("localhost", 8080)),
        ({"base_url": "http://[::1]:8080"}, ("::1", 8080)),
        ({"base_url": "https://api.twilio.com"}, ("api.twilio.com", 443)),
        ({"base_url": "http://example.com"}, ("example.com", 80)),
        ({"base_url": "http://127.0.0.1:notaport"}, None),
        ({"base_url": "http://[::1"}, None),
        ({"host": "127.0.0.1", "port": 2525}, ("127.0.0.1", 2525)),
        ({"host": "127.0.0.1", "port": "2525"}, None),
        ({"host": "127.0.0.1", "port": True}, None),
        ({"base_url": 12}, None),
        ({}, None),
    ],
)
def test_endpoint(options: dict[str, Any], expected: tuple[str, int] | None) -> None:
    assert _endpoint(options) == expected


def _sms(options: dict[str, Any], *, name: str = "sms", enabled: bool = True) -> Channel:
    return Channel(
        name=name,
        provider="twilio",
        template=Template(body="Hi"),
        options=options,
        require_consent=False,
        enabled=enabled,
    )


def test_detection_follows_the_servers_lifetime() -> None:
    with TwilioServer() as server:
        options = server.channel_options()
        assert sandbox_channels([_sms(options)]) == ["sms"]
        assert sandbox_channels([_sms(options, enabled=False)]) == []
        local = {**options, "base_url": f"http://localhost:{server.port}/"}
        assert sandbox_channels([_sms(local)]) == ["sms"]
        for host in ("10.0.0.1", "[::1]", "127.0.0.2"):  # another socket than the server's
            other = {**options, "base_url": f"http://{host}:{server.port}"}
            assert sandbox_channels([_sms(other)]) == [], host
    assert sandbox_channels([_sms(options)]) == []  # stopped: just an address now


def test_smtp_sandbox_is_detected() -> None:
    with SmtpServer() as server:
        channel = Channel(name="email", provider="smtp", options=server.channel_options())
        assert sandbox_channels([channel]) == ["email"]
    assert sandbox_channels([channel]) == []


def test_mixed_channels_rehearse_and_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with TwilioServer() as server, caplog.at_level(logging.WARNING, logger="campaignkit"):
        pipeline = Pipeline(
            "mixed",
            StaticSource([]),
            [_sms(server.channel_options()), _sms({}, name="sms2")],
            base_dir=tmp_path,
        )
    assert pipeline.rehearsal
    assert "channels sms send to the campaignkit sandbox" in caplog.text
    assert "channels sms2 do not point at it" in caplog.text
