"""Push tokens, checked per provider.

**Push tokens** are checked per provider: Expo wants ``ExponentPushToken[...]`` or
``ExpoPushToken[...]``; OneSignal a subscription id (a UUID) or, with
``mode="external_id"``, any external id; other providers a non-empty token
without whitespace. Tokens are kept as given (only surrounding whitespace is
stripped).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["PUSH_MODES", "valid_push_token"]

_EXPO_TOKEN = re.compile(r"Expo(?:nent)?PushToken\[[^\]\s]+\]")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_WHITESPACE = re.compile(r"\s")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PUSH_MODES: Final = ("subscription_ids", "external_id")


def valid_push_token(value: str, provider: str, *, mode: str = "subscription_ids") -> bool:
    """Whether ``value`` is a well-formed push address for ``provider``.

    * ``expo``: ``ExponentPushToken[...]`` or ``ExpoPushToken[...]`` (no whitespace
      or ``]`` inside the brackets);
    * ``onesignal``: with ``mode="subscription_ids"`` (the default) a subscription id,
      a UUID in its ``8-4-4-4-12`` hex form; with ``mode="external_id"`` any
      non-empty id without control characters;
    * any other provider: non-empty, no whitespace.

    The value is checked as given: callers strip surrounding whitespace first.
    """
    if not value:
        return False
    if provider == "expo":
        return _EXPO_TOKEN.fullmatch(value) is not None
    if provider == "onesignal":
        if mode == "external_id":
            return _CONTROL.search(value) is None and not value.isspace()
        return _UUID.fullmatch(value) is not None
    return _WHITESPACE.search(value) is None
