"""Test helpers for campaignkit users and plugin authors.

* :class:`RecordingNotifier` / :func:`recording_plugin`: a channel that records messages
  instead of sending them, with scripted permanent and transient failures.
* :class:`StaticSource`: a source over recipients held in memory (the same class as
  :class:`campaignkit.StaticSource`, importable from here too).
* :mod:`campaignkit.testing.sandbox`: loopback servers speaking the real providers'
  wire contracts (SendGrid, SMTP, Twilio, Telnyx, OneSignal, Expo).
* A pytest plugin (installed with campaignkit) offers fixtures; see
  :mod:`campaignkit.testing.pytest_plugin`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs

from .._models import Message, Outcome
from .._notifier import ChannelSettings, Notifier
from .._static import StaticSource
from ..hookspecs import hookimpl

__all__ = ["Outbox", "RecordingNotifier", "StaticSource", "recording_plugin"]


class Outbox:
    """Messages a :class:`RecordingNotifier` accepted; thread-safe.

    With ``keep=False`` only counts are kept (for large runs).
    """

    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self.count = 0
        self.requests = 0
        self._attempts: dict[str, int] = {}

    def _add(self, batch: Sequence[Message]) -> None:
        with self._lock:
            self.requests += 1
            self.count += len(batch)
            if self.keep:
                self._messages.extend(batch)

    def _attempt(self, key: str) -> int:
        with self._lock:
            self._attempts[key] = self._attempts.get(key, 0) + 1
            return self._attempts[key]

    @property
    def messages(self) -> list[Message]:
        """Accepted messages, in acceptance order."""
        with self._lock:
            return list(self._messages)

    def for_channel(self, channel: str) -> list[Message]:
        return [m for m in self.messages if m.channel == channel]


@attrs.frozen
class _RecordingOptions:
    address_field: str = "email"
    max_batch_size: int = 100
    fail: list[str] = attrs.field(factory=list)
    fail_code: str = "rejected"
    flaky: dict[str, int] = attrs.field(factory=dict)


class RecordingNotifier(Notifier[None]):
    """A channel that records messages in an :class:`Outbox` instead of sending them.

    Options (``[channels.<name>.options]``):
        address_field: recipient field to send to (default ``email``).
        max_batch_size: largest batch accepted (default 100; the core never exceeds
            the class attribute, which is 1000).
        fail: addresses that fail permanently with code ``fail_code``.
        flaky: address -> number of attempts that fail transiently before success.
    """

    name: ClassVar[str] = "recording"
    max_batch_size: ClassVar[int] = 1000
    token_required: ClassVar[bool] = False
    outbox: ClassVar[Outbox] = Outbox()

    def __init__(self, settings: ChannelSettings) -> None:
        super().__init__(settings)
        self.options = settings.structure(_RecordingOptions)
        self.address_field = self.options.address_field  # type: ignore[misc]

    def send_batch(self, conn: None, messages: Sequence[Message]) -> Sequence[Outcome]:
        outcomes: list[Outcome] = []
        accepted: list[Message] = []
        fail = self.options.fail
        flaky = self.options.flaky
        for m in messages:
            if m.address in fail:
                outcomes.append(Outcome.failed("rejected by recorder", code=self.options.fail_code))
            elif m.address in flaky and self.outbox._attempt(m.idempotency_key) <= flaky[m.address]:
                outcomes.append(Outcome.failed("flaky", code="flaky", transient=True))
            else:
                accepted.append(m)
                outcomes.append(Outcome.sent(f"rec-{m.idempotency_key[:12]}"))
        self.outbox._add(accepted)
        return outcomes


def recording_plugin(outbox: Outbox | None = None, *, name: str = "recording") -> Any:
    """A plugin object registering a :class:`RecordingNotifier` named ``name`` that
    records into ``outbox`` (a new one by default, available as ``plugin.outbox``).

    Pass it to ``get_plugin_manager(plugins=[plugin])``.
    """
    box = outbox if outbox is not None else Outbox()
    cls = type(f"RecordingNotifier_{name}", (RecordingNotifier,), {"name": name, "outbox": box})

    class _Plugin:
        outbox = box
        notifier_class = cls

        @hookimpl
        def campaignkit_register_channels(self, register: Any) -> None:
            register(cls)

    return _Plugin()
