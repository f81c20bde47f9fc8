"""Push notifications through OneSignal (``provider = "onesignal"``).

Wire contract (``POST {base_url}/notifications``, ``Authorization: Key <App API key>``)::

    {"app_id": "...", "contents": {"en": body}, "headings": {"en": title},
     "data": {...}, "include_subscription_ids": ["..."],
     "idempotency_key": "<uuid>"}

or, with ``targeting = "external_id"``,
``"include_aliases": {"external_id": [...]}, "target_channel": "push"``.

**One notification per content.** A OneSignal notification has one content for all its
recipients, so a batch is split into one request per distinct (title, body, data);
a personalised campaign therefore makes one request per message. The outcomes are
still returned in the batch's order.

**Idempotency.** Each request carries an ``idempotency_key`` derived from the sorted
:attr:`Message.idempotency_key` values of its messages (a SHA-256 digest laid out as
an RFC 9562 version-4 UUID, the form OneSignal accepts), so the same messages sent
again (a retry after a timeout) get the same key and OneSignal replays the original
result instead of notifying twice, for 30 days. If any message of a request has no
idempotency key, the request is sent without one.

**Results.** HTTP 200 ``{"id", "errors"?}``: recipients listed in
``errors.invalid_aliases.external_id`` fail with code ``invalid_aliases``, those in
``errors.invalid_player_ids`` / ``invalid_subscription_ids`` with code
``unsubscribed``; ``"All included players are not subscribed"`` with an empty ``id``
fails every recipient with code ``unsubscribed`` (another error with an empty ``id``:
code ``not_sent``). All of those are permanent. The
others are sent, with ``provider_message_id = "<notification id>:<address>"`` (one
notification is shared by its recipients; the suffix makes the id unique per
recipient, and the part before ``:`` is the id to query OneSignal with).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import requests

from .._http import HttpNotifier
from .._models import Message, Outcome, Rate
from .._redact import redact
from ..exceptions import PermanentDeliveryError, TransientDeliveryError
from ..hookspecs import hookimpl
from ..options import not_blank, one_of, safe_base_url

__all__ = ["OneSignalNotifier", "OneSignalOptions", "idempotency_key"]

NOTIFICATIONS_PATH = "/notifications"
TARGETING_MODES = ("subscription_ids", "external_id")
NOT_SUBSCRIBED = "All included players are not subscribed"
#: HTTP statuses after which no other request of the batch can succeed.
_FATAL_STATUSES = frozenset({401, 403})

_ContentKey = tuple[str | None, str, tuple[tuple[str, str], ...]]


@attrs.frozen
class OneSignalOptions:
    """The ``options`` table of a OneSignal channel.

    Attributes:
        app_id: the OneSignal app id (required).
        base_url: the API root (``https://api.onesignal.com``); ``http://`` only on loopback.
        targeting: what the recipient's ``push_token`` holds: ``subscription_ids`` (a
            OneSignal subscription id, sent as ``include_subscription_ids``) or
            ``external_id`` (the user's external id, sent as ``include_aliases`` with
            ``target_channel = "push"``).
    """

    app_id: str = attrs.field(validator=not_blank())
    base_url: str = attrs.field(default="https://api.onesignal.com", validator=safe_base_url)
    targeting: str = attrs.field(default="subscription_ids", validator=one_of(*TARGETING_MODES))


def idempotency_key(keys: Sequence[str]) -> str | None:
    """The request ``idempotency_key`` for messages with these idempotency keys.

    Deterministic and independent of order: the SHA-256 of the sorted keys laid out
    as a version-4 UUID. ``None`` when a key is empty (the request is then sent
    without one).
    """
    if not keys or not all(keys):
        return None
    digest = hashlib.sha256("\n".join(sorted(keys)).encode("utf-8")).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _content_key(message: Message) -> _ContentKey:
    return (message.title, message.body, tuple(sorted(message.data.items())))


def _is_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID in its canonical ``8-4-4-4-12`` hex form."""
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


class OneSignalNotifier(HttpNotifier):
    """Sends push notifications through OneSignal's ``POST /notifications``.

    A batch of at most 2,000 messages becomes one request per distinct content (see the
    module documentation). With ``targeting = "subscription_ids"``, an address that is
    not a UUID fails permanently (code ``invalid_subscription_id``) without being sent,
    because OneSignal would refuse the whole request for it.

    Errors of one request of a batch: before any request of the batch was accepted they
    are raised (:class:`~campaignkit.TransientDeliveryError` for 429 with
    ``retry_after``, 5xx and network errors; :class:`~campaignkit.PermanentDeliveryError`
    for 400 with OneSignal's error text, 401 and 403), except that a permanent error of
    one content group among several only fails that group. After a request was
    accepted, errors become failed outcomes instead, so accepted messages are never
    reported as failed: a transient error fails that group and every later group
    (transiently, without sending them), a 401/403 fails them permanently, and any
    other permanent error fails only that group.

    Use :meth:`requests_needed` to know how many requests a batch will make.
    """

    name: ClassVar[str] = "onesignal"
    address_field: ClassVar[str] = "push_token"
    max_batch_size: ClassVar[int] = 2000
    stop_codes: ClassVar[frozenset[str]] = frozenset({"unsubscribed", "invalid_aliases"})
    supports_idempotency_keys: ClassVar[bool] = True
    default_rate: ClassVar[Rate] = Rate(requests_per_second=150)
    token_required: ClassVar[bool] = True
    default_base_url: ClassVar[str] = "https://api.onesignal.com"

    options_class: ClassVar[type[OneSignalOptions]] = OneSignalOptions
    options: OneSignalOptions

    def connect(self) -> requests.Session:
        session = super().connect()
        session.headers["Accept"] = "application/json"
        token = self.settings.token
        if token:
            session.headers["Authorization"] = f"Key {token.reveal()}"
        return session

    # -- building requests ------------------------------------------------------------
    def groups(self, messages: Sequence[Message]) -> list[list[int]]:
        """Indexes of ``messages`` grouped by identical content, in first-seen order."""
        by_content: dict[_ContentKey, list[int]] = {}
        for index, message in enumerate(messages):
            by_content.setdefault(_content_key(message), []).append(index)
        return list(by_content.values())

    def requests_needed(self, messages: Sequence[Message]) -> int:
        """How many HTTP requests :meth:`send_batch` makes for ``messages``."""
        return len(self.groups(messages))

    def payload(self, messages: Sequence[Message]) -> dict[str, Any]:
        """The request body for messages that share one content.

        The recipients are listed in idempotency-key order, so that the same messages
        always make the same body, whatever their order in the batch.
        """
        first = messages[0]
        addresses = [
            m.address for m in sorted(messages, key=lambda m: (m.idempotency_key, m.address))
        ]
        body: dict[str, Any] = {"app_id": self.options.app_id, "contents": {"en": first.body}}
        if first.title is not None:
            body["headings"] = {"en": first.title}
        if first.data:
            body["data"] = dict(first.data)
        if self.options.targeting == "external_id":
            body["include_aliases"] = {"external_id": addresses}
            body["target_channel"] = "push"
        else:
            body["include_subscription_ids"] = addresses
        key = idempotency_key([m.idempotency_key for m in messages])
        if key is not None:
            body["idempotency_key"] = key
        return body

    # -- sending ----------------------------------------------------------------------
    def send_batch(self, conn: requests.Session, messages: Sequence[Message]) -> Sequence[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(messages)
        if self.options.targeting == "subscription_ids":
            for index, message in enumerate(messages):
                if not _is_uuid(message.address):
                    outcomes[index] = Outcome.failed(
                        "not a OneSignal subscription id (expected a UUID)",
                        code="invalid_subscription_id",
                    )
        pending = [i for i, outcome in enumerate(outcomes) if outcome is None]
        groups = self.groups([messages[i] for i in pending])
        groups = [[pending[i] for i in group] for group in groups]
        accepted = False
        for number, group in enumerate(groups):
            try:
                results = self._send_group(conn, [messages[i] for i in group])
            except TransientDeliveryError as exc:
                if not accepted:
                    raise
                self._fail(outcomes, [group], exc, transient=True, in_doubt=exc.in_doubt)
                self._fail(outcomes, groups[number + 1 :], exc, transient=True)
                break
            except PermanentDeliveryError as exc:
                fatal = exc.status_code in _FATAL_STATUSES
                if not accepted and (fatal or len(groups) == 1):
                    raise
                if fatal:
                    self._fail(outcomes, groups[number:], exc, transient=False)
                    break
                self._fail(outcomes, [group], exc, transient=False)
                continue
            accepted = True
            for index, outcome in zip(group, results, strict=True):
                outcomes[index] = outcome
        return [
            o if o is not None else Outcome.failed("not sent", code="not_sent") for o in outcomes
        ]

    @staticmethod
    def _fail(
        outcomes: list[Outcome | None],
        groups: Sequence[Sequence[int]],
        exc: TransientDeliveryError | PermanentDeliveryError,
        *,
        transient: bool,
        in_doubt: bool = False,
    ) -> None:
        for group in groups:
            for index in group:
                outcomes[index] = Outcome.failed(
                    str(exc), code=exc.code, transient=transient, in_doubt=in_doubt
                )

    def _send_group(self, conn: requests.Session, messages: Sequence[Message]) -> list[Outcome]:
        response = self.post(conn, NOTIFICATIONS_PATH, json=self.payload(messages))
        try:
            reply = response.json()
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            # Accepted but unreadable: a retry would replay the same reply.
            raise PermanentDeliveryError(
                "unexpected OneSignal reply: body is not a JSON object",
                code="protocol_error",
                status_code=response.status_code,
            )
        notification_id = reply.get("id") or ""
        errors = reply.get("errors")
        invalid = _invalid_recipients(errors)
        if not notification_id:
            # Nothing was created: every recipient is refused.
            text = _errors_text(errors) or "no notification created"
            default = "unsubscribed" if NOT_SUBSCRIBED in text else "not_sent"
            return [
                Outcome.failed(text, code=invalid.get(m.address, (default, ""))[0])
                for m in messages
            ]
        outcomes: list[Outcome] = []
        for message in messages:
            if message.address in invalid:
                code, text = invalid[message.address]
                outcomes.append(Outcome.failed(text, code=code))
            else:
                outcomes.append(Outcome.sent(f"{notification_id}:{message.address}"))
        return outcomes


def _errors_text(errors: Any) -> str:
    if isinstance(errors, list):
        return redact("; ".join(str(e) for e in errors))[:300]
    if errors:
        return redact(str(errors))[:300]
    return ""


def _invalid_recipients(errors: Any) -> dict[str, tuple[str, str]]:
    """Recipients a 200 reply's ``errors`` names, mapped to (code, message)."""
    found: dict[str, tuple[str, str]] = {}
    if not isinstance(errors, Mapping):
        return found
    aliases = errors.get("invalid_aliases")
    if isinstance(aliases, Mapping):
        for label, values in aliases.items():
            for value in values if isinstance(values, list) else []:
                found[str(value)] = ("invalid_aliases", f"unknown {label} alias")
    for field in ("invalid_subscription_ids", "invalid_player_ids"):
        values = errors.get(field)
        for value in values if isinstance(values, list) else []:
            found[str(value)] = ("unsubscribed", "subscription is not subscribed or does not exist")
    return found


@hookimpl
def campaignkit_register_channels(register: Callable[[type[Any]], None]) -> None:
    """Register :class:`OneSignalNotifier` as ``provider = "onesignal"``."""
    register(OneSignalNotifier)
