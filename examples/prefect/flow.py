"""The seed's multi-channel campaign as a Prefect flow (``pip install 'campaignkit[prefect]'``).

Rehearse it end to end against the loopback sandbox (no token, nothing leaves the
machine), one run in this process, for the logical date 2024-01-02::

    CAMPAIGNKIT_SANDBOX=1 python examples/prefect/flow.py --once 2024-01-02

Serve it on its schedule (``@daily``, UTC; at most one run at a time) from this process,
against the Prefect server of ``PREFECT_API_URL``::

    python examples/prefect/flow.py

or register it for a work pool's workers (see docs/prefect.md)::

    python examples/prefect/flow.py --work-pool campaigns
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from prefect import serve

from campaignkit.integrations.prefect import campaign_deployment, campaign_flow

#: The campaign: a path (read again by every flow run, on whichever worker runs it).
CAMPAIGN = str(Path(__file__).resolve().parent.parent / "multi_channel_campaign" / "campaign.toml")

#: The flow, at module level: a deployment's workers load it from here by name.
flow = campaign_flow(CAMPAIGN)


def main() -> None:
    """Run once, serve, or register the deployment, as the command line says."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", metavar="DATE", help="run the logical date DATE now, here")
    parser.add_argument("--work-pool", help="register the deployment for this work pool")
    args = parser.parse_args()
    if args.once:
        date = datetime.fromisoformat(args.once).replace(tzinfo=UTC)
        print(flow(logical_date=date)["run"])
        return
    deployment = campaign_deployment(CAMPAIGN, entrypoint=f"{Path(__file__).resolve()}:flow")
    if args.work_pool:
        deployment.work_pool_name = args.work_pool
        print("deployment", deployment.apply())
    else:
        serve(deployment)


if __name__ == "__main__":
    main()
