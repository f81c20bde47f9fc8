"""Loopback provider sandbox: fake SendGrid, SMTP, Twilio, Telnyx, OneSignal and Expo,
and the fakes channel plugins ship (``campaignkit_register_sandbox_servers``).

Each server speaks its provider's real wire contract on 127.0.0.1 (checks auth,
content type and body shape, enforces batch limits with the provider's error,
answers with the provider's success shape) and records every accepted message.
:class:`Sandbox` runs them::

    with Sandbox() as sandbox:
        sandbox.pipeline("campaign.toml").run()
        sandbox.servers["sendgrid"].messages

``Sandbox(lazy=True)`` (what the ``ck_sandbox`` fixture uses) starts a server only
when it is first used, so a test of HTTP channels needs neither aiosmtpd nor an SMTP
port. ``Sandbox(record_to=DIR)`` writes every accepted message to
``DIR/<provider>.jsonl`` the moment it is accepted.

``Sandbox(receipts=ReceiptSimulation(...))`` simulates delivery receipts: see
:class:`~campaignkit.testing.sandbox._sandbox_receipts.SandboxReceipts`.

A run against the sandbox is a **rehearsal**: it records into its own ledger
(``ledger.sandbox.db`` beside the real one: runs, deliveries, suppression list) and
writes under ``<output dir>/sandbox/``, so it never makes the real run of a logical
date "already done" and a fake provider's refusal never reaches the real suppression
list. :meth:`Sandbox.apply` and :meth:`Sandbox.pipeline` isolate the state (and lift
the providers' default rate limits), and a :class:`~campaignkit.Pipeline` built by
hand whose channels point at a running sandbox server is a rehearsal as well.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from ..._config import PipelineConfig, load_config
from ..._models import Rate
from ..._rehearsal import rehearsal_config, sandbox_switch
from ...exceptions import ConfigError

if TYPE_CHECKING:
    from ..._pipeline import Pipeline
from ._fakes import (
    CAMPAIGN_TOKEN_VARIABLES,
    CREDENTIALS,
    PROVIDERS,
    SDK_BASE_URL_VARIABLES,
    SENDER_KEYWORDS,
    Credential,
    SandboxFake,
    sandbox_fakes,
    sender_keyword,
    server_class,
)
from ._faults import Faults
from ._journal import MessageJournal, RecordedMessages, RunRecorder, attach_journal
from ._receipts import (
    CallbackDispatcher,
    ReceiptOutcome,
    ReceiptSimulation,
    ReceiptStats,
)
from ._sandbox_receipts import SandboxReceipts
from ._server import ProviderServer
from ._wire import Reply, Request

__all__ = [
    "CAMPAIGN_TOKEN_VARIABLES",
    "CREDENTIALS",
    "DEFAULT_ENV",
    "PROVIDERS",
    "SDK_BASE_URL_VARIABLES",
    "SENDER_KEYWORDS",
    "Credential",
    "Faults",
    "MessageJournal",
    "ProviderServer",
    "ReceiptOutcome",
    "ReceiptSimulation",
    "ReceiptStats",
    "RecordedMessages",
    "Reply",
    "Request",
    "Sandbox",
    "SandboxFake",
    "sandbox_fakes",
    "sandbox_switch",
    "sender_keyword",
    "server_class",
    "shared_sandbox",
]

#: the token variables :meth:`Sandbox.env` sets without a campaign -> their provider.
DEFAULT_ENV: dict[str, str] = {
    "EMAIL_API_TOKEN": "sendgrid",
    "SMS_API_TOKEN": "twilio",
    "PUSH_API_TOKEN": "expo",
}


class ServerMap(Mapping[str, Any]):
    """A :class:`Sandbox`'s servers by provider name. While the sandbox runs, every
    provider it was given is a key; looking one up starts its server if it is not
    running yet (a lazy sandbox starts nothing before)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def __getitem__(self, provider: str) -> Any:
        return self._sandbox._server(provider)

    def __contains__(self, provider: object) -> bool:
        return self._sandbox._running and provider in self._sandbox.providers

    def __iter__(self) -> Iterator[str]:
        return iter(self._sandbox.providers if self._sandbox._running else ())

    def __len__(self) -> int:
        return len(self._sandbox.providers) if self._sandbox._running else 0

    def __repr__(self) -> str:
        live = ", ".join(self._sandbox.live_servers()) or "none"
        return f"<sandbox servers {', '.join(self)} (running: {live})>"


class Sandbox(SandboxReceipts):
    """Sandbox servers for the given providers (all by default), on 127.0.0.1.

    Each provider's server is the fake its plugin registers through the
    ``campaignkit_register_sandbox_servers`` hook (the built-in providers' come with
    campaignkit, a third-party channel's with its plugin).

    Args:
        providers: the providers to serve (default: every provider with a fake).
        lazy: start each server only when it is first used (``servers[name]``,
            :meth:`apply`, :meth:`pipeline`, :meth:`channel_options`, :meth:`url`,
            :meth:`env`): :meth:`apply` starts exactly the providers of the enabled
            channels, and nothing imports aiosmtpd unless SMTP is used. By default
            :meth:`start` starts them all.
        record_to: a directory: every accepted message is appended to
            ``<record_to>/<provider>.jsonl`` as it is accepted (see :meth:`record_to`).
        server_options: provider name -> keyword arguments for its server's
            constructor (``token``, ``port``, ``faults``, ``account_sid``,
            ``from_numbers``...).
        plugins: the plugin manager whose fakes to use (default:
            :func:`~campaignkit.get_plugin_manager`, which honours
            ``CAMPAIGNKIT_BLOCK_PLUGINS``); give the pipeline's to honour its blocks.
        receipts: simulate delivery receipts (``None``: off). Every server started
            that has ``attach_receipts`` (SendGrid, Twilio, Telnyx, Expo) gets it and
            posts its callbacks through one thread of this sandbox (see
            :meth:`drain_receipts`, :meth:`receipt_stats`).
        receipts_url: where a receipts receiver is mounted (``http://127.0.0.1:PORT``,
            loopback only): :meth:`apply` points each enabled channel's callbacks at
            ``{receipts_url}/receipts/{channel name}`` (SendGrid's account-level
            ``event_webhook_url``, Twilio's ``status_callback`` and Telnyx's
            ``webhook_url`` when the channel sets none). Also settable as an attribute.

    Raises:
        ValueError: a provider has no fake (no plugin registers one), or
            ``receipts_url`` is not a loopback URL.
        PluginError: a plugin registers a fake wrongly.

    Attributes:
        servers: provider name -> server (each has ``token``, ``messages``,
            ``faults``, ``journal`` and ``channel_options()``); see :class:`ServerMap`.
    """

    def __init__(
        self,
        providers: Iterable[str] | None = None,
        *,
        lazy: bool = False,
        record_to: str | Path | None = None,
        server_options: Mapping[str, Mapping[str, Any]] | None = None,
        plugins: pluggy.PluginManager | None = None,
        receipts: ReceiptSimulation | None = None,
        receipts_url: str | None = None,
    ) -> None:
        #: provider -> the fake serving it, as the plugins register them
        self.fakes = sandbox_fakes(plugins)
        self.providers = tuple(providers) if providers is not None else tuple(self.fakes)
        for p in self.providers:
            if p not in self.fakes:
                raise ValueError(
                    f"no sandbox for provider {p!r} (have: {', '.join(self.fakes) or 'none'}); "
                    f"a channel plugin ships its fake through the "
                    f"campaignkit_register_sandbox_servers hook"
                )
        options = dict(server_options or {})
        for p in options:
            if p not in self.providers:
                raise ValueError(f"server_options for {p!r}, which this sandbox does not serve")
        self.lazy = lazy
        self._server_options = options
        self._lock = threading.RLock()
        self._live: dict[str, Any] = {}
        self._journals: dict[str, MessageJournal] = {}
        self._running = False
        self._record_dir: Path | None = None
        self._recorded: list[Path] = []
        self.receipts = receipts
        self.receipts_url = receipts_url
        self._dispatcher: CallbackDispatcher | None = None
        self._endpoint: Any = None
        self.servers = ServerMap(self)
        if record_to is not None:
            self.record_to(record_to)

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> Sandbox:
        """Start serving: every server now, or each on first use when ``lazy``."""
        with self._lock:
            self._running = True
            self._start_receipts()
        if not self.lazy:
            try:
                for p in self.providers:
                    self._server(p)
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        """Stop every running server, the receipts thread, and close the journals."""
        with self._lock:
            self._running = False
            live, self._live = self._live, {}
            journals, self._journals = self._journals, {}
        for server in live.values():
            server.stop()
        self._stop_receipts()  # after the servers: nothing schedules a callback any more
        for journal in journals.values():
            journal.close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def live_servers(self) -> dict[str, Any]:
        """The servers running now (a lazy sandbox starts a server on first use)."""
        with self._lock:
            return dict(self._live)

    def _server(self, provider: str) -> Any:
        with self._lock:
            server = self._live.get(provider)
            if server is not None:
                return server
            if provider not in self.providers:
                raise KeyError(
                    f"no server for provider {provider!r} in this sandbox "
                    f"(have: {', '.join(self.providers) or 'none'})"
                )
            if not self._running:
                raise KeyError(f"the sandbox is not running: start() it to use {provider!r}")
            server = self.fakes[provider].create(**self._server_options.get(provider, {}))
            self._attach_receipts(server)
            journal = attach_journal(server)
            if self._record_dir is not None:
                journal.open(self._record_dir / f"{provider}.jsonl")
            try:
                server.start()
            except OSError as exc:
                journal.close()
                port = self._server_options.get(provider, {}).get("port") or 0
                where = f"port {port}" if port else "a free port"
                reason = exc.strerror or str(exc)
                raise OSError(
                    exc.errno, f"the {provider} server cannot listen on {where}: {reason}"
                ) from exc
            self._live[provider] = server
            self._journals[provider] = journal
            return server

    # -- recording --------------------------------------------------------------------
    def record_to(self, directory: str | Path | None) -> None:
        """Append every message accepted from now on to ``<directory>/<provider>.jsonl``
        (one JSON object a line, flushed before the request is answered: a killed
        process loses at most the message being written). Existing files are added
        to. ``None`` stops recording."""
        with self._lock:
            self._record_dir = Path(directory) if directory is not None else None
            if self._record_dir is not None and self._record_dir not in self._recorded:
                self._recorded.append(self._record_dir)
            for provider, journal in self._journals.items():
                if self._record_dir is None:
                    journal.close()
                else:
                    journal.open(self._record_dir / f"{provider}.jsonl")

    @property
    def recorded_dirs(self) -> tuple[Path, ...]:
        """Every directory messages were recorded to, in order."""
        with self._lock:
            return tuple(self._recorded)

    def journal_paths(self) -> dict[str, Path]:
        """Provider -> the file its accepted messages are written to now."""
        with self._lock:
            return {p: j.path for p, j in self._journals.items() if j.path is not None}

    @contextlib.contextmanager
    def record_runs(
        self, pipeline: Pipeline, *, output_dir: str | Path | None = None
    ) -> Iterator[None]:
        """For the block, record what each run of ``pipeline`` makes the servers
        accept to ``<run dir>/sandbox/<provider>.jsonl``, from the moment the run
        starts sending (a resume adds to the files). ``output_dir`` is the one given to
        ``run()`` / ``resume()``."""
        recorder = RunRecorder(self, pipeline.name, pipeline.output_root(output_dir))
        pipeline.plugin_manager.register(recorder)
        try:
            yield
        finally:
            pipeline.plugin_manager.unregister(recorder)

    # -- pointing campaigns at the servers --------------------------------------------
    def channel_options(self, provider: str) -> dict[str, Any]:
        """The channel options that point ``provider`` at its sandbox server."""
        return dict(self.servers[provider].channel_options())

    def env(self, config: PipelineConfig | None = None) -> dict[str, str]:
        """Token environment for a run against the sandbox.

        With ``config``, each enabled channel's token variable gets its provider's
        sandbox token; without, the default ``EMAIL/SMS/PUSH_API_TOKEN`` variables get
        the SendGrid, Twilio and Expo tokens.
        """
        if config is None:
            return {
                var: self.servers[p].token for var, p in DEFAULT_ENV.items() if p in self.providers
            }
        return {
            c.token_variable: self.servers[c.provider].token
            for c in config.channels
            if self._serves(c.provider, enabled=c.enabled)
        }

    def _serves(self, provider: str, *, enabled: bool) -> bool:
        """Whether a channel of ``provider`` is pointed at this sandbox: an enabled one
        whenever the sandbox has the provider, a disabled one if its server runs."""
        if enabled:
            return provider in self.providers
        with self._lock:
            return provider in self._live

    def url(self, provider: str) -> str:
        """The address of ``provider``'s server: ``http://127.0.0.1:PORT``, or
        ``smtp://127.0.0.1:PORT`` for SMTP."""
        server = self.servers[provider]
        base_url = getattr(server, "base_url", None)
        return str(base_url) if base_url else f"smtp://{server.HOST}:{server.port}"

    def credentials(self, provider: str) -> dict[str, str]:
        """What a client of ``provider``'s server authenticates with, by the
        provider's names (``account_sid`` and ``auth_token`` for Twilio...); see
        :attr:`SandboxFake.credentials`)."""
        server = self.servers[provider]
        credentials = self.fakes[provider].credentials
        return {c.name: str(getattr(server, c.attribute)) for c in credentials}

    def provider_env(self, provider: str) -> dict[str, str]:
        """The environment a program of your own would set to use ``provider``'s
        server: the provider's usual variables (``TWILIO_ACCOUNT_SID``,
        ``TWILIO_AUTH_TOKEN``, ``SENDGRID_API_KEY``...), the address variable of an
        SDK that reads one (``TELNYX_BASE_URL``: :attr:`SandboxFake.sdk_base_url`) and
        the token variable of a campaign channel using it (``<NAME>_API_TOKEN`` of a
        channel named ``email``, ``sms`` or ``push`` for the built-ins:
        :attr:`SandboxFake.token_variable`)."""
        server = self.servers[provider]
        fake = self.fakes[provider]
        env = {c.variable: str(getattr(server, c.attribute)) for c in fake.credentials}
        if fake.sdk_base_url is not None:
            variable, path = fake.sdk_base_url
            env[variable] = self.url(provider) + path
        env[fake.token_variable] = str(server.token)
        return env

    def apply(self, config: PipelineConfig) -> PipelineConfig:
        """``config`` as a rehearsal against this sandbox: every enabled channel's
        options pointed at its provider's server (started now if the sandbox is lazy),
        the providers' default rate limits lifted, and the state isolated.

        The channel's own options are kept; the sandbox's (base URL, host and port,
        account ids) override them. A channel without a ``rate`` of its own sends as
        fast as the sandbox answers (the provider's documented default rate is for the
        real provider); an explicit ``rate`` is kept, to rehearse it. The run records
        into its own ledger, ``ledger.sandbox.db`` beside ``execution.state_path``
        (runs, deliveries and the suppression list), and its run directories go under
        ``<output_dir>/sandbox/``: a rehearsal never touches the real campaign's state.

        Raises:
            ConfigError: an enabled channel's provider has no server in this sandbox
                (it would send for real); nothing is changed.
        """
        for c in config.channels:
            if c.enabled and c.provider not in self.providers:
                raise ConfigError(
                    f"the sandbox has no server for provider {c.provider!r} (serves: "
                    f"{', '.join(self.providers) or 'none'}); a rehearsal never sends for "
                    f"real: disable the channel or start the sandbox with {c.provider!r}",
                    path=f"channels.{c.name}.provider",
                    file=config.file,
                )
        channels = tuple(
            attrs.evolve(
                c,
                options={
                    **self._receipt_options(c.provider, c.name, enabled=c.enabled),
                    **c.options,
                    **self.channel_options(c.provider),
                },
                rate=c.rate if c.rate is not None else Rate(),
            )
            if self._serves(c.provider, enabled=c.enabled)
            else c
            for c in config.channels
        )
        return rehearsal_config(self._receipts_config(attrs.evolve(config, channels=channels)))

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

    # -- what the servers accepted ----------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Accepted messages per provider (0 for a server that never started)."""
        live = self.live_servers()
        return {p: len(live[p].messages) if p in live else 0 for p in self.servers}

    def dump(self, directory: str | Path) -> dict[str, Path]:
        """Write each server's recorded messages to ``<directory>/<provider>.jsonl``
        (replacing the files; an empty file for a server that never started)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        live = self.live_servers()
        written = {}
        for p in self.servers:
            path = out / f"{p}.jsonl"
            with path.open("w", encoding="utf-8") as f:
                for m in live[p].messages if p in live else ():
                    f.write(json.dumps(m, default=str) + "\n")
            written[p] = path
        return written

    def describe(self) -> Mapping[str, Mapping[str, Any]]:
        """Per provider: its options and token, for printing (starts every server)."""
        return {
            p: {"options": self.channel_options(p), "token": s.token}
            for p, s in self.servers.items()
        }


_shared: Sandbox | None = None
_shared_lock = threading.Lock()


def shared_sandbox() -> Sandbox:
    """This process's own sandbox, started lazily on first use (each server when a
    campaign first points at it) and stopped when the process exits: the one that
    ``CAMPAIGNKIT_SANDBOX=1`` points every campaign built from a configuration at (an
    orchestrator's task, an example), so that they run end to end with no token.
    Tests reach its servers through it::

        shared_sandbox().servers["twilio"].faults.fail_next(503)
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Sandbox(lazy=True).start()
            atexit.register(_shared.stop)
        return _shared
