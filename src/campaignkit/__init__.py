"""campaignkit: multi-channel marketing campaigns.

A :class:`Pipeline` extracts a customer segment from a :class:`Source`, then fans out
in parallel to channels, each sent by a :class:`Notifier` plugin found through
pluggy entry points (group ``campaignkit``).
"""

from __future__ import annotations

from ._config import Channel
from ._config import Execution
from ._config import PipelineConfig
from ._config import RetryPolicy
from ._config import Schedule
from ._config import SourceConfig
from ._config import Template
from ._config import load_config
from ._http import HttpNotifier
from ._models import ChannelResult
from ._models import DeliveryResult
from ._models import DeliveryStatus
from ._models import Message
from ._models import Outcome
from ._models import Rate
from ._models import Reason
from ._models import Recipient
from ._models import RejectedRow
from ._models import RunReport
from ._models import RunStatus
from ._models import Secret
from ._notifier import ChannelSettings
from ._notifier import Notifier
from ._pipeline import Pipeline
from ._pipeline import ValidationSummary
from ._plugins import Registry
from ._plugins import get_plugin_manager
from ._source import Source
from ._sources import CsvSource
from ._sources import JsonLinesSource
from .exceptions import AudienceGuardError
from .exceptions import CampaignKitError
from .exceptions import ConfigError
from .exceptions import DeliveryError
from .exceptions import PermanentDeliveryError
from .exceptions import PluginError
from .exceptions import SourceError
from .exceptions import TemplateError
from .exceptions import TransientDeliveryError
from .hookspecs import hookimpl

__all__ = [
    "AudienceGuardError",
    "CampaignKitError",
    "Channel",
    "ChannelResult",
    "ChannelSettings",
    "ConfigError",
    "CsvSource",
    "DeliveryError",
    "DeliveryResult",
    "DeliveryStatus",
    "Execution",
    "HttpNotifier",
    "JsonLinesSource",
    "Message",
    "Notifier",
    "Outcome",
    "PermanentDeliveryError",
    "Pipeline",
    "PipelineConfig",
    "PluginError",
    "Rate",
    "Reason",
    "Recipient",
    "Registry",
    "RejectedRow",
    "RetryPolicy",
    "RunReport",
    "RunStatus",
    "Schedule",
    "Secret",
    "Source",
    "SourceConfig",
    "SourceError",
    "Template",
    "TemplateError",
    "TransientDeliveryError",
    "ValidationSummary",
    "get_plugin_manager",
    "hookimpl",
    "load_config",
]

__version__ = "0.1.0"
