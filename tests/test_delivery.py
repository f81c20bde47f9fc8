"""The core's delivery machinery (retries, 429s, rate limits, auth aborts) against the
loopback provider sandboxes: real HTTP on 127.0.0.1, no mocking."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest

from campaignkit import Channel, Pipeline, Rate, RetryPolicy, RunStatus, Template
from campaignkit.testing import StaticSource
from campaignkit.testing.sandbox.expo import ExpoServer
from campaignkit.testing.sandbox.twilio import TwilioServer


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    with TwilioServer() as server:
        server.faults.retry_after = 0.2
        yield server


@pytest.fixture
def expo() -> Iterator[ExpoServer]:
    with ExpoServer() as server:
        yield server


def phones(n: int, *, start: int = 0) -> StaticSource:
    return StaticSource.from_dicts(
        {
            "id": f"c{i}",
            "phone": f"+1415555{i:04d}",
            "first_name": f"N{i}",
            "consent": {"sms": True},
        }
        for i in range(start, start + n)
    )


def sms_pipeline(
    tmp_path: Path,
    pm: pluggy.PluginManager,
    server: TwilioServer,
    source: StaticSource,
    sleeps: list[float] | None = None,
    **channel: Any,
) -> Pipeline:
    ch = Channel(
        name="sms",
        provider="twilio",
        template=Template(body="Hi {{ first_name }}"),
        options=server.channel_options(),
        **channel,
    )
    return Pipeline(
        "t",
        source,
        [ch],
        plugins=pm,
        env={"SMS_API_TOKEN": server.token},
        base_dir=tmp_path,
        sleep=(sleeps if sleeps is not None else []).append,
    )


def results(pipeline: Pipeline, report: Any, channel: str) -> dict[str, dict[str, Any]]:
    return {r.recipient_id: r.to_dict() for r in pipeline.results(report.run_id, channel)}


def test_transient_error_then_success_on_retry(
    tmp_path: Path, pm: pluggy.PluginManager, twilio: TwilioServer
) -> None:
    twilio.faults.fail_next(503, "drop")
    sleeps: list[float] = []
    pipeline = sms_pipeline(tmp_path, pm, twilio, phones(6), sleeps, concurrency=1)
    report = pipeline.run()
    sms = report.channels["sms"]
    assert (sms.sent, sms.failed, sms.retries) == (6, 0, 1)
    assert sleeps == [300.0]
    assert sorted(m["to"] for m in twilio.messages) == [f"+1415555{i:04d}" for i in range(6)]
    retried = [r for r in results(pipeline, report, "sms").values() if r["attempts"] == 2]
    assert len(retried) == 2


def test_429_waits_retry_after_without_spending_retries(
    tmp_path: Path, pm: pluggy.PluginManager, twilio: TwilioServer
) -> None:
    twilio.faults.fail_next(429, 429, 429)
    sleeps: list[float] = []
    report = sms_pipeline(
        tmp_path, pm, twilio, phones(4), sleeps, concurrency=1, retry=RetryPolicy(retries=0)
    ).run()
    assert report.channels["sms"].sent == 4
    assert sleeps == []  # no retry round was needed
    assert report.channels["sms"].requests == 7
    assert len(twilio.messages) == 4


def test_client_rate_limit_is_respected_at_the_server(
    tmp_path: Path, pm: pluggy.PluginManager, twilio: TwilioServer
) -> None:
    report = sms_pipeline(
        tmp_path,
        pm,
        twilio,
        phones(45),
        concurrency=4,
        rate=Rate(messages_per_second=20, requests_per_second=20),
    ).run()
    assert report.channels["sms"].sent == 45
    # GCRA with a burst of one: at most rate + 1 requests in any one-second window.
    assert twilio.requests_per_second() <= 21


def test_server_side_rate_limit_slows_us_down_without_losing_messages(
    tmp_path: Path, pm: pluggy.PluginManager, twilio: TwilioServer
) -> None:
    twilio.faults.rate_limit = 15
    report = sms_pipeline(
        tmp_path, pm, twilio, phones(40), concurrency=4, retry=RetryPolicy(retries=0)
    ).run()
    sms = report.channels["sms"]
    assert (sms.sent, sms.failed) == (40, 0)
    assert len({m["to"] for m in twilio.messages}) == 40 == len(twilio.messages)


def test_invalid_numbers_fail_permanently_with_provider_code(
    tmp_path: Path, pm: pluggy.PluginManager, twilio: TwilioServer
) -> None:
    source = StaticSource.from_dicts(
        [
            {"id": "ok", "first_name": "X", "phone": "+14155550100", "consent": {"sms": True}},
            {"id": "bad", "first_name": "X", "phone": "+14155550199", "consent": {"sms": True}},
            # A fictional 555-01xx number never reaches the provider: invalid_address.
            {"id": "fake", "first_name": "X", "phone": "+15550100123", "consent": {"sms": True}},
            {"id": "stop", "first_name": "X", "phone": "+15005550004", "consent": {"sms": True}},
            {"id": "land", "first_name": "X", "phone": "+15005550009", "consent": {"sms": True}},
        ]
    )
    sleeps: list[float] = []
    twilio.invalid.add("+14155550199")  # valid-looking, refused by the provider
    pipeline = sms_pipeline(tmp_path, pm, twilio, source, sleeps)
    report = pipeline.run()
    sms = report.channels["sms"]
    assert (sms.sent, sms.failed) == (1, 3)
    assert sms.reasons["invalid_address"] == 1
    assert sms.error_codes == {"21211": 1, "21610": 1, "21614": 1}
    assert sleeps == []
    per = results(pipeline, report, "sms")
    assert per["ok"]["provider_message_id"].startswith("SM")
    assert per["bad"]["reason"] == "permanent_error" and per["bad"]["attempts"] == 1


def test_wrong_token_stops_the_channel_and_retry_failed_finishes_it(
    tmp_path: Path, pm: pluggy.PluginManager, twilio: TwilioServer
) -> None:
    pipeline = sms_pipeline(tmp_path, pm, twilio, phones(50), concurrency=2)
    pipeline._env = {"SMS_API_TOKEN": "wrong-token-value"}
    report = pipeline.run()
    sms = report.channels["sms"]
    # Rejected credentials stop the channel: no hammering, nothing lost.
    assert sms.requests <= 2 and sms.sent == 0
    assert sms.failed + sms.pending == 50 and sms.failed <= 2
    assert sms.stopped is not None and sms.stopped.startswith("credentials rejected")
    assert report.status is RunStatus.FAILED
    rows = pipeline.results(report.run_id, "sms")
    assert all("wrong-token-value" not in repr(r) for r in rows)
    # With the right token, retry-failed re-drives the rejected batch and sends the rest.
    pipeline._env = {"SMS_API_TOKEN": twilio.token}
    again = pipeline.retry_failed(report.run_id)
    assert again.run_id == report.run_id
    assert (again.channels["sms"].sent, again.channels["sms"].pending) == (50, 0)
    assert len(twilio.messages) == 50 == len({m["to"] for m in twilio.messages})


def test_per_recipient_failures_inside_http_200(
    tmp_path: Path, pm: pluggy.PluginManager, expo: ExpoServer
) -> None:
    good = [f"ExponentPushToken[good{i}]" for i in range(5)]
    expo.unregistered.add("ExponentPushToken[gone]")
    rows = [{"id": f"g{i}", "push_token": t, "consent": {"push": True}} for i, t in enumerate(good)]
    rows.append({"id": "gone", "push_token": "ExponentPushToken[gone]", "consent": {"push": True}})
    ch = Channel(
        name="push",
        provider="expo",
        template=Template(title="Sale", body="Hi"),
        options=expo.channel_options(),
    )
    report = Pipeline(
        "t",
        StaticSource.from_dicts(rows),
        [ch],
        plugins=pm,
        env={},
        base_dir=tmp_path,
        sleep=lambda s: None,
    ).run()
    push = report.channels["push"]
    assert (push.sent, push.failed, push.requests) == (5, 1, 1)
    assert push.error_codes == {"DeviceNotRegistered": 1}


def test_an_injected_retry_delay_counts_as_time_for_messages_in_doubt(
    tmp_path: Path, pm: pluggy.PluginManager, twilio: TwilioServer
) -> None:
    """A message in doubt is asked about once it had time to settle (twice its request's
    duration); the retry delay counts toward that. An injected ``sleep`` (instant
    retries) stands for the time it was asked for, so no second, real-time wait is
    added after it (on a loaded machine that wait leaked into the sleeps)."""
    twilio.faults.latency = 0.3
    twilio.faults.fail_next("drop")
    sleeps: list[float] = []
    report = sms_pipeline(tmp_path, pm, twilio, phones(2), sleeps, concurrency=1).run()
    assert report.channels["sms"].sent == 2
    assert sleeps == [300.0]
    assert len(twilio.messages) == 2
