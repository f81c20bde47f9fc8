"""The ``campaignkit`` command line.

Sending: ``run`` (one logical date, or ``--scheduled``; ``--limit N`` a canary,
``--dry-run`` a plan that sends nothing), ``resume``, ``retry-failed``, ``scheduler``,
``worker`` (a worker of runs split into shards, on any host sharing a PostgreSQL ledger).
Looking: ``runs``, ``report``, ``schedule``, ``validate``, ``preview``, ``channels``.
Audience: ``suppress``, ``suppressions``. Receipts: ``receipts serve``, ``receipts poll``,
``receipts list``, ``receipts rematch``. Testing: ``sandbox`` (and ``--sandbox`` on the
sending and ledger commands).

Every command that touches runs takes the campaign file: provider tokens come from the
environment and templates from the campaign, neither is stored in the ledger, so a
resume rebuilds the channels from the same file.

Exit codes (also in ``campaignkit --help`` and ``docs/cli.md``):

* 0: every recipient was sent, or deliberately skipped (no consent, no address, over
  target; a scheduled run recorded as ``skipped_late``); a canary (``--limit``) or a
  run holding messages for quiet hours, without failures; a dry run; nothing was due;
* 1: the run completed (or sent its canary) but some deliveries failed or are
  ``unknown``;
* 2: an input or configuration error stopped the command before anything was sent
  (:class:`~campaignkit.ConfigError`, :class:`~campaignkit.SourceError`,
  :class:`~campaignkit.TemplateError`, :class:`~campaignkit.PluginError`,
  :class:`~campaignkit.AudienceGuardError` (``expected_audience``), a guard raising in
  ``campaignkit_run_started``, a ledger error such as an unknown run id or
  ``max_active_runs`` reached, an invalid address given to ``suppress``, a bad option);
* 3: the run failed (a channel crashed, an unexpected error once delivery started),
  timed out, or was interrupted (``cancelled``); what it did not send stays pending
  for ``campaignkit resume``.

Errors are one line on stderr; a :class:`~campaignkit.CampaignKitError` never prints a
traceback, and nothing printed here ever holds a provider token.
"""

from __future__ import annotations

# The command modules register their commands on ``main`` when imported.
from . import (  # noqa: F401
    _audience,
    _history,
    _info,
    _receipts,
    _resume,
    _running,
    _sandbox,
    _schedules,
    _worker,
)
from ._group import main
from ._output import EXIT_FAILED, EXIT_INPUT_ERROR, EXIT_OK, EXIT_PARTIAL

__all__ = ["EXIT_FAILED", "EXIT_INPUT_ERROR", "EXIT_OK", "EXIT_PARTIAL", "main"]
