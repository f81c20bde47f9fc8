"""A campaign's receiver and its receipt polls, built from the campaign itself."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import requests

from campaignkit._ledger import LedgerError, ReceiptBook, open_receipt_book
from campaignkit._receipt_types import ReceiptTally
from campaignkit.exceptions import CampaignKitError, ConfigError

from ._parsers import ReceiptParseError, parse_expo_receipts, parse_twilio
from ._receiver import ReceiptReceiver
from ._routes import POLLED_PROVIDERS, build_route

#: Providers asked about messages whose receipts did not come (a lost callback).
FETCHED_PROVIDERS = ("twilio",)

if TYPE_CHECKING:
    from campaignkit._pipeline import Pipeline

__all__ = ["PollResult", "open_receipts", "poll_receipts", "receiver"]

log = logging.getLogger("campaignkit.receipts")

#: Ticket ids per ``getReceipts`` request (Expo's limit).
EXPO_RECEIPTS_PER_REQUEST = 1000
_EXPO_DEFAULT = "https://exp.host"


def _pipeline(campaign: Pipeline | str | Path) -> Pipeline:
    from campaignkit._pipeline import Pipeline

    return campaign if isinstance(campaign, Pipeline) else Pipeline.from_file(campaign)


def open_receipts(campaign: Pipeline | str | Path) -> ReceiptBook:
    """The receipt book of the campaign's ledger (a rehearsal's: the sandbox ledger).

    Raises:
        ConfigError: the campaign keeps no ledger (``execution.ledger = false``).
        LedgerError: the ledger cannot be opened.
    """
    pipeline = _pipeline(campaign)
    if pipeline.execution.ledger is False:
        raise ConfigError(
            "receipts are recorded in the ledger: this campaign keeps none", path="execution.ledger"
        )
    return open_receipt_book(pipeline.ledger_location)


def receiver(
    campaign: Pipeline | str | Path,
    *,
    verify: bool | None = None,
    book: ReceiptBook | None = None,
) -> ReceiptReceiver:
    """The receiver of a campaign's receipts: a route per channel whose provider posts
    them, keys and tokens read from the campaign's environment now.

    Args:
        campaign: a :class:`~campaignkit.Pipeline` or its configuration file.
        verify: ``False`` accepts unsigned receipts (local tests only; logged loudly).
            Default: the ``[receipts] verify`` setting (``true`` unless turned off).
        book: where to record them (default: the campaign's ledger, opened now).

    Raises:
        ConfigError: a key, token or URL that verifying needs is missing, or no
            channel's provider posts receipts.
    """
    pipeline = _pipeline(campaign)
    config = pipeline.receipts
    checked = config.verify if verify is None else verify
    routes, polled = [], []
    for channel in pipeline.enabled_channels:
        if channel.provider in POLLED_PROVIDERS:
            polled.append(channel.name)
            continue
        token = None
        if channel.provider == "twilio" and checked:
            cls = pipeline.registry.notifier_class(channel.provider)
            token = pipeline.token(channel, cls)
        route = build_route(channel, config, pipeline.environ, verify=checked, auth_token=token)
        if route is not None:
            routes.append(route)
    if not routes and not polled:
        raise ConfigError(
            "no channel's provider sends receipts (sendgrid, twilio, telnyx post them; "
            "expo's are polled)",
            path="channels",
        )
    return ReceiptReceiver(routes, book or open_receipts(pipeline), config, polled=polled)


@attrs.frozen
class PollResult:
    """What one poll did, per channel: receipts recorded, and tickets asked about."""

    channel: str
    asked: int
    tally: ReceiptTally
    error: str | None = None


def poll_receipts(
    campaign: Pipeline | str | Path,
    *,
    book: ReceiptBook | None = None,
    session: requests.Session | None = None,
    clock: Callable[[], float] = time.time,
    limit: int = 100_000,
) -> list[PollResult]:
    """Ask the providers for the receipts of messages that have none, sent between
    ``poll_after_minutes`` and ``poll_window_hours`` ago, and record them: Expo's
    ``getReceipts`` (in chunks of 1,000), and Twilio's message fetch (one request per
    message whose status callback never came: Twilio does not retry one by default).

    A provider's error ends that channel's poll (the next poll asks again) and is in
    its result; nothing of a failed request is recorded.
    """
    pipeline = _pipeline(campaign)
    config = pipeline.receipts
    own_book = book is None
    the_book = book or open_receipts(pipeline)
    http = session or requests.Session()
    results = []
    try:
        now = clock()
        for channel in pipeline.enabled_channels:
            if channel.provider not in (*POLLED_PROVIDERS, *FETCHED_PROVIDERS):
                continue
            ids = the_book.awaiting(
                pipeline.name,
                channel.name,
                sent_after=now - config.poll_window_hours * 3600,
                sent_before=now - config.poll_after_minutes * 60,
                limit=limit,
            )
            cls = pipeline.registry.notifier_class(channel.provider)
            token = pipeline.token(channel, cls)
            if channel.provider == "twilio":
                results.append(_fetch_twilio(the_book, http, pipeline, channel, token, ids))
                continue
            base = str(channel.options.get("base_url") or _EXPO_DEFAULT).rstrip("/")
            results.append(
                _poll_expo(the_book, http, channel.name, base, token, ids, channel.timeout_seconds)
            )
    finally:
        if own_book:
            the_book.close()
        if session is None:
            http.close()
    return results


def _poll_expo(
    book: ReceiptBook,
    http: requests.Session,
    channel: str,
    base: str,
    token: Any,
    ids: list[tuple[str, str]],
    timeout: float,
) -> PollResult:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token is not None and token:
        headers["Authorization"] = "Bearer " + token.reveal()
    tally = ReceiptTally()
    for start in range(0, len(ids), EXPO_RECEIPTS_PER_REQUEST):
        chunk = dict(ids[start : start + EXPO_RECEIPTS_PER_REQUEST])
        try:
            response = http.post(
                base + "/--/api/v2/push/getReceipts",
                json={"ids": list(chunk)},
                headers=headers,
                timeout=timeout,
            )
            if response.status_code != 200:
                raise ReceiptParseError(f"expo answered HTTP {response.status_code}")
            events = parse_expo_receipts(response.json(), datetime.now(UTC), chunk).events
            tally += book.record(channel, events)
        except (requests.RequestException, ValueError, CampaignKitError, LedgerError) as exc:
            text = str(exc) if isinstance(exc, CampaignKitError) else type(exc).__name__
            log.warning("receipts %s: poll stopped: %s", channel, text)
            return PollResult(channel, len(ids), tally, error=text)
    return PollResult(channel, len(ids), tally)


def _fetch_twilio(
    book: ReceiptBook,
    http: requests.Session,
    pipeline: Pipeline,
    channel: Any,
    token: Any,
    sids: list[tuple[str, str]],
) -> PollResult:
    """Fetch the messages whose status callback never came (Twilio does not retry one
    by default) and record their final status as the callback would have."""
    from campaignkit._notifier import ChannelSettings
    from campaignkit.channels.twilio import TwilioOptions

    settings = ChannelSettings(channel=channel.name, options=channel.options, env=pipeline.environ)
    options = settings.structure(TwilioOptions)
    account = options.resolve_account_sid(settings)
    base = options.base_url.rstrip("/") + f"/2010-04-01/Accounts/{account}/Messages/"
    auth = (account, token.reveal()) if token is not None else None
    tally = ReceiptTally()
    for sid, reference in sids:
        try:
            response = http.get(base + sid + ".json", auth=auth, timeout=channel.timeout_seconds)
            if response.status_code != 200:
                raise ReceiptParseError(f"twilio answered HTTP {response.status_code}")
            message = response.json()
            if not isinstance(message, dict):
                raise ReceiptParseError("twilio: the message is not an object")
            code = message.get("error_code")
            params = {
                "MessageSid": sid,
                "MessageStatus": str(message.get("status") or ""),
                "To": str(message.get("to") or ""),
                **({"ErrorCode": str(code)} if code else {}),
            }
            events = parse_twilio(params, datetime.now(UTC), reference=reference).events
            if events:
                tally += book.record(channel.name, events)
        except (requests.RequestException, ValueError, CampaignKitError, LedgerError) as exc:
            text = str(exc) if isinstance(exc, CampaignKitError) else type(exc).__name__
            log.warning("receipts %s: poll stopped: %s", channel.name, text)
            return PollResult(channel.name, len(sids), tally, error=text)
    return PollResult(channel.name, len(sids), tally)
