"""The base of the fakes that send delivery receipts (:class:`ReceiptServer`) and the
providers' webhook signatures, made as the providers make them."""

from __future__ import annotations

import base64
import hmac
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ._receipts import (
    Callback,
    CallbackDispatcher,
    ReceiptOutcome,
    ReceiptSimulation,
    ReceiptStats,
    Render,
)
from ._server import ProviderServer

__all__ = ["EcdsaSigner", "Ed25519Signer", "ReceiptServer", "twilio_signature"]


def _crypto() -> Any:
    """The ``cryptography`` primitives, or the ``receipts`` extra's install hint."""
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    except ImportError as error:  # pragma: no cover - the extra is installed in tests
        from ...receipts import ReceiptsDependencyError

        raise ReceiptsDependencyError(
            "signed sandbox receipts need the 'cryptography' package: "
            "pip install 'campaignkit[receipts]'"
        ) from error
    return hashes, serialization, ec, ed25519


class EcdsaSigner:
    """SendGrid's Signed Event Webhook key: ECDSA P-256 / SHA-256, made on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: Any = None

    def _private(self) -> Any:
        with self._lock:
            if self._key is None:
                _, _, ec, _ = _crypto()
                self._key = ec.generate_private_key(ec.SECP256R1())
            return self._key

    def __repr__(self) -> str:
        return "<EcdsaSigner P-256>"

    @property
    def public_key(self) -> str:
        """Base64 of the DER SubjectPublicKeyInfo, as SendGrid's settings show it."""
        _, serialization, _, _ = _crypto()
        der = (
            self._private()
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return base64.b64encode(der).decode("ascii")

    def sign(self, timestamp: str, body: bytes) -> str:
        """Base64 DER ECDSA signature over ``timestamp + body``."""
        hashes, _, ec, _ = _crypto()
        signature = self._private().sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode("ascii")


class Ed25519Signer:
    """Telnyx's webhook key: Ed25519, made on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: Any = None

    def _private(self) -> Any:
        with self._lock:
            if self._key is None:
                _, _, _, ed25519 = _crypto()
                self._key = ed25519.Ed25519PrivateKey.generate()
            return self._key

    def __repr__(self) -> str:
        return "<Ed25519Signer>"

    @property
    def public_key(self) -> str:
        """Base64 of the raw 32-byte public key, as the Telnyx portal shows it."""
        _, serialization, _, _ = _crypto()
        raw = (
            self._private()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        return base64.b64encode(raw).decode("ascii")

    def sign(self, timestamp: str, body: bytes) -> str:
        """Base64 Ed25519 signature over ``timestamp|body``."""
        signature = self._private().sign(timestamp.encode() + b"|" + body)
        return base64.b64encode(signature).decode("ascii")


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str | Sequence[str]]) -> str:
    """Twilio's ``X-Twilio-Signature``: base64 HMAC-SHA1 keyed by the auth token over
    the URL then each parameter's name and value, sorted by name."""
    pieces = [url]
    for name in sorted(params):
        value = params[name]
        values = [value] if isinstance(value, str) else sorted(value)
        pieces.extend(name + v for v in values)
    mac = hmac.new(auth_token.encode(), "".join(pieces).encode(), "sha1")
    return base64.b64encode(mac.digest()).decode("ascii")


class ReceiptServer(ProviderServer):
    """A provider server that can post (or serve) delivery receipts.

    Receipts are off until :meth:`attach_receipts`; a :class:`Sandbox` attaches its
    simulation and its dispatcher to every server it starts that has this method.
    """

    #: the simulation in use, or ``None`` (receipts off)
    receipts: ReceiptSimulation | None = None
    _dispatcher: CallbackDispatcher | None = None
    _owns_dispatcher: bool = False
    _occurrences: dict[str, int] | None = None

    def attach_receipts(
        self, simulation: ReceiptSimulation, dispatcher: CallbackDispatcher | None = None
    ) -> None:
        """Simulate receipts from now on; callbacks go through ``dispatcher`` (by
        default a dispatcher of this server's own, stopped with it)."""
        if self._owns_dispatcher and self._dispatcher is not None:
            self._dispatcher.stop()
        self._owns_dispatcher = dispatcher is None
        self._dispatcher = dispatcher if dispatcher is not None else CallbackDispatcher(simulation)
        self._occurrences = {}
        self.receipts = simulation

    def receipt_channel_options(self, url: str) -> dict[str, Any]:
        """The channel options that make a campaign's messages call ``url`` back
        (an account-level setting is set on the server instead). Twilio's and Telnyx's
        need none: the rehearsal's ``[receipts] public_url`` makes their channels ask
        for callbacks per message, with the delivery's reference in the URL."""
        return {}

    def receipt_stats(self) -> ReceiptStats:
        """The counts of this server's dispatcher (shared with the whole sandbox's)."""
        return self._dispatcher.stats() if self._dispatcher is not None else ReceiptStats()

    def drain_receipts(self, timeout: float) -> int:
        """Wait for the dispatcher's callbacks (see :meth:`CallbackDispatcher.drain`)."""
        return self._dispatcher.drain(timeout) if self._dispatcher is not None else 0

    def stop(self) -> None:
        super().stop()
        if self._owns_dispatcher and self._dispatcher is not None:
            self._dispatcher.stop()

    def receipt_outcome(self, recipient: str) -> tuple[str, ReceiptOutcome]:
        """The key and outcome of the next message to ``recipient``."""
        assert self.receipts is not None
        with self.lock:
            occurrences = self._occurrences if self._occurrences is not None else {}
            n = occurrences.get(recipient, 0)
            occurrences[recipient] = n + 1
        key = recipient if n == 0 else f"{recipient}#{n}"
        return key, self.receipts.outcome(key)

    def schedule_callback(self, url: str, render: Render, delay: float = 0.0) -> None:
        """Have the dispatcher POST to ``url`` in ``delay`` seconds."""
        if self._dispatcher is not None:
            self._dispatcher.schedule(Callback(url, render), delay)
