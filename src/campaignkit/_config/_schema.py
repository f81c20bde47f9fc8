"""The campaign schema: the attrs classes a campaign file is structured into."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from .._models import Rate
from ..exceptions import ConfigError
from ._validators import (
    check_cron,
    check_name,
    check_rows_per_customer,
    check_timezone,
    ledger_setting,
    non_negative,
    one_of,
    positive,
)

__all__ = [
    "DEFAULT_RESULT_KEYS",
    "Channel",
    "Execution",
    "FrequencyCap",
    "PipelineConfig",
    "QuietHoursConfig",
    "ReceiptsConfig",
    "RetryPolicy",
    "Schedule",
    "SourceConfig",
    "Template",
]

#: Seed names of the per-channel result sections in the report.
DEFAULT_RESULT_KEYS = {
    "email": "email_campaign_results",
    "sms": "sms_campaign_results",
    "push": "push_notification_results",
}


@attrs.frozen
class RetryPolicy:
    """How transient delivery failures are retried (``backoff``'s constant strategy).

    Attributes:
        retries: retry rounds after the first attempt (default 2).
        delay_minutes: wait between rounds (default 5).
        jitter_seconds: up to this many random seconds added to each wait, so that
            many channels or processes do not retry in lock-step.
    """

    retries: int = attrs.field(default=2, validator=non_negative)
    delay_minutes: float = attrs.field(default=5.0, validator=non_negative)
    jitter_seconds: float = attrs.field(default=0.0, validator=non_negative)

    @property
    def delay_seconds(self) -> float:
        return self.delay_minutes * 60.0


@attrs.frozen
class Template:
    """A channel's message template (Jinja2, sandboxed, undefined fields are errors).

    Each part may be given inline or as ``<part>_file`` relative to the configuration
    file; :func:`load_config` reads files into the inline fields. ``html`` is
    autoescaped; the other parts are plain text. ``data`` values (push) are templates too.
    """

    body: str | None = None
    subject: str | None = None
    html: str | None = None
    title: str | None = None
    data: dict[str, str] = attrs.field(factory=dict)
    body_file: str | None = None
    subject_file: str | None = None
    html_file: str | None = None
    title_file: str | None = None

    def parts(self) -> dict[str, str]:
        """The inline parts that are set, by name."""
        out = {}
        for part in ("subject", "body", "html", "title"):
            value = getattr(self, part)
            if value is not None:
                out[part] = value
        return out


@attrs.frozen
class FrequencyCap:
    """At most ``max_messages`` per recipient on this channel per ``window_hours``,
    counted from the ledger across runs."""

    max_messages: int = attrs.field(validator=positive)
    window_hours: float = attrs.field(default=24.0, validator=positive)


@attrs.frozen
class QuietHoursConfig:
    """No messages between ``start`` and ``end`` (``HH:MM``, wrapping midnight when
    ``start > end``) in the recipient's local time: they are deferred, not dropped.

    The zone comes from the recipient attribute ``timezone_field`` (IANA name), else
    ``timezone``."""

    start: str = "21:00"
    end: str = "08:00"
    timezone: str = attrs.field(default="UTC", validator=check_timezone)
    timezone_field: str | None = "timezone"


@attrs.frozen
class Channel:
    """One channel of a campaign.

    Attributes:
        name: the channel's name (``email``, ``sms``, ``push`` or any other).
        provider: the registered notifier that sends it (``sendgrid``, ``twilio`` ...).
        template: the message template.
        options: provider options (``base_url``, sender, app id ...).
        enabled: a disabled channel is checked against the schema only, and not run.
        target_customers: message at most this many eligible recipients (source order).
        token_env: environment variable holding the provider token; defaults to
            ``<NAME>_API_TOKEN`` (``EMAIL_API_TOKEN``, ``SMS_API_TOKEN``, ``PUSH_API_TOKEN``).
        require_consent: skip recipients whose consent flag for this channel is not true.
        concurrency: worker threads sending for this channel, each with its own connection.
        batch_size: messages per request; at most (and by default) the provider's maximum.
        rate: messages and requests per second; defaults to the provider's documented rate.
        timeout_seconds: per-request timeout.
        retry: overrides the execution retry policy for this channel.
        result_key: the report section name (``email_campaign_results`` ...).
        phone_region: default region (ISO 3166 code, e.g. ``US``) for phone numbers
            written without a country code; ``region_field`` names a recipient
            attribute holding the region instead.
        suppression_files: files of addresses never to message on this channel.
        filter: a Jinja2 expression over recipient fields selecting the audience
            (``segment == "premium"``).
        frequency_cap: at most N messages per recipient per window (across runs).
        selection: ``first`` (source order) or ``sample`` (seeded by ``sample_seed``)
            when ``target_customers`` caps the audience.
        expected_audience, audience_tolerance: abort the run before any send when
            the eligible count differs from ``expected_audience`` by more than the
            tolerance (a fraction).
        quiet_hours: see :class:`QuietHoursConfig`.
        max_sms_segments: SMS longer than this many segments are errors.
        unsubscribe_url, unsubscribe_mailto: templates for the email
            ``List-Unsubscribe`` headers (RFC 2369; one-click RFC 8058 with an https URL).
        price_per_message, price_per_segment: for the dry-run cost estimate.
        receipts_key, receipts_key_env: the key that verifies the provider's signed
            receipts (SendGrid's Event Webhook verification key, Telnyx's public key),
            or the environment variable holding it (default ``<NAME>_RECEIPTS_KEY``).
            Twilio's are signed with the auth token (the channel's token).
        on_doubt: what happens to a message whose request ended in doubt (a read
            timeout, a connection lost after sending, a 5xx: the provider may have
            delivered it) when the provider has no idempotency keys and no lookup
            settles it: ``unknown`` (default: recorded ``unknown``, never sent twice;
            ``resume --resend-unknown`` re-sends) or ``retry`` (at-least-once: re-sent
            at the next retry round; some recipients may get it twice).
    """

    name: str = attrs.field(validator=check_name)
    provider: str
    template: Template = attrs.field(factory=Template)
    options: dict[str, Any] = attrs.field(factory=dict)
    enabled: bool = True
    target_customers: int | None = attrs.field(default=None, validator=non_negative)
    token_env: str | None = None
    require_consent: bool = True
    concurrency: int = attrs.field(default=4, validator=positive)
    batch_size: int | None = attrs.field(default=None, validator=positive)
    rate: Rate | None = None
    timeout_seconds: float = attrs.field(default=30.0, validator=positive)
    retry: RetryPolicy | None = None
    result_key: str | None = None
    phone_region: str | None = None
    region_field: str | None = None
    suppression_files: list[str] = attrs.field(factory=list)
    filter: str | None = None
    frequency_cap: FrequencyCap | None = None
    selection: str = attrs.field(default="first", validator=one_of("first", "sample"))
    sample_seed: int = 0
    expected_audience: int | None = attrs.field(default=None, validator=non_negative)
    audience_tolerance: float = attrs.field(default=0.1, validator=non_negative)
    quiet_hours: QuietHoursConfig | None = None
    max_sms_segments: int | None = attrs.field(default=None, validator=positive)
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None
    price_per_message: float | None = attrs.field(default=None, validator=non_negative)
    price_per_segment: float | None = attrs.field(default=None, validator=non_negative)
    on_doubt: str = attrs.field(default="unknown", validator=one_of("unknown", "retry"))
    receipts_key: str | None = attrs.field(default=None, repr=False)
    receipts_key_env: str | None = None

    @property
    def token_variable(self) -> str:
        """The environment variable the token is read from."""
        return self.token_env or f"{self.name.upper()}_API_TOKEN"

    @property
    def receipts_key_variable(self) -> str:
        """The environment variable the receipts' verification key is read from."""
        return self.receipts_key_env or f"{self.name.upper()}_RECEIPTS_KEY"

    def sent_settings(self) -> dict[str, Any]:
        """The fields that decide what is sent, as a dict (a run's fingerprint digests
        them): how receipts are verified does not, so earlier runs keep theirs."""
        return attrs.asdict(
            self, filter=lambda a, _: a.name not in ("receipts_key", "receipts_key_env")
        )

    @property
    def report_key(self) -> str:
        return self.result_key or DEFAULT_RESULT_KEYS.get(self.name, f"{self.name}_results")


@attrs.frozen
class Execution:
    """How a run executes.

    Attributes:
        max_workers: channels run at the same time (default: all of them).
        timeout_seconds: past this deadline no new batch is started and the run ends
            ``timed_out``.
        retry: default retry policy of every channel.
        max_active_runs, depends_on_past: scheduling constraints (enforced by the ledger).
        output_dir: where run directories (report, rejected rows) go, relative to the
            configuration file.
        state_path: the ledger (SQLite) file, relative to the configuration file.
        ledger: keep the durable per-recipient ledger (``true``, the default: the
            ``CAMPAIGNKIT_LEDGER_URL`` environment variable's ledger if set, else the
            SQLite file ``state_path``), or where it is: a ``postgresql://`` URL (the
            ``postgres`` extra), ``sqlite:///path`` or a path. ``false``: no ledger, so
            a run cannot be resumed and a logical date may be sent twice; for
            benchmarks and throwaway runs only.
        workers: worker processes that send a run (default 1: this process sends).
            More than one splits each channel into shards that the workers lease from
            a PostgreSQL ledger (see the deployment docs); this process extracts,
            plans and reports.
        shards: how many shards each channel is split into for workers (default:
            from the audience's size and ``workers``).
        lease_seconds: how long a worker's lease on shards lasts unless renewed (it
            renews every third of that): a worker that stops is taken over after it.
    """

    max_workers: int | None = attrs.field(default=None, validator=positive)
    timeout_seconds: float | None = attrs.field(default=None, validator=positive)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    max_active_runs: int | None = attrs.field(default=None, validator=positive)
    depends_on_past: bool = False
    output_dir: str = "campaignkit-results"
    state_path: str = ".campaignkit/ledger.db"
    ledger: bool | str = attrs.field(default=True, validator=ledger_setting)
    workers: int = attrs.field(default=1, validator=positive)
    shards: int | None = attrs.field(default=None, validator=positive)
    lease_seconds: float = attrs.field(default=30.0, validator=positive)


@attrs.frozen
class Schedule:
    """When the campaign runs (Airflow-style); see the scheduling docs.

    ``cron`` accepts five-field expressions and ``@hourly``, ``@daily``, ``@weekly``,
    ``@monthly``, ``@yearly``. ``start_date`` / ``end_date`` without a UTC offset are
    wall-clock times in ``timezone``. See :mod:`campaignkit._schedule` for the
    semantics (intervals, catchup, lateness measured from the due time, DST).
    """

    enabled: bool = True
    cron: str = attrs.field(default="@daily", validator=check_cron)
    start_date: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    end_date: datetime | None = None
    timezone: str = attrs.field(default="UTC", validator=check_timezone)
    catchup: bool = False
    max_lateness_minutes: float | None = attrs.field(default=None, validator=positive)

    def __attrs_post_init__(self) -> None:
        # A date-time without an offset is wall-clock time in the schedule's zone.
        zone = zoneinfo.ZoneInfo(self.timezone)
        for name in ("start_date", "end_date"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=zone))
        if self.end_date is not None and self.end_date <= self.start_date:
            raise ConfigError("must be after start_date", path="end_date")


@attrs.frozen
class SourceConfig:
    """The ``[source]`` table: a registered source ``type`` and its options.

    ``rows_per_customer`` is the identity rule, for every source type: ``"one"``
    (a repeated customer id is a rejected row) or ``"many"`` (each row is a recipient).
    """

    type: str = "csv"
    options: dict[str, Any] = attrs.field(factory=dict)
    rows_per_customer: str = attrs.field(default="one", validator=check_rows_per_customer)


def _http_url(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not (
        value.startswith(("http://", "https://")) and len(value.split("://", 1)[1].strip("/")) > 0
    ):
        raise ConfigError(f"expected an http(s) URL, got {value!r}", path=attribute.name)
    if value is not None and ("?" in value or "#" in value):
        # The routes are public_url + /receipts/<channel>, and the per-message callbacks
        # add ?ck=<reference>: a query or fragment here would end up inside the path.
        raise ConfigError(  # not quoted: a query may hold a token
            "expected a URL without a query (?...) or fragment (#...)", path=attribute.name
        )


#: Opt-out replies (Twilio's and the carriers' defaults): an inbound message that is
#: exactly one of them (any case) suppresses the sender's number.
DEFAULT_STOP_KEYWORDS = (
    "STOP",
    "STOPALL",
    "STOP ALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "OPTOUT",
    "REVOKE",
)


@attrs.frozen
class ReceiptsConfig:
    """The ``[receipts]`` table: where the providers' delivery receipts arrive.

    Attributes:
        public_url: the URL at which providers reach the receiver; each channel's
            route is ``{public_url}/receipts/{channel}``. Twilio signs the exact URL it
            calls, and the SMS channels ask for callbacks there when it is set
            (``StatusCallback``, ``webhook_url``).
        verify: check every receipt's signature (default). ``false`` accepts unsigned
            receipts: for a receiver on 127.0.0.1 in local tests only (it refuses to
            listen elsewhere, and says so loudly).
        tolerance_seconds: how far a signed timestamp may be from now (replays older
            than this are refused).
        max_body_bytes: the largest receipt body taken (SendGrid batches are under 1 MB).
        stop_keywords: inbound SMS replies that opt the sender out.
        poll_after_minutes, poll_window_hours: polled receipts (Expo) are asked for
            this long after the send, and no longer than this after it.
    """

    public_url: str | None = attrs.field(default=None, validator=_http_url)
    verify: bool = True
    tolerance_seconds: float = attrs.field(default=300.0, validator=positive)
    max_body_bytes: int = attrs.field(default=1_048_576, validator=positive)
    stop_keywords: tuple[str, ...] = DEFAULT_STOP_KEYWORDS
    poll_after_minutes: float = attrs.field(default=15.0, validator=non_negative)
    poll_window_hours: float = attrs.field(default=24.0, validator=positive)

    def route(self, channel: str) -> str:
        """The path of ``channel``'s receipts: ``/receipts/<channel>``."""
        return f"/receipts/{channel}"

    def url(self, channel: str) -> str | None:
        """The public URL of ``channel``'s receipts, when :attr:`public_url` is set."""
        if self.public_url is None:
            return None
        return self.public_url.rstrip("/") + self.route(channel)


@attrs.frozen
class PipelineConfig:
    """A whole campaign file, structured."""

    name: str
    source: SourceConfig
    channels: tuple[Channel, ...]
    description: str = ""
    tags: tuple[str, ...] = ()
    #: who answers for the campaign (an orchestrator's task owner)
    owner: str = ""
    execution: Execution = attrs.field(factory=Execution)
    schedule: Schedule = attrs.field(factory=Schedule)
    receipts: ReceiptsConfig = attrs.field(factory=ReceiptsConfig)
    base_dir: Path = attrs.field(factory=Path.cwd)
    file: str | None = None
