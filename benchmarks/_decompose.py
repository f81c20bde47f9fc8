"""Per-message CPU of a campaignkit send, by thread and by step (``bench_http --decompose``).

cProfile sees one thread and slows small functions several times over; this instead
wraps a few named steps with ``time.thread_time`` (CPU of the calling thread only, so
waits do not count) and reads every thread's CPU when it ends. Steps nest: an indented
one is part of the one above it. ``thread_time`` is a system call (about 0.6 us here):
the time a wrapper adds inside its own measurement is calibrated on a no-op and taken
off each step's figure, but the threads' totals (and a parent's figure) include the
wrappers, so they are a little above a plain run's (``cli CPU us/msg`` in the tables).
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Decomposition"]


class Decomposition:
    """Installs the wrappers (:meth:`install`) and prints the figures (:meth:`report`)."""

    def __init__(self) -> None:
        self.steps: collections.defaultdict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter[str] = collections.Counter()
        self.threads: collections.defaultdict[str, float] = collections.defaultdict(float)
        self.order: list[str] = []
        self._before: dict[int, float] = {}

    def install(self) -> None:
        """Wrap the steps of the SendGrid/Twilio send path (campaignkit must be importable)."""
        from campaignkit import _http
        from campaignkit._engine import _render, _runner
        from campaignkit._ledger import _connection, _sqlite
        from campaignkit.channels import _sendgrid_mail, sendgrid

        runner = _runner.ChannelRunner
        ledger = _sqlite.SqliteLedger
        self._wrap(runner, "plan_audience", "plan: audience rules + ledger plan rows")
        self._wrap_iter(ledger, "pending", "ledger.pending: snapshot + deliveries read")
        self._wrap(_render.Renderer, "render", "Renderer.render (template, checks, Message)")
        self._wrap(ledger, "mark_in_flight", "ledger.mark_in_flight (caller's side)")
        self._wrap(_http.HttpNotifier, "post", "HttpNotifier.post (requests)")
        self._wrap(sendgrid.SendGridNotifier, "send_batch", "SendGrid send_batch")
        self._wrap(_sendgrid_mail.MailBodies, "plan", "  MailBodies.plan (+ JSON)")
        self._wrap(_sendgrid_mail.MailBodies, "payload", "  MailBodies.payload")
        self._wrap(runner, "_outcomes", "runner._outcomes: outcome rows")
        self._wrap(ledger, "record", "  ledger.record (caller's side)")
        self._wrap(_runner, "result_from_ledger", "result_from_ledger")
        self._thread_cpu(threading.Thread)
        self._thread_cpu(_connection.Writer)

    def report(self, n: int, cpu: float) -> None:
        """Print CPU per message: the process, each thread kind, each step."""
        overhead = self._calibrate()
        print(f"process CPU in the timed phase: {cpu / n * 1e6:.1f} us/msg ({n:,} messages)")
        for name, secs in sorted(self.threads.items()):
            print(f"  thread {name:<40} {secs / n * 1e6:6.1f} us/msg")
        for label in self.order:
            per_message = (self.steps[label] - self.calls[label] * overhead) / n * 1e6
            print(f"  {label:<47} {per_message:6.1f} us/msg  ({self.calls[label]:,} calls)")

    def _calibrate(self) -> float:
        """Seconds a wrapper adds inside its own measurement (median of no-op calls)."""
        probe = Decomposition()

        class Noop:
            def call(self) -> None:
                pass

        probe._wrap(Noop, "call", "noop")
        samples = []
        for _ in range(20):
            probe.steps.clear()
            for _ in range(1000):
                Noop().call()
            samples.append(probe.steps["noop"] / 1000)
        return sorted(samples)[len(samples) // 2]

    def start(self) -> None:
        """The timed phase starts: CPU that live threads spent so far is not counted."""
        for thread in threading.enumerate():
            if thread.ident is not None and thread is not threading.main_thread():
                clock = time.pthread_getcpuclockid(thread.ident)
                self._before[thread.ident] = time.clock_gettime(clock)

    def main_thread(self, secs: float) -> None:
        self.threads["main (run, plan, report)"] += secs

    def _add(self, label: str, secs: float) -> None:
        self.steps[label] += secs

    def _wrap(self, owner: Any, name: str, label: str) -> None:
        fn: Callable[..., Any] = getattr(owner, name)
        self.order.append(label)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(label, time.thread_time() - t)
                self.calls[label] += 1

        setattr(owner, name, timed)

    def _wrap_iter(self, owner: Any, name: str, label: str) -> None:
        fn: Callable[..., Any] = getattr(owner, name)
        self.order.append(label)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            it = iter(fn(*args, **kwargs))
            while True:
                self.calls[label] += 1  # one measurement per item
                t = time.thread_time()
                try:
                    item = next(it)
                except StopIteration:
                    self._add(label, time.thread_time() - t)
                    return
                self._add(label, time.thread_time() - t)
                yield item

        setattr(owner, name, timed)

    def _thread_cpu(self, cls: type[threading.Thread]) -> None:
        run = cls.run

        def counted(thread: threading.Thread) -> None:
            try:
                run(thread)
            finally:
                kind = thread.name.rstrip("0123456789").rstrip("-_ ") or "thread"
                before = self._before.get(thread.ident or 0, 0.0)
                self.threads[kind] += time.thread_time() - before

        cls.run = counted  # type: ignore[method-assign,assignment]
