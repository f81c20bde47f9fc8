"""Progress bars while a run sends, and driving a run under them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from .._pipeline import OpenedRun
from ..exceptions import CampaignKitError
from ._output import EXIT_FAILED, EXIT_INPUT_ERROR, describe_error, fail, fail_problems, log

_T = TypeVar("_T")


# -- progress ------------------------------------------------------------------------------


class _RunDisplay:
    """Rich progress bars, one per channel, fed from channel threads.

    With ``extracting`` an "extracting" spinner comes first and the bars appear, sized
    to the segment, once it is extracted; without (a resume), the bars count up from
    the start with no total.
    """

    def __init__(self, console: Console, channels: Sequence[str], *, extracting: bool) -> None:
        self.channels = tuple(channels)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskID] = {}
        self._done: dict[str, int] = {}
        self._extracting_first = extracting
        self._extracting: TaskID | None = None

    def __enter__(self) -> _RunDisplay:
        self.progress.start()
        if self._extracting_first:
            self._extracting = self.progress.add_task("extracting", total=None)
        else:
            self._add_channels(None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _add_channels(self, total: int | None) -> None:
        for name in self.channels:
            if name not in self._tasks:
                self._tasks[name] = self.progress.add_task(name, total=total)

    def opened(self, opened: OpenedRun) -> None:
        """The run is open: a resume's bars count up with no total; a replay shows none."""
        with self._lock:
            if self._extracting is not None and opened.extracted is None:
                self.progress.remove_task(self._extracting)
                self._extracting = None
                if opened.replay is None:
                    self._add_channels(None)

    def extracted(self, recipients: int) -> None:
        with self._lock:
            if self._extracting is not None:
                self.progress.remove_task(self._extracting)
                self._extracting = None
            self._add_channels(recipients)

    def advance(self, channel: str, done: int) -> None:
        with self._lock:
            task = self._tasks.get(channel)
            # Channel threads report totals; keep the bar monotonic.
            if task is None or done <= self._done.get(channel, 0):
                return
            self._done[channel] = done
            self.progress.update(task, completed=done)


class RunProgress:
    """The progress callbacks of one sending command: bars on a terminal, whether any
    delivery was settled yet (for the exit code of an error) and how many were settled
    per channel in this session."""

    def __init__(
        self, console: Console, channels: Sequence[str], *, show: bool, extracting: bool = True
    ) -> None:
        self.display = _RunDisplay(console, channels, extracting=extracting) if show else None
        self.settled = threading.Event()
        self.done: dict[str, int] = {}
        #: what opening the run did, once it is open
        self.opened: OpenedRun | None = None
        self._lock = threading.Lock()

    def on_opened(self, opened: OpenedRun) -> None:
        self.opened = opened
        if self.display is not None:
            self.display.opened(opened)

    def on_extracted(self, recipients: int, rejected: Mapping[str, int]) -> None:
        if self.display is not None:
            self.display.extracted(recipients)

    def __call__(self, channel: str, done: int) -> None:
        self.settled.set()
        with self._lock:
            if done > self.done.get(channel, 0):
                self.done[channel] = done
        if self.display is not None:
            self.display.advance(channel, done)


def drive(
    action: Callable[[], _T],
    progress: RunProgress,
    *,
    config: Path | None,
    interrupted: Callable[[], str],
) -> _T:
    """Run ``action`` (a pipeline operation) under the CLI's error mapping.

    A :class:`CampaignKitError` exits with code 2 while no delivery has been settled
    (nothing was sent), 3 afterwards; an interruption (Ctrl-C, SIGTERM; the pipeline
    lets in-flight requests finish first) exits 3 with ``interrupted()``'s message.
    """
    try:
        if progress.display is None:
            return action()
        with progress.display:
            return action()
    except CampaignKitError as exc:
        code = EXIT_FAILED if progress.settled.is_set() else EXIT_INPUT_ERROR
        fail_problems(exc, config, code)
        fail(describe_error(exc, config), code)
    except FileExistsError as exc:
        fail(f"run directory already exists: {exc.filename}", EXIT_INPUT_ERROR)
    except KeyboardInterrupt:
        fail(interrupted(), EXIT_FAILED)
    except Exception as exc:
        log.debug("run failed", exc_info=True)
        fail(f"run failed: {type(exc).__name__}: {exc} (use -vv for details)", EXIT_FAILED)
