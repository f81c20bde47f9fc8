"""Rendering a channel's messages, and the deliveries' idempotency keys."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

import attrs

from .._content import html_to_text, list_unsubscribe_headers
from .._controls import CONTROL_CHARACTER, control_detail, find_control
from .._ledger import DeliveryRecord, Ledger
from .._models import DeliveryResult, DeliveryStatus, Message, Reason, Recipient
from ..exceptions import TemplateError
from ._plan import ChannelPlan

__all__ = ["Pending", "Renderer", "idempotency_key", "legacy_idempotency_key"]

#: Template parts rendered as one line (headers and notification titles).
_ONE_LINE = ("subject", "title")


def idempotency_key(run_id: str, channel: str, seq: int) -> str:
    """The deterministic key of one delivery: the same for every attempt and resume.

    A delivery is (run, channel, the recipient's position ``seq`` in the run's
    snapshot), so no two deliveries of a run share a key, whatever the customer ids:
    two rows of one customer (``rows_per_customer = "many"``) are two deliveries. The
    snapshot is written once per run, so ``seq`` (and the key) is stable across resumes.
    The parts are length-prefixed: no two different triples make the same text.
    """
    text = _key_text(run_id, channel, str(int(seq)))
    return hashlib.sha256(text.encode(*_KEY_CODEC)).hexdigest()[:32]


_KEY_CODEC = ("utf-8", "surrogatepass")


def _key_text(run_id: str, channel: str, seq: str) -> str:
    return f"ck2:{len(run_id)}:{run_id}:{len(channel)}:{channel}:{seq}"


def key_maker(run_id: str, channel: str) -> Callable[[int], str]:
    """:func:`idempotency_key` for one (run, channel), by ``seq``: the hash state after
    the constant prefix is kept, so a key is a copy, the seq and a digest (half the
    time of hashing the whole text for every message)."""
    prefix = hashlib.sha256(_key_text(run_id, channel, "").encode(*_KEY_CODEC))

    def key(seq: int) -> str:
        state = prefix.copy()
        state.update(b"%d" % seq)
        return state.hexdigest()[:32]

    return key


def legacy_idempotency_key(run_id: str, channel: str, recipient_id: str) -> str:
    """The key of runs snapshotted before ledger schema 4, from the recipient id: kept
    for them, so that a resume after the upgrade re-sends in-flight messages with the
    keys they first left with."""
    text = f"{run_id}\x1f{channel}\x1f{recipient_id}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@attrs.define
class Pending:
    """A message on its way, with its place in the segment and its attempts so far."""

    seq: int
    message: Message
    attempts: int = 0
    error_code: str | None = None
    error: str | None = None
    #: its last request ended in doubt; to be reconciled with the provider before a resend
    in_doubt: bool = False
    #: wall-clock time (epoch seconds) of its first attempt in this session
    since: float | None = None
    #: monotonic time its last request started (the runner's clock, ``_now``)
    sent_at: float | None = None
    #: monotonic time before which the provider is not asked about it (its request
    #: in doubt had time to settle: see :data:`RECONCILE_SETTLE_FACTOR`)
    settle_at: float | None = None
    #: its last attempt ended in doubt and nothing settled it since: if no retry is
    #: left it is ``unknown``, never ``failed`` (the provider may have delivered it,
    #: and retry-failed would re-send it, after an idempotency key's lifetime a copy)
    uncertain: bool = False


class Renderer:
    """Renders one channel's messages: its template for a recipient, checked (one-line
    parts, the unsubscribe link, the content rules), with the delivery's idempotency
    key. ``ledger`` tells the keys of runs snapshotted before ledger schema 4; a
    preview renders without one."""

    def __init__(self, plan: ChannelPlan, *, run_id: str, ledger: Ledger | None) -> None:
        self.plan = plan
        self.name = plan.channel.name
        self.run_id = run_id
        self.ledger = ledger
        self._legacy_keys: bool | None = None  # decided on the first render
        self._keys = key_maker(run_id, self.name)

    def render(
        self, seq: int, recipient: Recipient, address: str, attempts: int = 0
    ) -> Pending | DeliveryRecord:
        """The message for one selected recipient, or a failed row if it cannot be
        rendered or breaks the channel's content rules."""
        try:
            parts = self.plan.template.render(recipient.context())
        except TemplateError as exc:
            return self._failed_row(seq, recipient, attempts, Reason.RENDER_ERROR, str(exc))
        for name in _ONE_LINE:
            # A subject or title is one line: a line break from a free-text field would
            # forge a header. (The values themselves were checked when extracted.)
            value = parts.get(name)
            if isinstance(value, str) and (found := find_control(value, strict=False, line=True)):
                return self._failed_row(
                    seq, recipient, attempts, CONTROL_CHARACTER, control_detail(name, *found)
                )
        html = parts.get("html")
        body = parts.get("body")
        if body is None and html is not None:
            body = html_to_text(html)  # email: a text part derived from the HTML one
        headers: dict[str, str] = {}
        if parts.get("unsubscribe_url"):
            try:
                headers = list_unsubscribe_headers(
                    parts["unsubscribe_url"], parts.get("unsubscribe_mailto") or None
                )
            except ValueError as exc:
                return self._failed_row(
                    seq, recipient, attempts, "invalid_unsubscribe_url", str(exc)
                )
        message = Message(
            recipient_id=recipient.id,
            channel=self.name,
            address=address,
            body=body or "",
            subject=parts.get("subject"),
            html=html,
            title=parts.get("title"),
            data=parts.get("data") or {},
            headers=headers,
            idempotency_key=self._key(seq, recipient),
            reference=f"{seq}.{self.run_id}",
        )
        if self.plan.content is not None:
            problem = self.plan.content(message)
            if problem is not None:
                return self._failed_row(seq, recipient, attempts, problem, problem)
        return Pending(seq, message, attempts)

    def _key(self, seq: int, recipient: Recipient) -> str:
        """The delivery's idempotency key: by snapshot position, or by recipient id for
        a run snapshotted before ledger schema 4 (it has no snapshot info)."""
        if self._legacy_keys is None:
            ledger = self.ledger
            self._legacy_keys = ledger is not None and ledger.snapshot_info(self.run_id) is None
        if self._legacy_keys:
            return legacy_idempotency_key(self.run_id, self.name, recipient.id)
        return self._keys(seq)

    def _failed_row(
        self, seq: int, recipient: Recipient, attempts: int, reason: str, error: str
    ) -> DeliveryRecord:
        result = DeliveryResult(
            self.name,
            recipient.id,
            DeliveryStatus.FAILED,
            reason,
            attempts=attempts,
            error_code=reason,
            error=error,
        )
        return DeliveryRecord(seq, result, DeliveryStatus.FAILED, False)

    def messages(
        self, segment: Iterable[Recipient], now: datetime
    ) -> Iterator[Message | DeliveryResult]:
        """Rendered messages for recipients the per-recipient rules select, or the
        failed result of one that cannot be rendered or breaks a content rule (a
        preview: de-duplication, caps and targets need the whole audience and are not
        applied)."""
        for seq, recipient in enumerate(segment):
            reason, address, filtered, _ = self.plan.audience.decide(recipient, now)
            if reason is None and not filtered and address is not None:
                item = self.render(seq, recipient, address)
                yield item.message if isinstance(item, Pending) else item.result
