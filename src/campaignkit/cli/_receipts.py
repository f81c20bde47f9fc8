"""``campaignkit receipts``: serve, poll, list and re-match delivery receipts."""

from __future__ import annotations

import ipaddress
import threading
import time
from pathlib import Path

import click

from ..receipts import UNVERIFIED_WARNING, open_receipts, poll_receipts, receiver, wsgi_app
from ._campaign import look
from ._group import EPILOG, main
from ._options import CONFIG_PATH, sandbox_ledger_option, sigterm_interrupts
from ._output import EXIT_INPUT_ERROR, configure_logging, fail, input_errors, is_quiet, make_console

#: How often ``serve`` matches the dead letters again (a callback that outran its send).
REMATCH_SECONDS = 60.0


@main.group(epilog=EPILOG)
def receipts() -> None:
    """Delivery receipts: what became of each sent message (delivered, bounced,
    complained, unsubscribed), from the providers' signed webhooks and polls."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@receipts.command(epilog=EPILOG)
@click.argument("config", type=CONFIG_PATH)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8025, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Requests handled at once (waitress worker threads).",
)
@click.option(
    "--insecure-skip-verification",
    "insecure",
    is_flag=True,
    help="Accept unsigned receipts: local tests only (listens on loopback only).",
)
@sandbox_ledger_option
def serve(
    config: Path, host: str, port: int, threads: int, insecure: bool, use_sandbox: bool
) -> None:
    """Receive campaign CONFIG's receipts: POST /receipts/<channel> (waitress).

    Providers must reach it at [receipts] public_url (behind your TLS proxy); each
    channel's route is public_url + /receipts/<channel>. Every receipt's signature is
    checked (SendGrid ECDSA, Twilio HMAC, Telnyx Ed25519) with the keys and tokens of
    the campaign's environment; an unsigned, forged or stale one is refused (401) and
    records nothing. Answers 200 once the events are in the ledger, 503 when the
    ledger cannot take them (the provider sends them again).
    """
    try:
        from waitress import create_server
    except ImportError:
        fail(
            "serving receipts needs waitress: pip install 'campaignkit[receipts]'", EXIT_INPUT_ERROR
        )
    if not is_quiet():
        configure_logging(1)
    out = make_console(stderr=True)
    with input_errors(config):
        pipeline = look(config, use_sandbox)
        rx = receiver(pipeline, verify=False if insecure else None)
    if not rx.verified:
        if not _loopback(host):
            rx.book.close()
            fail(
                f"unverified receipts are for local tests: listen on 127.0.0.1, not {host}",
                EXIT_INPUT_ERROR,
            )
        out.print(f"[bold red]{UNVERIFIED_WARNING}[/]")
    server = create_server(
        wsgi_app(rx),
        host=host,
        port=port,
        threads=threads,
        max_request_body_size=pipeline.receipts.max_body_bytes,
        ident="campaignkit",
        clear_untrusted_proxy_headers=True,
    )
    stop = threading.Event()

    def rematch_loop() -> None:
        while not stop.wait(REMATCH_SECONDS):
            try:
                rx.book.rematch()
            except Exception as exc:  # the next round tries again
                out.print(f"rematch failed: {type(exc).__name__}")

    threading.Thread(target=rematch_loop, name="ck-rematch", daemon=True).start()
    bound = f"http://{server.effective_host}:{server.effective_port}"
    out.print(f"Receiving receipts of {pipeline.name} on {bound}/receipts/<channel>")
    for name in sorted(rx.routes):
        route = rx.routes[name]
        out.print(
            f"  {name} ({route.provider}): {bound}/receipts/{name} (public: {route.url or '-'})"
        )
    out.print(f"Recording into {rx.book.location}. Ctrl-C stops.")
    try:
        with sigterm_interrupts():  # SIGTERM (systemd, docker stop) as Ctrl-C
            server.run()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.close()
        # Requests being handled finish (their events committed, or not and retried).
        server.task_dispatcher.shutdown(timeout=10)
        rx.book.close()
    stats = rx.stats()
    out.print(
        f"Stopped: {stats.requests} request(s), {stats.recorded} new event(s), "
        f"{stats.duplicates} duplicate(s), {stats.refused} refused, {stats.unmatched} unmatched."
    )


@receipts.command(epilog=EPILOG)
@click.argument("config", type=CONFIG_PATH)
@click.option(
    "--every",
    type=click.FloatRange(min=1),
    metavar="SECONDS",
    help="Poll again every SECONDS until interrupted (default: once).",
)
@sandbox_ledger_option
def poll(config: Path, every: float | None, use_sandbox: bool) -> None:
    """Ask the providers for the receipts of campaign CONFIG's messages that have none,
    sent between [receipts] poll_after_minutes and poll_window_hours ago, and record
    them: Expo's getReceipts (DeviceNotRegistered puts the token on the suppression
    list), and Twilio's message fetch for callbacks that never came."""
    out = make_console()
    pipeline = look(config, use_sandbox)
    while True:
        with input_errors(config):
            results = poll_receipts(pipeline)
        if not results:
            out.print("No channel of this campaign has polled receipts (expo).")
            return
        failed = False
        for r in results:
            t = r.tally
            line = (
                f"{r.channel}: asked about {r.asked}, {t.recorded} new receipt(s), "
                f"{t.suppressed} suppressed"
            )
            out.print(line + (f"; stopped: {r.error}" if r.error else ""))
            failed = failed or r.error is not None
        if every is None:
            raise SystemExit(1 if failed else 0)
        time.sleep(every)


@receipts.command(name="list", epilog=EPILOG)
@click.argument("config", type=CONFIG_PATH)
@click.option("--unmatched", is_flag=True, help="Only the dead letters (no delivery found).")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@sandbox_ledger_option
def list_(config: Path, unmatched: bool, limit: int, use_sandbox: bool) -> None:
    """The latest receipts in campaign CONFIG's ledger, newest first, and counts."""
    out = make_console()
    with input_errors(config), open_receipts(look(config, use_sandbox)) as book:
        rows = book.latest(unmatched=unmatched, limit=limit)
        totals = book.counts()
    for r in rows:
        where = r.run_id or ("unmatched" if not r.matched else "by address")
        line = (
            f"{r.received_at} {r.channel} {r.status} {r.address or '-'} "
            f"{r.message_id or '-'} ({where}) {r.reason}"
        )  # providers' (and remote servers') text: no terminal escapes reach the screen
        out.print("".join(c if c.isprintable() else " " for c in line), markup=False)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(totals.items())) or "none"
    out.print(f"Receipts in the ledger: {summary}.")


@receipts.command(epilog=EPILOG)
@click.argument("config", type=CONFIG_PATH)
@sandbox_ledger_option
def rematch(config: Path, use_sandbox: bool) -> None:
    """Match the dead letters again: receipts whose message was not in the ledger when
    they arrived (a callback that outran its send's write, another ledger's message)."""
    with input_errors(config), open_receipts(look(config, use_sandbox)) as book:
        tally = book.rematch()
        left = book.unmatched_count()
    click.echo(f"{tally.matched} matched, {tally.suppressed} suppressed; {left} still unmatched.")
