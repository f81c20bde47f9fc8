from __future__ import annotations

from typing import Any

import pluggy
import pytest

from campaignkit import get_plugin_manager
from campaignkit.testing import recording_plugin


@pytest.fixture
def recorder() -> Any:
    """A fresh recording channel plugin (provider ``recording``)."""
    return recording_plugin()


@pytest.fixture
def pm(recorder: Any) -> pluggy.PluginManager:
    """Built-in plugins plus the recorder; no third-party entry points."""
    return get_plugin_manager(load_entrypoints=False, plugins=[recorder])
