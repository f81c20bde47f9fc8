"""Push notification payload sizes and the providers' limits."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

__all__ = [
    "APNS_MAX_PAYLOAD_BYTES",
    "EXPO_MAX_PAYLOAD_BYTES",
    "FCM_MAX_PAYLOAD_BYTES",
    "ONESIGNAL_MAX_DATA_BYTES",
    "ONESIGNAL_MAX_PAYLOAD_BYTES",
    "PUSH_MAX_PAYLOAD_BYTES",
    "push_data_size",
    "push_payload_size",
]

#: Payload limits in bytes (APNs, FCM HTTP v1 to a token (2048 to a topic), Expo
#: ``MessageTooBig`` above 4096, OneSignal: 4096 total and 2048 of ``data``).
APNS_MAX_PAYLOAD_BYTES: Final = 4096
FCM_MAX_PAYLOAD_BYTES: Final = 4096
EXPO_MAX_PAYLOAD_BYTES: Final = 4096
ONESIGNAL_MAX_PAYLOAD_BYTES: Final = 4096
ONESIGNAL_MAX_DATA_BYTES: Final = 2048
#: Default payload limit by provider (notifier) name.
PUSH_MAX_PAYLOAD_BYTES: Final[Mapping[str, int]] = {
    "apns": APNS_MAX_PAYLOAD_BYTES,
    "fcm": FCM_MAX_PAYLOAD_BYTES,
    "expo": EXPO_MAX_PAYLOAD_BYTES,
    "onesignal": ONESIGNAL_MAX_PAYLOAD_BYTES,
}

_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def push_payload_size(title: str | None, body: str, data: Mapping[str, str] | None) -> int:
    """UTF-8 bytes of the compact JSON of the notification content.

    Measures ``{"title": ..., "body": ..., "data": {...}}`` (``title`` left out when
    ``None`` and ``data`` when empty, as the push channels send them), with non-ASCII
    characters as UTF-8 rather than ``\\u`` escapes. Providers count the whole payload
    they deliver, which adds their own keys (``aps``, ``to``, ...) around this, so keep
    a margin below the limit for those.
    """
    content: dict[str, object] = {"body": body}
    if title is not None:
        content["title"] = title
    if data:
        content["data"] = data if type(data) is dict else dict(data)
    return len(_COMPACT_JSON.encode(content).encode("utf-8", "surrogatepass"))


def push_data_size(data: Mapping[str, str] | None) -> int:
    """UTF-8 bytes of the compact JSON of ``data`` alone (0 when empty)."""
    if not data:
        return 0
    return len(
        _COMPACT_JSON.encode(data if type(data) is dict else dict(data)).encode(
            "utf-8", "surrogatepass"
        )
    )
