"""What running one channel needs, prepared before extraction: :class:`ChannelPlan`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .._audience import Audience
from .._config import Channel, RetryPolicy
from .._ledger import PlanRules
from .._models import Message, Rate
from .._notifier import Notifier
from .._templates import CompiledTemplate

__all__ = ["ChannelPlan", "ContentCheck", "ProgressCallback"]

ProgressCallback = Callable[[str, int], None]

#: Checks a rendered message against the channel's content rules: an error code
#: (``too_many_segments``, ``payload_too_large``) or ``None``.
ContentCheck = Callable[[Message], str | None]


@attrs.frozen
class ChannelPlan:
    """Everything needed to run one channel, prepared (and validated) before extraction."""

    channel: Channel
    notifier: Notifier[Any]
    template: CompiledTemplate
    retry: RetryPolicy
    rate: Rate
    batch_size: int
    audience: Audience
    rules: PlanRules
    content: ContentCheck | None = None
