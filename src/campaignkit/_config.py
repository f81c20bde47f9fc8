"""Campaign configuration: attrs classes, TOML loading, errors with key paths."""

from __future__ import annotations

import difflib
import keyword
import re
import tomllib
import types
import typing
import zoneinfo
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from ._cron import parse_cron
from ._models import Rate
from .exceptions import ConfigError, Problem

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


def _strings(value: Any, _: Any) -> list[str]:
    # Not cattrs' default, which reads a string as the list of its characters.
    if not isinstance(value, list):
        raise _Mismatch(f"expected an array of strings, got {_describe(value)}")
    for item in value:
        if not isinstance(item, str):
            raise _Mismatch(f"expected string, got {_describe(item)}")
    return list(value)


_converter.register_structure_hook_func(lambda t: t == list[str], _strings)


def _expects_table(kind: Any) -> bool:
    """Whether values of type ``kind`` (or ``kind | None``) are written as tables."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    return any(attrs.has(k) or typing.get_origin(k) is dict or k is dict for k in options)


def _describe(value: Any) -> str:
    return f"{value!r}" if isinstance(value, str) else type(value).__name__


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _known_keys(cls: type) -> list[str]:
    """The keys a table structured into ``cls`` accepts, as written in TOML."""
    if not attrs.has(cls):
        return []
    names = [a.name for a in attrs.fields(cls)]
    return [n[:-1] if n.endswith("_") and keyword.iskeyword(n[:-1]) else n for n in names]


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` for the known key closest to ``key``, when one is close
    enough to be a typo; else the empty string."""
    close = difflib.get_close_matches(key, sorted(set(known)), n=1, cutoff=_SIMILAR)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: How similar (difflib ratio) an unknown key must be to a known one to be suggested.
_SIMILAR = 0.75


def unknown_key(key: str, known: Iterable[str], *, path: str) -> Problem:
    """The problem of an unknown key, suggesting the known key it may be a typo of."""
    return Problem(f"unknown key {_shown(key)}{did_you_mean(key, known)}", path=_join(path, key))


def _shown(key: str) -> str:
    """``key`` quoted; escaped (``'concurrenc\\u0443'``) when it holds anything but
    printable ASCII, so that a look-alike letter or an invisible one shows."""
    if key.isascii() and key.isprintable():
        return repr(key)
    return "'" + key.encode("ascii", "backslashreplace").decode("ascii").replace("'", "\\'") + "'"


def _cattrs_note(exc: BaseException) -> Any:
    return next((n for n in getattr(exc, "__notes__", []) if hasattr(n, "name")), None)


def _note_name(exc: BaseException) -> object | None:
    return getattr(_cattrs_note(exc), "name", None)


def _child(data: Any, name: object) -> Any:
    if isinstance(data, Mapping):
        return data.get(name)
    if isinstance(name, int) and isinstance(data, (list, tuple)) and 0 <= name < len(data):
        return data[name]
    return None


def _problems(exc: BaseException, path: str, data: Any) -> list[Problem]:
    """Every problem in a cattrs error tree, each naming its key path."""
    if isinstance(exc, ForbiddenExtraKeysError):
        known = _known_keys(exc.cl)
        return [unknown_key(key, known, path=path) for key in sorted(exc.extra_fields)]
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        out: list[Problem] = []
        for sub in exc.exceptions:
            name = _note_name(sub)
            if name is None:
                out.extend(_problems(sub, path, data))
            elif isinstance(sub, KeyError):
                out.append(Problem("missing required key", path=_join(path, name)))
            elif (
                isinstance(sub, (AttributeError, TypeError))
                and _expects_table(getattr(_cattrs_note(sub), "type", None))
                and not isinstance(_child(data, name), Mapping)
            ):  # not "'int' object has no attribute 'keys'"
                got = _describe(_child(data, name))
                out.append(Problem(f"expected a table, got {got}", path=_join(path, name)))
            else:
                out.extend(_problems(sub, _join(path, name), _child(data, name)))
        return out
    if isinstance(exc, ConfigError):
        return [
            attrs.evolve(p, path=".".join(x for x in (path, p.path) if x) or None)
            for p in exc.problems
        ]
    if isinstance(exc, _Mismatch):
        return [Problem(str(exc), path=path or None)]
    named = exc.args[1] if isinstance(exc, (TypeError, ValueError)) and len(exc.args) > 1 else None
    if isinstance(named, attrs.Attribute):  # attrs' own validators (in_, matches_re...)
        return [Problem(str(exc.args[0]), path=_join(path, named.name))]
    if isinstance(exc, (TypeError, ValueError)):
        return [Problem(f"invalid value {_describe(data)}: {exc}", path=path or None)]
    return [Problem(str(exc), path=path or None)]


def _drop(data: dict[str, Any], parts: list[str]) -> bool:
    """Remove the value at ``parts`` (relative key path) from ``data`` so that
    structuring can go on without it; a value inside a list drops the whole list.
    Whether anything was removed."""
    node: Any = data
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            return False
        if i == len(parts) - 1 or isinstance(node[part], list):
            del node[part]
            return True
        node[part] = dict(node[part]) if isinstance(node[part], Mapping) else node[part]
        node = node[part]
    return False


def collect_options(data: Any, cls: type[T], *, path: str) -> tuple[T | None, tuple[Problem, ...]]:
    """Structure ``data`` into ``cls`` and find every problem on the way.

    Returns the structured value (``None`` when a problem leaves nothing usable, such
    as a missing required key) and every problem, each naming its key path under
    ``path``. A value with a problem is left out (its default applies) so that the
    rest of the table is still checked, validators included.
    """
    if not isinstance(data, Mapping):
        return None, (Problem(f"expected a table, got {_describe(data)}", path=path),)
    data = dict(data)
    renamed: dict[str, str] = {}
    # Keys spelled as the attribute (``from_``) are unknown: the key is ``from``.
    spelled = [k for k in data if k.endswith("_") and keyword.iskeyword(k[:-1])]
    early = tuple(unknown_key(k, _known_keys(cls), path=path) for k in spelled)
    for key in spelled:
        del data[key]
    if attrs.has(cls):
        names = {a.name for a in attrs.fields(cls)}
        # problems name ``from``, never ``from_``, whether the key is written or missing
        renamed = {n: n[:-1] for n in names if n.endswith("_") and keyword.iskeyword(n[:-1])}
        for key in list(data):
            if keyword.iskeyword(key) and f"{key}_" in names:
                data[f"{key}_"] = data.pop(key)
    problems: list[Problem] = []
    seen = set()
    flagged: set[str | None] = set()
    while True:
        try:
            return _converter.structure(data, cls), early + _renamed(problems, renamed, path)
        except Exception as exc:  # cattrs raises several kinds
            found = [
                p
                for p in _problems(exc, path, data)
                if (p.path, p.message) not in seen
                # a value left out for its problem is not also "missing"
                and not (p.message.startswith("missing required key") and p.path in flagged)
            ]
            progress = False
            for problem in found:
                seen.add((problem.path, problem.message))
                flagged.add(problem.path)
                problems.append(problem)
                relative = (problem.path or "")[len(path) + 1 :] if path else problem.path or ""
                progress = _drop(data, relative.split(".")) or progress
            if not progress:
                problems += [p for p in _field_problems(data, cls, path) if p.path not in flagged]
                return None, early + _renamed(problems, renamed, path)


def _field_problems(data: Mapping[str, Any], cls: type, path: str) -> list[Problem]:
    """What the field validators of ``cls`` say of the values in ``data``, each value
    checked on its own: when a required key is missing no instance runs them."""
    if not attrs.has(cls):
        return []
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve here: no such check
        return []
    out: list[Problem] = []
    for field in attrs.fields(cls):
        if field.validator is None or field.name not in data:
            continue
        try:
            value = _converter.structure(data[field.name], hints[field.name])
        except Exception:  # noqa: S112 - a type problem is reported by structuring
            continue
        try:
            field.validator(None, field, value)
        except (ConfigError, TypeError, ValueError) as exc:
            out.extend(_problems(exc, path, data))
    return out


def _renamed(problems: list[Problem], renamed: Mapping[str, str], path: str) -> tuple[Problem, ...]:
    """Problems naming keys as written (``from``), not as attributes (``from_``)."""
    out = []
    for problem in problems:
        for attr, key in renamed.items():
            head = _join(path, attr)
            if problem.path is not None and (
                problem.path == head or problem.path.startswith(head + ".")
            ):
                problem = attrs.evolve(problem, path=_join(path, key) + problem.path[len(head) :])
        out.append(problem)
    return tuple(out)


def structure_options(data: Mapping[str, Any], cls: type[T], *, path: str) -> T:
    """Structure a mapping into attrs class ``cls``, raising :class:`ConfigError`
    that names the offending key under ``path`` (e.g. ``channels.sms.options.from``);
    with several problems the error carries them all (:attr:`ConfigError.problems`).

    Unknown keys are errors (suggesting the known key a near miss may be a typo of).
    A key that is a Python keyword (``from``) fills the attribute of the same name with
    a trailing underscore (``from_``); errors name the key as written.
    """
    value, problems = collect_options(data, cls, path=path)
    if problems or value is None:
        raise ConfigError.of(problems or (Problem("invalid table", path=path),))
    return value


# -- the campaign schema -------------------------------------------------------------------

#: Seed names of the per-channel result sections in the report.
DEFAULT_RESULT_KEYS = {
    "email": "email_campaign_results",
    "sms": "sms_campaign_results",
    "push": "push_notification_results",
}

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

#: What an environment variable's name looks like (``token_env``); a value that does
#: not is never printed (it may be the token itself, written there by mistake).
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


def _read_template_files(
    table: dict[str, Any], base_dir: Path, path: str, problems: list[Problem]
) -> dict[str, Any]:
    """Read every ``<part>_file`` into its part; a part that cannot be read is left out
    (its problem added to ``problems``)."""
    out = dict(table)
    for part in ("body", "subject", "html", "title"):
        ref = out.get(f"{part}_file")
        if ref is None:
            continue
        problem = None
        if out.get(part) is not None:
            problem = Problem(
                f"give {part!r} or {part + '_file'!r}, not both", path=f"{path}.{part}"
            )
        elif not isinstance(ref, str):
            problem = Problem(f"expected a path, got {_describe(ref)}", path=f"{path}.{part}_file")
        else:
            file = (base_dir / ref).resolve()
            try:
                out[part] = file.read_text(encoding="utf-8")
            except OSError as exc:
                problem = Problem(f"cannot read {file}: {exc.strerror}", path=f"{path}.{part}_file")
            except UnicodeDecodeError:
                problem = Problem(f"{file} is not UTF-8 text", path=f"{path}.{part}_file")
        if problem is not None:  # an empty part stands in, so the rest is still checked
            problems.append(problem)
            out.pop(f"{part}_file", None)
            out[part] = out.get(part) or ""
    return out


@attrs.frozen
class ConfigCheck:
    """Every problem of a campaign file, and as much of it as could be structured.

    Attributes:
        config: the configuration with every offending value left out (defaults in
            their place, a channel that cannot be built at all omitted), so that the
            rest can still be checked; ``None`` when nothing usable is left (the file
            is not TOML, has no ``[pipeline]``, ``[source]`` or usable channel).
        problems: every problem found, in file order of discovery, each with its key
            path and (when read from a file) its file and line.
    """

    config: PipelineConfig | None
    problems: tuple[Problem, ...]


def parse_config(
    data: Mapping[str, Any], *, base_dir: Path, file: str | None = None
) -> PipelineConfig:
    """Structure a campaign mapping (a parsed TOML file) into :class:`PipelineConfig`.

    Raises:
        ConfigError: carrying every problem found (:attr:`ConfigError.problems`), each
            naming its key path.
    """
    check = check_config_data(data, base_dir=base_dir, file=file)
    if check.problems or check.config is None:
        raise ConfigError.of(check.problems, file=file)
    return check.config


def check_config_data(
    data: Mapping[str, Any], *, base_dir: Path, file: str | None = None, text: str | None = None
) -> ConfigCheck:
    """Structure a campaign mapping, collecting every problem instead of stopping at
    the first. ``text`` (the TOML the mapping was parsed from) gives the problems
    their lines."""
    problems: list[Problem] = []
    config = _Parser(base_dir, problems).parse(data)
    if config is not None:
        config = attrs.evolve(config, file=file)
    lines = key_lines(text) if text is not None else {}
    located = [
        attrs.evolve(p, file=p.file or file, line=p.line or line_of(lines, p.path))
        for p in problems
    ]
    located.sort(key=lambda p: p.line or 0)  # in file order (stable: as found otherwise)
    return ConfigCheck(config, tuple(located))


@attrs.define
class _Parser:
    """Structures a campaign mapping table by table, collecting problems."""

    base_dir: Path
    problems: list[Problem]

    def add(self, message: str, path: str | None) -> None:
        self.problems.append(Problem(message, path=path))

    def table(self, data: Any, cls: type[T], path: str) -> T | None:
        value, found = collect_options(data, cls, path=path)
        self.problems.extend(found)
        return value

    def parse(self, data: Mapping[str, Any]) -> PipelineConfig | None:
        known = ("pipeline", "source", "channels", "execution", "schedule")
        for key in data:
            if key in known:
                continue
            if isinstance(data[key], Mapping):
                self.add(
                    f"unknown table {_shown(key)}{did_you_mean(key, known)} "
                    f"(expected one of {sorted(known)})",
                    key,
                )
            elif key in _known_keys(_PipelineMeta):  # written above [pipeline]
                self.add(f"unknown key {_shown(key)} (it belongs in the [pipeline] table)", key)
            else:
                self.add(
                    f"unknown key {_shown(key)}{did_you_mean(key, known)} (the file holds "
                    f"only the tables {sorted(known)})",
                    key,
                )
        meta = self.meta(data.get("pipeline"))
        source = self.source(data.get("source"))
        channels = self.channels(data.get("channels"))
        execution = self.table(data.get("execution", {}), Execution, "execution")
        schedule = self.table(data.get("schedule", {}), Schedule, "schedule")
        if meta is None or source is None or not channels:
            return None
        return PipelineConfig(
            name=meta.name,
            description=meta.description,
            tags=tuple(meta.tags),
            source=source,
            channels=tuple(channels),
            execution=execution or Execution(),
            schedule=schedule or Schedule(),
            base_dir=self.base_dir,
        )

    def meta(self, pipeline: Any) -> _PipelineMeta | None:
        if not isinstance(pipeline, Mapping):
            self.add("missing [pipeline] table with a name", "pipeline")
            return None
        meta = self.table(pipeline, _PipelineMeta, "pipeline")
        if meta is None:  # its problem is listed; the rest of the file is still checked
            meta = _PipelineMeta(name="unnamed")
        return meta

    def source(self, table: Any) -> SourceConfig | None:
        if not isinstance(table, Mapping):
            self.add("missing [source] table", "source")
            return None
        options = dict(table)
        rows_per_customer = options.pop("rows_per_customer", "one")
        if not isinstance(rows_per_customer, str):
            self.add(
                f"expected a string, got {_describe(rows_per_customer)}", "source.rows_per_customer"
            )
            rows_per_customer = "one"
        elif rows_per_customer not in ROWS_PER_CUSTOMER:
            self.add(
                f"expected one of {', '.join(map(repr, ROWS_PER_CUSTOMER))}, "
                f"got {rows_per_customer!r}",
                "source.rows_per_customer",
            )
            rows_per_customer = "one"
        kind = options.pop("type", "csv")
        if not isinstance(kind, str):
            self.add(f"expected a string, got {_describe(kind)}", "source.type")
            return None
        return SourceConfig(type=kind, options=options, rows_per_customer=rows_per_customer)

    def channels(self, table: Any) -> list[Channel]:
        if not isinstance(table, Mapping) or not table:
            self.add("at least one [channels.<name>] table is required", "channels")
            return []
        out = []
        for name, channel_table in table.items():
            channel = self.channel(str(name), channel_table)
            if channel is not None:
                out.append(channel)
        return out

    def channel(self, name: str, table: Any) -> Channel | None:
        path = f"channels.{name}"
        if not isinstance(table, Mapping):
            self.add("expected a table", path)
            return None
        table = dict(table)
        if "template" in table:
            if not isinstance(table["template"], Mapping):
                self.add("expected a table", f"{path}.template")
                del table["template"]
            else:
                table["template"] = _read_template_files(
                    dict(table["template"]), self.base_dir, f"{path}.template", self.problems
                )
        if "name" in table:  # the table's name is the channel's: not a key of its own
            known = [k for k in _known_keys(Channel) if k != "name"]
            self.problems.append(unknown_key("name", known, path=path))
        table["name"] = name
        return self.table(table, Channel, path)


@attrs.frozen
class _PipelineMeta:
    name: str = attrs.field(validator=_check_name)
    description: str = ""
    tags: list[str] = attrs.field(factory=list)


def load_config(path: str | Path) -> PipelineConfig:
    """Read and structure a campaign TOML file.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or does not fit the schema;
            it carries every problem of the file (:attr:`ConfigError.problems`), each
            with its key path and line.
    """
    check = check_config(path)
    if check.problems or check.config is None:
        raise ConfigError.of(check.problems, file=str(path))
    return check.config


def check_config(path: str | Path) -> ConfigCheck:
    """Read a campaign TOML file and find every problem in it (see :class:`ConfigCheck`).

    A file that cannot be read or parsed as TOML is one problem (with its line and
    column for a TOML syntax error), and nothing else is checked.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        return _unusable(f"cannot read configuration: {exc.strerror}", file)
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark (Notepad) is not TOML
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        return _unusable("configuration is not UTF-8 text", file)
    except tomllib.TOMLDecodeError as exc:
        return _unusable(f"invalid TOML: {exc}", file, line=_toml_error_line(exc))
    return check_config_data(data, base_dir=file.resolve().parent, file=str(file), text=text)


def _unusable(message: str, file: Path, *, line: int | None = None) -> ConfigCheck:
    return ConfigCheck(None, (Problem(message, file=str(file), line=line),))


def _toml_error_line(exc: tomllib.TOMLDecodeError) -> int | None:
    found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
    return int(found.group(1)) if found else None


# -- where keys are written ------------------------------------------------------------------

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\]|\\.)*"'
_LITERAL = r"'[^']*'"
_KEY = rf"(?:{_BARE}|{_BASIC}|{_LITERAL})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER_RE = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?")
_ASSIGN_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART_RE = re.compile(_KEY)


def _key_parts(dotted: str) -> list[str]:
    parts = []
    for match in _PART_RE.finditer(dotted):
        token = match.group(0)
        if token[0] in "\"'":
            try:  # TOML's own reading of a quoted key: every escape, any character
                (token,) = tomllib.loads(f"{token} = 0")
            except (tomllib.TOMLDecodeError, ValueError):
                token = token[1:-1]
        parts.append(token)
    return parts


def key_lines(text: str) -> dict[str, int]:
    """The 1-based line where each table and key of a TOML document is written, by
    dotted key path (``channels.sms.rate``). Keys inside inline tables and arrays are
    not listed (their enclosing key is). A table that is never written itself (only
    its sub-tables or dotted keys such as ``sms.provider = ...`` are) has the line
    where it first appears. Best effort: it never raises."""
    lines: dict[str, int] = {}
    implied: dict[str, int] = {}  # tables only named as a prefix
    table: list[str] = []
    in_string: str | None = None  # the delimiter of an open multi-line string
    depth = 0  # open brackets of a multi-line array or inline table
    # TOML's lines end at "\n" only (str.splitlines also splits at U+2028, NEL ...).
    for number, line in enumerate(text.removeprefix("\ufeff").split("\n"), 1):
        if in_string is None and depth == 0:
            header = _HEADER_RE.match(line)
            assign = None if header else _ASSIGN_RE.match(line)
            if header:
                table = _key_parts(header.group(2))
                _note(lines, implied, table, number)
                continue
            if assign:
                _note(lines, implied, [*table, *_key_parts(assign.group(1))], number)
                line = line[assign.end() :]
        in_string, depth = _scan_value(line, depth, in_string)
    return {**implied, **lines}


def _note(lines: dict[str, int], implied: dict[str, int], parts: list[str], number: int) -> None:
    lines.setdefault(".".join(parts), number)
    for i in range(1, len(parts)):
        implied.setdefault(".".join(parts[:i]), number)


def _string_end(line: str, start: int, quote: str) -> int:
    """The index just past the delimiter closing a multi-line string opened with
    ``quote`` before ``start`` (up to two quotes of its content may touch it), or -1
    when the string goes on past this line."""
    i = start
    while i < len(line):
        if quote == '"""' and line[i] == "\\":
            i += 2  # an escape: \" does not close, \\ is one backslash
            continue
        if line.startswith(quote, i):
            end = i + 3
            while end < len(line) and end < i + 5 and line[end] == quote[0]:
                end += 1
            return end
        i += 1
    return -1


def _scan_value(line: str, depth: int, in_string: str | None = None) -> tuple[str | None, int]:
    """Follow a value's brackets and strings to the end of ``line`` (starting inside
    the multi-line string ``in_string`` when one is open): the delimiter of a
    multi-line string left open, and the bracket depth after it."""
    i = 0
    while i < len(line):
        if in_string is not None:
            i = _string_end(line, i, in_string)
            if i < 0:
                return in_string, depth
            in_string = None
            continue
        if line.startswith('"""', i) or line.startswith("'''", i):
            in_string, i = line[i : i + 3], i + 3
            continue
        ch = line[i]
        if ch == "#":
            break
        if ch in "\"'":
            end = i + 1
            while end < len(line) and line[end] != ch:
                end += 2 if ch == '"' and line[end] == "\\" else 1
            i = end + 1
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        i += 1
    return in_string, depth


def line_of(lines: Mapping[str, int], path: str | None) -> int | None:
    """The line of ``path`` in a document's :func:`key_lines`, else of the closest
    enclosing key or table written in it; ``None`` when none is."""
    parts = path.split(".") if path else []
    while parts:
        found = lines.get(".".join(parts))
        if found is not None:
            return found
        parts.pop()
    return None
