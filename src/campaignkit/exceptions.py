"""Exceptions raised by campaignkit.

Every exception campaignkit raises on purpose derives from :class:`CampaignKitError`::

    CampaignKitError
    ├── ConfigError              the campaign configuration is invalid (names the key path)
    ├── TemplateError            a template does not compile or references an unknown field
    ├── SourceError              the segment cannot be read (names file, line and column)
    ├── PluginError              a plugin is missing, duplicated or misbehaves
    ├── AudienceGuardError       a pre-send guard stopped the run before anything was sent
    └── DeliveryError            a provider did not accept a batch (raised by channel plugins)
        ├── TransientDeliveryError   worth retrying: timeout, reset, 429, 5xx, SMTP 4xx
        │                            (``in_doubt``: the provider may have acted on it)
        └── PermanentDeliveryError   never retried: invalid recipient, auth, other 4xx, SMTP 5xx

Errors never carry secrets: provider tokens are not part of any message or attribute,
and the text of every campaignkit error passes through :func:`campaignkit._redact.redact`
(known tokens and credential shapes such as ``Authorization: ...`` are replaced by
``***``), whatever a provider or a plugin put in it.
"""

from __future__ import annotations

from ._redact import redact

__all__ = [
    "AudienceGuardError",
    "CampaignKitError",
    "ConfigError",
    "DeliveryError",
    "PermanentDeliveryError",
    "PluginError",
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


class ConfigError(CampaignKitError, ValueError):
    """The campaign configuration is invalid.

    Attributes:
        path: dotted key path of the offending value (``channels.sms.target_customers``),
            or ``None`` when the error is about the whole file.
        file: the configuration file, when the configuration came from one.
    """

    def __init__(self, message: str, *, path: str | None = None, file: str | None = None) -> None:
        self.path = path
        self.file = file
        prefix = f"{file}: " if file else ""
        where = f"{path}: " if path else ""
        super().__init__(f"{prefix}{where}{message}")
        self.detail = message


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
