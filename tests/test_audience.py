"""Audience selection end to end through the ledger: properties and rules."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignkit import (
    AudienceGuardError,
    Channel,
    Pipeline,
    Recipient,
    RunStatus,
    Schedule,
    Template,
    TemplateError,
    get_plugin_manager,
)
from campaignkit._audience import QuietHours
from campaignkit._config import FrequencyCap, QuietHoursConfig
from campaignkit.testing import StaticSource, recording_plugin

DAY = datetime(2026, 3, 2, tzinfo=UTC)

row = st.fixed_dictionaries(
    {
        "email": st.sampled_from(
            [
                "a@example.com",
                "A@Example.com",
                "b@example.com",
                "c@example.org",
                "not-an-email",
                "",
                "d@example.net",
            ]
        ),
        "consent": st.sampled_from([True, False, None]),
        "segment": st.sampled_from(["premium", "standard"]),
    }
)


def run_with(tmp: Path, rows: list[dict[str, Any]], **channel: Any) -> tuple[Any, Any, Pipeline]:
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    src = StaticSource.from_dicts(
        [
            {
                "id": f"c{i}",
                "email": r["email"] or None,
                "segment": r["segment"],
                "consent": {} if r["consent"] is None else {"email": r["consent"]},
            }
            for i, r in enumerate(rows)
        ],
        fields={"id", "email", "phone", "push_token", "segment"},
    )
    ch = Channel(name="email", provider="recording", template=Template(body="hi"), **channel)
    p = Pipeline("aud", src, [ch], plugins=pm, env={}, base_dir=tmp, sleep=lambda s: None)
    return p.run(logical_date=DAY), rec, p


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(row, max_size=25),
    target=st.one_of(st.none(), st.integers(0, 10)),
    filtered=st.booleans(),
)
def test_selection_properties(
    tmp_path_factory: Any, rows: list[dict[str, Any]], target: int | None, filtered: bool
) -> None:
    kw: dict[str, Any] = {"target_customers": target}
    if filtered:
        kw["filter"] = 'segment == "premium"'
    report, rec, p = run_with(tmp_path_factory.mktemp("a"), rows, **kw)
    results = {r.recipient_id: r for r in p.results(report.run_id, "email")}
    sent = list(rec.outbox.messages)
    # Every recipient has exactly one final state; skipped ones exactly one reason.
    assert len(results) == len(rows)
    for r in results.values():
        assert r.status.value in ("sent", "skipped")
        assert (r.reason is None) == (r.status.value == "sent")
    # Nobody without consent, nobody twice, caps respected, filter respected.
    ids = [m.recipient_id for m in sent]
    for m in sent:
        i = int(m.recipient_id[1:])
        assert rows[i]["consent"] is True
        if filtered:
            assert rows[i]["segment"] == "premium"
    lowered = [m.address.lower() for m in sent]
    assert len(lowered) == len(set(lowered)) == len(ids)
    if target is not None:
        assert len(sent) <= target
    # Deterministic: the same segment selects the same recipients.
    _again, rec2, _ = run_with(tmp_path_factory.mktemp("b"), rows, **kw)
    assert sorted(m.recipient_id for m in rec2.outbox.messages) == sorted(ids)


def test_reasons_in_order(tmp_path: Path) -> None:
    rows = [
        {"email": "a@example.com", "consent": True, "segment": "premium"},  # sent
        {"email": "A@EXAMPLE.com", "consent": True, "segment": "premium"},  # duplicate
        {"email": "nope", "consent": True, "segment": "premium"},  # invalid
        {"email": "", "consent": True, "segment": "premium"},  # missing
        {"email": "b@example.com", "consent": False, "segment": "premium"},  # no consent
        {"email": "c@example.com", "consent": True, "segment": "standard"},  # filtered
        {"email": "d@example.com", "consent": True, "segment": "premium"},  # over target
    ]
    report, rec, p = run_with(tmp_path, rows, filter='segment == "premium"', target_customers=1)
    reasons = [r.reason for r in p.results(report.run_id, "email")]
    assert reasons == [
        None,
        "duplicate",
        "invalid_address",
        "missing_address",
        "no_consent",
        "filtered",
        "over_target",
    ]
    assert [m.address for m in rec.outbox.messages] == ["a@example.com"]


def test_seeded_sample_is_deterministic_and_differs_from_source_order(tmp_path: Path) -> None:
    rows = [{"email": f"u{i}@example.com", "consent": True, "segment": "p"} for i in range(50)]
    _first, rec1, _ = run_with(
        tmp_path / "1", rows, target_customers=5, selection="sample", sample_seed=7
    )
    _second, rec2, _ = run_with(
        tmp_path / "2", rows, target_customers=5, selection="sample", sample_seed=7
    )
    picked = sorted(m.recipient_id for m in rec1.outbox.messages)
    assert picked == sorted(m.recipient_id for m in rec2.outbox.messages)
    assert len(picked) == 5 and picked != [f"c{i}" for i in range(5)]


def test_suppression_file_and_ledger_suppression(tmp_path: Path) -> None:
    (tmp_path / "stop.txt").write_text("# unsubscribed\nB@example.com\n", encoding="utf-8")
    rows = [
        {"email": e, "consent": True, "segment": "p"}
        for e in ["a@example.com", "b@example.com", "gone@example.com"]
    ]
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    src = StaticSource.from_dicts(
        {"id": f"c{i}", "email": r["email"], "consent": {"email": True}} for i, r in enumerate(rows)
    )

    class Stopping(rec.notifier_class):  # type: ignore[misc, valid-type]
        stop_codes = frozenset({"unsubscribed"})

    class Plugin:
        from campaignkit import hookimpl

        @hookimpl
        def campaignkit_register_channels(self, register: Any) -> None:
            Stopping.name = "stopping"
            register(Stopping)

    pm.register(Plugin())
    ch = Channel(
        name="email",
        provider="stopping",
        template=Template(body="hi"),
        suppression_files=["stop.txt"],
        options={"fail": ["gone@example.com"], "fail_code": "unsubscribed"},
    )
    p = Pipeline("sup", src, [ch], plugins=pm, env={}, base_dir=tmp_path)
    first = p.run(logical_date=DAY)
    assert first.channels["email"].reasons == {"suppressed": 1, "permanent_error": 1}
    # The provider said "unsubscribed": the next run suppresses that address too.
    second = p.run(logical_date=datetime(2026, 3, 3, tzinfo=UTC))
    assert second.channels["email"].reasons == {"suppressed": 2}
    assert second.channels["email"].sent == 1


def test_frequency_cap_counts_sends_of_other_runs(tmp_path: Path) -> None:
    rows = [{"email": f"u{i}@example.com", "consent": True, "segment": "p"} for i in range(3)]
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    src = StaticSource.from_dicts(
        {"id": f"c{i}", "email": r["email"], "consent": {"email": True}} for i, r in enumerate(rows)
    )
    cap = FrequencyCap(max_messages=2, window_hours=24)
    p = Pipeline(
        "cap",
        src,
        [
            Channel(
                name="email", provider="recording", template=Template(body="x"), frequency_cap=cap
            )
        ],
        plugins=pm,
        env={},
        base_dir=tmp_path,
    )
    for day in (2, 3):
        assert p.run(logical_date=datetime(2026, 3, day, tzinfo=UTC)).channels["email"].sent == 3
    third = p.run(logical_date=datetime(2026, 3, 4, tzinfo=UTC))
    assert third.channels["email"].reasons == {"frequency_capped": 3}
    assert rec.outbox.count == 6


def test_dry_run_reads_caps_and_suppressions_from_the_ledger_and_writes_nothing(
    tmp_path: Path,
) -> None:
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    src = StaticSource.from_dicts(
        {"id": f"c{i}", "email": f"u{i}@example.com", "consent": {"email": True}} for i in range(4)
    )
    cap = FrequencyCap(max_messages=1, window_hours=24)
    ch = Channel(name="email", provider="recording", template=Template(body="x"), frequency_cap=cap)
    p = Pipeline("cap", src, [ch], plugins=pm, env={}, base_dir=tmp_path)
    assert p.plan().channels["email"].eligible == 4  # no ledger yet: none is made
    assert not p.state_path.exists()
    assert p.run(logical_date=DAY).channels["email"].sent == 4
    ledger = p.ledger()
    ledger.suppress("email", "u0@example.com", reason="unsubscribed")
    ledger.close()

    def contents() -> list[Any]:
        with sqlite3.connect(p.state_path) as conn:
            return [
                conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("runs", "recipients", "channels", "deliveries", "suppressions")
            ]

    before = contents()
    plan = p.plan()
    # Suppression comes before the cap: one reason each.
    assert plan.channels["email"].skipped == {"suppressed": 1, "frequency_capped": 3}
    assert plan.channels["email"].eligible == 0
    assert contents() == before and rec.outbox.count == 4


def test_expected_audience_guard_sends_nothing(tmp_path: Path) -> None:
    rows = [{"email": f"u{i}@example.com", "consent": True, "segment": "p"} for i in range(10)]
    with pytest.raises(AudienceGuardError, match=r"10 eligible recipient.*expected 20"):
        run_with(tmp_path, rows, expected_audience=20, audience_tolerance=0.2)
    report, _rec, _ = run_with(tmp_path / "ok", rows, expected_audience=11, audience_tolerance=0.2)
    assert report.channels["email"].sent == 10


def test_filter_with_unknown_field_fails_validation(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match=r"channels\.email\.filter.*tier"):
        run_with(
            tmp_path,
            [{"email": "a@example.com", "consent": True, "segment": "p"}],
            filter='tier == "gold"',
        )


def test_canary_limit_then_full_run_sends_nobody_twice(tmp_path: Path) -> None:
    rows = [{"email": f"u{i}@example.com", "consent": True, "segment": "p"} for i in range(20)]
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    src = StaticSource.from_dicts(
        {"id": f"c{i}", "email": r["email"], "consent": {"email": True}} for i, r in enumerate(rows)
    )
    p = Pipeline(
        "canary",
        src,
        [Channel(name="email", provider="recording", batch_size=2, template=Template(body="x"))],
        plugins=pm,
        env={},
        base_dir=tmp_path,
    )
    canary = p.run(logical_date=DAY, limit=3)
    assert canary.status is RunStatus.CANARY
    assert (canary.channels["email"].sent, canary.channels["email"].pending) == (3, 17)
    full = p.run(logical_date=DAY)
    assert full.channels["email"].sent == 20
    addresses = [m.address for m in rec.outbox.messages]
    assert len(addresses) == len(set(addresses)) == 20


def test_dry_run_plan_sends_nothing_and_counts(tmp_path: Path) -> None:
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    src = StaticSource.from_dicts(
        [
            {"id": "1", "phone": "+14155552671", "first_name": "Ann", "consent": {"sms": True}},
            {
                "id": "2",
                "phone": "+14155552672",
                "first_name": "Bob" * 60,
                "consent": {"sms": True},
            },
            {"id": "3", "phone": "bogus", "first_name": "Cid", "consent": {"sms": True}},
        ]
    )
    ch = Channel(
        name="sms",
        provider="recording",
        template=Template(body="Hi {{ first_name }}!"),
        options={"address_field": "phone"},
        max_sms_segments=1,
        price_per_segment=0.01,
    )
    p = Pipeline("dry", src, [ch], plugins=pm, env={}, base_dir=tmp_path)
    plan = p.plan(output=tmp_path / "plan.json")
    sms = plan.channels["sms"]
    assert (sms.eligible, sms.skipped, sms.failures) == (
        1,
        {"invalid_address": 1},
        {"too_many_segments": 1},
    )
    assert sms.sms_segments == 1 and sms.estimated_cost == pytest.approx(0.01)
    assert sms.samples[0].body == "Hi Ann!"
    assert rec.outbox.count == 0 and p.runs() == []
    assert (tmp_path / "plan.json").exists()


def test_template_longer_than_max_segments_is_a_validation_error(tmp_path: Path) -> None:
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    src = StaticSource.from_dicts([{"id": "1", "phone": "+14155552671", "consent": {"sms": True}}])
    ch = Channel(
        name="sms",
        provider="recording",
        template=Template(body="x" * 200),
        options={"address_field": "phone"},
        max_sms_segments=1,
    )
    with pytest.raises(TemplateError, match="2 SMS segments"):
        Pipeline("v", src, [ch], plugins=pm, env={}, base_dir=tmp_path).validate()


BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("local_now", "expected_open"),
    [
        (datetime(2026, 1, 10, 22, 0, tzinfo=BERLIN), datetime(2026, 1, 11, 8, 0, tzinfo=BERLIN)),
        (datetime(2026, 1, 11, 7, 59, tzinfo=BERLIN), datetime(2026, 1, 11, 8, 0, tzinfo=BERLIN)),
        (datetime(2026, 1, 11, 12, 0, tzinfo=BERLIN), None),
        # The night the clocks go forward (29 March 2026): 21:00 + 10 h of wall clock is
        # 08:00 CEST, only 10 h of real time later, not 11.
        (datetime(2026, 3, 28, 21, 0, tzinfo=BERLIN), datetime(2026, 3, 29, 8, 0, tzinfo=BERLIN)),
        (datetime(2026, 10, 24, 23, 0, tzinfo=BERLIN), datetime(2026, 10, 25, 8, 0, tzinfo=BERLIN)),
    ],
)
def test_quiet_hours_in_the_recipients_zone(
    local_now: datetime, expected_open: datetime | None
) -> None:
    quiet = QuietHours.parse("21:00", "08:00", timezone="UTC", timezone_field="timezone", path="q")
    r = Recipient("1", attributes={"timezone": "Europe/Berlin"})
    got = quiet.not_before(r, local_now.astimezone(UTC))
    assert got == (None if expected_open is None else expected_open.timestamp())


def test_quiet_hours_defer_and_a_later_resume_sends(tmp_path: Path) -> None:
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    window = QuietHoursConfig(
        start=f"{now - hour:%H:%M}", end=f"{now + hour:%H:%M}", timezone="UTC", timezone_field=None
    )
    src = StaticSource.from_dicts(
        [{"id": "1", "email": "a@example.com", "consent": {"email": True}}]
    )
    p = Pipeline(
        "quiet",
        src,
        [
            Channel(
                name="email", provider="recording", template=Template(body="x"), quiet_hours=window
            )
        ],
        plugins=pm,
        env={},
        base_dir=tmp_path,
    )
    first = p.run(logical_date=DAY)
    assert first.status is RunStatus.DEFERRED and rec.outbox.count == 0
    assert first.channels["email"].deferred == 1
    ledger = p.ledger()
    try:
        when = ledger.next_deferred(first.run_id)
    finally:
        ledger.close()
    assert (
        when is not None
        and abs(when - (now + hour).replace(second=0, microsecond=0).timestamp()) < 61
    )
    # Once the window is over (simulated by moving the deferral into the past), running
    # the logical date again resumes the run and sends the deferred message.
    with sqlite3.connect(tmp_path / ".campaignkit" / "ledger.db") as conn:
        conn.execute("UPDATE deliveries SET not_before = 0 WHERE state = 'deferred'")
    done = p.run(logical_date=DAY)
    assert done.run_id == first.run_id and done.status is RunStatus.SUCCEEDED
    assert rec.outbox.count == 1


def test_guard_does_not_fire_again_when_a_canary_run_continues(tmp_path: Path) -> None:
    rows = [{"email": f"u{i}@example.com", "consent": True, "segment": "p"} for i in range(20)]
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    src = StaticSource.from_dicts(
        {"id": f"c{i}", "email": r["email"], "consent": {"email": True}} for i, r in enumerate(rows)
    )
    ch = Channel(
        name="email",
        provider="recording",
        template=Template(body="x"),
        expected_audience=20,
        audience_tolerance=0.1,
    )
    p = Pipeline("guarded", src, [ch], plugins=pm, env={}, base_dir=tmp_path)
    assert p.run(logical_date=DAY, limit=5).channels["email"].sent == 5
    assert p.run(logical_date=DAY).channels["email"].sent == 20
    assert rec.outbox.count == 20


def test_run_scheduled_sends_deferred_messages_once_due(tmp_path: Path) -> None:
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    window = QuietHoursConfig(
        start=f"{now - hour:%H:%M}", end=f"{now + hour:%H:%M}", timezone="UTC", timezone_field=None
    )
    src = StaticSource.from_dicts(
        [{"id": "1", "email": "a@example.com", "consent": {"email": True}}]
    )
    later = Schedule(start_date=datetime(2100, 1, 1, tzinfo=UTC))  # nothing else is due
    channel = Channel(
        name="email", provider="recording", template=Template(body="x"), quiet_hours=window
    )
    p = Pipeline(
        "quiet2",
        src,
        [channel],
        schedule=later,
        plugins=pm,
        env={},
        base_dir=tmp_path,
    )
    first = p.run(logical_date=DAY)
    assert first.status is RunStatus.DEFERRED
    assert p.run_scheduled(now=now).reports == ()  # still quiet: nothing to do
    with sqlite3.connect(tmp_path / ".campaignkit" / "ledger.db") as conn:
        conn.execute("UPDATE deliveries SET not_before = 0 WHERE state = 'deferred'")
    done = p.run_scheduled(now=now)
    assert [r.run_id for r in done.reports] == [first.run_id]
    assert rec.outbox.count == 1


def test_canary_needs_the_ledger(tmp_path: Path) -> None:
    from campaignkit import ConfigError, Execution

    src = StaticSource.from_dicts(
        [{"id": "1", "email": "a@example.com", "consent": {"email": True}}]
    )
    pm = get_plugin_manager(load_entrypoints=False, plugins=[recording_plugin()])
    p = Pipeline(
        "noledger",
        src,
        [Channel(name="email", provider="recording", template=Template(body="x"))],
        plugins=pm,
        env={},
        base_dir=tmp_path,
        execution=Execution(ledger=False),
    )
    with pytest.raises(ConfigError, match=r"execution\.ledger"):
        p.run(limit=1)
    assert p.run().channels["email"].sent == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "segment": st.sampled_from(["premium", "basic", "", "Premium"]),
                "country": st.sampled_from(["DE", "AT", "FR"]),
                "score": st.integers(-3, 3),
            }
        ),
        max_size=30,
    ),
    st.sampled_from(
        [
            'segment == "premium" and country in ["DE", "AT"]',
            "score > 0 or segment | lower == 'premium'",
            "segment",
            "lipsum(1) | length > 0",
        ]
    ),
)
def test_filter_results_match_jinja_for_every_recipient(
    contexts: list[dict[str, Any]], expression: str
) -> None:
    """Remembered results per field combination are what the sandbox evaluates."""
    from jinja2.sandbox import SandboxedEnvironment

    from campaignkit._audience import compile_filter

    check = compile_filter(expression, channel="email", fields=None)
    direct = SandboxedEnvironment().compile_expression(expression)
    for context in contexts * 2:  # the second time from memory
        assert check(context) is bool(direct(**context))


def test_filter_on_a_missing_field_fails_for_that_recipient() -> None:
    from campaignkit._audience import compile_filter

    check = compile_filter('tier == "gold"', channel="email", fields=None)
    assert check({"tier": "gold"}) is True
    with pytest.raises(TemplateError, match=r"channels\.email\.filter.*tier"):
        check({"segment": "x"})
