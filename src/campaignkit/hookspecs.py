"""The hooks campaignkit calls; a plugin implements any of them with :data:`hookimpl`.

Plugins are found through the ``campaignkit`` entry-point group::

    [project.entry-points.campaignkit]
    webhook = "campaignkit_webhook"

The built-in channels and sources register through these same hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ._models import ChannelResult, RunReport
    from ._notifier import Notifier
    from ._source import SourceFactory

__all__ = ["PROJECT_NAME", "hookimpl"]

PROJECT_NAME = "campaignkit"

_hookspec = pluggy.HookspecMarker(PROJECT_NAME)

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for hook implementations: ``@campaignkit.hookimpl``."""


# -- registration -------------------------------------------------------------------------


@_hookspec
def campaignkit_register_channels(register: Callable[[type[Notifier[object]]], None]) -> None:
    """Register channel providers.

    Called once when a plugin manager's registry is first read. Call
    ``register(NotifierClass)`` for each :class:`~campaignkit.Notifier` subclass the
    plugin provides; its ``name`` is what a campaign sets as ``provider``. Registering
    a name that is already taken raises :class:`~campaignkit.PluginError`.

    Args:
        register: callback taking a ``Notifier`` subclass.

    .. versionadded:: 0.1
    """


@_hookspec
def campaignkit_register_sources(register: Callable[[SourceFactory], None]) -> None:
    """Register segment source types.

    Called once when a plugin manager's registry is first read. Call
    ``register(SourceClass)`` with a class that has a ``name`` (what a campaign sets
    as ``[source] type``) and a ``from_config(options, *, base_dir)`` class method.

    Args:
        register: callback taking a source class.

    .. versionadded:: 0.1
    """


@_hookspec
def campaignkit_register_sandbox_servers(register: Callable[..., None]) -> None:
    """Register sandbox fakes: loopback servers speaking a provider's wire contract.

    Called once when a sandbox reads a plugin manager's fakes (``Sandbox``, the
    ``ck_sandbox`` fixture, ``campaignkit sandbox`` and ``--sandbox``). Call
    ``register(provider, server, **details)`` for each fake the plugin ships:

    * ``provider``: the channel provider it stands in for (``"webhook"``);
    * ``server``: a class or factory called with keyword arguments (``token``,
      ``port``, ``faults`` and whatever ``Sandbox(server_options=...)`` gives) that
      returns a server with ``start()``, ``stop()``, ``token``, ``messages``,
      ``port``, ``base_url`` and ``channel_options()``, as
      :class:`~campaignkit.testing.sandbox.ProviderServer` subclasses have; or a
      ``"module:Class"`` string, imported when the server is first started;
    * ``details`` (all optional): ``credentials`` (a tuple of
      :class:`~campaignkit.testing.sandbox.Credential`), ``token_variable`` (the token
      variable of a campaign channel using it), ``sender_keyword`` (the server's
      argument restricting senders) and ``sdk_base_url`` (``(variable, path)``: the
      variable the provider's SDK reads its API address from).

    Registering a provider that is already taken raises
    :class:`~campaignkit.PluginError`.

    :param register: callback taking the provider name, the server and details.

    .. versionadded:: 0.1
    """


# -- observation --------------------------------------------------------------------------


@_hookspec
def campaignkit_run_started(run_id: str, pipeline: str, channels: Sequence[str]) -> None:
    """A run passed extraction and is about to start its channels.

    Called in the thread that called ``Pipeline.run``, before any message is sent.
    An exception raised here aborts the run before any send.

    Args:
        run_id: the run's identifier.
        pipeline: the pipeline's name.
        channels: names of the channels about to run.

    .. versionadded:: 0.1
    """


@_hookspec
def campaignkit_channel_finished(run_id: str, result: ChannelResult) -> None:
    """One channel of a run finished (whatever its outcome).

    Called from that channel's thread; channels finish concurrently, so an
    implementation must be thread-safe. Exceptions are logged and ignored.

    Args:
        run_id: the run's identifier.
        result: the channel's totals.

    .. versionadded:: 0.1
    """


@_hookspec
def campaignkit_run_finished(report: RunReport) -> None:
    """A run finished; ``report`` is what ``Pipeline.run`` returns.

    Called in the thread that called ``Pipeline.run``. Exceptions are logged and ignored.

    Args:
        report: the run report.

    .. versionadded:: 0.1
    """
