"""campaignkit: multi-channel marketing campaigns.

A :class:`Pipeline` extracts a customer segment from a :class:`Source` (a
:class:`CsvSource`, a :class:`JsonLinesSource`, rows held or produced in Python through
:class:`StaticSource`, or a plugin's), then fans out
in parallel to channels, each sent by a :class:`Notifier` plugin found through
pluggy entry points (group ``campaignkit``).
"""

from __future__ import annotations

import logging

from ._config import (
    Channel,
    Execution,
    PipelineConfig,
    ReceiptsConfig,
    RetryPolicy,
    Schedule,
    SourceConfig,
    Template,
    load_config,
)
from ._http import HttpNotifier
from ._ledger import Slice
from ._models import (
    ChannelResult,
    DeliveryResult,
    Message,
    Outcome,
    Rate,
    Recipient,
    RejectedRow,
    RunReport,
    Secret,
)
from ._notifier import ChannelSettings, Notifier
from ._pipeline import OpenedRun, Pipeline, ValidationSummary
from ._plugins import Registry, get_plugin_manager
from ._redact import RedactingFilter
from ._source import Source
from ._sources import CsvSource, JsonLinesSource
from ._states import DeliveryCounts, DeliveryStatus, Reason, ReceiptStatus, RunStatus
from ._static import StaticSource
from .exceptions import (
    AudienceGuardError,
    CampaignKitError,
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    PluginError,
    Problem,
    SourceError,
    TemplateError,
    TransientDeliveryError,
)
from .hookspecs import hookimpl

__all__ = [
    "AudienceGuardError",
    "CampaignKitError",
    "Channel",
    "ChannelResult",
    "ChannelSettings",
    "ConfigError",
    "CsvSource",
    "DeliveryCounts",
    "DeliveryError",
    "DeliveryResult",
    "DeliveryStatus",
    "Execution",
    "HttpNotifier",
    "JsonLinesSource",
    "Message",
    "Notifier",
    "OpenedRun",
    "Outcome",
    "PermanentDeliveryError",
    "Pipeline",
    "PipelineConfig",
    "PluginError",
    "Problem",
    "Rate",
    "Reason",
    "ReceiptStatus",
    "ReceiptsConfig",
    "Recipient",
    "Registry",
    "RejectedRow",
    "RetryPolicy",
    "RunReport",
    "RunStatus",
    "Schedule",
    "Secret",
    "Slice",
    "Source",
    "SourceConfig",
    "SourceError",
    "StaticSource",
    "Template",
    "TemplateError",
    "TransientDeliveryError",
    "ValidationSummary",
    "get_plugin_manager",
    "hookimpl",
    "load_config",
]

__version__ = "0.1.0"

# A library logs; the application decides where it goes (the CLI's -v does).
logging.getLogger("campaignkit").addHandler(logging.NullHandler())
# Log records (messages and tracebacks) never carry a token: see _redact.
logging.getLogger("campaignkit").addFilter(RedactingFilter())
