"""Loopback provider sandbox: fake SendGrid, SMTP, Twilio, Telnyx, OneSignal and Expo.

Each server speaks its provider's real wire contract on 127.0.0.1 (checks auth,
content type and body shape, enforces batch limits with the provider's error,
answers with the provider's success shape) and records every accepted message.
:class:`Sandbox` starts them all::

    with Sandbox() as sandbox:
        sandbox.pipeline("campaign.toml").run()
        sandbox.servers["sendgrid"].messages

A run against the sandbox is a **rehearsal**: it records into its own ledger
(``ledger.sandbox.db`` beside the real one: runs, deliveries, suppression list) and
writes under ``<output dir>/sandbox/``, so it never makes the real run of a logical
date "already done" and a fake provider's refusal never reaches the real suppression
list. :meth:`Sandbox.apply` and :meth:`Sandbox.pipeline` isolate the state, and a
:class:`~campaignkit.Pipeline` built by hand whose channels point at a running
sandbox server is a rehearsal as well.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ..._config import PipelineConfig, load_config
from ..._rehearsal import rehearsal_config
from ...exceptions import ConfigError

if TYPE_CHECKING:
    from ..._pipeline import Pipeline
from ._server import Faults, ProviderServer, Reply, Request

__all__ = ["PROVIDERS", "Faults", "ProviderServer", "Reply", "Request", "Sandbox"]

#: provider name -> "module:Class" of its sandbox server.
PROVIDERS: dict[str, str] = {
    "sendgrid": "campaignkit.testing.sandbox.sendgrid:SendGridServer",
    "smtp": "campaignkit.testing.sandbox.smtp:SmtpServer",
    "twilio": "campaignkit.testing.sandbox.twilio:TwilioServer",
    "telnyx": "campaignkit.testing.sandbox.telnyx:TelnyxServer",
    "onesignal": "campaignkit.testing.sandbox.onesignal:OneSignalServer",
    "expo": "campaignkit.testing.sandbox.expo:ExpoServer",
}


def server_class(provider: str) -> Any:
    """The sandbox server class for ``provider``."""
    module, _, name = PROVIDERS[provider].partition(":")
    return getattr(importlib.import_module(module), name)


class Sandbox:
    """Starts sandbox servers for the given providers (all by default) on loopback.

    Attributes:
        servers: provider name -> started server (each has ``token``, ``messages``,
            ``faults`` for HTTP servers, and ``channel_options()``).
    """

    def __init__(self, providers: Iterable[str] | None = None) -> None:
        self.providers = tuple(providers) if providers is not None else tuple(PROVIDERS)
        for p in self.providers:
            if p not in PROVIDERS:
                raise ValueError(f"no sandbox for provider {p!r} (have: {', '.join(PROVIDERS)})")
        self.servers: dict[str, Any] = {}

    def start(self) -> Sandbox:
        try:
            for p in self.providers:
                server = server_class(p)()
                server.start()
                self.servers[p] = server
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def channel_options(self, provider: str) -> dict[str, Any]:
        """The channel options that point ``provider`` at its sandbox server."""
        return dict(self.servers[provider].channel_options())

    def env(self, config: PipelineConfig | None = None) -> dict[str, str]:
        """Token environment for a run against the sandbox.

        With ``config``, each channel's token variable gets its provider's sandbox
        token; without, the default ``EMAIL/SMS/PUSH_API_TOKEN`` variables get the
        SendGrid, Twilio and Expo tokens.
        """
        if config is None:
            defaults = {
                "EMAIL_API_TOKEN": "sendgrid",
                "SMS_API_TOKEN": "twilio",
                "PUSH_API_TOKEN": "expo",
            }
            return {var: self.servers[p].token for var, p in defaults.items() if p in self.servers}
        return {
            c.token_variable: self.servers[c.provider].token
            for c in config.channels
            if c.provider in self.servers
        }

    def url(self, provider: str) -> str:
        """The address of ``provider``'s server: ``http://127.0.0.1:PORT``, or
        ``smtp://127.0.0.1:PORT`` for SMTP."""
        server = self.servers[provider]
        base_url = getattr(server, "base_url", None)
        return str(base_url) if base_url else f"smtp://{server.HOST}:{server.port}"

    def apply(self, config: PipelineConfig) -> PipelineConfig:
        """``config`` as a rehearsal against this sandbox: every channel's options
        pointed at its provider's server, and the state isolated.

        The channel's own options are kept; the sandbox's (base URL, host and port,
        account ids) override them. The run records into its own ledger,
        ``ledger.sandbox.db`` beside ``execution.state_path`` (runs, deliveries and the
        suppression list), and its run directories go under ``<output_dir>/sandbox/``:
        a rehearsal never touches the real campaign's state.

        Raises:
            ConfigError: an enabled channel's provider has no server in this sandbox
                (it would send for real); nothing is changed.
        """
        for c in config.channels:
            if c.enabled and c.provider not in self.servers:
                raise ConfigError(
                    f"the sandbox has no server for provider {c.provider!r} (started: "
                    f"{', '.join(self.servers) or 'none'}); a rehearsal never sends for "
                    f"real: disable the channel or start the sandbox with {c.provider!r}",
                    path=f"channels.{c.name}.provider",
                    file=config.file,
                )
        channels = tuple(
            attrs.evolve(c, options={**c.options, **self.channel_options(c.provider)})
            if c.provider in self.servers
            else c
            for c in config.channels
        )
        return rehearsal_config(attrs.evolve(config, channels=channels))

    def pipeline(self, config: PipelineConfig | str | Path, **kwargs: Any) -> Pipeline:
        """A rehearsal :class:`~campaignkit.Pipeline` of ``config`` (a campaign file or
        a :class:`~campaignkit.PipelineConfig`) against this sandbox: :meth:`apply`,
        the sandbox tokens as its environment (over ``env=`` if given) and
        ``rehearsal=True``. Other keyword arguments go to the constructor
        (``plugins``, ``sleep``)."""
        from ..._pipeline import Pipeline

        if kwargs.get("rehearsal", True) is not True:
            raise ValueError("a sandbox pipeline is always a rehearsal")
        loaded = config if isinstance(config, PipelineConfig) else load_config(config)
        applied = self.apply(loaded)
        kwargs["env"] = {**(kwargs.get("env") or {}), **self.env(applied)}
        kwargs["rehearsal"] = True
        return Pipeline.from_config(applied, **kwargs)

    def counts(self) -> dict[str, int]:
        """Accepted messages per provider."""
        return {p: len(s.messages) for p, s in self.servers.items()}

    def dump(self, directory: str | Path) -> dict[str, Path]:
        """Write each server's recorded messages to ``<directory>/<provider>.jsonl``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = {}
        for p, server in self.servers.items():
            path = out / f"{p}.jsonl"
            with path.open("w", encoding="utf-8") as f:
                for m in server.messages:
                    f.write(json.dumps(m, default=str) + "\n")
            written[p] = path
        return written

    def describe(self) -> Mapping[str, Mapping[str, Any]]:
        """Per provider: its options and token, for printing."""
        return {
            p: {"options": self.channel_options(p), "token": s.token}
            for p, s in self.servers.items()
        }
