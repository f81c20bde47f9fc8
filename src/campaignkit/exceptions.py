"""Exceptions raised by campaignkit.

Every exception campaignkit raises on purpose derives from :class:`CampaignKitError`::

    CampaignKitError
    ├── ConfigError              the campaign configuration is invalid (names the key path)
    ├── TemplateError            a template does not compile or references an unknown field
    ├── SourceError              the segment cannot be read (names file, line and column)
    ├── PluginError              a plugin is missing, duplicated or misbehaves
    ├── AudienceGuardError       a pre-send guard stopped the run before anything was sent
    ├── ShardIncomplete          an orchestrator's send task left messages owed: retry it
    └── DeliveryError            a provider did not accept a batch (raised by channel plugins)
        ├── TransientDeliveryError   worth retrying: timeout, reset, 429, 5xx, SMTP 4xx
        │                            (in_doubt: the provider may have acted on it)
        └── PermanentDeliveryError   never retried: invalid recipient, auth, other 4xx, SMTP 5xx

Errors never carry secrets: provider tokens are not part of any message or attribute,
and the text of every campaignkit error passes through :func:`campaignkit._redact.redact`
(known tokens and credential shapes such as ``Authorization: ...`` are replaced by
``***``), whatever a provider or a plugin put in it.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from ._redact import redact

__all__ = [
    "AudienceGuardError",
    "CampaignKitError",
    "ConfigError",
    "DeliveryError",
    "PermanentDeliveryError",
    "PluginError",
    "Problem",
    "ShardIncomplete",
    "SourceError",
    "TemplateError",
    "TransientDeliveryError",
]


class CampaignKitError(Exception):
    """Root of every error campaignkit raises on purpose.

    Its text (``str(error)``, and so tracebacks) is redacted: no token, no
    ``Authorization`` value, whatever the message was built from.
    """

    def __str__(self) -> str:
        return redact(super().__str__())


#: The groups a :class:`Problem` belongs to, in the order a report lists them.
PROBLEM_GROUPS = ("config", "tokens", "channels", "templates", "content", "source")


@attrs.frozen
class Problem:
    """One problem found in a campaign, without sending.

    Attributes:
        message: what is wrong (``expected int, got 'ten'``); never a token's value.
        path: dotted key path of the offending value (``channels.sms.rate``), or
            ``None`` when the problem is not about one key.
        file: the file at fault: the configuration file, or the segment for a
            source problem.
        line: 1-based line of ``path`` in ``file``, when known (for a key that is not
            written in the file, the line of its table).
        group: one of :data:`PROBLEM_GROUPS`: ``config`` (schema: unknown keys, types,
            values), ``tokens``, ``channels`` (providers, their options, audience
            rules), ``templates``, ``content`` (content rules such as
            ``max_sms_segments``) or ``source`` (the segment and its header).
    """

    message: str = attrs.field(converter=redact)
    path: str | None = None
    file: str | None = None
    line: int | None = None
    group: str = "config"

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"

    def to_dict(self) -> dict[str, str | int | None]:
        """The problem as JSON-ready data."""
        return attrs.asdict(self)


class ConfigError(CampaignKitError, ValueError):
    """The campaign configuration is invalid.

    One error may carry several problems (every problem of a file is collected before
    raising): :attr:`problems` lists them; ``str()`` reads as a single error when there
    is one, else as a count followed by one line per problem.

    Attributes:
        path: dotted key path of the offending value (``channels.sms.target_customers``),
            or ``None`` when the error is about the whole file (the first problem's).
        file: the configuration file, when the configuration came from one.
        line: the line of ``path`` in ``file``, when known.
        problems: every problem, as :class:`Problem` values (at least one).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        file: str | None = None,
        line: int | None = None,
        problems: Iterable[Problem] | None = None,
    ) -> None:
        self.path = path
        self.file = file
        self.line = line
        found = tuple(problems) if problems is not None else ()
        self.problems: tuple[Problem, ...] = found or (
            Problem(message, path=path, file=file, line=line),
        )
        prefix = f"{file}: " if file else ""
        where = f"{path}: " if path else ""
        if len(self.problems) > 1:
            listed = "\n".join(f"  {p}" for p in self.problems)
            super().__init__(f"{prefix}{message}\n{listed}")
        else:
            super().__init__(f"{prefix}{where}{message}")
        self.detail = message

    @classmethod
    def of(cls, problems: Iterable[Problem], *, file: str | None = None) -> ConfigError:
        """One error carrying every problem of ``problems`` (at least one).

        With one problem it reads as that problem (``file: path: message``); with
        several, as ``file: N problems`` followed by one line per problem.
        """
        found = tuple(problems)
        if not found:
            raise ValueError("ConfigError.of needs at least one problem")
        if len(found) == 1:
            (one,) = found
            return cls(
                one.message, path=one.path, file=one.file or file, line=one.line, problems=found
            )
        first = found[0]
        error = cls(f"{len(found)} problems", file=file, problems=found)
        error.path, error.line = first.path, first.line
        return error


class TemplateError(CampaignKitError, ValueError):
    """A message template does not compile, or references a field the segment lacks.

    Attributes:
        channel: the channel whose template failed.
        part: the template part (``subject``, ``body``, ``html``, ``title``).
    """

    def __init__(
        self, message: str, *, channel: str | None = None, part: str | None = None
    ) -> None:
        self.channel = channel
        self.part = part
        where = ".".join(p for p in ("channels", channel, "template", part) if p and channel)
        super().__init__(f"{where}: {message}" if where else message)
        self.detail = message
        #: the key path of the template part (``channels.sms.template.body``), if known
        self.path = where or None


class SourceError(CampaignKitError):
    """The segment cannot be read at all (a file-level problem, not a bad row).

    Attributes:
        file: path of the segment file.
        line: 1-based physical line number where the problem was found, if known.
        column: the column (header name) concerned, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.detail = message


class PluginError(CampaignKitError):
    """A plugin is missing, registered twice, or does not honour its contract."""


class AudienceGuardError(CampaignKitError):
    """A guard (for example an expected audience size) stopped the run before any send."""


class ShardIncomplete(CampaignKitError):
    """An orchestrator's send task (:func:`campaignkit.integrations.tasks.send_shard`)
    left messages of its shard owed: transient failures, or a send that stopped early.
    The orchestrator retries the task (its retries are the campaign's), and the retry
    sends only what the ledger says is still owed.

    Attributes:
        channel: the channel.
        shard: which shard (``"2/4"``: the second of four).
        owed: how many of its messages are still owed.
    """

    def __init__(self, message: str, *, channel: str, shard: str, owed: int) -> None:
        super().__init__(message)
        self.channel = channel
        self.shard = shard
        self.owed = owed


class DeliveryError(CampaignKitError):
    """A provider did not accept a batch of messages.

    Channel plugins raise the two subclasses; the core decides what to do with them.

    Attributes:
        code: the provider's error code or HTTP status, as a string (``"21211"``, ``"429"``).
        retry_after: seconds the provider asked us to wait, when it said so.
        status_code: the HTTP status code, if the error came from an HTTP response.
        in_doubt: the request reached the provider and may have been acted on (a read
            timeout, a connection lost after the request was written, a 5xx or a
            gateway's 502/504): the messages may or may not have been delivered.
            ``False`` means surely not sent (a refused connection, a connect timeout,
            429, a code the provider documents as "not processed"). Only meaningful
            for transient errors: the core re-sends an in-doubt batch only when the
            provider has idempotency keys, after reconciling with the provider, or
            when the channel opts into at-least-once (``on_doubt = "retry"``).
    """

    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        status_code: int | None = None,
        in_doubt: bool = False,
    ) -> None:
        super().__init__(redact(message))
        self.code = code
        self.retry_after = retry_after
        self.status_code = status_code
        self.in_doubt = in_doubt


class TransientDeliveryError(DeliveryError):
    """The batch may succeed later: timeouts, connection resets, 429, 5xx, SMTP 4xx.

    With ``in_doubt=True`` the provider may already have accepted it (see
    :class:`DeliveryError`).
    """

    transient = True


class PermanentDeliveryError(DeliveryError):
    """The batch will never succeed as sent: bad request, auth failure, SMTP 5xx."""

    transient = False
