"""Values that flow through a run.

Everything here that crosses threads is a frozen attrs class with slots.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from ._redact import forget, redact, remember
from ._states import DeliveryStatus, Reason, RunStatus

__all__ = [
    "ChannelResult",
    "DeliveryResult",
    "DeliveryStatus",
    "Message",
    "Outcome",
    "Rate",
    "Reason",
    "Recipient",
    "RejectedRow",
    "RunReport",
    "RunStatus",
    "Secret",
]


def _redacted(value: str | None) -> str | None:
    # Error texts are stored and printed: never with a credential inside.
    return redact(value) if value else value


def _redacted_mapping(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return {k: redact(v) if isinstance(v, str) else v for k, v in (value or {}).items()}


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    # A plain dict is taken as is (sources build a fresh one per row); others are copied.
    if type(value) is dict:
        return value
    return dict(value) if value else {}


@attrs.frozen(repr=False)
class Secret:
    """A provider token. Its repr and str never show the value; call :meth:`reveal`."""

    _value: str = attrs.field(alias="value")

    def __attrs_post_init__(self) -> None:
        # Redacted from every stored or printed error text while the secret exists.
        remember(self._value)
        weakref.finalize(self, forget, self._value)

    def reveal(self) -> str:
        """Return the secret value, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


@attrs.frozen
class Rate:
    """A sending rate: at most ``messages_per_second`` messages in at most
    ``requests_per_second`` requests. ``None`` means unlimited."""

    messages_per_second: float | None = None
    requests_per_second: float | None = None


@attrs.frozen
class Recipient:
    """One customer of the segment.

    Attributes:
        id: the customer's stable identifier: unique within a segment, unless the
            source allows several rows per customer (``rows_per_customer = "many"``).
        email, phone, push_token: channel addresses, ``None`` when absent.
        attributes: every other column, by its (mapped) name, as text.
        consent: per-channel consent flags, by channel name; a channel absent here
            has no consent column.
        line: 1-based line of the source file where the record starts (0 if unknown).
    """

    id: str
    email: str | None = None
    phone: str | None = None
    push_token: str | None = None
    attributes: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    consent: Mapping[str, bool] = attrs.field(factory=dict, converter=_frozen_mapping)
    line: int = 0

    def address(self, field: str) -> str | None:
        """Return the address in ``field`` (a model field or an attribute name)."""
        if field in ("email", "phone", "push_token", "id"):
            value: str | None = getattr(self, field)
            return value
        return self.attributes.get(field) or None

    def context(self) -> dict[str, Any]:
        """The template context: attributes overlaid with the model fields."""
        ctx: dict[str, Any] = dict(self.attributes)
        ctx["id"] = self.id
        ctx["email"] = self.email
        ctx["phone"] = self.phone
        ctx["push_token"] = self.push_token
        return ctx


@attrs.frozen
class RejectedRow:
    """A source row that could not become a :class:`Recipient`.

    Attributes:
        line: 1-based line where the row starts.
        field: the field at fault (model name), if one.
        reason: a short reason code (``empty_required_field``, ``bad_consent_value``, ...).
        detail: a human explanation.
        raw: the row's raw values, so that nothing is lost.
        end_line: the line where a record spanning several physical lines ends
            (``None``: it ends on ``line``).
    """

    line: int
    reason: str
    detail: str
    field: str | None = None
    raw: tuple[str, ...] = ()
    end_line: int | None = None

    @property
    def lines(self) -> int:
        """How many physical lines the record spans."""
        return 1 if self.end_line is None else self.end_line - self.line + 1


@attrs.frozen
class Message:
    """A rendered message for one recipient on one channel.

    ``address`` is the value of the notifier's ``address_field``. Which content
    parts are set depends on the channel: email uses ``subject``, ``body`` (text)
    and ``html``; SMS uses ``body``; push uses ``title``, ``body`` and ``data``.
    ``idempotency_key`` is deterministic for (run, channel, recipient).
    ``reference`` names the delivery (``<seq>.<run id>``): a channel whose provider
    sends delivery receipts asks it to echo the reference back in them (SendGrid's
    ``custom_args``, a status callback URL's query), so that a receipt finds its
    delivery directly (see :mod:`campaignkit.receipts`).
    """

    recipient_id: str
    channel: str
    address: str
    body: str
    subject: str | None = None
    html: str | None = None
    title: str | None = None
    data: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    name: str | None = None
    idempotency_key: str = ""
    reference: str = ""


@attrs.frozen
class Outcome:
    """What a notifier says about one message of a batch.

    Build with :meth:`sent` or :meth:`failed`; a notifier returns one per message,
    in the order of the batch.
    """

    ok: bool
    provider_message_id: str | None = None
    error_code: str | None = None
    error: str | None = attrs.field(default=None, converter=_redacted)
    transient: bool = False
    in_doubt: bool = False

    @classmethod
    def sent(cls, provider_message_id: str | None = None) -> Outcome:
        """The provider accepted the message."""
        return cls(True, provider_message_id=provider_message_id)

    @classmethod
    def failed(
        cls,
        error: str,
        *,
        code: str | None = None,
        transient: bool = False,
        in_doubt: bool = False,
    ) -> Outcome:
        """The provider refused the message; ``transient`` ones are retried.

        ``in_doubt`` (with ``transient``): the request may have been acted on (a
        timeout or a lost connection after it was sent); see
        :attr:`~campaignkit.DeliveryError.in_doubt`.
        """
        return cls(False, error_code=code, error=error, transient=transient, in_doubt=in_doubt)


@attrs.frozen
class DeliveryResult:
    """The final outcome for one recipient on one channel.

    ``line`` (the recipient's line in the source, 0 if unknown) and ``address`` (the
    normalized address it was sent to) are filled when read from the ledger; they tell
    apart the deliveries of a customer id on several rows (``rows_per_customer``).
    ``receipt``: what the provider's receipts said became of a ``sent`` one
    (:class:`~campaignkit.ReceiptStatus`), once one arrived.
    """

    channel: str
    recipient_id: str
    status: DeliveryStatus
    reason: str | None = None
    provider_message_id: str | None = None
    attempts: int = 0
    error_code: str | None = None
    error: str | None = attrs.field(default=None, converter=_redacted)
    line: int | None = None
    address: str | None = None
    receipt: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "channel": self.channel,
            "recipient_id": self.recipient_id,
            "line": self.line,
            "address": self.address,
            "status": self.status.value,
            "reason": self.reason,
            "provider_message_id": self.provider_message_id,
            "attempts": self.attempts,
            "error_code": self.error_code,
            "error": self.error,
            "receipt": self.receipt,
        }


@attrs.frozen
class ChannelResult:
    """Totals for one channel of a run.

    Attributes:
        sent, failed, skipped: recipients by final status.
        pending: recipients not sent yet (the run stopped early; a resume sends them).
        unknown: recipients in flight at a crash, with a provider without
            idempotency keys (``resume --resend-unknown`` re-sends them).
        reasons: count of failed and skipped recipients by reason code.
        error_codes: count of failures by provider error code.
        retries: retry rounds performed (0 when the first pass settled everything).
        requests: provider requests made (all attempts).
        started_at, finished_at: wall-clock times (UTC).
    """

    channel: str
    provider: str
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    pending: int = 0
    unknown: int = 0
    deferred: int = 0
    reasons: Mapping[str, int] = attrs.field(factory=dict, converter=_frozen_mapping)
    error_codes: Mapping[str, int] = attrs.field(factory=dict, converter=_frozen_mapping)
    retries: int = 0
    requests: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result_key: str = ""
    stopped: str | None = None  # why the channel stopped early, if it did

    @property
    def total(self) -> int:
        """All recipients accounted for on this channel."""
        return self.sent + self.failed + self.skipped + self.pending + self.unknown + self.deferred

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "channel": self.channel,
            "provider": self.provider,
            "sent": self.sent,
            "failed": self.failed,
            "skipped": self.skipped,
            "pending": self.pending,
            "unknown": self.unknown,
            "deferred": self.deferred,
            "total": self.total,
            "stopped": self.stopped,
            "reasons": dict(sorted(self.reasons.items())),
            "error_codes": dict(sorted(self.error_codes.items())),
            "retries": self.retries,
            "requests": self.requests,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "duration_seconds": self.duration_seconds,
        }


@attrs.frozen
class RunReport:
    """What a run did.

    ``channels`` maps channel name to its :class:`ChannelResult`. :meth:`to_dict`
    names each channel's section by its ``result_key`` (``email_campaign_results``,
    ``sms_campaign_results``, ``push_notification_results`` for the seed channels).
    """

    run_id: str
    pipeline: str
    status: RunStatus
    started_at: datetime
    finished_at: datetime
    channels: Mapping[str, ChannelResult] = attrs.field(factory=dict, converter=_frozen_mapping)
    rows_read: int = 0
    rows_rejected: int = 0
    rejected_reasons: Mapping[str, int] = attrs.field(factory=dict, converter=_frozen_mapping)
    lines: Mapping[str, int] | None = None
    output_dir: str | None = None
    errors: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    #: ``True`` when nothing was sent now: the report is the one the run stored when it
    #: finished (running a logical date again, or resuming a finished run).
    replayed: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], run: Any = None) -> RunReport:
        """Rebuild a report from :meth:`to_dict` output (as the ledger stores it).
        ``run`` (a ledger run record) fills what the dict lacks."""
        extraction = data.get("extraction") or {}
        channels = {}
        for value in data.values():
            if isinstance(value, Mapping) and "channel" in value and "sent" in value:
                channels[value["channel"]] = ChannelResult(
                    channel=value["channel"],
                    provider=value.get("provider", ""),
                    sent=value.get("sent", 0),
                    failed=value.get("failed", 0),
                    skipped=value.get("skipped", 0),
                    pending=value.get("pending", 0),
                    unknown=value.get("unknown", 0),
                    deferred=value.get("deferred", 0),
                    reasons=value.get("reasons", {}),
                    error_codes=value.get("error_codes", {}),
                    retries=value.get("retries", 0),
                    requests=value.get("requests", 0),
                    started_at=_parse(value.get("started_at")),
                    finished_at=_parse(value.get("finished_at")),
                    result_key=next(k for k, v in data.items() if v is value),
                    stopped=value.get("stopped"),
                )
        started = _parse(data.get("started_at")) or getattr(run, "created_at", None)
        finished = _parse(data.get("finished_at")) or getattr(run, "finished_at", None) or started
        return cls(
            run_id=str(data.get("run_id") or getattr(run, "run_id", "")),
            pipeline=str(data.get("pipeline") or getattr(run, "pipeline", "")),
            status=RunStatus(str(data.get("status") or getattr(run, "status", "failed"))),
            started_at=started or datetime.now(),
            finished_at=finished or datetime.now(),
            channels=channels,
            rows_read=extraction.get("rows_read", 0),
            rows_rejected=extraction.get("rows_rejected", 0),
            rejected_reasons=extraction.get("rejected_reasons", {}),
            lines=extraction.get("lines"),
            output_dir=data.get("output_dir"),
            errors=data.get("errors", {}),
            replayed=bool(data.get("replayed", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; channel sections are keyed by ``result_key``."""
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "status": self.status.value,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "extraction": {
                "rows_read": self.rows_read,
                "rows_rejected": self.rows_rejected,
                "rejected_reasons": dict(sorted(self.rejected_reasons.items())),
                "lines": None if self.lines is None else dict(self.lines),
            },
            "output_dir": self.output_dir,
            "errors": dict(self.errors),
            "replayed": self.replayed,
        }
        for name, result in self.channels.items():
            out[result.result_key or f"{name}_results"] = result.to_dict()
        return out

    def __attrs_post_init__(self) -> None:
        # A channel's crash text is stored and printed: never with a credential inside.
        object.__setattr__(self, "errors", _redacted_mapping(self.errors))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None
