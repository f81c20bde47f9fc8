"""Campaign configuration: attrs classes, TOML loading, errors with key paths."""

from __future__ import annotations

import keyword
import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from ._models import Rate
from .exceptions import ConfigError

T = TypeVar("T")

_converter = cattrs.Converter(forbid_extra_keys=True)


class _Mismatch(ValueError):
    """A value of the wrong type; the message is final ("expected int, got 'ten'")."""


def _strict(kind: type, names: str) -> Any:
    def hook(value: Any, _: Any) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
            return value
        raise _Mismatch(f"expected {names}, got {_describe(value)}")

    return hook


_converter.register_structure_hook(str, _strict(str, "string"))
_converter.register_structure_hook(int, _strict(int, "int"))
_converter.register_structure_hook(float, _strict(float, "number"))
_converter.register_structure_hook(bool, _strict(bool, "true or false"))


def _describe(value: Any) -> str:
    return f"{value!r}" if isinstance(value, str) else type(value).__name__


def _first_error(exc: BaseException, path: str, data: Any) -> ConfigError:
    """Turn a cattrs error tree into one ConfigError naming the key path."""
    if isinstance(exc, ForbiddenExtraKeysError):
        key = sorted(exc.extra_fields)[0]
        return ConfigError(f"unknown key {key!r}", path=f"{path}.{key}" if path else key)
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        for sub in exc.exceptions:
            note = next((n for n in getattr(sub, "__notes__", []) if hasattr(n, "name")), None)
            name = getattr(note, "name", None)
            if name is None:
                return _first_error(sub, path, data)
            child_path = f"{path}.{name}" if path else str(name)
            child = (
                data.get(name)
                if isinstance(data, Mapping)
                else (
                    data[name]
                    if isinstance(name, int) and isinstance(data, (list, tuple))
                    else None
                )
            )
            if isinstance(sub, KeyError):
                return ConfigError("missing required key", path=child_path)
            return _first_error(sub, child_path, child)
    if isinstance(exc, ConfigError):
        joined = ".".join(p for p in (path, exc.path) if p)
        return ConfigError(exc.detail, path=joined or None)
    if isinstance(exc, _Mismatch):
        return ConfigError(str(exc), path=path or None)
    if isinstance(exc, (TypeError, ValueError)):
        return ConfigError(f"invalid value {_describe(data)}: {exc}", path=path or None)
    return ConfigError(str(exc), path=path or None)


def structure_options(data: Mapping[str, Any], cls: type[T], *, path: str) -> T:
    """Structure a mapping into attrs class ``cls``, raising :class:`ConfigError`
    that names the offending key under ``path`` (e.g. ``channels.sms.options.from``).

    Unknown keys are errors. A key that is a Python keyword (``from``) fills the
    attribute of the same name with a trailing underscore (``from_``); errors name the
    key as written.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a table, got {_describe(data)}", path=path)
    data = dict(data)
    renamed = {}
    if attrs.has(cls):
        names = {a.name for a in attrs.fields(cls)}
        for key in list(data):
            if keyword.iskeyword(key) and f"{key}_" in names:
                data[f"{key}_"] = data.pop(key)
                renamed[f"{key}_"] = key
            elif key.endswith("_") and keyword.iskeyword(key[:-1]):
                raise ConfigError(f"unknown key {key!r}", path=f"{path}.{key}")
    try:
        return _converter.structure(data, cls)
    except Exception as exc:  # cattrs raises several kinds
        error = exc if isinstance(exc, ConfigError) else _first_error(exc, path, data)
        for attr, key in renamed.items():
            if error.path is not None and error.path.startswith(f"{path}.{attr}"):
                error = ConfigError(
                    error.detail, path=f"{path}.{key}" + error.path[len(path) + 1 + len(attr) :]
                )
        raise error from None


# -- the campaign schema -------------------------------------------------------------------

#: Seed names of the per-channel result sections in the report.
DEFAULT_RESULT_KEYS = {
    "email": "email_campaign_results",
    "sms": "sms_campaign_results",
    "push": "push_notification_results",
}

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _check_name(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not _NAME_RE.match(value):
        raise ConfigError(
            f"expected lower-case letters, digits and '_', starting with a letter, got {value!r}",
            path=attribute.name,
        )


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"expected a positive number, got {value!r}", path=attribute.name)


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value < 0:
        raise ConfigError(f"expected zero or more, got {value!r}", path=attribute.name)


def _one_of(*choices: str) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in choices:
            raise ConfigError(
                f"expected one of {', '.join(map(repr, choices))}, got {value!r}",
                path=attribute.name,
            )

    return check


def _check_timezone(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {value!r}", path=attribute.name) from None


def _check_cron(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    from ._schedule import parse_cron  # the schedule module builds on this one

    try:
        parse_cron(value)
    except ConfigError as exc:
        raise ConfigError(exc.detail, path=attribute.name) from None


@attrs.frozen
class RetryPolicy:
    """How transient delivery failures are retried (``backoff``'s constant strategy).

    Attributes:
        retries: retry rounds after the first attempt (default 2).
        delay_minutes: wait between rounds (default 5).
        jitter_seconds: up to this many random seconds added to each wait, so that
            many channels or processes do not retry in lock-step.
    """

    retries: int = attrs.field(default=2, validator=_non_negative)
    delay_minutes: float = attrs.field(default=5.0, validator=_non_negative)
    jitter_seconds: float = attrs.field(default=0.0, validator=_non_negative)

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

    max_messages: int = attrs.field(validator=_positive)
    window_hours: float = attrs.field(default=24.0, validator=_positive)


@attrs.frozen
class QuietHoursConfig:
    """No messages between ``start`` and ``end`` (``HH:MM``, wrapping midnight when
    ``start > end``) in the recipient's local time: they are deferred, not dropped.

    The zone comes from the recipient attribute ``timezone_field`` (IANA name), else
    ``timezone``."""

    start: str = "21:00"
    end: str = "08:00"
    timezone: str = attrs.field(default="UTC", validator=_check_timezone)
    timezone_field: str | None = "timezone"


@attrs.frozen
class Channel:
    """One channel of a campaign.

    Attributes:
        name: the channel's name (``email``, ``sms``, ``push`` or any other).
        provider: the registered notifier that sends it (``sendgrid``, ``twilio`` ...).
        template: the message template.
        options: provider options (``base_url``, sender, app id ...).
        enabled: a disabled channel is validated but not run.
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
        on_doubt: what happens to a message whose request ended in doubt (a read
            timeout, a connection lost after sending, a 5xx: the provider may have
            delivered it) when the provider has no idempotency keys and no lookup
            settles it: ``unknown`` (default: recorded ``unknown``, never sent twice;
            ``resume --resend-unknown`` re-sends) or ``retry`` (at-least-once: re-sent
            at the next retry round; some recipients may get it twice).
    """

    name: str = attrs.field(validator=_check_name)
    provider: str
    template: Template = attrs.field(factory=Template)
    options: dict[str, Any] = attrs.field(factory=dict)
    enabled: bool = True
    target_customers: int | None = attrs.field(default=None, validator=_non_negative)
    token_env: str | None = None
    require_consent: bool = True
    concurrency: int = attrs.field(default=4, validator=_positive)
    batch_size: int | None = attrs.field(default=None, validator=_positive)
    rate: Rate | None = None
    timeout_seconds: float = attrs.field(default=30.0, validator=_positive)
    retry: RetryPolicy | None = None
    result_key: str | None = None
    phone_region: str | None = None
    region_field: str | None = None
    suppression_files: list[str] = attrs.field(factory=list)
    filter: str | None = None
    frequency_cap: FrequencyCap | None = None
    selection: str = attrs.field(default="first", validator=_one_of("first", "sample"))
    sample_seed: int = 0
    expected_audience: int | None = attrs.field(default=None, validator=_non_negative)
    audience_tolerance: float = attrs.field(default=0.1, validator=_non_negative)
    quiet_hours: QuietHoursConfig | None = None
    max_sms_segments: int | None = attrs.field(default=None, validator=_positive)
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None
    price_per_message: float | None = attrs.field(default=None, validator=_non_negative)
    price_per_segment: float | None = attrs.field(default=None, validator=_non_negative)
    on_doubt: str = attrs.field(default="unknown", validator=_one_of("unknown", "retry"))

    @property
    def token_variable(self) -> str:
        """The environment variable the token is read from."""
        return self.token_env or f"{self.name.upper()}_API_TOKEN"

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
        ledger: keep the durable per-recipient ledger (default). Without it a run
            cannot be resumed and a logical date may be sent twice; for benchmarks
            and throwaway runs only.
    """

    max_workers: int | None = attrs.field(default=None, validator=_positive)
    timeout_seconds: float | None = attrs.field(default=None, validator=_positive)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    max_active_runs: int | None = attrs.field(default=None, validator=_positive)
    depends_on_past: bool = False
    output_dir: str = "campaignkit-results"
    state_path: str = ".campaignkit/ledger.db"
    ledger: bool = True


@attrs.frozen
class Schedule:
    """When the campaign runs (Airflow-style); see the scheduling docs.

    ``cron`` accepts five-field expressions and ``@hourly``, ``@daily``, ``@weekly``,
    ``@monthly``, ``@yearly``. ``start_date`` / ``end_date`` without a UTC offset are
    wall-clock times in ``timezone``. See :mod:`campaignkit._schedule` for the
    semantics (intervals, catchup, lateness measured from the due time, DST).
    """

    enabled: bool = True
    cron: str = attrs.field(default="@daily", validator=_check_cron)
    start_date: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    end_date: datetime | None = None
    timezone: str = attrs.field(default="UTC", validator=_check_timezone)
    catchup: bool = False
    max_lateness_minutes: float | None = attrs.field(default=None, validator=_positive)

    def __attrs_post_init__(self) -> None:
        # A date-time without an offset is wall-clock time in the schedule's zone.
        zone = zoneinfo.ZoneInfo(self.timezone)
        for name in ("start_date", "end_date"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=zone))
        if self.end_date is not None and self.end_date <= self.start_date:
            raise ConfigError("must be after start_date", path="end_date")


#: ``[source] rows_per_customer``: a customer id on one row (a repeat is rejected as
#: ``duplicate_id``), or on several (one per device, say), each its own recipient.
ROWS_PER_CUSTOMER = ("one", "many")


def _check_rows_per_customer(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ROWS_PER_CUSTOMER:
        raise ConfigError(
            f"expected one of {', '.join(map(repr, ROWS_PER_CUSTOMER))}, got {value!r}",
            path=f"source.{attribute.name}",
        )


@attrs.frozen
class SourceConfig:
    """The ``[source]`` table: a registered source ``type`` and its options.

    ``rows_per_customer`` is the identity rule, for every source type: ``"one"``
    (a repeated customer id is a rejected row) or ``"many"`` (each row is a recipient).
    """

    type: str = "csv"
    options: dict[str, Any] = attrs.field(factory=dict)
    rows_per_customer: str = attrs.field(default="one", validator=_check_rows_per_customer)


@attrs.frozen
class PipelineConfig:
    """A whole campaign file, structured."""

    name: str
    source: SourceConfig
    channels: tuple[Channel, ...]
    description: str = ""
    tags: tuple[str, ...] = ()
    execution: Execution = attrs.field(factory=Execution)
    schedule: Schedule = attrs.field(factory=Schedule)
    base_dir: Path = attrs.field(factory=Path.cwd)
    file: str | None = None


def _structure_datetime(value: Any, _: Any) -> datetime:
    # Naive values stay naive here: Schedule reads them in its own time zone.
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise _Mismatch(f"expected an ISO 8601 date-time, got {value!r}") from None
    raise _Mismatch(f"expected a date-time, got {_describe(value)}")


_converter.register_structure_hook(datetime, _structure_datetime)
_converter.register_structure_hook(Path, lambda v, _: Path(v))


def _read_template_files(table: dict[str, Any], base_dir: Path, path: str) -> dict[str, Any]:
    out = dict(table)
    for part in ("body", "subject", "html", "title"):
        ref = out.get(f"{part}_file")
        if ref is None:
            continue
        if out.get(part) is not None:
            raise ConfigError(
                f"give {part!r} or {part + '_file'!r}, not both", path=f"{path}.{part}"
            )
        if not isinstance(ref, str):
            raise ConfigError(f"expected a path, got {_describe(ref)}", path=f"{path}.{part}_file")
        file = (base_dir / ref).resolve()
        try:
            out[part] = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read {file}: {exc.strerror}", path=f"{path}.{part}_file"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file} is not UTF-8 text", path=f"{path}.{part}_file") from None
    return out


def parse_config(
    data: Mapping[str, Any], *, base_dir: Path, file: str | None = None
) -> PipelineConfig:
    """Structure a campaign mapping (a parsed TOML file) into :class:`PipelineConfig`.

    Raises:
        ConfigError: naming the key path of the first problem.
    """
    try:
        return _parse(data, base_dir=base_dir, file=file)
    except ConfigError as exc:
        if exc.file is None and file is not None:
            raise ConfigError(exc.detail, path=exc.path, file=file) from None
        raise


def _parse(data: Mapping[str, Any], *, base_dir: Path, file: str | None) -> PipelineConfig:
    data = dict(data)
    known = {"pipeline", "source", "channels", "execution", "schedule"}
    for key in data:
        if key not in known:
            raise ConfigError(f"unknown table {key!r} (expected one of {sorted(known)})", path=key)
    pipeline = data.get("pipeline")
    if not isinstance(pipeline, Mapping):
        raise ConfigError("missing [pipeline] table with a name", path="pipeline")
    meta = structure_options(pipeline, _PipelineMeta, path="pipeline")
    source_table = data.get("source")
    if not isinstance(source_table, Mapping):
        raise ConfigError("missing [source] table", path="source")
    source_table = dict(source_table)
    rows_per_customer = source_table.pop("rows_per_customer", "one")
    if not isinstance(rows_per_customer, str):
        raise ConfigError(
            f"expected a string, got {_describe(rows_per_customer)}",
            path="source.rows_per_customer",
        )
    source = SourceConfig(
        type=str(source_table.pop("type", "csv")),
        options=source_table,
        rows_per_customer=rows_per_customer,
    )
    channels_table = data.get("channels")
    if not isinstance(channels_table, Mapping) or not channels_table:
        raise ConfigError("at least one [channels.<name>] table is required", path="channels")
    channels = []
    for name, table in channels_table.items():
        path = f"channels.{name}"
        if not isinstance(table, Mapping):
            raise ConfigError("expected a table", path=path)
        table = dict(table)
        if "template" in table:
            if not isinstance(table["template"], Mapping):
                raise ConfigError("expected a table", path=f"{path}.template")
            table["template"] = _read_template_files(
                dict(table["template"]), base_dir, f"{path}.template"
            )
        table["name"] = name
        channels.append(structure_options(table, Channel, path=path))
    execution = structure_options(data.get("execution", {}), Execution, path="execution")
    schedule = structure_options(data.get("schedule", {}), Schedule, path="schedule")
    return PipelineConfig(
        name=meta.name,
        description=meta.description,
        tags=tuple(meta.tags),
        source=source,
        channels=tuple(channels),
        execution=execution,
        schedule=schedule,
        base_dir=base_dir,
        file=file,
    )


@attrs.frozen
class _PipelineMeta:
    name: str = attrs.field(validator=_check_name)
    description: str = ""
    tags: list[str] = attrs.field(factory=list)


def load_config(path: str | Path) -> PipelineConfig:
    """Read and structure a campaign TOML file.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or does not fit the schema.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration: {exc.strerror}", file=str(file)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("configuration is not UTF-8 text", file=str(file)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=str(file)) from None
    return parse_config(data, base_dir=file.resolve().parent, file=str(file))
