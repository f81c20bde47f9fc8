"""Reaching PostgreSQL: the driver (an optional extra), the URL kept secret, the pool.

psycopg is imported here only, and only when a PostgreSQL ledger is opened
(:func:`load_driver`): importing campaignkit never imports it. A URL may hold a
password: :func:`redact_url` is the URL as campaignkit shows it (``repr``, messages,
logs) and :func:`url_secrets` the values :func:`redact` removes from the driver's
error texts.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..._redact import REDACTED, redact
from .._errors import LedgerError

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = [
    "INSTALL",
    "SCHEMES",
    "Driver",
    "is_postgres_url",
    "load_driver",
    "open_pool",
    "quote_ident",
    "redact_url",
    "session_settings",
    "url_secrets",
    "wrap",
]

#: How to install what a PostgreSQL ledger needs.
INSTALL = "pip install 'campaignkit[postgres]'"
#: The URL schemes that select PostgreSQL.
SCHEMES = ("postgresql://", "postgres://")
#: How long the pool keeps trying to make a connection it lost (its ``reconnect_timeout``;
#: longer than the ledger's operations retry: see :mod:`._reconnect`).
POOL_RECONNECT_SECONDS = 300.0
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


class Driver:
    """The two modules a PostgreSQL ledger runs on: ``psycopg`` and ``psycopg_pool``."""

    def __init__(self, psycopg: ModuleType, pool: ModuleType) -> None:
        self.psycopg = psycopg
        self.pool = pool
        #: What the driver raises: caught where the ledger must not fail (a heartbeat).
        self.errors: tuple[type[BaseException], ...] = (
            psycopg.Error,
            pool.PoolTimeout,
            pool.PoolClosed,
        )


def load_driver() -> Driver:
    """psycopg and psycopg_pool, imported now.

    Raises:
        LedgerError: they are not installed (the ``postgres`` extra).
    """
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise LedgerError(
            f"a PostgreSQL ledger needs psycopg and psycopg_pool ({exc}): {INSTALL}"
        ) from None
    return Driver(psycopg, psycopg_pool)


def is_postgres_url(location: object) -> bool:
    """Whether ``location`` is a ``postgresql://`` (or ``postgres://``) URL."""
    return isinstance(location, str) and location.lower().startswith(SCHEMES)


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (a schema's name).

    Raises:
        LedgerError: not a plain identifier (letters, digits, ``_``; at most 63).
    """
    if not _IDENTIFIER.match(name):
        raise LedgerError(
            f"ledger schema: expected a name of letters, digits and _ (at most 63), not {name!r}"
        )
    return '"' + name + '"'


def url_secrets(url: str) -> tuple[str, ...]:
    """The passwords written in ``url`` (its user info, a ``password`` parameter)."""
    found: list[str] = []
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password:
            found += [parts.password, urllib.parse.unquote(parts.password)]
        for name, value in urllib.parse.parse_qsl(parts.query):
            if "password" in name.lower() and value:
                found.append(value)
    except ValueError:
        pass
    return tuple(found)


def redact_url(url: str) -> str:
    """``url`` without its password (``user:***@host``), as campaignkit shows it."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, colon, _ = userinfo.partition(":")
            netloc = f"{user}{':' + REDACTED if colon else ''}@{hostport}"
        shown = urllib.parse.urlunsplit(
            (parts.scheme, netloc, parts.path, parts.query, parts.fragment)
        )
    except ValueError:
        return f"{url.partition('://')[0]}://{REDACTED}"
    return redact(shown, url_secrets(url))


#: Milliseconds a session may sit idle inside a transaction before the server ends it.
IDLE_IN_TRANSACTION_MS = 10_000


def session_settings(schema: str, *, durable: bool) -> str:
    """What every connection of a ledger runs first: ``search_path`` is ``schema`` (the
    ledger's tables are named without it); ``durable=False``: commits do not wait for
    the WAL to be flushed (throwaway ledgers). A process stopped inside a transaction
    (SIGSTOP, a hung host) must not hold its locks past a lease: the server ends such
    a session (its transaction rolled back) after :data:`IDLE_IN_TRANSACTION_MS`. No
    parallel plans, but where a statement asks for them (a whole channel's rules)."""
    settings = "SET search_path TO " + quote_ident(schema)
    settings += f"; SET idle_in_transaction_session_timeout TO {IDLE_IN_TRANSACTION_MS}"
    # The ledger's statements are small and many (a page, a mark, a batch's outcomes):
    # a parallel plan's start-up costs more than it saves, and a page read in parallel
    # by every sending thread of every worker starves the server. The plan's rules over
    # a whole channel ask for parallel workers again (see _selection.plan).
    settings += "; SET max_parallel_workers_per_gather TO 0"
    if not durable:
        settings += "; SET synchronous_commit TO off"
    return settings


def open_pool(
    driver: Driver,
    url: str,
    *,
    configure: Callable[[psycopg.Connection[Any]], None],
    max_size: int,
) -> ConnectionPool[psycopg.Connection[Any]]:
    """A pool of autocommit connections, each set up by ``configure`` when made.

    A connection is checked before it is lent (a dead one, after the server
    restarted, is replaced), and a connection that cannot be made is tried again,
    with the pool's backoff, for :data:`POOL_RECONNECT_SECONDS`.
    """
    pool: ConnectionPool[psycopg.Connection[Any]] = driver.pool.ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        kwargs={"autocommit": True},
        configure=configure,
        check=driver.pool.ConnectionPool.check_connection,
        reconnect_timeout=POOL_RECONNECT_SECONDS,
        open=False,
        name="campaignkit-ledger",
    )
    pool.open(wait=True, timeout=30.0)
    return pool


def wrap(where: str, secrets: tuple[str, ...]) -> Callable[[BaseException], LedgerError]:
    """A :class:`LedgerError` from a driver error, its text without the URL's secrets."""

    def make(exc: BaseException) -> LedgerError:
        return LedgerError(f"{where}: {redact(str(exc).strip(), secrets)}")

    return make
