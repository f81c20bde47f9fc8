"""Who owns a run: the process that began or claimed it, and whether it is still there.

A run has at most one owner at a time. The ledger decides ownership inside one write
transaction (:meth:`SqliteLedger.begin_run`, :meth:`SqliteLedger.claim_run`): it reads
the recorded :class:`Owner`, asks whether that owner is alive, and records itself as
the new owner, all before the transaction commits, so two processes that claim at
the same instant are serialised and the second sees the first.

An owner is identified by a random token (one per claim), the host name, the boot
id, the process id and the process's start time. The start time tells a live owner
from an unrelated process that was given the dead owner's pid; the boot id tells a
machine that restarted since. Whether an owner on another host is alive cannot be
told from its process, so the owner records a heartbeat in the ledger every
:data:`HEARTBEAT_SECONDS`: an owner elsewhere whose heartbeat is older than
:data:`LEASE_SECONDS` is taken as gone (a host that crashed, a container replaced).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from ._connection import connect

__all__ = ["HEARTBEAT_SECONDS", "LEASE_SECONDS", "Owner", "claim"]

#: How often the owner of a run records that it is alive (its heartbeat).
HEARTBEAT_SECONDS = 15.0
#: An owner on another host whose last heartbeat is older than this is taken as gone.
LEASE_SECONDS = 120.0

_HOST = socket.gethostname()
_held: set[str] = set()  # tokens of the claims this process holds
_held_lock = threading.Lock()


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


_BOOT = _boot_id()


def _start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), else ``None``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is parenthesised and may hold spaces or parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@attrs.frozen
class Owner:
    """The process that owns a run (see the module docstring)."""

    token: str
    host: str
    pid: int
    boot: str | None = None
    started: int | None = None

    @classmethod
    def claim(cls) -> Owner:
        """A new owner identity for this process; held until :meth:`release`."""
        pid = os.getpid()
        owner = cls(secrets.token_hex(8), _HOST, pid, _BOOT, _start_time(pid))
        with _held_lock:
            _held.add(owner.token)
        return owner

    def release(self) -> None:
        """This process no longer works on the run (finished, or gave up)."""
        with _held_lock:
            _held.discard(self.token)

    def alive(self, heartbeat: float | None = None, *, now: float | None = None) -> bool:
        """Whether the owner may still be working on the run.

        In this process: while it holds the claim. On this machine: while its process
        runs (the same pid and start time, since the same boot). On another host: while
        its ``heartbeat`` (epoch seconds) is younger than :data:`LEASE_SECONDS`."""
        if self.host != _HOST:
            if heartbeat is None:
                return True  # an owner that never beat: cannot be told from here
            return (time.time() if now is None else now) - heartbeat < LEASE_SECONDS
        if self.boot is not None and _BOOT is not None and self.boot != _BOOT:
            return False  # the machine restarted since
        if self.pid == os.getpid():
            with _held_lock:
                return self.token in _held
        if not _pid_alive(self.pid):
            return False
        return self.started is None or _start_time(self.pid) in (None, self.started)

    def describe(self) -> str:
        """``process 1234`` or ``process 1234 on host``, for messages."""
        where = "" if self.host == _HOST else f" on {self.host}"
        return f"process {self.pid}{where}"

    def to_text(self) -> str:
        """The owner as stored in the ledger."""
        return json.dumps(attrs.asdict(self), separators=(",", ":"))

    @functools.cached_property
    def text(self) -> str:
        """:meth:`to_text`, computed once (the fence compares it on every mark)."""
        return self.to_text()

    @classmethod
    def from_text(cls, text: str | None) -> Owner | None:
        """Read :meth:`to_text`'s output (``None`` for no owner or an unreadable one)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(
                str(data["token"]),
                str(data["host"]),
                int(data["pid"]),
                data.get("boot"),
                data.get("started"),
            )
        except (ValueError, KeyError, TypeError):
            return None

    @classmethod
    def legacy(cls, pid: int | None) -> Owner | None:
        """The owner of a run recorded before owners were (by pid on this machine)."""
        return None if not pid else cls("", _HOST, pid)


class Heartbeat(threading.Thread):
    """Says every :data:`HEARTBEAT_SECONDS` that the owner of a run is alive, so that
    a process on another host can tell a live owner from a dead one (see
    :meth:`Owner.alive`). Stops when the run is let go or its owner changed."""

    def __init__(self, path: Path, run_id: str, owner: Owner) -> None:
        super().__init__(name="ck-ledger-heartbeat", daemon=True)
        self.path, self.run_id, self.owner = path, run_id, owner.to_text()
        self._stop_event = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stop_event.wait(HEARTBEAT_SECONDS):
            try:
                conn = connect(self.path)
                try:
                    with conn:
                        beat = conn.execute(
                            "UPDATE runs SET heartbeat = ? WHERE run_id = ? AND owner = ?",
                            (time.time(), self.run_id, self.owner),
                        )
                finally:
                    conn.close()
            except sqlite3.Error:  # busy or gone: try again at the next beat
                continue
            if beat.rowcount == 0:  # no longer ours: nothing to say
                return

    def stop(self) -> None:
        self._stop_event.set()


def owner_text(owner: Owner | None) -> str | None:
    return None if owner is None else owner.to_text()


def claim(path: Path, run_id: str, decide: Callable[[sqlite3.Connection, Owner], None]) -> Owner:
    """Make this process the owner of ``run_id`` in the ledger at ``path``: a new
    :class:`Owner` (held until released) if ``decide(conn, owner)``, which checks and
    writes inside one ``BEGIN IMMEDIATE`` transaction, does not raise. Claims are thus
    serialised with every other process's; what ``decide`` raises aborts the claim."""
    owner = Owner.claim()
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        decide(conn, owner)
        conn.execute("UPDATE runs SET heartbeat = ? WHERE run_id = ?", (time.time(), run_id))
        conn.execute("COMMIT")
    except BaseException:
        owner.release()
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    return owner
