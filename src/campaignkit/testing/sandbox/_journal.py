"""Recording a sandbox server's accepted messages to a JSON Lines journal as they arrive."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Self, SupportsIndex

from ..._rehearsal import SANDBOX_DIR
from ...hookspecs import hookimpl

__all__ = ["JournalError", "MessageJournal", "RecordedMessages", "RunRecorder", "attach_journal"]


class JournalError(OSError):
    """A message could not be written to its journal (disk full, file gone...): the
    server answers the request with its 5xx and does not record the message."""


class MessageJournal:
    """Appends every accepted message to a JSON Lines file the moment it is recorded.

    Each message is one line, a whole JSON object, written (unbuffered, straight to
    the file) before the server answers the request that carried it: a process killed
    at any moment (``kill -9``) leaves every earlier message in the file, and at most
    the one being written incomplete. A write that fails (the disk is full...) is
    undone as far as the file allows and raises :class:`JournalError`: the server
    then answers the provider's 5xx and keeps nothing, so that a message is never
    accepted without being journaled. Without a path (the default, or after
    :meth:`close`) nothing is written. Thread-safe.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        if path is not None:
            self.open(path)

    @property
    def path(self) -> Path | None:
        """The file written to, or ``None``."""
        return self._path

    def open(self, path: str | Path) -> None:
        """Append from now on to ``path`` (created with its folder; an existing file
        is added to), closing the previous file."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        new = target.open("ab", buffering=0)
        with self._lock:
            old, self._file, self._path = self._file, new, target
        if old is not None:
            old.close()

    def close(self) -> None:
        """Stop writing (the file is kept)."""
        with self._lock:
            old, self._file, self._path = self._file, None, None
        if old is not None:
            old.close()

    def write(self, messages: Iterable[Any]) -> None:
        """Append ``messages``, one JSON line each, straight to the file.

        Raises:
            JournalError: the lines could not all be written (what was written of
                them is truncated away when the file allows it).
        """
        with self._lock:
            if self._file is None:
                return
            data = "".join(json.dumps(m, default=str) + "\n" for m in messages).encode()
            if not data:
                return
            start = None
            try:
                start = self._file.seek(0, os.SEEK_END)
                view = memoryview(data)
                while view:
                    view = view[self._file.write(view) or 0 :]
            except OSError as exc:
                if start is not None:
                    with contextlib.suppress(OSError):
                        self._file.truncate(start)
                raise JournalError(
                    exc.errno, f"cannot write to the journal {self._path}: {exc.strerror or exc}"
                ) from exc


class RecordedMessages(list[Any]):
    """A server's list of accepted messages that also writes each message added
    (``append``, ``extend``, ``insert``, ``+=``) to its :class:`MessageJournal`."""

    def __init__(self, items: Iterable[Any] = (), journal: MessageJournal | None = None) -> None:
        super().__init__(items)
        self.journal = journal if journal is not None else MessageJournal()

    # The journal first: a message it cannot take is not recorded (JournalError).
    def append(self, item: Any) -> None:
        self.journal.write((item,))
        super().append(item)

    def extend(self, items: Iterable[Any]) -> None:
        added = list(items)
        self.journal.write(added)
        super().extend(added)

    def insert(self, index: SupportsIndex, item: Any) -> None:
        self.journal.write((item,))
        super().insert(index, item)

    def __iadd__(self, items: Iterable[Any]) -> Self:  # type: ignore[misc]
        self.extend(items)
        return self


def attach_journal(server: Any) -> MessageJournal:
    """The journal of ``server`` (a :class:`ProviderServer`, or any server with a
    ``messages`` list such as the SMTP one): from now on every message it records is
    also written there once the journal has a path (:meth:`MessageJournal.open`)."""
    journal = getattr(server, "journal", None)
    if not isinstance(journal, MessageJournal):
        journal = MessageJournal()
        server.journal = journal
    messages = server.messages
    if not isinstance(messages, RecordedMessages) or messages.journal is not journal:
        server.messages = RecordedMessages(messages, journal)
    return journal


class RunRecorder:
    """A plugin pointing a sandbox's journals at each run's directory as it starts."""

    def __init__(self, sandbox: Any, pipeline: str, output_root: Path) -> None:
        self.sandbox = sandbox
        self.pipeline = pipeline
        self.output_root = output_root

    @hookimpl
    def campaignkit_run_started(self, run_id: str, pipeline: str, channels: Any) -> None:
        if pipeline == self.pipeline:
            self.sandbox.record_to(self.output_root / run_id / SANDBOX_DIR)
