"""``sandbox``: fake providers for trying a campaign."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import attrs
import click
from rich.console import Console

from .._models import (
    Secret,
)
from ._group import EPILOG, main
from ._output import make_console, sandbox_failure

# -- sandbox -------------------------------------------------------------------------------


def _fault_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--error-rate``, ``--rate-limit``... : ``VALUE`` for every server or
    ``PROVIDER=VALUE``, repeatable."""
    from ..testing.sandbox._settings import FAULT_SETTINGS

    helps = {
        "error_rate": "Probability that a request gets a 5xx instead of being processed.",
        "rate_limit": "Requests per second above which the server answers the provider's 429.",
        "retry_after": "Seconds announced in Retry-After with a 429 (default 1; at most a day).",
        "stall_rate": "Probability that the server waits --stall-seconds before answering.",
        "stall_seconds": "How long a stall lasts, in seconds (default 5; at most a day).",
        "drop_rate": "Probability that the connection is closed without an answer.",
        "latency": "Seconds added before every answer (at most a day).",
        "seed": "Seed of the random draws, for reproducible faults.",
    }
    for setting in reversed(FAULT_SETTINGS):
        func = click.option(
            setting.option,
            setting.field,
            multiple=True,
            metavar="[PROVIDER=]VALUE",
            help=f"{helps[setting.field]} {setting.expects.capitalize()}; for every server, "
            "or PROVIDER=VALUE for one (which wins). Repeatable.",
        )(func)
    return func


@attrs.frozen
class _SandboxSetup:
    """What ``campaignkit sandbox`` was asked to start."""

    providers: tuple[str, ...]
    server_options: Mapping[str, Mapping[str, Any]]
    #: providers whose token the user gave (``--token``): printed only on request
    given_tokens: frozenset[str]
    faults: Mapping[str, Mapping[str, float | int]]
    #: the simulated delivery receipts (``ReceiptSimulation``), or ``None``
    receipts: Any = None
    receipts_url: str | None = None


def _sandbox_receipts(
    url: str | None, ratios: str | None, delay: float | None
) -> tuple[Any, str | None]:
    """The ``ReceiptSimulation`` and receiver URL of ``--receipts-url``,
    ``--receipt-ratios`` and ``--receipt-delay`` (receipts off when none is given)."""
    from ..testing.sandbox._receipts import ReceiptSimulation, is_loopback_url

    if url is None and ratios is None and delay is None:
        return None, None
    if url is not None and not is_loopback_url(url):
        raise click.BadParameter(
            "expected an http URL on 127.0.0.1 (callbacks never leave this machine)",
            param_hint="--receipts-url",
        )
    try:
        simulation = ReceiptSimulation.from_ratios(ratios or "", delay_seconds=delay or 0.0)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--receipt-ratios") from None
    return simulation, url.rstrip("/") if url is not None else None


def _sandbox_assignments(
    hint: str, values: Iterable[str], providers: Sequence[str], **kwargs: Any
) -> list[Any]:
    """``PROVIDER=VALUE`` options parsed; a bad one is a usage error naming ``hint``."""
    from ..testing.sandbox._settings import SettingError, parse_assignment

    try:
        return [parse_assignment(v, providers=providers, **kwargs) for v in values]
    except SettingError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


def _sandbox_ports(chosen: Sequence[str], port_base: int, ports: Iterable[str]) -> dict[str, int]:
    """Provider -> fixed port, from ``--port-base`` and ``--port``; no port twice."""
    from ..testing.sandbox._settings import SettingError, parse_port

    fixed = {name: port_base + i for i, name in enumerate(chosen)} if port_base else {}
    for a in _sandbox_assignments("--port", ports, chosen, provider_required=True, what="PORT"):
        try:
            fixed[a.provider] = parse_port(a.value)
        except SettingError as exc:
            raise click.BadParameter(f"{a.provider}: {exc}", param_hint="--port") from None
    taken: dict[int, str] = {}
    for name, port in fixed.items():
        if port in taken:
            raise click.BadParameter(
                f"{taken[port]} and {name} would both listen on port {port}", param_hint="--port"
            )
        taken[port] = name
    return fixed


def _sandbox_senders(chosen: Sequence[str], senders: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Provider -> ``{keyword: senders}`` for its server, from ``--sender``."""
    from ..testing.sandbox import SENDER_KEYWORDS, sender_keyword

    allowed: dict[str, list[str]] = {}
    for a in _sandbox_assignments(
        "--sender", senders, chosen, provider_required=True, what="SENDER"
    ):
        allowed.setdefault(a.provider, []).append(a.value)
    out = {}
    for name, values in allowed.items():
        keyword = sender_keyword(name)
        if keyword is None:
            raise click.BadParameter(
                f"the {name} sandbox accepts any sender; senders can be fixed for: "
                f"{', '.join(SENDER_KEYWORDS)}",
                param_hint="--sender",
            )
        out[name] = {keyword: tuple(dict.fromkeys(values))}
    return out


def _sandbox_faults(
    chosen: Sequence[str], given: Mapping[str, tuple[str, ...]]
) -> dict[str, dict[str, float | int]]:
    """Provider -> fault fields, from ``--error-rate`` and the others: a bare value
    for every server that has the fault, ``PROVIDER=VALUE`` for one (winning)."""
    from ..testing.sandbox._settings import FAULT_SETTINGS, SettingError, fault_values

    by_setting = {
        s: _sandbox_assignments(s.option, given.get(s.field, ()), chosen, provider_required=False)
        for s in FAULT_SETTINGS
    }
    out: dict[str, dict[str, float | int]] = {}
    for name in chosen:
        values: dict[str, float | int] = {}
        for setting, assignments in by_setting.items():
            if name == "smtp" and not setting.smtp:
                if any(a.provider == name for a in assignments):
                    raise click.BadParameter(
                        "the smtp sandbox takes --latency and --stall-seconds only (its "
                        "other faults are scripted from Python)",
                        param_hint=setting.option,
                    )
                continue
            try:
                values.update(fault_values({setting: assignments}, name))
            except SettingError as exc:
                raise click.BadParameter(str(exc), param_hint=setting.option) from None
        if values:
            out[name] = values
    return out


def _sandbox_setup(
    providers: tuple[str, ...],
    *,
    port_base: int,
    ports: tuple[str, ...],
    tokens: tuple[str, ...],
    senders: tuple[str, ...],
    twilio_account_sid: str | None,
    faults: Mapping[str, tuple[str, ...]],
    receipts: tuple[str | None, str | None, float | None] = (None, None, None),
) -> _SandboxSetup:
    """Check every option of ``campaignkit sandbox`` (``click.BadParameter``, exit 2,
    naming the option) and turn them into the servers' constructor arguments."""
    from ..testing.sandbox import PROVIDERS, Faults
    from ..testing.sandbox._settings import SettingError, check_token, parse_twilio_account_sid

    for name in providers:
        if name not in PROVIDERS:
            raise click.BadParameter(
                f"no sandbox for {name!r} (have: {', '.join(PROVIDERS)})", param_hint="--provider"
            )
    chosen = tuple(dict.fromkeys(providers)) or tuple(PROVIDERS)
    options: dict[str, dict[str, Any]] = {p: {} for p in chosen}
    for name, port in _sandbox_ports(chosen, port_base, ports).items():
        options[name]["port"] = port
    given = set()
    for a in _sandbox_assignments(
        "--token", tokens, chosen, provider_required=True, secret=True, what="TOKEN"
    ):
        try:
            options[a.provider]["token"] = check_token(a.value)
        except SettingError as exc:
            raise click.BadParameter(f"{a.provider}: {exc}", param_hint="--token") from None
        given.add(a.provider)
    for name, keywords in _sandbox_senders(chosen, senders).items():
        options[name].update(keywords)
    if twilio_account_sid is not None:
        if "twilio" not in chosen:
            raise click.BadParameter(
                "the twilio sandbox is not started (add --provider twilio)",
                param_hint="--twilio-account-sid",
            )
        try:
            options["twilio"]["account_sid"] = parse_twilio_account_sid(twilio_account_sid)
        except SettingError as exc:
            raise click.BadParameter(str(exc), param_hint="--twilio-account-sid") from None
    chosen_faults = _sandbox_faults(chosen, faults)
    for name, values in chosen_faults.items():
        if name == "smtp":
            from ..testing.sandbox.smtp import SmtpFaults

            options[name]["faults"] = SmtpFaults(**values)  # type: ignore[arg-type]
        else:
            options[name]["faults"] = Faults(**values)  # type: ignore[arg-type]
    simulation, receipts_url = _sandbox_receipts(*receipts)
    return _SandboxSetup(
        providers=chosen,
        server_options=options,
        given_tokens=frozenset(given),
        faults=chosen_faults,
        receipts=simulation,
        receipts_url=receipts_url,
    )


def _sandbox_description(
    servers: Any, setup: _SandboxSetup, *, show_tokens: bool
) -> dict[str, Any]:
    """Per provider, what to point a client at: the address, the channel options, the
    credentials and the environment variables; tokens given with ``--token`` are
    ``None`` unless ``show_tokens``."""
    from ..testing.sandbox import CAMPAIGN_TOKEN_VARIABLES, CREDENTIALS

    described: dict[str, Any] = {}
    for name in setup.providers:
        hidden = name in setup.given_tokens and not show_tokens
        secret = {c.name for c in CREDENTIALS[name] if c.secret}
        secret_vars = {c.variable for c in CREDENTIALS[name] if c.secret}
        secret_vars.add(CAMPAIGN_TOKEN_VARIABLES[name])
        journal = servers.journal_paths().get(name)
        described[name] = {
            "url": servers.url(name),
            "options": servers.channel_options(name),
            "token": None if hidden else servers.servers[name].token,
            "token_given": name in setup.given_tokens,
            "credentials": {
                k: (None if hidden and k in secret else v)
                for k, v in servers.credentials(name).items()
            },
            "env": {
                k: (None if hidden and k in secret_vars else v)
                for k, v in servers.provider_env(name).items()
            },
            "faults": dict(setup.faults.get(name, {})),
            "journal": str(journal) if journal is not None else None,
        }
        server = servers.servers[name]
        if setup.receipts is not None and hasattr(server, "attach_receipts"):
            receipts: dict[str, Any] = {}
            if hasattr(server, "webhook_public_key"):  # a public key: not a secret
                receipts["webhook_public_key"] = server.webhook_public_key
            if hasattr(server, "event_webhook_url"):
                receipts["event_webhook_url"] = server.event_webhook_url
            described[name]["receipts"] = receipts
    return described


def _print_sandbox(out: Console, described: Mapping[str, Any], env: Mapping[str, str]) -> None:
    hidden = "<given with --token; --show-tokens prints it>"
    for name, info in described.items():
        out.print(f"{name}:")
        out.print(f"  url = {json.dumps(info['url'])}")
        for key, value in info["options"].items():
            out.print(f"  options.{key} = {json.dumps(value)}")
        token = info["token"]
        out.print(f"  token = {json.dumps(token) if token is not None else hidden}")
        for key, value in info["credentials"].items():
            out.print(f"  credentials.{key} = {json.dumps(value) if value is not None else hidden}")
        for variable, value in info["env"].items():
            shown = shlex.quote(value) if value is not None else hidden
            out.print(f"  export {variable}={shown}")
        if info["faults"]:
            faults = ", ".join(f"{k} {v:g}" for k, v in info["faults"].items())
            out.print(f"  faults: {faults}")
        if info["journal"]:
            out.print(f"  recording to {info['journal']}")
        for key, value in info.get("receipts", {}).items():
            out.print(f"  receipts.{key} = {json.dumps(value)}")
    for variable, value in env.items():
        out.print(f"export {variable}={shlex.quote(value)}")


def _announce_sandbox(
    servers: Any, setup: _SandboxSetup, *, show_tokens: bool, as_json: bool
) -> Console:
    """Print what the running sandbox serves (as JSON on stdout, or tables) and that it
    is ready; returns the console for the notes that follow (stderr with ``--json``)."""
    from ..testing.sandbox import DEFAULT_ENV

    described = _sandbox_description(servers, setup, show_tokens=show_tokens)
    env = {
        variable: value
        for variable, value in servers.env().items()
        if show_tokens or DEFAULT_ENV[variable] not in setup.given_tokens
    }
    if as_json:
        click.echo(json.dumps({"providers": described, "env": env}))
        note = make_console(stderr=True)
    else:
        note = make_console()
        _print_sandbox(note, described, env)
    note.print("Sandbox ready; press Ctrl-C to stop.")
    sys.stdout.flush()
    return note


@main.command(epilog=EPILOG)
@click.option(
    "--port-base",
    type=click.IntRange(0, 65_000),
    default=0,
    show_default=True,
    help="First port; providers get consecutive ports (0: free ports chosen by the system).",
)
@click.option(
    "--port",
    "ports",
    multiple=True,
    metavar="PROVIDER=PORT",
    help="This provider's server listens on PORT (over --port-base). Repeatable.",
)
@click.option(
    "--provider",
    "providers",
    multiple=True,
    metavar="NAME",
    help="Start only this provider's server. Repeatable (default: all).",
)
@click.option(
    "--dump",
    type=click.Path(file_okay=False, path_type=Path),
    help="Record every accepted message to DIR/<provider>.jsonl as it is accepted "
    "(added to existing files).",
)
@click.option(
    "--token",
    "tokens",
    multiple=True,
    metavar="PROVIDER=TOKEN",
    help="The token this provider's server accepts (default: sandbox-token). Not printed "
    "back unless --show-tokens. Repeatable.",
)
@click.option(
    "--show-tokens",
    is_flag=True,
    help="Print the tokens given with --token in the credentials and variables.",
)
@click.option(
    "--sender",
    "senders",
    multiple=True,
    metavar="PROVIDER=SENDER",
    help="A sender the server accepts (Twilio, Telnyx: a From number); others are "
    "refused as the provider refuses them. Repeatable.",
)
@click.option(
    "--twilio-account-sid",
    metavar="AC...",
    help="The Twilio account SID the server serves (AC and 32 hex digits; default: random).",
)
@_fault_options
@click.option(
    "--receipts-url",
    metavar="URL",
    help="Simulate delivery receipts, posted to the receiver mounted at URL (127.0.0.1 "
    "only): SendGrid's Event Webhook to URL/receipts/email; Twilio and Telnyx call each "
    "message's own callback URL; Expo answers getReceipts.",
)
@click.option(
    "--receipt-ratios",
    metavar="NAME=RATIO,...",
    help="Outcome shares of the simulated receipts: delivered, undelivered, bounced, "
    "complained, unsubscribed (sum at most 1; those not named are 0, except delivered, "
    "the rest) and stop (SMS replies STOP). Default: 0.9 delivered, 0.03 undelivered, "
    "0.04 bounced, 0.02 complained, 0.01 unsubscribed. Turns receipts on.",
)
@click.option(
    "--receipt-delay",
    type=click.FloatRange(0, 86_400),
    help="Seconds before an outcome callback is sent (or an Expo receipt is ready). "
    "Turns receipts on.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the description as one line of JSON.")
def sandbox(
    port_base: int,
    ports: tuple[str, ...],
    providers: tuple[str, ...],
    dump: Path | None,
    tokens: tuple[str, ...],
    show_tokens: bool,
    senders: tuple[str, ...],
    twilio_account_sid: str | None,
    receipts_url: str | None,
    receipt_ratios: str | None,
    receipt_delay: float | None,
    as_json: bool,
    **faults: tuple[str, ...],
) -> None:
    """Serve the loopback provider sandboxes until interrupted (Ctrl-C or SIGTERM).

    Prints, per provider, its address, the channel options and credentials to use and
    the environment variables a program would set. Point a campaign's channels at the
    printed options (or run `campaignkit run CONFIG --sandbox`, which starts its own).
    """
    from ..testing.sandbox import Sandbox

    setup = _sandbox_setup(
        providers,
        port_base=port_base,
        ports=ports,
        tokens=tokens,
        senders=senders,
        twilio_account_sid=twilio_account_sid,
        faults=faults,
        receipts=(receipts_url, receipt_ratios, receipt_delay),
    )
    # The tokens given are redacted from any error message while the command runs.
    given = [Secret(setup.server_options[p]["token"]) for p in sorted(setup.given_tokens)]
    servers = Sandbox(
        setup.providers,
        record_to=dump,
        server_options=setup.server_options,
        receipts=setup.receipts,
        receipts_url=setup.receipts_url,
    )
    try:
        servers.start()
        if setup.receipts_url is not None and "sendgrid" in setup.providers:
            # account-level at SendGrid; a campaign's email channel is usually "email"
            servers.servers["sendgrid"].event_webhook_url = f"{setup.receipts_url}/receipts/email"
    except Exception as exc:
        servers.stop()
        sandbox_failure(exc)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        note = _announce_sandbox(servers, setup, show_tokens=show_tokens, as_json=as_json)
        try:
            while not stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
        counts = ", ".join(f"{p} {n}" for p, n in servers.counts().items())
        note.print(f"Accepted messages: {counts}")
        if dump is not None:
            note.print(f"Recorded messages in {dump}{os.sep}")
    finally:
        signal.signal(signal.SIGTERM, previous)
        servers.stop()
        del given
