"""The multi-channel marketing campaign as an Airflow 3 DAG.

The campaign is ``examples/multi_channel_campaign/campaign.toml`` (found relative to
this file): a customer segment from a CSV file, then e-mail (SendGrid), SMS (Twilio) and
push (Expo) in parallel, ``@daily`` from 2024-01-01 without catch-up, 2 retries 5 minutes
apart. Rehearse it end to end against campaignkit's loopback sandbox, with no token and
nothing leaving the machine::

    CAMPAIGNKIT_SANDBOX=1 airflow dags test multi_channel_marketing_campaign 2024-01-02

Importing this file reads the campaign's configuration and nothing else.
"""

from pathlib import Path

from campaignkit.integrations.airflow import to_dag

CAMPAIGN = Path(__file__).resolve().parents[2] / "multi_channel_campaign" / "campaign.toml"

dag = to_dag(str(CAMPAIGN))
