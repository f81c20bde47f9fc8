"""A channel's content rules, checked on every rendered message: :class:`ContentRules`."""

from __future__ import annotations

from typing import ClassVar

import attrs

from .._models import Message
from ._push import push_data_size, push_payload_size
from ._sms import sms_segments

__all__ = ["ContentRules"]


def _optional_positive(
    _: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be at least 1")


@attrs.frozen
class ContentRules:
    """A channel's content rules, checked on every rendered message.

    Each rule applies only when set, so one class serves every channel:

    Attributes:
        max_sms_segments: the SMS body must be 1 to this many segments
            (``empty_body``, ``too_many_segments``).
        push_max_bytes: :func:`push_payload_size` of title, body and data must not
            exceed this (``payload_too_large``).
        push_max_data_bytes: :func:`push_data_size` of data must not exceed this
            (``data_too_large``; OneSignal: 2048).
        require_unsubscribe: the message must carry ``List-Unsubscribe`` and
            ``List-Unsubscribe-Post`` headers (``missing_unsubscribe``).
    """

    EMPTY_BODY: ClassVar[str] = "empty_body"
    TOO_MANY_SEGMENTS: ClassVar[str] = "too_many_segments"
    PAYLOAD_TOO_LARGE: ClassVar[str] = "payload_too_large"
    DATA_TOO_LARGE: ClassVar[str] = "data_too_large"
    MISSING_UNSUBSCRIBE: ClassVar[str] = "missing_unsubscribe"

    max_sms_segments: int | None = attrs.field(default=None, validator=_optional_positive)
    push_max_bytes: int | None = attrs.field(default=None, validator=_optional_positive)
    push_max_data_bytes: int | None = attrs.field(default=None, validator=_optional_positive)
    require_unsubscribe: bool = False

    def check(self, message: Message) -> str | None:
        """The first broken rule's code for ``message``, or ``None`` when it passes.

        Rules are checked in the order of the attributes; codes are the class
        constants (``empty_body``, ``too_many_segments``, ``payload_too_large``,
        ``data_too_large``, ``missing_unsubscribe``).
        """
        if self.max_sms_segments is not None:
            segments = sms_segments(message.body).segments
            if segments == 0:
                return self.EMPTY_BODY
            if segments > self.max_sms_segments:
                return self.TOO_MANY_SEGMENTS
        if (
            self.push_max_bytes is not None
            and push_payload_size(message.title, message.body, message.data) > self.push_max_bytes
        ):
            return self.PAYLOAD_TOO_LARGE
        if (
            self.push_max_data_bytes is not None
            and push_data_size(message.data) > self.push_max_data_bytes
        ):
            return self.DATA_TOO_LARGE
        if self.require_unsubscribe:
            headers = {name.lower() for name in message.headers}
            if "list-unsubscribe" not in headers or "list-unsubscribe-post" not in headers:
                return self.MISSING_UNSUBSCRIBE
        return None
