"""What the ledger raises."""

from __future__ import annotations

from ..exceptions import CampaignKitError

__all__ = [
    "LedgerError",
    "MaxActiveRunsReached",
    "RunInProgress",
    "RunOwnershipLost",
]


class LedgerError(CampaignKitError):
    """The ledger cannot be opened or used (corrupt file, newer schema, unknown run)."""


class MaxActiveRunsReached(LedgerError):
    """Starting a run would exceed the pipeline's ``max_active_runs``."""


class RunInProgress(LedgerError):
    """Another live process owns the run (it is sending it now); nothing was done."""


class RunOwnershipLost(LedgerError):
    """This process no longer owns the run it was sending: it stops without recording."""
