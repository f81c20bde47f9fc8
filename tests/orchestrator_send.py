"""One orchestrator send task in a process of its own, for ``test_orchestrator_hostile.py``
(which kills it mid-shard).

Usage::

    python orchestrator_send.py CAMPAIGN RUN_ID CHANNEL SHARD SHARDS
    python orchestrator_send.py CAMPAIGN open LOGICAL_DATE

The last stdout line is the task's return value as JSON.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

from campaignkit.integrations import tasks


def main(argv: list[str]) -> int:
    if argv[1] == "open":
        done = tasks.open_run(argv[0], datetime.fromisoformat(argv[2]))
        print(json.dumps(done), flush=True)
        return 0
    campaign, run_id, channel, shard, shards = argv
    done = tasks.send_shard(campaign, run_id, channel, int(shard), int(shards))
    print(json.dumps(done), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
