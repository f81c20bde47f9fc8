"""The seed's multi-channel campaign as a Dagster code location.

Load it with ``dagster dev -f examples/dagster/definitions.py`` (or point a
``workspace.yaml`` / ``[tool.dagster]`` at it): the assets ``customer_segment_records``,
``email_campaign_results``, ``sms_campaign_results``, ``push_notification_results`` and
``campaign_run_report``, daily partitions from 2024-01-01, the job
``multi_channel_marketing_campaign`` and its schedule. With ``CAMPAIGNKIT_SANDBOX=1`` in
the environment every message goes to the in-process loopback sandbox instead, and
``RETRY_DELAY_SECONDS`` shortens the campaign's 5 minutes between retries for a rehearsal.
"""

import os
from datetime import timedelta
from pathlib import Path

from campaignkit.integrations.dagster import definitions

CAMPAIGN = Path(__file__).resolve().parent.parent / "multi_channel_campaign" / "campaign.toml"
DELAY = os.environ.get("RETRY_DELAY_SECONDS")

defs = definitions(
    str(CAMPAIGN), retry_delay=None if DELAY is None else timedelta(seconds=float(DELAY))
)
