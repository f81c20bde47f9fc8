"""Verify the signatures providers put on their delivery webhooks.

Pure functions (no I/O, no logging, no clock): ``True`` only for what the provider
signed, ``False`` for any other input, never an exception, except
:class:`ReceiptsDependencyError` when the ``receipts`` extra is not installed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import ModuleType
from urllib.parse import parse_qs, urlsplit

from campaignkit.exceptions import CampaignKitError

SENDGRID_SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
TWILIO_SIGNATURE_HEADER = "X-Twilio-Signature"
TELNYX_SIGNATURE_HEADER = "Telnyx-Signature-Ed25519"
TELNYX_TIMESTAMP_HEADER = "Telnyx-Timestamp"
#: The replay window the Telnyx SDK applies (seconds either side of now).
DEFAULT_TOLERANCE_SECONDS = 300

# Bounds on the small inputs: hostile headers cost nothing to refuse.
_MAX_KEY_CHARS = 4096
_MAX_SIGNATURE_CHARS = 1024
_UNIX_SECONDS = re.compile(r"[0-9]{1,20}")
_MAX_URL_CHARS = 8192
_MAX_UNIX_SECONDS = 10**15


class ReceiptsDependencyError(CampaignKitError, ImportError):
    """``cryptography`` is missing: ``pip install 'campaignkit[receipts]'``."""


def _crypto(feature: str) -> tuple[ModuleType, ModuleType, ModuleType, ModuleType, type[Exception]]:
    """Cryptography's ``ec``, ``ed25519``, ``hashes``, ``serialization``, ``InvalidSignature``."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    except ImportError as error:
        hint = "pip install 'campaignkit[receipts]'"
        message = f"verifying {feature} signatures needs the 'cryptography' package: {hint}"
        raise ReceiptsDependencyError(message) from error
    return ec, ed25519, hashes, serialization, InvalidSignature


def _b64decode(text: object, max_chars: int) -> bytes | None:
    """Strict base64 of ``text`` (PEM armour lines dropped), or None when it is not that."""
    if not isinstance(text, str) or not text or len(text) > max_chars:
        return None
    lines = text.strip().splitlines()
    try:
        return base64.b64decode(
            "".join(x for x in lines if not x.startswith("-----")), validate=True
        )
    except (binascii.Error, ValueError):
        return None


def _is_unix_seconds(timestamp: object) -> bool:
    """Whether ``timestamp`` is a short string of ASCII digits (a header's Unix time)."""
    return isinstance(timestamp, str) and _UNIX_SECONDS.fullmatch(timestamp) is not None


def verify_sendgrid(public_key: str, signature: str, timestamp: str, payload: bytes) -> bool:
    """Verify a SendGrid Signed Event Webhook: ECDSA P-256/SHA-256 over ``timestamp + payload``.

    Args:
        public_key: The verification key as SendGrid shows it (base64 DER), or as PEM.
        signature: The ``X-Twilio-Email-Event-Webhook-Signature`` header (base64 DER).
        timestamp: The ``X-Twilio-Email-Event-Webhook-Timestamp`` header (Unix seconds).
        payload: The raw request body, byte for byte.

    Returns:
        True only when SendGrid signed exactly these bytes.

    Raises:
        ReceiptsDependencyError: ``cryptography`` is not installed.
    """
    ec, _, hashes, serialization, invalid_signature = _crypto("SendGrid")
    if not isinstance(payload, bytes) or not _is_unix_seconds(timestamp):
        return False
    der_key = _b64decode(public_key, _MAX_KEY_CHARS)
    der_signature = _b64decode(signature, _MAX_SIGNATURE_CHARS)
    if der_key is None or der_signature is None:
        return False
    signed = timestamp.encode("ascii") + payload
    try:
        key = serialization.load_der_public_key(der_key)
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            return False
        key.verify(der_signature, signed, ec.ECDSA(hashes.SHA256()))
    except (invalid_signature, ValueError, TypeError):
        return False
    return True


def verify_telnyx(public_key: str, signature: str, timestamp: str, payload: bytes) -> bool:
    """Verify a Telnyx v2 webhook: Ed25519 over ``timestamp + b"|" + payload``.

    Args:
        public_key: The account's public key from the Telnyx portal (base64, 32 bytes).
        signature: The ``Telnyx-Signature-Ed25519`` header (base64, 64 bytes).
        timestamp: The ``Telnyx-Timestamp`` header (Unix seconds).
        payload: The raw request body, byte for byte.

    Returns:
        True only when Telnyx signed exactly these bytes.

    Raises:
        ReceiptsDependencyError: ``cryptography`` is not installed.
    """
    _, ed25519, _, _, invalid_signature = _crypto("Telnyx")
    if not isinstance(payload, bytes) or not _is_unix_seconds(timestamp):
        return False
    raw_key = _b64decode(public_key, _MAX_KEY_CHARS)
    raw_signature = _b64decode(signature, _MAX_SIGNATURE_CHARS)
    if raw_key is None or len(raw_key) != 32 or raw_signature is None or len(raw_signature) != 64:
        return False
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(raw_key)
        key.verify(raw_signature, timestamp.encode("ascii") + b"|" + payload)
    except (invalid_signature, ValueError):
        return False
    return True


def _url_variants(url: str) -> tuple[str, ...] | None:
    """The URL without its port and with its default port, as Twilio's SDK tries both."""
    if not isinstance(url, str) or not url or len(url) > _MAX_URL_CHARS:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    default = f"{host}:{443 if parts.scheme == 'https' else 80}"
    with_port = parts if port is not None else parts._replace(netloc=default)
    return (parts._replace(netloc=host).geturl(), with_port.geturl())


def _twilio_string(url: str, params: object) -> str | None:
    """URL followed by each parameter name and value, names and values sorted, deduplicated."""
    if not isinstance(params, Mapping):
        return None
    names = set(params)
    if not all(isinstance(name, str) for name in names):
        return None
    pieces = [url]
    for name in sorted(names):
        value = params[name]
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, Sequence) or not all(isinstance(v, str) for v in values):
            return None
        pieces.extend(name + v for v in sorted(set(values)))
    return "".join(pieces)


def verify_twilio(
    auth_token: str, url: str, params: Mapping[str, str | Sequence[str]], signature: str
) -> bool:
    """Verify a Twilio form-POST webhook (status callback, inbound message).

    HMAC-SHA1 keyed by the auth token over the full URL then each POST parameter's
    name and value, sorted; base64. As the official SDK, the URL is tried without its
    port and with the scheme's default port.

    Args:
        auth_token: The account's (primary) auth token.
        url: The full URL Twilio requested, exactly as configured (query included).
        params: The POST parameters; a name may carry several values.
        signature: The ``X-Twilio-Signature`` header.

    Returns:
        True only when the signature matches (compared in constant time).
    """
    variants = _url_variants(url)
    if not (isinstance(signature, str) and signature.isascii() and isinstance(auth_token, str)):
        return False
    expected = signature.encode("ascii")
    if not 0 < len(expected) <= _MAX_SIGNATURE_CHARS or variants is None or not auth_token:
        return False
    signed = [_twilio_string(variant, params) for variant in variants]
    key = auth_token.encode("utf-8", "surrogatepass")
    macs = [hmac.new(key, t.encode("utf-8", "surrogatepass"), "sha1") for t in signed if t]
    matches = [hmac.compare_digest(base64.b64encode(m.digest()), expected) for m in macs]
    return None not in signed and any(matches)  # both compared: no early exit


def verify_twilio_json(auth_token: str, url: str, body: bytes, signature: str) -> bool:
    """Verify a Twilio JSON-body webhook: URL signed alone, body hash in ``bodySHA256``.

    Args:
        auth_token: The account's (primary) auth token.
        url: The full URL Twilio requested, ``bodySHA256`` query parameter included.
        body: The raw request body.
        signature: The ``X-Twilio-Signature`` header.

    Returns:
        True only when the URL's body hash matches ``body`` and the signature matches.
    """
    if not isinstance(body, bytes) or not isinstance(url, str) or len(url) > _MAX_URL_CHARS:
        return False
    try:
        claimed = parse_qs(urlsplit(url).query).get("bodySHA256", [])
    except ValueError:
        return False
    digest = hashlib.sha256(body).hexdigest()
    body_ok = len(claimed) == 1 and claimed[0].isascii() and hmac.compare_digest(digest, claimed[0])
    return verify_twilio(auth_token, url, {}, signature) and body_ok


def fresh(timestamp: str | int, now: datetime | float, tolerance_seconds: float = 300) -> bool:
    """Whether a webhook's timestamp lies within ``tolerance_seconds`` of ``now``.

    Args:
        timestamp: The signed Unix time in seconds (a header's text, or an int).
        now: The receiver's clock: an aware datetime or Unix seconds.
        tolerance_seconds: The replay window, either side of ``now``.

    Returns:
        False for a stale, future, malformed or naive-dated input.
    """
    signed_at = _seconds(int(timestamp) if _is_unix_seconds(timestamp) else timestamp)
    aware = isinstance(now, datetime) and now.utcoffset() is not None
    clock = _seconds(now.timestamp() if aware and isinstance(now, datetime) else now)
    window = _seconds(tolerance_seconds)
    if signed_at is None or clock is None or window is None or window < 0:
        return False
    return abs(clock - signed_at) <= window


def _seconds(value: object) -> float | None:
    """A finite number of seconds within a sane range (not a bool), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if abs(value) < _MAX_UNIX_SECONDS else None
