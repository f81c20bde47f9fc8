"""A dry run against a shared PostgreSQL ledger plans in a scratch schema of the same
database: it counts the real schema's suppressions and frequency caps as the run
would, writes nothing there, and leaves no scratch schema behind."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from campaignkit import Channel, Execution, Pipeline, Template, get_plugin_manager
from campaignkit._config import FrequencyCap
from campaignkit.testing import StaticSource, recording_plugin

DAY = datetime(2026, 3, 2, tzinfo=UTC)
PREFIX = "ck_scratch_"
TABLES = ("runs", "recipients", "snapshots", "channels", "deliveries", "suppressions", "slices")


def _sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(statement, params).fetchall()  # type: ignore[arg-type]


def _scratch_schemas(url: str) -> list[str]:
    rows = _sql(url, "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (PREFIX,))
    return sorted(name for (name,) in rows)


def _real_schema(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the real ledger's tables (``campaignkit``), in key order."""
    return {t: _sql(url, f"SELECT * FROM campaignkit.{t} ORDER BY 1, 2") for t in TABLES}


def _pipeline(tmp_path: Path, url: str, tag: str) -> Pipeline:
    """A campaign on the shared ledger at ``url``: 4 recipients whose addresses no
    other test uses (the cap and the suppression list are shared by the schema)."""
    src = StaticSource.from_dicts(
        {"id": f"c{i}", "email": f"u{i}.{tag}@example.com", "consent": {"email": True}}
        for i in range(4)
    )
    cap = FrequencyCap(max_messages=1, window_hours=24)
    ch = Channel(name="email", provider="recording", template=Template(body="x"), frequency_cap=cap)
    pm = get_plugin_manager(load_entrypoints=False, plugins=[recording_plugin()])
    return Pipeline(
        f"pgdry_{tag}",
        src,
        [ch],
        plugins=pm,
        env={},
        base_dir=tmp_path,
        execution=Execution(ledger=url),
    )


def test_a_dry_run_on_postgres_counts_the_real_suppressions_and_caps(
    tmp_path: Path, postgres_url: str
) -> None:
    tag = secrets.token_hex(4)
    p = _pipeline(tmp_path, postgres_url, tag)
    assert p.run(logical_date=DAY).channels["email"].sent == 4
    ledger = p.ledger()
    ledger.suppress("email", f"u0.{tag}@example.com", reason="unsubscribed")
    ledger.close()
    before = _real_schema(postgres_url)
    during: list[list[str]] = []

    plan = p.plan(on_extracted=lambda n, reasons: during.append(_scratch_schemas(postgres_url)))

    # Suppression comes before the cap: one reason each, as the run would decide.
    assert plan.channels["email"].skipped == {"suppressed": 1, "frequency_capped": 3}
    assert plan.channels["email"].eligible == 0
    assert len(during) == 1 and len(during[0]) == 1  # it planned in a scratch schema
    assert _real_schema(postgres_url) == before
    assert _scratch_schemas(postgres_url) == []
    assert not (tmp_path / ".campaignkit").exists()  # nor in a SQLite file


def test_a_failed_dry_run_on_postgres_leaves_no_scratch_schema(
    tmp_path: Path, postgres_url: str
) -> None:
    p = _pipeline(tmp_path, postgres_url, secrets.token_hex(4))

    def boom(n: int, reasons: object) -> None:
        assert len(_scratch_schemas(postgres_url)) == 1
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        p.plan(on_extracted=boom)
    assert _scratch_schemas(postgres_url) == []


def test_a_dry_run_before_any_run_creates_no_real_schema(postgres_url: str, tmp_path: Path) -> None:
    """On a database with no ledger yet the dry run reads no history and creates
    nothing but its scratch schema (dropped)."""
    import psycopg

    name = f"ck_test_dry_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = postgres_url.rsplit("/", 1)[0] + "/" + name
    try:
        plan = _pipeline(tmp_path, url, "x").plan()
        assert plan.channels["email"].eligible == 4
        schemas = _sql(url, "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, 'c')")
        assert schemas == []
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
