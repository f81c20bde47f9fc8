"""Content rules: SMS encoding and segments, email plain text and unsubscribe headers,
push payload size.

Everything here is pure and thread-safe, and the per-message functions are built for
speed (they run once per recipient): character tables are precomputed, and the common
cases (ASCII text, one segment, no two-unit character) take a short path.

Modules by responsibility: :mod:`._sms` (encoding, segments and parts),
:mod:`._plaintext` (:func:`html_to_text`), :mod:`._unsubscribe`
(:func:`list_unsubscribe_headers`), :mod:`._push` (payload sizes and limits) and
:mod:`._rules` (:class:`ContentRules`, a channel's rules over a rendered message).
"""

from __future__ import annotations

from ._plaintext import html_to_text
from ._push import (
    APNS_MAX_PAYLOAD_BYTES,
    EXPO_MAX_PAYLOAD_BYTES,
    FCM_MAX_PAYLOAD_BYTES,
    ONESIGNAL_MAX_DATA_BYTES,
    ONESIGNAL_MAX_PAYLOAD_BYTES,
    PUSH_MAX_PAYLOAD_BYTES,
    push_data_size,
    push_payload_size,
)
from ._rules import ContentRules
from ._sms import GSM7_BASIC, GSM7_EXTENSION, SmsEncoding, SmsInfo, sms_segments, sms_split
from ._unsubscribe import list_unsubscribe_headers

__all__ = [
    "APNS_MAX_PAYLOAD_BYTES",
    "EXPO_MAX_PAYLOAD_BYTES",
    "FCM_MAX_PAYLOAD_BYTES",
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "ONESIGNAL_MAX_DATA_BYTES",
    "ONESIGNAL_MAX_PAYLOAD_BYTES",
    "PUSH_MAX_PAYLOAD_BYTES",
    "ContentRules",
    "SmsEncoding",
    "SmsInfo",
    "html_to_text",
    "list_unsubscribe_headers",
    "push_data_size",
    "push_payload_size",
    "sms_segments",
    "sms_split",
]
