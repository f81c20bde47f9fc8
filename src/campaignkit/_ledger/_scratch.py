"""Where a dry run plans: :func:`scratch_ledger`, a throwaway ledger of the same
backend as the campaign's, reading the real one's suppressions and send history.

A dry run counts suppressions and frequency caps exactly as the real run would, and
never writes to (or waits for) the real ledger: it plans in a scratch ledger whose
plan rules consult the real one (``history``). For a SQLite ledger that is a file in
``directory`` with the real file attached read only; for a PostgreSQL ledger a
schema of its own in the same database, dropped after (see
:func:`._postgres.postgres_scratch`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ._open import open_ledger
from ._postgres import is_postgres_url, postgres_scratch
from ._protocol import Ledger
from ._sqlite import SqliteLedger

__all__ = ["scratch_ledger"]


@contextlib.contextmanager
def scratch_ledger(location: str | Path | None, directory: Path) -> Iterator[Ledger]:
    """A throwaway ledger (not durable) beside the real ledger at ``location``,
    closed (and for PostgreSQL dropped) when the block ends.

    ``location``: the real ledger (a path or a ``postgresql://`` URL) whose
    suppression list and send history the plan rules read; ``None``: none (no ledger
    is kept, so none is read). A real SQLite file that does not exist yet has nothing
    to read and is not created. ``directory``: where a SQLite scratch file goes.

    Raises:
        LedgerError: the real ledger cannot be opened (a newer schema, no server).
    """
    if location is not None and is_postgres_url(location):
        with postgres_scratch(str(location)) as shared:
            yield shared
        return
    history = None
    if location is not None and Path(location).exists():
        open_ledger(location).close()  # brought to this version's schema, if older
        history = Path(location)
    ledger = SqliteLedger(directory / "ledger.db", durable=False, history=history)
    try:
        yield ledger
    finally:
        ledger.close()
