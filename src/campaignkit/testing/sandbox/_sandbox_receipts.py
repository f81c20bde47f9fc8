"""The delivery-receipts side of :class:`~campaignkit.testing.sandbox.Sandbox`: where
the fakes' callbacks go, the campaign's receipts settings in a rehearsal, and the
receiver a rehearsal records them with.

``Sandbox(receipts=ReceiptSimulation(...), receipts_url="http://127.0.0.1:8025")``
simulates delivery receipts: the SendGrid, Twilio and Telnyx fakes post the
providers' signed callbacks (SendGrid's Event Webhook to
``{receipts_url}/receipts/{channel}``, Twilio's ``StatusCallback`` and Telnyx's
``webhook_url`` given per message) and the Expo fake answers ``getReceipts`` with the
simulated outcomes. OneSignal and SMTP simulate no receipts.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import attrs

from ..._config import PipelineConfig
from ._receipts import CallbackDispatcher, ReceiptSimulation, ReceiptStats, is_loopback_url

if TYPE_CHECKING:
    from ..._pipeline import Pipeline

__all__ = ["SandboxReceipts"]


class SandboxReceipts:
    """Receipts methods of :class:`Sandbox` (the attributes are set by its constructor)."""

    receipts: ReceiptSimulation | None
    providers: tuple[str, ...]
    servers: Any
    _lock: threading.RLock
    _dispatcher: CallbackDispatcher | None
    _endpoint: Any
    _receipts_url: str | None

    # -- lifecycle (the sandbox's lock held by the caller of _start_receipts) --------
    def _start_receipts(self) -> None:
        """The callback thread, when receipts are simulated."""
        if self.receipts is not None and (self._dispatcher is None or self._dispatcher.stopped):
            self._dispatcher = CallbackDispatcher(self.receipts)

    def _attach_receipts(self, server: Any) -> None:
        """Have a new server simulate receipts (those whose fakes have them)."""
        attach = getattr(server, "attach_receipts", None)
        dispatcher = self._dispatcher
        if dispatcher is not None and self.receipts is not None and attach:
            attach(self.receipts, dispatcher)

    def _stop_receipts(self) -> None:
        """Stop the receiver and the callback thread (its counts stay readable)."""
        with self._lock:
            dispatcher = self._dispatcher
            endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            endpoint.stop()
        if dispatcher is not None:
            dispatcher.stop()

    # -- delivery receipts ------------------------------------------------------------
    def _receipts_config(self, config: PipelineConfig) -> PipelineConfig:
        """With receipts simulated and a receiver: the campaign's receipts arrive there,
        verified with the fakes' keys, and Expo's are polled without waiting."""
        if self.receipts is None or self.receipts_url is None:
            return config
        channels = []
        for c in config.channels:
            signer = c.enabled and c.provider in ("sendgrid", "telnyx")
            key = getattr(self.servers[c.provider], "webhook_public_key", None) if signer else None
            channels.append(attrs.evolve(c, receipts_key=key) if key else c)
        receipts = attrs.evolve(
            config.receipts, public_url=self.receipts_url, poll_after_minutes=0.0
        )
        return attrs.evolve(config, channels=tuple(channels), receipts=receipts)

    def open_receipts_endpoint(self) -> str:
        """Start a receipts receiver on 127.0.0.1 (waitress, a free port) and make it
        :attr:`receipts_url`; :meth:`receive_receipts` attaches a campaign to it."""
        from ._receipt_endpoint import ReceiptEndpoint

        with self._lock:
            if self._endpoint is None:
                self._endpoint = ReceiptEndpoint()
            endpoint = self._endpoint
        self.receipts_url = endpoint.start()
        return str(self.receipts_url)

    def receive_receipts(self, pipeline: Pipeline) -> Any:
        """Record the receipts arriving at the endpoint into ``pipeline``'s ledger (a
        rehearsal's: the sandbox ledger), verified; returns the
        :class:`~campaignkit.receipts.ReceiptReceiver`."""
        from ...receipts import receiver

        self.open_receipts_endpoint()
        rx = receiver(pipeline)
        old = self._endpoint.receiver
        self._endpoint.attach(rx)
        if old is not None:
            old.book.close()
        return rx

    @property
    def receipts_url(self) -> str | None:
        """Where the receipts receiver is mounted (see the constructor), or ``None``."""
        return self._receipts_url

    @receipts_url.setter
    def receipts_url(self, url: str | None) -> None:
        if url is not None and not is_loopback_url(url):
            raise ValueError("receipts_url must be an http(s) URL on 127.0.0.1 or localhost")
        self._receipts_url = url.rstrip("/") if url is not None else None

    def _receipt_options(self, provider: str, channel: str, *, enabled: bool) -> dict[str, Any]:
        """The options pointing an enabled channel's callbacks at the receiver (a
        SendGrid server's account-level URL is set instead)."""
        if self.receipts is None or self.receipts_url is None or not enabled:
            return {}
        method = getattr(self.servers[provider], "receipt_channel_options", None)
        if method is None:
            return {}
        return dict(method(f"{self.receipts_url}/receipts/{channel}"))

    def drain_receipts(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds until every callback scheduled so far was
        answered 2xx or given up; returns how many are still outstanding."""
        with self._lock:
            dispatcher = self._dispatcher
        return dispatcher.drain(timeout) if dispatcher is not None else 0

    def receipt_stats(self) -> ReceiptStats:
        """Counts of the callbacks: scheduled, sent, answered, retried, given up."""
        with self._lock:
            dispatcher = self._dispatcher
        return dispatcher.stats() if dispatcher is not None else ReceiptStats()
