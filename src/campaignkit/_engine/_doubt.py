"""Messages in doubt: a request the provider may have acted on (a read timeout, a
lost connection, a 5xx) is re-sent only when that cannot deliver twice."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._ledger import DeliveryRecord
from .._models import DeliveryStatus, Outcome, Reason
from .._notifier import Notifier
from ._plan import ChannelPlan
from ._render import Pending

__all__ = ["RECONCILE_CHUNK", "RECONCILE_SETTLE_FACTOR", "InDoubt"]

log = logging.getLogger("campaignkit")

#: In-doubt messages handed to :meth:`Notifier.reconcile` per call.
RECONCILE_CHUNK = 50
#: A provider is asked about a message in doubt no sooner than this many times as
#: long after the request ended as the request took: a request the client gave up
#: on (a read timeout, a gateway's 504) may still be on its way and be acted on after
#: a too-early lookup said "no such message", which would then deliver the re-send as
#: a second copy. A request answered at once (a 500) waits for nothing more.
RECONCILE_SETTLE_FACTOR = 2.0


class InDoubt:
    """How :class:`ChannelRunner` settles messages in doubt (a mixin of it).

    A failure in doubt (:attr:`DeliveryError.in_doubt`) is re-sent only when that
    cannot deliver twice: the provider has idempotency keys (same batch, same keys),
    or :meth:`Notifier.reconcile` says the provider has no such message (asked at the
    next retry round, and once more at the end; found means ``sent``). Otherwise the
    message is recorded ``unknown`` (reason ``in_doubt``), unless the channel opts
    into at-least-once with ``on_doubt = "retry"``.
    """

    plan: ChannelPlan
    name: str
    _retry: list[list[Pending]]
    _retry_lock: threading.Lock

    if TYPE_CHECKING:

        def _record(self, rows: Sequence[DeliveryRecord]) -> None: ...

        def _row(
            self,
            pending: Pending,
            state: str,
            reason: str | None,
            provider_id: str | None = None,
            *,
            transient: bool = False,
        ) -> DeliveryRecord: ...

        def _stopped(self) -> bool: ...

        def _now(self) -> float: ...

        def _wait(self, seconds: float) -> None: ...

    def _can_reconcile(self) -> bool:
        return type(self.plan.notifier).reconcile is not Notifier.reconcile

    def _doubtful(self, batch: list[Pending]) -> list[DeliveryRecord]:
        """Rows for messages whose request ended in doubt, by the channel's policy;
        those to be re-sent (now, or after reconciling) join the retry groups."""
        notifier = self.plan.notifier
        if notifier.supports_idempotency_keys or (
            self.plan.channel.on_doubt == "retry" and not self._can_reconcile()
        ):
            # Re-sent as it was formed: the same keys (or at-least-once, by choice).
            with self._retry_lock:
                self._retry.append(batch)
            return [self._row(p, DeliveryStatus.PENDING, None) for p in batch]
        if self._can_reconcile():
            # Unknown until the provider is asked, at the next retry round, before any
            # resend (a crash meanwhile leaves it unknown, as for a message in flight).
            now = self._now()
            for p in batch:
                p.in_doubt = True
                took = now - p.sent_at if p.sent_at is not None else 0.0
                p.settle_at = now + RECONCILE_SETTLE_FACTOR * took
            with self._retry_lock:
                self._retry.append(batch)
            return [self._row(p, DeliveryStatus.UNKNOWN, Reason.IN_DOUBT) for p in batch]
        return [self._row(p, DeliveryStatus.UNKNOWN, Reason.IN_DOUBT) for p in batch]

    def _reconcile(self, groups: list[list[Pending]]) -> list[list[Pending]]:
        """Ask the provider about the in-doubt members of ``groups``: found ones are
        recorded ``sent`` and dropped, surely absent ones become ordinary retries,
        and the rest stay in doubt (re-sent anyway with ``on_doubt = "retry"``).
        Returns the groups without the settled messages."""
        doubt = [p for group in groups for p in group if p.in_doubt]
        if not doubt:
            return groups
        self._settle(doubt)
        answers: list[Outcome | None] = [None] * len(doubt)
        notifier = self.plan.notifier
        since = datetime.fromtimestamp(min(p.since or time.time() for p in doubt), UTC)
        conn: Any = None
        try:
            conn = notifier.connect()
            try:
                # In chunks, so that a deadline or an interrupt is noticed between them.
                for start in range(0, len(doubt), RECONCILE_CHUNK):
                    if self._stopped():
                        break
                    chunk = [p.message for p in doubt[start : start + RECONCILE_CHUNK]]
                    got = notifier.reconcile(conn, chunk, since)
                    if len(got) != len(chunk):
                        log.warning(
                            "%s: reconcile returned %d answer(s) for %d",
                            self.name,
                            len(got),
                            len(chunk),
                        )
                        continue
                    answers[start : start + len(chunk)] = got
            finally:
                notifier.disconnect(conn)
        except Exception as exc:  # a failed lookup settles nothing (more)
            log.warning("%s: could not reconcile %d message(s): %s", self.name, len(doubt), exc)
        settled: set[int] = set()
        rows: list[DeliveryRecord] = []
        for pending, answer in zip(doubt, answers, strict=True):
            if answer is not None and answer.ok:
                rows.append(
                    self._row(pending, DeliveryStatus.SENT, None, answer.provider_message_id)
                )
                settled.add(id(pending))
            elif answer is not None and answer.transient:
                pending.in_doubt = pending.uncertain = False  # the provider has no such message
            elif self.plan.channel.on_doubt == "retry":
                pending.in_doubt = False  # at-least-once, by the channel's choice
        self._record(rows)
        log.info(
            "%s: reconciled %d in-doubt message(s): %d found, %d to re-send, %d unknown",
            self.name,
            len(doubt),
            len(settled),
            sum(not p.in_doubt and id(p) not in settled for p in doubt),
            sum(p.in_doubt for p in doubt),
        )
        out = [[p for p in group if id(p) not in settled] for group in groups]
        return [group for group in out if group]

    def _settle(self, doubt: Sequence[Pending]) -> None:
        """Wait until these requests in doubt had time to settle (see
        :data:`RECONCILE_SETTLE_FACTOR`; the retry delay already counts): a short
        ``delay_minutes``, ``--retry-delay 0`` or ``retries = 0`` must not ask the
        provider while it may still be acting on the request."""
        until = [p.settle_at for p in doubt if p.settle_at is not None]
        if not until or self._stopped():
            return
        wait = max(until) - self._now()
        if wait <= 0:
            return
        log.info(
            "%s: waiting %.1fs before asking the provider about messages in doubt", self.name, wait
        )
        self._wait(wait)
