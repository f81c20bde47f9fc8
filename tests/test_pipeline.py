"""End-to-end runs of the Pipeline with the recording channel."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pluggy
import pytest

from campaignkit import (
    Channel,
    ConfigError,
    CsvSource,
    Execution,
    Pipeline,
    RetryPolicy,
    RunStatus,
    SourceError,
    Template,
    TemplateError,
    get_plugin_manager,
    hookimpl,
)
from campaignkit.testing import recording_plugin

HEADER = "customer_id,email_address,phone,push_token,first_name,segment,ok_email,ok_sms,ok_push\n"


def write_segment(path: Path, rows: list[str]) -> Path:
    path.write_text(HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def source(path: Path) -> CsvSource:
    return CsvSource(
        path,
        columns={"id": "customer_id", "email": "email_address"},
        consent={"email": "ok_email", "sms": "ok_sms", "push": "ok_push"},
    )


def channels(**overrides: Any) -> list[Channel]:
    common: dict[str, Any] = {"provider": "recording", **overrides}
    return [
        Channel(
            name="email",
            template=Template(subject="Hi {{ first_name }}", body="Deals for {{ segment }}"),
            options={"address_field": "email"},
            **common,
        ),
        Channel(
            name="sms",
            template=Template(body="{{ first_name }}: 20% off"),
            options={"address_field": "phone"},
            **common,
        ),
        Channel(
            name="push",
            template=Template(title="Sale", body="Hello {{ first_name }}"),
            options={"address_field": "push_token"},
            **common,
        ),
    ]


@pytest.fixture
def segment(tmp_path: Path) -> Path:
    return write_segment(
        tmp_path / "seg.csv",
        [
            "c1,a@example.com,+14155550101,tokA,Ann,premium,yes,yes,yes",
            "c2,b@example.com,+14155550102,tokB,Bob,standard,no,yes,yes",
            "c3,,+14155550103,,Cid,premium,yes,no,yes",
            ",nobody@example.com,,,Nil,premium,yes,yes,yes",
            "c5,e@example.com,+14155550105,tokE,Eve,premium,maybe,yes,yes",
        ],
    )


def make(tmp_path: Path, segment: Path, pm: pluggy.PluginManager, **kw: Any) -> Pipeline:
    chans = kw.pop("channels", None) or channels()
    return Pipeline(
        "test_campaign",
        source(segment),
        chans,
        plugins=pm,
        env={},
        base_dir=tmp_path,
        sleep=kw.pop("sleep", lambda s: None),
        **kw,
    )


def test_run_end_to_end(
    tmp_path: Path, segment: Path, pm: pluggy.PluginManager, recorder: Any
) -> None:
    pipeline = make(tmp_path, segment, pm)
    report = pipeline.run()
    assert report.status is RunStatus.SUCCEEDED
    assert report.rows_read == 5 and report.rows_rejected == 2
    assert report.rejected_reasons == {"empty_required_field": 1, "bad_consent_value": 1}
    email, sms, push = (report.channels[n] for n in ("email", "sms", "push"))
    assert (email.sent, email.skipped, email.reasons) == (
        1,
        2,
        {"no_consent": 1, "missing_address": 1},
    )
    assert (sms.sent, sms.skipped, sms.reasons) == (2, 1, {"no_consent": 1})
    assert (push.sent, push.skipped, push.reasons) == (2, 1, {"missing_address": 1})
    sent = {(m.channel, m.address) for m in recorder.outbox.messages}
    assert sent == {
        ("email", "a@example.com"),
        ("sms", "+14155550101"),
        ("sms", "+14155550102"),
        ("push", "tokA"),
        ("push", "tokB"),
    }
    msg = next(m for m in recorder.outbox.messages if m.channel == "email")
    assert (msg.subject, msg.body) == ("Hi Ann", "Deals for premium")
    # The JSON report names channel sections as the seed does.
    data = json.loads((Path(report.output_dir or "") / "report.json").read_text())
    assert data["email_campaign_results"]["sent"] == 1
    assert data["sms_campaign_results"]["sent"] == 2
    assert data["push_notification_results"]["sent"] == 2
    # Per-recipient results and rejected rows are on disk; nothing is lost.
    out = Path(report.output_dir or "")
    lines = pipeline.results(report.run_id, "email")
    assert [(r.recipient_id, r.status.value) for r in lines] == [
        ("c1", "sent"),
        ("c2", "skipped"),
        ("c3", "skipped"),
    ]
    rejected = (out / "rejected.csv").read_text().splitlines()
    assert rejected[0].startswith("line,reason")
    assert any(r.startswith("5,empty_required_field") for r in rejected)
    assert any(r.startswith("6,bad_consent_value") for r in rejected)
    assert not (out / "segment.spool").exists()


def test_target_customers_caps_in_source_order(
    tmp_path: Path, pm: pluggy.PluginManager, recorder: Any
) -> None:
    rows = [f"c{i},u{i}@example.com,,,N{i},premium,yes,no,no" for i in range(10)]
    seg = write_segment(tmp_path / "s.csv", rows)
    chans = [channels()[0]]
    chans[0] = Channel(
        name="email",
        provider="recording",
        target_customers=4,
        template=Template(body="x"),
        options={"address_field": "email"},
    )
    report = make(tmp_path, seg, pm, channels=chans).run()
    assert report.channels["email"].sent == 4
    assert report.channels["email"].reasons == {"over_target": 6}
    assert [m.recipient_id for m in recorder.outbox.messages] == ["c0", "c1", "c2", "c3"]


def test_transient_failures_are_retried_constant_delay(tmp_path: Path, segment: Path) -> None:
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    sleeps: list[float] = []
    chans = channels()
    chans[1] = Channel(
        name="sms",
        provider="recording",
        template=Template(body="x"),
        options={"address_field": "phone", "flaky": {"+14155550101": 1, "+14155550102": 5}},
    )
    pipeline = make(tmp_path, segment, pm, channels=chans, sleep=sleeps.append)
    report = pipeline.run()
    sms = report.channels["sms"]
    # Default policy: 2 retries, 5 minutes apart.
    assert sleeps == [300.0, 300.0]
    assert sms.retries == 2
    assert (sms.sent, sms.failed) == (1, 1)
    assert sms.reasons == {"retries_exhausted": 1, "no_consent": 1}
    assert report.status is RunStatus.PARTIAL
    results = {r.recipient_id: r for r in pipeline.results(report.run_id, "sms")}
    assert results["c1"].attempts == 2 and results["c1"].status == "sent"
    assert results["c2"].attempts == 3 and results["c2"].error_code == "flaky"
    # Only failed messages were re-sent: the email and push channels sent once each.
    assert len(rec.outbox.for_channel("sms")) == 1


def test_retry_policy_is_configurable(tmp_path: Path, segment: Path) -> None:
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    sleeps: list[float] = []
    chans = [
        Channel(
            name="sms",
            provider="recording",
            template=Template(body="x"),
            retry=RetryPolicy(retries=1, delay_minutes=0.5),
            options={"address_field": "phone", "flaky": {"+14155550101": 9}},
        )
    ]
    report = make(tmp_path, segment, pm, channels=chans, sleep=sleeps.append).run()
    assert sleeps == [30.0]
    assert report.channels["sms"].failed == 1


def test_permanent_failures_are_not_retried(tmp_path: Path, segment: Path) -> None:
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    sleeps: list[float] = []
    chans = [
        Channel(
            name="push",
            provider="recording",
            template=Template(body="x"),
            options={
                "address_field": "push_token",
                "fail": ["tokA"],
                "fail_code": "DeviceNotRegistered",
            },
        )
    ]
    report = make(tmp_path, segment, pm, channels=chans, sleep=sleeps.append).run()
    push = report.channels["push"]
    assert sleeps == []
    assert (push.sent, push.failed) == (1, 1)
    assert push.error_codes == {"DeviceNotRegistered": 1}
    assert push.reasons["permanent_error"] == 1


def test_source_error_sends_nothing(
    tmp_path: Path, pm: pluggy.PluginManager, recorder: Any
) -> None:
    seg = tmp_path / "s.csv"
    rows = "".join(
        f"c{i},u{i}@example.com,+1415555{i:04d},t{i},N,p,yes,yes,yes\n" for i in range(50)
    )
    seg.write_text(HEADER + rows + 'c99,"unterminated,,,,,,,\n', encoding="utf-8")
    with pytest.raises(SourceError) as info:
        make(tmp_path, seg, pm).run()
    assert "s.csv" in str(info.value)
    assert recorder.outbox.messages == []


def test_missing_address_column_is_a_file_error(
    tmp_path: Path, pm: pluggy.PluginManager, recorder: Any
) -> None:
    seg = tmp_path / "s.csv"
    seg.write_text(
        "customer_id,email_address,first_name,segment,ok_email,ok_sms,ok_push\n"
        "c1,a@example.com,Ann,p,yes,yes,yes\n",
        encoding="utf-8",
    )
    with pytest.raises(SourceError) as info:
        make(tmp_path, seg, pm).run()
    assert "phone" in str(info.value) or "push_token" in str(info.value)
    assert recorder.outbox.messages == []


def test_template_with_unknown_field_fails_validation(
    tmp_path: Path, segment: Path, pm: pluggy.PluginManager, recorder: Any
) -> None:
    chans = [
        Channel(
            name="email",
            provider="recording",
            template=Template(subject="{{ promo_code }}", body="x"),
        )
    ]
    pipeline = make(tmp_path, segment, pm, channels=chans)
    with pytest.raises(TemplateError, match=r"channels\.email\.template\.subject.*promo_code"):
        pipeline.validate()
    with pytest.raises(TemplateError):
        pipeline.run()
    assert recorder.outbox.messages == []


def test_html_is_autoescaped_text_is_not(
    tmp_path: Path, pm: pluggy.PluginManager, recorder: Any
) -> None:
    seg = write_segment(tmp_path / "s.csv", ["c1,a@example.com,,,<b>Ann</b>,p,yes,no,no"])
    chans = [
        Channel(
            name="email",
            provider="recording",
            template=Template(body="Hi {{ first_name }}", html="<p>Hi {{ first_name }}</p>"),
        )
    ]
    make(tmp_path, seg, pm, channels=chans).run()
    (msg,) = recorder.outbox.messages
    assert msg.body == "Hi <b>Ann</b>"
    assert msg.html == "<p>Hi &lt;b&gt;Ann&lt;/b&gt;</p>"


def test_sandboxed_templates_refuse_unsafe_access(
    tmp_path: Path, segment: Path, pm: pluggy.PluginManager, recorder: Any
) -> None:
    chans = [
        Channel(
            name="email",
            provider="recording",
            template=Template(body="{{ first_name.__class__.__mro__[1].__subclasses__() }}"),
        )
    ]
    report = make(tmp_path, segment, pm, channels=chans).run()
    assert report.channels["email"].reasons.get("render_error") == 1
    assert recorder.outbox.messages == []


def test_missing_token_is_a_config_error_before_sending(
    tmp_path: Path, segment: Path, pm: pluggy.PluginManager
) -> None:
    chans = [
        Channel(
            name="sms",
            provider="twilio",
            template=Template(body="x"),
            options={"account_sid": "AC" + "0" * 32, "from": "+15005550006"},
        )
    ]
    pipeline = make(tmp_path, segment, pm, channels=chans)
    with pytest.raises(ConfigError, match="SMS_API_TOKEN is not set") as info:
        pipeline.run()
    assert info.value.path == "channels.sms.token_env"
    assert not (tmp_path / "campaignkit-results").exists()


def test_unknown_provider_names_installed_ones(
    tmp_path: Path, segment: Path, pm: pluggy.PluginManager
) -> None:
    chans = [Channel(name="sms", provider="nope", template=Template(body="x"))]
    with pytest.raises(ConfigError, match=r"channels\.sms\.provider: no channel provider 'nope'"):
        make(tmp_path, segment, pm, channels=chans).validate()


def test_channels_run_in_parallel(tmp_path: Path, segment: Path) -> None:
    barrier = threading.Barrier(3, timeout=10)
    rec = recording_plugin()
    base = rec.notifier_class

    class Meeting(base):  # type: ignore[misc, valid-type]
        name = "meeting"

        def send_batch(self, conn: None, messages: Any) -> Any:
            barrier.wait()  # breaks (fails the batch) unless all three channels are sending
            return super().send_batch(conn, messages)

    class Plugin:
        @hookimpl
        def campaignkit_register_channels(self, register: Any) -> None:
            register(Meeting)

    pm = get_plugin_manager(load_entrypoints=False, plugins=[Plugin()])
    chans = [
        Channel(
            name=c.name,
            provider="meeting",
            template=c.template,
            options=c.options,
            concurrency=1,
            batch_size=1000,
        )
        for c in channels()
    ]
    report = make(tmp_path, segment, pm, channels=chans).run()
    assert report.status is RunStatus.SUCCEEDED, report.channels


def test_observer_hooks(tmp_path: Path, segment: Path, recorder: Any) -> None:
    seen: list[tuple[str, Any]] = []

    class Observer:
        @hookimpl
        def campaignkit_run_started(self, run_id: str, pipeline: str, channels: Any) -> None:
            seen.append(("started", sorted(channels)))

        @hookimpl
        def campaignkit_channel_finished(self, run_id: str, result: Any) -> None:
            seen.append(("channel", result.channel))

        @hookimpl
        def campaignkit_run_finished(self, report: Any) -> None:
            seen.append(("finished", report.status))

    pm = get_plugin_manager(load_entrypoints=False, plugins=[recorder, Observer()])
    make(tmp_path, segment, pm).run()
    assert seen[0] == ("started", ["email", "push", "sms"])
    assert sorted(x[1] for x in seen[1:4]) == ["email", "push", "sms"]
    assert seen[4] == ("finished", RunStatus.SUCCEEDED)


def test_timeout_stops_new_sends(tmp_path: Path, segment: Path, recorder: Any) -> None:
    pm = get_plugin_manager(load_entrypoints=False, plugins=[recorder])
    chans = [
        Channel(
            name="sms",
            provider="recording",
            template=Template(body="x"),
            options={"address_field": "phone", "flaky": {"+14155550101": 9}},
        )
    ]
    import time as _time

    report = make(
        tmp_path,
        segment,
        pm,
        channels=chans,
        sleep=lambda s: _time.sleep(0.05),
        execution=Execution(timeout_seconds=0.02),
    ).run()
    sms = report.channels["sms"]
    assert report.status is RunStatus.TIMED_OUT
    assert sms.stopped == "timed_out"
    assert sms.pending >= 1  # left for a resume
    assert sms.total == 3


def test_large_segment_streams_through_the_spool(
    tmp_path: Path, pm: pluggy.PluginManager, recorder: Any
) -> None:
    rows = [
        f"c{i},u{i}@example.com,+1415{2000000 + i:07d},t{i},N{i},p,yes,{'yes' if i % 2 else 'no'}"
        ",no"
        for i in range(4321)
    ]
    seg = write_segment(tmp_path / "big.csv", rows)
    report = make(tmp_path, seg, pm).run()
    assert report.channels["email"].sent == 4321
    assert report.channels["sms"].sent == 2160
    assert report.channels["push"].reasons == {"no_consent": 4321}
    ids = [m.recipient_id for m in recorder.outbox.for_channel("email")]
    assert sorted(ids) == sorted(f"c{i}" for i in range(4321))
