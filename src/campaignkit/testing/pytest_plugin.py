"""pytest fixtures for campaignkit users, registered through the ``pytest11`` entry point.

* ``ck_sandbox``: a running :class:`~campaignkit.testing.sandbox.Sandbox` serving
  every provider with a fake (the built-in ones and those installed plugins register),
  each server started when the test first uses it (only SMTP needs the ``sandbox``
  extra, aiosmtpd).
  ``ck_sandbox.pipeline("campaign.toml")`` is a rehearsal: its own ledger
  (``ledger.sandbox.db``) and output folder (``<output dir>/sandbox/``), never the
  campaign's real state.
* ``ck_recorder``: a recording plugin (``provider = "recording"``); its ``outbox``
  holds the messages. ``ck_plugin_manager`` is a plugin manager with it registered.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pluggy
import pytest

from . import recording_plugin


@pytest.fixture
def ck_sandbox() -> Iterator[Any]:
    """Every provider's sandbox server on 127.0.0.1, stopped after the test: the
    built-in fakes and those of the installed plugins (``CAMPAIGNKIT_BLOCK_PLUGINS``
    leaves a plugin's out).

    The sandbox is lazy: a server starts when the test first uses it
    (``ck_sandbox.servers["twilio"]``, ``ck_sandbox.pipeline(config)`` and
    ``ck_sandbox.apply(config)`` start those of the enabled channels), so a test of
    HTTP channels needs neither aiosmtpd nor an SMTP port.

    Pipelines from ``ck_sandbox.pipeline(...)`` or ``ck_sandbox.apply(...)``, and any
    pipeline whose channels point at these servers, are rehearsals: they record into
    ``ledger.sandbox.db`` and ``<output dir>/sandbox/``, never the real state, and
    send without the providers' default rate limits."""
    from .sandbox import Sandbox

    with Sandbox(lazy=True) as sandbox:
        yield sandbox


@pytest.fixture
def ck_recorder() -> Any:
    """A fresh recording channel plugin; ``ck_recorder.outbox.messages`` after a run."""
    return recording_plugin()


@pytest.fixture
def ck_plugin_manager(ck_recorder: Any) -> pluggy.PluginManager:
    """A plugin manager with the built-ins, installed plugins and ``ck_recorder``."""
    from .._plugins import get_plugin_manager

    return get_plugin_manager(plugins=[ck_recorder])
