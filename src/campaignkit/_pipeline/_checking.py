""":class:`Pipeline`'s checks, all without sending: validation, every problem at once,
the segment's rows, a preview of messages."""

from __future__ import annotations

from collections.abc import Sequence

from .._engine import ChannelPlan
from .._models import Message
from ..exceptions import ConfigError, Problem
from ._campaign import Campaign
from ._checks import check_campaign_parts, ordered, raise_findings, required_of
from ._dry_run import preview
from ._rows import check_rows
from ._values import RowCheck, ValidationSummary

__all__ = ["Checks"]


class Checks:
    """The checks of a :class:`Pipeline` (a mixin: see :class:`Campaign`)."""

    def validate(self: Campaign) -> ValidationSummary:
        """Check everything that can be checked without sending.

        Builds every enabled channel's notifier (options), reads its token from the
        environment, compiles every template part of every enabled channel against the
        source's header, checks the content rules, the audience rules and the header's
        required columns. Every check runs whatever the others found
        (:meth:`problems` lists them all).

        Raises:
            ConfigError, TemplateError, SourceError, PluginError: the problem, when
                there is one; a :class:`ConfigError` listing every problem
                (:attr:`ConfigError.problems`) when there are several.
        """
        raise_findings(check_campaign_parts(self).findings, self.config_file)
        return _summary(self)

    def summary(self: Campaign) -> ValidationSummary:
        """What :meth:`validate` checks: pipeline, source, fields and channels."""
        return _summary(self)

    def problems(self: Campaign) -> tuple[Problem, ...]:
        """Every problem :meth:`validate` finds, grouped (see :class:`Problem`): no
        check stops another (a missing token does not hide a broken template). Key
        paths get the line where they are written in the configuration file, when the
        pipeline came from one (:attr:`config_file`)."""
        return ordered(f.problem for f in check_campaign_parts(self).findings)

    def checked_plans(self: Campaign, channels: Sequence[str] | None = None) -> list[ChannelPlan]:
        """Check everything (every problem at once, as :meth:`validate`), then return
        the enabled channels' plans (of ``channels`` only, if given) as the checks
        built them: what a run sends with.

        Raises:
            ConfigError, TemplateError, SourceError, PluginError: as :meth:`validate`.
        """
        checked = check_campaign_parts(self)
        raise_findings(checked.findings, self.config_file)
        if channels is not None:
            unknown = set(channels) - {c.name for c in self.enabled_channels}
            if unknown:
                raise ConfigError(f"no enabled channel {sorted(unknown)[0]!r}", path="channels")
        return [
            checked.plans[c.name]
            for c in self.enabled_channels
            if channels is None or c.name in channels
        ]

    def required_fields(self: Campaign) -> set[str]:
        """The model fields the enabled channels send to (the source must have them)."""
        required = set()
        for channel in self.enabled_channels:
            required |= required_of(self, channel)
        return required

    def check_rows(self: Campaign, *, examples: int = 20) -> RowCheck:
        """Read the whole segment as a run does and report the rows a run would not
        message; nothing is sent and nothing is kept (no ledger, no run directory).

        Extraction is the run's own (the rows the source rejects, repeated customer ids
        as ``duplicate_id``), in a scratch database in a temporary directory, so memory
        stays bounded whatever the segment's size; then every accepted recipient's
        address is checked as each enabled channel's selection would (``invalid_address``).
        Only the first ``examples`` rows of each kind are kept, with file, line, field
        and reason, never the rest of the row.

        Raises:
            ConfigError, SourceError, PluginError: the segment cannot be read.
        """
        return check_rows(self, examples=examples)

    def preview(self: Campaign, channel: str, n: int = 3) -> list[Message]:
        """Render the messages of the first ``n`` eligible recipients; sends nothing.

        Tokens are not required for a preview. Messages that cannot be rendered (or
        break a content rule) are left out.

        Raises:
            TemplateError: eligible recipients exist but none of their messages could
                be rendered (naming the first failure).
        """
        return preview(self, channel, n)


def _summary(campaign: Campaign) -> ValidationSummary:
    return ValidationSummary(
        pipeline=campaign.name,
        source=campaign.source.describe(),
        fields=campaign.source.fields(),
        channels={c.name: c.provider for c in campaign.enabled_channels},
        disabled=tuple(c.name for c in campaign.channels if not c.enabled),
    )
