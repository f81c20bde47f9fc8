"""What the run steps, the checks and the dry run need of a campaign.

:class:`~campaignkit.Pipeline` is the one implementation; the steps' modules are typed
against this protocol so that they need not import the class that composes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pluggy

from .._config import Channel, Execution, ReceiptsConfig, Schedule
from .._engine import ChannelPlan
from .._ledger import Ledger
from .._models import Secret
from .._notifier import Notifier
from .._plugins import Registry
from .._source import Source

__all__ = ["Campaign"]


class Campaign(Protocol):
    """A campaign as its steps see it (see :class:`~campaignkit.Pipeline`)."""

    name: str
    channels: tuple[Channel, ...]
    execution: Execution
    schedule: Schedule
    receipts: ReceiptsConfig
    base_dir: Path
    config_file: str | None
    rows_per_customer: str
    sleep: Callable[[float], None] | None

    @property
    def source(self) -> Source: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def plugin_manager(self) -> pluggy.PluginManager: ...

    @property
    def enabled_channels(self) -> tuple[Channel, ...]: ...

    @property
    def environ(self) -> Mapping[str, str]: ...

    @property
    def state_path(self) -> Path: ...

    @property
    def ledger_location(self) -> str | Path: ...

    @property
    def ledger_shown(self) -> str: ...

    @property
    def sends_in_shards(self) -> bool: ...

    def fingerprint(self) -> str: ...

    def ledger(self) -> Ledger: ...

    def output_root(self, output_dir: str | Path | None = None) -> Path: ...

    def required_fields(self) -> set[str]: ...

    def channel_plan(self, channel: Channel, fields: frozenset[str] | None) -> ChannelPlan: ...

    def checked_plans(self, channels: Sequence[str] | None = None) -> list[ChannelPlan]: ...

    def token(self, channel: Channel, cls: type[Notifier[Any]]) -> Secret | None: ...
