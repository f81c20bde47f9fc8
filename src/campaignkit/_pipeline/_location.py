"""Where a campaign's ledger is: ``[execution] ledger``, else the
``CAMPAIGNKIT_LEDGER_URL`` environment variable, else the SQLite file ``state_path``."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from .._config import Execution

__all__ = ["LEDGER_URL_ENV", "ledger_location", "shown_location"]

#: The environment variable naming the ledger when ``[execution] ledger = true``: a
#: ``postgresql://`` URL (the password stays out of the campaign file) or a path.
LEDGER_URL_ENV = "CAMPAIGNKIT_LEDGER_URL"


def ledger_location(
    execution: Execution, environ: Mapping[str, str], base_dir: Path, *, rehearsal: bool
) -> str | Path:
    """A ``postgresql://`` URL, or the SQLite file's path (against ``base_dir``). A
    rehearsal always has its own SQLite file (``ledger.sandbox.db``): it never writes
    to a campaign's real ledger, whatever that is."""
    state = base_dir / execution.state_path
    setting = execution.ledger
    if rehearsal or setting is False:
        return state
    if setting is True:
        setting = environ.get(LEDGER_URL_ENV, "").strip()
        if not setting:
            return state
    scheme, sep, rest = setting.partition("://")
    if not sep:
        path = Path(setting)
    elif scheme.lower() == "sqlite":
        path = Path(rest.removeprefix("/"))  # sqlite:///relative, sqlite:////absolute
    else:
        return setting
    return path if path.is_absolute() else base_dir / path


def shown_location(location: str | Path) -> str:
    """The location for messages: a URL's password replaced by ``***``."""
    if isinstance(location, Path):
        return str(location)
    parts = urllib.parse.urlsplit(location)
    if parts.password is None:
        return location
    user = urllib.parse.unquote(parts.username or "")
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{user}:***@{host}{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
