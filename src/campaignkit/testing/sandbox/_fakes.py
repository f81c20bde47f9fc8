"""Which fake serves which provider: the fakes plugins register, resolved for a sandbox.

Fakes are registered through the ``campaignkit_register_sandbox_servers`` hook, the
built-in ones by :mod:`campaignkit.testing.sandbox.providers` like any plugin's.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import pluggy

from ..._plugins import PluginInfo, Registry, get_plugin_manager
from ...exceptions import PluginError

__all__ = [
    "CAMPAIGN_TOKEN_VARIABLES",
    "CREDENTIALS",
    "PROVIDERS",
    "SDK_BASE_URL_VARIABLES",
    "SENDER_KEYWORDS",
    "Credential",
    "SandboxFake",
    "sandbox_fakes",
    "sender_keyword",
    "server_class",
]

#: keyword names a server may take for its allowed senders, for a fake registered
#: without ``sender_keyword`` (checked against the server's constructor).
_SENDER_KEYWORD_NAMES = ("from_numbers", "verified_senders", "senders")
_DETAILS = frozenset({"credentials", "token_variable", "sender_keyword", "sdk_base_url"})


@attrs.frozen
class Credential:
    """One credential a client of a sandbox server uses.

    Attributes:
        name: what the provider calls it (``account_sid``, ``auth_token``...).
        variable: the environment variable the provider's own SDKs and examples read it
            from (``TWILIO_AUTH_TOKEN``...).
        attribute: the server attribute holding it.
        secret: whether it is the server's token.
    """

    name: str
    variable: str
    attribute: str

    @property
    def secret(self) -> bool:
        return self.attribute == "token"


def _env_name(provider: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", provider.upper()).strip("_")


@attrs.frozen
class SandboxFake:
    """A provider's fake, as a plugin registered it.

    Attributes:
        provider: the channel provider it stands in for.
        server: the server class or factory, or ``"module:Class"`` (see
            :meth:`server_class`).
        plugin: the plugin that registered it (its name for ``--block-plugin``).
        package: the distribution it comes from, or ``"campaignkit (built-in)"``.
        credentials: what a client authenticates with, and the provider's usual
            variables for them (default: the token, as ``<PROVIDER>_API_TOKEN``).
        token_variable: the token variable of a campaign channel using it (default
            ``<PROVIDER>_API_TOKEN``).
        sender_keyword: the server's keyword argument restricting the senders it
            accepts, if it is not one of the usual names.
        sdk_base_url: ``(variable, path)``: the variable the provider's SDK reads its
            API address from, and the path that address ends with.
    """

    provider: str
    server: Callable[..., Any] | str
    plugin: str
    package: str
    credentials: tuple[Credential, ...] = attrs.field(default=(), converter=tuple)
    token_variable: str = ""
    sender_keyword: str | None = None
    sdk_base_url: tuple[str, str] | None = None

    def __attrs_post_init__(self) -> None:
        default = f"{_env_name(self.provider)}_API_TOKEN"
        if not self.token_variable:
            object.__setattr__(self, "token_variable", default)
        if not self.credentials:
            object.__setattr__(self, "credentials", (Credential("token", default, "token"),))

    @classmethod
    def from_info(cls, info: PluginInfo) -> SandboxFake:
        """The fake a :class:`~campaignkit.Registry` entry describes.

        Raises:
            PluginError: the plugin gave details campaignkit does not know, or of the
                wrong type.
        """
        unknown = sorted(set(info.details) - _DETAILS)
        if unknown:
            raise PluginError(
                f"plugin {info.plugin!r}: sandbox server {info.name!r} has unknown "
                f"details: {', '.join(unknown)} (known: {', '.join(sorted(_DETAILS))})"
            )
        try:
            return cls(info.name, info.factory, info.plugin, info.package, **info.details)
        except (TypeError, ValueError) as exc:
            raise PluginError(
                f"plugin {info.plugin!r}: sandbox server {info.name!r}: {exc}"
            ) from None

    def server_class(self) -> Callable[..., Any]:
        """The server class or factory (importing a ``"module:Class"`` one now:
        the SMTP server needs aiosmtpd, ``pip install 'campaignkit[sandbox]'``)."""
        if not isinstance(self.server, str):
            return self.server
        module, _, name = self.server.partition(":")
        found: Callable[..., Any] = getattr(importlib.import_module(module), name)
        return found

    def create(self, **options: Any) -> Any:
        """A new (not started) server, given its keyword arguments."""
        return self.server_class()(**options)

    def senders_keyword(self) -> str | None:
        """The keyword argument that restricts the senders the server accepts, or
        ``None`` when it accepts any sender."""
        if self.sender_keyword is not None:
            return self.sender_keyword
        parameters = inspect.signature(self.server_class()).parameters
        return next((name for name in _SENDER_KEYWORD_NAMES if name in parameters), None)


def sandbox_fakes(plugins: pluggy.PluginManager | None = None) -> dict[str, SandboxFake]:
    """Provider -> its fake, as the plugins of ``plugins`` register them (default:
    :func:`~campaignkit.get_plugin_manager`, honouring ``CAMPAIGNKIT_BLOCK_PLUGINS``).

    Raises:
        PluginError: a plugin registered a fake wrongly, or a provider twice.
    """
    registry = Registry(plugins if plugins is not None else get_plugin_manager())
    return {p: SandboxFake.from_info(info) for p, info in registry.sandbox_servers.items()}


def server_class(provider: str, plugins: pluggy.PluginManager | None = None) -> Any:
    """The sandbox server class for ``provider`` (importing the SMTP one needs aiosmtpd:
    ``pip install 'campaignkit[sandbox]'``)."""
    return sandbox_fakes(plugins)[provider].server_class()


def sender_keyword(provider: str, plugins: pluggy.PluginManager | None = None) -> str | None:
    """The keyword argument of ``provider``'s server that restricts the senders it
    accepts, or ``None`` when the server accepts any sender."""
    return sandbox_fakes(plugins)[provider].senders_keyword()


class _Table(Mapping[str, Any]):
    """A read-only table of the default plugin manager's fakes, read at each access
    (so it follows installed plugins and ``CAMPAIGNKIT_BLOCK_PLUGINS``)."""

    def __init__(self, column: Callable[[SandboxFake], Any], *, skip_none: bool = False) -> None:
        self._column = column
        self._skip_none = skip_none

    def _read(self) -> dict[str, Any]:
        values = {p: self._column(f) for p, f in sandbox_fakes().items()}
        return {p: v for p, v in values.items() if v is not None or not self._skip_none}

    def __getitem__(self, provider: str) -> Any:
        return self._read()[provider]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())

    def __repr__(self) -> str:
        return repr(self._read())


#: provider name -> its :class:`SandboxFake`, for the fakes of the default plugin
#: manager (read at each access; :func:`sandbox_fakes` takes a plugin manager).
PROVIDERS: Mapping[str, SandboxFake] = _Table(lambda f: f)
#: provider name -> the credentials its clients use, with their usual variables.
CREDENTIALS: Mapping[str, tuple[Credential, ...]] = _Table(lambda f: f.credentials)
#: provider name -> the token variable of a campaign channel sending through it (for
#: the built-ins, of a channel named ``email``, ``sms`` or ``push``: ``<NAME>_API_TOKEN``).
CAMPAIGN_TOKEN_VARIABLES: Mapping[str, str] = _Table(lambda f: f.token_variable)
#: provider name -> the server's keyword argument holding the senders it accepts
#: (requests from any other sender are refused as the provider refuses them), for the
#: fakes registered with one; others are checked by constructor (:func:`sender_keyword`).
SENDER_KEYWORDS: Mapping[str, str] = _Table(lambda f: f.sender_keyword, skip_none=True)
#: provider name -> (the variable its official SDK reads its API address from, the path
#: that address ends with). Only the Telnyx SDK reads one (``TELNYX_BASE_URL``, which
#: includes ``/v2``): set without it, the SDK sends to the real api.telnyx.com.
SDK_BASE_URL_VARIABLES: Mapping[str, tuple[str, str]] = _Table(
    lambda f: f.sdk_base_url, skip_none=True
)
