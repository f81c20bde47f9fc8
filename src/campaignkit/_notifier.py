"""The channel plugin contract: :class:`Notifier` and its :class:`ChannelSettings`."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import quote

import attrs

from ._models import Message, Outcome, Rate, Secret

#: The query parameter of a receipts callback URL that carries the message's reference.
REFERENCE_PARAMETER = "ck"

__all__ = ["ChannelSettings", "Notifier", "placeholder_token"]


def placeholder_token(use: str) -> Secret:
    """A token standing in for a channel's own where nothing is sent: a notifier built
    only to check its options or learn its address field, a dry run (``use`` names which,
    as in ``validate-placeholder``)."""
    return Secret(f"{use}-placeholder")


ConnT = TypeVar("ConnT")
T = TypeVar("T")


@attrs.frozen
class ChannelSettings:
    """What the core hands a notifier when it builds one for a channel.

    Attributes:
        channel: the channel's name in the campaign (``email``, ``sms``, ...).
        options: the provider options from the channel's ``options`` table.
        token: the token read from the channel's token environment variable,
            or ``None`` when the notifier needs none and none is set.
        timeout: seconds allowed for one provider request.
        base_dir: directory of the configuration file (for relative paths).
        env: the environment the pipeline was given (``Pipeline(env=...)``, else
            ``os.environ``), for settings an option names a variable of
            (``account_sid_env``). Channels read it, never ``os.environ``: a
            notifier built by hand sees only what it is given (nothing by default).
        receipts_url: where the provider should send this channel's delivery
            receipts (``[receipts] public_url``), for providers that are told per
            message (Twilio's ``StatusCallback``, Telnyx's ``webhook_url``).
    """

    channel: str
    options: Mapping[str, Any] = attrs.field(factory=dict)
    token: Secret | None = None
    timeout: float = 30.0
    base_dir: Path = attrs.field(factory=Path.cwd)
    env: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    receipts_url: str | None = None

    @property
    def path(self) -> str:
        """The key path of the channel's options (``channels.sms.options``)."""
        return f"channels.{self.channel}.options"

    def receipts_callback(self, reference: str) -> str | None:
        """:attr:`receipts_url` carrying a message's reference in its query (``ck=``),
        for providers that call a URL given per message; ``None`` when unset."""
        if self.receipts_url is None:
            return None
        if not reference:
            return self.receipts_url
        joiner = "&" if "?" in self.receipts_url else "?"
        return f"{self.receipts_url}{joiner}{REFERENCE_PARAMETER}={quote(reference, safe='')}"

    def getenv(self, name: str) -> str | None:
        """The variable ``name`` of :attr:`env`, stripped; ``None`` when unset or blank."""
        return self.env.get(name, "").strip() or None

    def structure(self, cls: type[T]) -> T:
        """Structure :attr:`options` into the attrs class ``cls``.

        Raises:
            ConfigError: naming the key path (``channels.email.options.from_email``).
        """
        from ._config import structure_options

        return structure_options(self.options, cls, path=self.path)


class Notifier(abc.ABC, Generic[ConnT]):
    """Base class of a channel plugin: sends batches of rendered messages to one provider.

    A plugin subclasses it, sets the class attributes, implements :meth:`send_batch`
    (and :meth:`connect` / :meth:`disconnect` when it holds a connection), and registers
    the class from its ``campaignkit_register_channels`` hook implementation.

    Threads, batching, retries, rate limits and bookkeeping belong to the core:

    * the core calls :meth:`connect` once in each worker thread and passes that
      connection to every :meth:`send_batch` call of the thread, so a connection is
      never shared between threads; :meth:`disconnect` is called when the thread ends;
    * a batch never holds more than :attr:`max_batch_size` messages;
    * :meth:`send_batch` returns one :class:`~campaignkit.Outcome` per message, in
      order. Per-recipient failures reported by the provider are failed outcomes
      (``transient=True`` for those worth retrying). When the provider refuses the
      whole request it raises :class:`~campaignkit.TransientDeliveryError` or
      :class:`~campaignkit.PermanentDeliveryError` instead;
    * only messages whose outcome was transient are sent again, at the next retry.

    Class attributes:
        name: the provider name used in configuration (``provider = "sendgrid"``).
        address_field: the recipient field the channel sends to (``email``, ``phone``,
            ``push_token``, or an attribute column).
        max_batch_size: most messages per :meth:`send_batch` call.
        supports_idempotency_keys: whether the provider de-duplicates a re-sent
            request carrying the same :attr:`Message.idempotency_key`.
        default_rate: the provider's documented rate, used when the channel sets none.
        token_required: whether a missing token is a configuration error.
        options_class: the attrs class the channel's ``options`` table is structured
            into (validators on its fields, see :mod:`campaignkit.options`); the
            constructor sets :attr:`options` from it. ``None``: the notifier reads
            ``settings.options`` itself.
        stop_codes: provider error codes meaning "never message this address again"
            (unsubscribed, unregistered device, hard bounce); the core adds such
            addresses to the ledger's suppression list.
    """

    name: ClassVar[str]
    address_field: ClassVar[str] = "email"
    max_batch_size: ClassVar[int] = 1
    supports_idempotency_keys: ClassVar[bool] = False
    default_rate: ClassVar[Rate] = Rate()
    token_required: ClassVar[bool] = True
    stop_codes: ClassVar[frozenset[str]] = frozenset()
    options_class: ClassVar[type[Any] | None] = None
    #: The structured options (an instance of :attr:`options_class`).
    options: Any

    def __init__(self, settings: ChannelSettings) -> None:
        """Build the notifier; validate options here so errors come before any send.

        Raises:
            ConfigError: every problem of the options table, each naming its key
                path (``channels.sms.options.from``), when :attr:`options_class` is set.
        """
        self.settings = settings
        if self.options_class is not None:
            self.options = settings.structure(self.options_class)

    def connect(self) -> ConnT:
        """Open this worker thread's connection (a ``requests.Session``, an SMTP client...)."""
        return None  # type: ignore[return-value]

    def disconnect(self, conn: ConnT) -> None:
        """Close a connection made by :meth:`connect`."""

    @abc.abstractmethod
    def send_batch(self, conn: ConnT, messages: Sequence[Message]) -> Sequence[Outcome]:
        """Send ``messages`` and return one outcome per message, in order.

        Raises:
            TransientDeliveryError: nothing was accepted; the batch may be retried.
            PermanentDeliveryError: nothing was accepted; retrying cannot help.
        """

    def reconcile(
        self, conn: ConnT, messages: Sequence[Message], since: datetime
    ) -> Sequence[Outcome | None]:
        """Optional: ask the provider whether messages whose request ended in doubt
        were accepted after all (a lookup, for providers without idempotency keys).

        The core calls it, with a connection from :meth:`connect`, before re-sending
        messages whose request ended in doubt (a read timeout, a connection lost
        after the request was written, a 5xx: see
        :attr:`~campaignkit.DeliveryError.in_doubt`), at the next retry round and once
        more at the end of the run. ``since`` is when the first attempt was made (UTC).
        Return one answer per message, in order:

        * ``Outcome.sent(provider_id)``: the provider has the message; it is recorded
          ``sent`` and not sent again;
        * ``Outcome.failed(..., transient=True)``: the provider surely has no such
          message; it is sent again like any transient failure;
        * ``None``: cannot tell; it is recorded ``unknown`` (unless the channel sets
          ``on_doubt = "retry"``).

        Raising counts as ``None`` for every message. The default implementation
        has no lookup: without idempotency keys or this method, in-doubt messages
        are recorded ``unknown``.
        """
        return [None] * len(messages)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} provider={self.name!r} channel={self.settings.channel!r}>"
