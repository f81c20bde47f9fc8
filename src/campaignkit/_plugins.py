"""Plugin manager factory and the registries of channels, sources and sandbox fakes."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs
import pluggy

from . import hookspecs
from ._notifier import Notifier
from ._source import SourceFactory
from .exceptions import PluginError

__all__ = ["BUILTIN_PLUGINS", "PluginInfo", "Registry", "get_plugin_manager"]

log = logging.getLogger(__name__)

#: Modules of the built-in plugins, registered through the same hooks as third parties.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "campaignkit._sources",
    "campaignkit.channels.sendgrid",
    "campaignkit.channels.smtp",
    "campaignkit.channels.twilio",
    "campaignkit.channels.telnyx",
    "campaignkit.channels.onesignal",
    "campaignkit.channels.expo",
    "campaignkit.testing.sandbox.providers",
)

#: Environment variable: comma-separated plugin names to block.
BLOCK_ENV = "CAMPAIGNKIT_BLOCK_PLUGINS"


def get_plugin_manager(
    *,
    load_entrypoints: bool = True,
    block: Iterable[str] = (),
    plugins: Iterable[object] = (),
) -> pluggy.PluginManager:
    """Build a plugin manager with the built-ins and the installed plugins.

    Args:
        load_entrypoints: load third-party plugins from the ``campaignkit`` entry-point
            group.
        block: plugin names not to load (entry-point names, or built-in module names
            such as ``campaignkit.channels.smtp``). ``CAMPAIGNKIT_BLOCK_PLUGINS`` adds more.
        plugins: extra plugin objects (modules or instances) to register, e.g. in tests.

    Raises:
        PluginError: a plugin implements a hook campaignkit does not define.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    blocked = {b.strip() for b in block if b.strip()}
    blocked |= {b.strip() for b in os.environ.get(BLOCK_ENV, "").split(",") if b.strip()}
    for name in sorted(blocked):
        pm.set_blocked(name)
    for modname in BUILTIN_PLUGINS:
        if modname in blocked:
            continue
        pm.register(importlib.import_module(modname), name=modname)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)
    for plugin in plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    return pm


@attrs.frozen
class PluginInfo:
    """Where a registered channel, source or sandbox server comes from."""

    name: str
    kind: str  # "channel", "source" or "sandbox server"
    factory: Any
    plugin: str  # plugin name in the manager
    package: str  # distribution "name version", or "campaignkit (built-in)"
    #: keyword arguments given with a sandbox server (``credentials``...), as given
    details: Mapping[str, Any] = attrs.field(factory=dict)


class Registry:
    """The channels and sources a plugin manager's plugins register.

    Built lazily: the registration hooks run on first access.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._channels: dict[str, PluginInfo] | None = None
        self._sources: dict[str, PluginInfo] | None = None
        self._sandbox_servers: dict[str, PluginInfo] | None = None

    def _packages(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for plugin, dist in self.pm.list_plugin_distinfo():
            out[id(plugin)] = f"{dist.project_name} {dist.version}"
        return out

    def _implementations(self, hook: Any) -> Iterator[tuple[Any, str, str]]:
        """``(hookimpl, plugin name, package)`` for each implementation of ``hook``, the
        last registered first (the order pluggy calls them)."""
        packages = self._packages()
        for impl in reversed(hook.get_hookimpls()):
            plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            package = packages.get(id(impl.plugin))
            if package is None:
                package = (
                    "campaignkit (built-in)" if plugin_name in BUILTIN_PLUGINS else plugin_name
                )
            yield impl, plugin_name, package

    def _collect(self, kind: str) -> dict[str, PluginInfo]:
        found: dict[str, PluginInfo] = {}
        hook = (
            self.pm.hook.campaignkit_register_channels
            if kind == "channel"
            else self.pm.hook.campaignkit_register_sources
        )
        for impl, plugin_name, package in self._implementations(hook):

            def register(factory: Any, *, _p: str = plugin_name, _pkg: str = package) -> None:
                name = getattr(factory, "name", None)
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin {_p!r} registered a {kind} without a name")
                if kind == "channel" and not (
                    isinstance(factory, type) and issubclass(factory, Notifier)
                ):
                    raise PluginError(f"plugin {_p!r}: channel {name!r} is not a Notifier class")
                if kind == "source" and not callable(getattr(factory, "from_config", None)):
                    raise PluginError(f"plugin {_p!r}: source {name!r} has no from_config()")
                if name in found:
                    raise PluginError(
                        f"{kind} {name!r} is registered twice: by {found[name].plugin!r} "
                        f"and by {_p!r}"
                    )
                found[name] = PluginInfo(name, kind, factory, _p, _pkg)

            impl.function(register=register)
        return found

    def _collect_sandbox_servers(self) -> dict[str, PluginInfo]:
        found: dict[str, PluginInfo] = {}
        hook = self.pm.hook.campaignkit_register_sandbox_servers
        # Registration order: the built-ins' fakes first, as ``Sandbox()`` lists them.
        for impl, plugin_name, package in reversed(list(self._implementations(hook))):
            impl.function(register=_sandbox_register(found, plugin_name, package))
        return found

    @property
    def channels(self) -> dict[str, PluginInfo]:
        """Channel providers by name."""
        if self._channels is None:
            self._channels = self._collect("channel")
        return self._channels

    @property
    def sources(self) -> dict[str, PluginInfo]:
        """Source types by name."""
        if self._sources is None:
            self._sources = self._collect("source")
        return self._sources

    @property
    def sandbox_servers(self) -> dict[str, PluginInfo]:
        """Sandbox fakes by provider name (``factory`` is the server class, a factory
        or a ``"module:Class"`` string; ``details`` the keyword arguments given);
        :mod:`campaignkit.testing.sandbox` reads them."""
        if self._sandbox_servers is None:
            self._sandbox_servers = self._collect_sandbox_servers()
        return self._sandbox_servers

    def notifier_class(self, provider: str) -> type[Notifier[Any]]:
        """The notifier class registered as ``provider``.

        Raises:
            PluginError: no plugin registers that provider.
        """
        try:
            cls: type[Notifier[Any]] = self.channels[provider].factory
        except KeyError:
            known = ", ".join(sorted(self.channels)) or "none"
            raise PluginError(f"no channel provider {provider!r} (installed: {known})") from None
        return cls

    def source_factory(self, type_: str) -> SourceFactory:
        """The source class registered as ``type_``."""
        try:
            factory: SourceFactory = self.sources[type_].factory
        except KeyError:
            known = ", ".join(sorted(self.sources)) or "none"
            raise PluginError(f"no source type {type_!r} (installed: {known})") from None
        return factory


def _sandbox_register(
    found: dict[str, PluginInfo], plugin: str, package: str
) -> Callable[..., None]:
    """The ``register`` callback of ``campaignkit_register_sandbox_servers`` for one plugin."""

    def register(provider: str, server: Any, /, **details: Any) -> None:
        if not isinstance(provider, str) or not provider:
            raise PluginError(f"plugin {plugin!r} registered a sandbox server without a provider")
        if not (callable(server) or (isinstance(server, str) and ":" in server)):
            raise PluginError(
                f"plugin {plugin!r}: sandbox server {provider!r} is not a class, a factory "
                f"or a 'module:Class' string"
            )
        if provider in found:
            raise PluginError(
                f"sandbox server {provider!r} is registered twice: by "
                f"{found[provider].plugin!r} and by {plugin!r}"
            )
        found[provider] = PluginInfo(provider, "sandbox server", server, plugin, package, details)

    return register
