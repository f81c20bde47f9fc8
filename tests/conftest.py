from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs
import pluggy
import pytest

from campaignkit import get_plugin_manager
from campaignkit._ledger import Ledger, open_ledger
from campaignkit.testing import recording_plugin


@pytest.fixture
def recorder() -> Any:
    """A fresh recording channel plugin (provider ``recording``)."""
    return recording_plugin()


@pytest.fixture
def pm(recorder: Any) -> pluggy.PluginManager:
    """Built-in plugins plus the recorder; no third-party entry points."""
    return get_plugin_manager(load_entrypoints=False, plugins=[recorder])


# -- the ledger's backends: SQLite, and PostgreSQL on a real server ---------------------------
#: The server the PostgreSQL tests use (each session creates a database of its own there).
POSTGRES_URL = os.environ.get(
    "CAMPAIGNKIT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
#: Set to 1 (as CI does) to fail, not skip, when PostgreSQL is unavailable.
REQUIRE_POSTGRES = os.environ.get("CAMPAIGNKIT_REQUIRE_POSTGRES") == "1"


def _postgres_unavailable(why: str) -> NoReturn:
    reason = f"PostgreSQL tests skipped: {why} (set CAMPAIGNKIT_TEST_POSTGRES_URL)"
    if REQUIRE_POSTGRES:
        pytest.fail(f"{reason}; CAMPAIGNKIT_REQUIRE_POSTGRES=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a database of this session's own (``ck_test_<random>``, dropped
    after the session) on the server of ``CAMPAIGNKIT_TEST_POSTGRES_URL``."""
    from campaignkit._ledger._postgres import redact_url

    try:
        import psycopg
    except ImportError:
        _postgres_unavailable("psycopg is not installed (pip install 'campaignkit[postgres]')")
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error:
        _postgres_unavailable(f"no PostgreSQL server answers at {redact_url(POSTGRES_URL)}")
    admin.close()
    with _database(POSTGRES_URL, "ck_test") as url:
        yield url


@contextlib.contextmanager
def _database(server: str, prefix: str) -> Iterator[str]:
    """A database ``<prefix>_<random>`` on ``server`` for the block (dropped after)."""
    import psycopg

    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    parts = urllib.parse.urlsplit(server)
    try:
        yield urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def own_database(postgres_url: str) -> Iterator[str]:
    """A database of the test's own on the session's server (dropped after): a ledger
    shares frequency caps and suppressions across campaigns, and tests that count
    exact audiences must not see another test's sends."""
    with _database(postgres_url, "ck_own") as url:
        yield url


def example_on_postgres(
    config: Path, name: str, ledger: str, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The example campaign of file ``config`` (a copy, with ``shards = 2`` in its
    ``[execution]``) renamed ``name``, on the PostgreSQL ledger ``ledger`` with 2
    workers and 4 shards per channel (leases of 2 s), as an import reference: see
    :func:`shared_sandbox_reference`; the sandbox switch off."""
    text = config.read_text(encoding="utf-8")
    text = text.replace('name = "multi_channel_marketing_campaign"', f'name = "{name}"', 1)
    text = text.replace(
        "[execution]\nshards = 2\n",
        f'[execution]\nshards = 4\nworkers = 2\nlease_seconds = 2\nledger = "{ledger}"\n',
        1,
    )
    config.write_text(text, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("CAMPAIGNKIT_SANDBOX", raising=False)
    return shared_sandbox_reference(config, folder, f"ck_{name}")


def shared_sandbox_reference(config: Path, folder: Path, module: str) -> str:
    """An import reference (``module:campaign``, written into ``folder``, which the
    caller puts on ``sys.path``) to the campaign of file ``config`` pointed at the
    process's shared sandbox without being a rehearsal: its ledger is the configured
    one (a rehearsal always records into its own SQLite file)."""
    (folder / f"{module}.py").write_text(
        "import attrs\n"
        "from campaignkit import Pipeline, Rate, load_config\n"
        "from campaignkit.testing.sandbox import shared_sandbox\n"
        "def campaign():\n"
        "    box = shared_sandbox()\n"
        f"    config = load_config({str(config)!r})\n"
        "    channels = tuple(attrs.evolve(c, rate=Rate(), options={**c.options,\n"
        "        **box.channel_options(c.provider)}) for c in config.channels)\n"
        "    config = attrs.evolve(config, channels=channels)\n"
        "    return Pipeline.from_config(config, rehearsal=False, env=box.env(config))\n",
        encoding="utf-8",
    )
    return f"{module}:campaign"


@attrs.define
class Backend:
    """Where a test's ledgers are: a SQLite file, or a PostgreSQL schema of its own.

    ``open()`` opens (another) ledger object on the same store, ``fresh()`` is an
    empty store of the same backend, ``sql()`` runs a statement on the store
    directly (``?`` placeholders, for both) and returns its rows."""

    name: str
    location: str
    schema: str | None
    tmp: Path

    def open(self, **kw: Any) -> Ledger:
        return open_ledger(self.location, schema=self.schema, **kw)

    def fresh(self) -> Backend:
        if self.name == "sqlite":
            where = Path(tempfile.mkdtemp(dir=self.tmp)) / "l.db"
            return Backend("sqlite", str(where), None, self.tmp)
        return Backend(self.name, self.location, f"t_{secrets.token_hex(6)}", self.tmp)

    def sql(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.name == "sqlite":
            conn = sqlite3.connect(self.location)
            try:
                with conn:
                    return conn.execute(statement, params).fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.location, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{self.schema}"')
            cursor = conn.execute(statement.replace("?", "%s"), params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each backend of the ledger, empty (a SQLite file; a PostgreSQL schema of the
    session's database, of this test's own)."""
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "l.db"), None, tmp_path)
    url = request.getfixturevalue("postgres_url")
    return Backend("postgres", url, f"t_{secrets.token_hex(6)}", tmp_path)
