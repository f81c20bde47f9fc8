"""The recipient snapshot: its stable format (schema 4), the migration of a schema-3
ledger written with ``marshal``, the identity rule applied in SQL, and the extraction
counts recorded with it."""

from __future__ import annotations

import json
import marshal
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignkit import Channel, CsvSource, Pipeline, Recipient, RejectedRow, Template
from campaignkit._engine import Pending, Renderer, idempotency_key, legacy_idempotency_key
from campaignkit._ledger import SCHEMA_VERSION, LedgerError, SqliteLedger
from campaignkit._ledger._schema import MIGRATIONS

DAY = datetime(2026, 1, 1, tzinfo=UTC)


def begin(ledger: SqliteLedger, run_id: str = "r1") -> None:
    ledger.begin_run(
        run_id=run_id,
        pipeline="p",
        logical_date=DAY,
        fingerprint="f",
        config_file=None,
        max_active_runs=None,
    )


class Sink:
    """A :class:`~campaignkit._ledger.RejectSink` that keeps what it gets."""

    def __init__(self, source_rejects: Mapping[str, int] | None = None) -> None:
        self.rows: list[RejectedRow] = []
        self._reasons = dict(source_rejects or {})

    @property
    def rejected(self) -> int:
        return sum(self._reasons.values())

    def line_counts(self) -> Mapping[str, int] | None:
        return None

    @property
    def reasons(self) -> Mapping[str, int]:
        return self._reasons

    def reject(self, row: RejectedRow) -> None:
        self.rows.append(row)
        self._reasons[row.reason] = self._reasons.get(row.reason, 0) + 1


def r(rid: str, line: int, **kw: Any) -> Recipient:
    return Recipient(rid, line=line, **kw)


# -- the format ------------------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from(["\ud800", "\x00", "\x1f"]))


@settings(max_examples=60, deadline=None)
@given(
    email=st.none() | TEXT,
    token=st.none() | TEXT,
    attributes=st.dictionaries(TEXT, TEXT, max_size=4),
    consent=st.dictionaries(st.sampled_from(["email", "sms", "push"]), st.booleans()),
    line=st.integers(0, 2**40),
)
def test_any_recipient_round_trips(
    tmp_path_factory: pytest.TempPathFactory,
    email: str | None,
    token: str | None,
    attributes: dict[str, str],
    consent: dict[str, bool],
    line: int,
) -> None:
    """Any text (lone surrogates, NUL, separators) survives the snapshot."""
    ledger = SqliteLedger(tmp_path_factory.mktemp("rt") / "l.db")
    begin(ledger)
    person = Recipient("c1", email, "+14155550101", token, attributes, consent, line)
    assert ledger.write_snapshot("r1", [person]) == 1
    assert list(ledger.snapshot("r1")) == [(0, person)]
    ledger.close()


def test_the_format_is_json_text_with_the_line_in_a_column(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "l.db")
    begin(ledger)
    ledger.write_snapshot(
        "r1",
        [Recipient("c1", "a@x.com", None, "tok", {"name": "Zoë"}, {"email": True}, 7)],
    )
    ledger.close()
    with sqlite3.connect(tmp_path / "l.db") as conn:
        ((kind, data, line),) = conn.execute("SELECT typeof(data), data, line FROM recipients")
    assert (kind, line) == ("text", 7)
    assert data == '["a@x.com",null,"tok",{"name":"Zo\\u00eb"},{"email":true}]'  # ASCII
    assert json.loads(data)[3] == {"name": "Zoë"}


# -- schema 3, written with marshal ------------------------------------------------------------


def v3_ledger(path: Path, recipients: list[Recipient], states: list[str]) -> None:
    """A ledger as schema 3 wrote it (its DDL, recipients marshalled as the old
    ``write_snapshot`` did): run ``old``, channel ``push`` planned, one delivery per
    recipient in ``states``."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for v in (1, 2, 3):
        step = MIGRATIONS[v]
        assert isinstance(step, str)
        for statement in step.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    conn.execute(
        "INSERT INTO runs (id, run_id, pipeline, logical_date, status, fingerprint, created_at, "
        "recipients) VALUES (1, 'old', 'devices', '2026-01-01T00:00:00.000000Z', 'cancelled', "
        "'f', '2026-01-01T00:00:00.000000Z', ?)",
        (len(recipients),),
    )
    conn.execute("INSERT INTO channels VALUES (1, 'push', 0, 1)")
    for seq, (p, state) in enumerate(zip(recipients, states, strict=True)):
        fields = (p.email, p.phone, p.push_token, dict(p.attributes), dict(p.consent), p.line)
        conn.execute(
            "INSERT INTO recipients VALUES (1, ?, ?, ?)", (seq, p.id, marshal.dumps(fields))
        )
        conn.execute(
            "INSERT INTO deliveries (run, channel, seq, state, address, updated_at, batch) "
            "VALUES (1, 0, ?, ?, ?, 0, ?)",
            (seq, state, p.push_token, 0 if state == "in_flight" else None),
        )
    conn.close()


OLD = [
    Recipient("c1", None, None, "tok1", {"first_name": "Ann"}, {"push": True}, 2),
    Recipient("c2", "b@x.com", "+14155550102", "tok2", {"first_name": "Bob"}, {}, 3),
    Recipient("c3", None, None, "tok3", {"first_name": "Cid", "é": "ü"}, {"push": False}, 5),
]


def test_a_schema_3_snapshot_is_converted_and_read(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    v3_ledger(path, OLD, ["sent", "pending", "in_flight"])
    ledger = SqliteLedger(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        kinds = {k for (k,) in conn.execute("SELECT typeof(data) FROM recipients")}
        assert kinds == {"text"}  # no marshal left
    assert list(ledger.snapshot("old")) == list(enumerate(OLD))
    assert ledger.snapshot_info("old") is None  # written before schema 4
    assert ledger.resolve_in_flight("old", "push", resend=True) == 1
    assert [(s, p) for s, p, *_ in ledger.pending("old", "push")] == [(1, OLD[1]), (2, OLD[2])]
    assert [(d.recipient_id, d.line) for d in ledger.deliveries("old")] == [
        ("c1", 2),
        ("c2", 3),
        ("c3", 5),
    ]
    ledger.close()
    # Opening again migrates nothing more; a newer schema is still refused.
    SqliteLedger(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LedgerError, match="newer than this campaignkit"):
        SqliteLedger(path)


def test_a_schema_3_run_resumes_with_the_keys_it_started_with(tmp_path: Path, pm: Any) -> None:
    """A run snapshotted by schema 3 and interrupted, resumed after the upgrade: the
    snapshot is read, what is owed is sent, and the in-flight message goes again with
    the key it first left with (its provider de-duplicates by it)."""
    segment = tmp_path / "gone.csv"  # a resume does not read the source
    segment.write_text("customer_id,push_token,first_name\n", encoding="utf-8")
    (tmp_path / ".campaignkit").mkdir()
    v3_ledger(tmp_path / ".campaignkit" / "ledger.db", OLD, ["sent", "pending", "in_flight"])
    recorder = pm.get_plugins()
    pipeline = Pipeline(
        "devices",
        CsvSource(segment, columns={"id": "customer_id"}),
        [
            Channel(
                name="push",
                provider="recording",
                template=Template(title="Hi", body="Hi {{ first_name }}"),
                options={"address_field": "push_token"},
                require_consent=False,
            )
        ],
        plugins=pm,
        env={},
        base_dir=tmp_path,
    )
    report = pipeline.resume("old", resend_unknown=True)
    assert report.channels["push"].sent == 3
    box = next(p.outbox for p in recorder if hasattr(p, "outbox"))
    got = {m.recipient_id: (m.body, m.idempotency_key) for m in box.messages}
    assert got == {
        "c2": ("Hi Bob", legacy_idempotency_key("old", "push", "c2")),
        "c3": ("Hi Cid", legacy_idempotency_key("old", "push", "c3")),
    }


# -- the identity rule --------------------------------------------------------------------------

ROWS = [r("c1", 2), r("c2", 3), r("c1", 4), r("c3", 5), r("c2", 6), r("c1", 7)]


def test_one_row_per_customer_rejects_repeats_naming_both_lines(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "l.db")
    begin(ledger)
    sink = Sink({"bad_consent_value": 2})  # two rows the source rejected
    assert ledger.write_snapshot("r1", iter(ROWS), rejects=sink) == 3
    assert [(s, p.id, p.line) for s, p in ledger.snapshot("r1")] == [
        (0, "c1", 2),
        (1, "c2", 3),
        (3, "c3", 5),
    ]
    assert [(x.line, x.reason, x.field, x.detail) for x in sink.rows] == [
        (4, "duplicate_id", "id", "customer id 'c1' already on line 2"),
        (6, "duplicate_id", "id", "customer id 'c2' already on line 3"),
        (7, "duplicate_id", "id", "customer id 'c1' already on line 2"),
    ]
    assert sink.rows[0].raw == ("id=c1",)
    info = ledger.snapshot_info("r1")
    assert info is not None
    assert (info.rows_read, info.recipients, info.rejected) == (8, 3, 5)
    assert info.rejected_reasons == {"bad_consent_value": 2, "duplicate_id": 3}
    assert ledger.get_run("r1").recipients == 3
    ledger.close()


def test_without_lines_a_repeat_says_earlier(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "l.db")
    begin(ledger)
    sink = Sink()
    ledger.write_snapshot("r1", [Recipient("x"), Recipient("x", email="e@x.com")], rejects=sink)
    assert [(x.line, x.detail, x.raw) for x in sink.rows] == [
        (0, "customer id 'x' already earlier in the segment", ("id=x", "email=e@x.com"))
    ]
    # Without a sink the repeats are still not kept, and counted.
    begin(ledger, "r2")
    assert ledger.write_snapshot("r2", [Recipient("x"), Recipient("x")]) == 1
    info = ledger.snapshot_info("r2")
    assert info is not None and info.rejected_reasons == {"duplicate_id": 1}
    ledger.close()


def test_many_rows_per_customer_keeps_every_row(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "l.db")
    begin(ledger)
    sink = Sink()
    assert ledger.write_snapshot("r1", iter(ROWS), rows_per_customer="many", rejects=sink) == 6
    assert [s for s, _ in ledger.snapshot("r1")] == list(range(6))
    assert sink.rows == []
    info = ledger.snapshot_info("r1")
    assert info is not None and (info.rows_read, info.rejected, info.rows_per_customer) == (
        6,
        0,
        "many",
    )
    with pytest.raises(ValueError, match="rows_per_customer"):
        ledger.write_snapshot("r1", [], rows_per_customer="some")
    ledger.close()


def test_rewriting_a_snapshot_replaces_it_and_its_counts(tmp_path: Path) -> None:
    """A crash during extraction leaves no snapshot; if one is written again (the
    same file), the positions, so the keys, are the same."""
    ledger = SqliteLedger(tmp_path / "l.db")
    begin(ledger)
    ledger.write_snapshot("r1", iter(ROWS))
    first = list(ledger.snapshot("r1"))
    ledger.write_snapshot("r1", iter(ROWS), rejects=Sink({"malformed_row": 1}))
    assert list(ledger.snapshot("r1")) == first
    info = ledger.snapshot_info("r1")
    assert info is not None and (info.rows_read, info.rejected) == (7, 4)
    ledger.delete_run("r1")
    with sqlite3.connect(tmp_path / "l.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM snapshots").fetchone() == (0,)
    ledger.close()


def test_keys_derive_from_the_snapshot_position(tmp_path: Path, pm: Any) -> None:
    """The key of a delivery is (run, channel, seq): two rows of one id differ, the
    same row on another channel differs, a re-render (a resume) is the same."""
    ledger = SqliteLedger(tmp_path / "l.db")
    begin(ledger)
    ledger.write_snapshot("r1", iter(ROWS), rows_per_customer="many")
    pipeline = Pipeline(
        "p",
        CsvSource(tmp_path / "none.csv"),
        [
            Channel(
                name=name,
                provider="recording",
                template=Template(subject="s", body="b"),
                options={"address_field": "id"},
                require_consent=False,
            )
            for name in ("a", "b")
        ],
        plugins=pm,
        env={},
        base_dir=tmp_path,
    )
    keys = []
    for channel in pipeline.channels:
        renderer = Renderer(pipeline.channel_plan(channel, None), run_id="r1", ledger=ledger)
        for seq, person in ledger.snapshot("r1"):
            item = renderer.render(seq, person, person.id)
            assert isinstance(item, Pending)
            assert item.message.idempotency_key == idempotency_key("r1", channel.name, seq)
            keys.append(item.message.idempotency_key)
    assert len(set(keys)) == len(keys) == 12
    ledger.close()
    # Length-prefixed parts: no two different (run, channel, seq) make the same key.
    assert idempotency_key("a:1", "b", 2) != idempotency_key("a", "1:b", 2)
    assert idempotency_key("r", "c", 12) != idempotency_key("r", "c1", 2)


def test_the_encoder_falls_back_to_the_public_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from campaignkit._ledger import _schema

    value = ["Zoë\ud800", None, "tok", {"a": "b"}, {"sms": False}]
    fast = _schema.json_encoder()
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    slow = _schema.json_encoder()
    assert fast is not slow
    assert fast(value) == slow(value) == json.dumps(value, separators=(",", ":"))
