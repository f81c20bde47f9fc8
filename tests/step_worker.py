"""Runs one step of a campaign's run, in a process of its own, for ``test_run_steps.py``.

Usage::

    python step_worker.py CONFIG open LOGICAL_DATE
    python step_worker.py CONFIG plan RUN_ID CHANNEL
    python step_worker.py CONFIG send RUN_ID CHANNEL [N/M]
    python step_worker.py CONFIG finish RUN_ID

Only the configuration file and references (run id, channel, slice) cross from one
step to the next. The last stdout line is the step's result as JSON.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from typing import Any

from campaignkit import Pipeline, Slice, get_plugin_manager


def main(argv: list[str]) -> int:
    config, command, *rest = argv
    pipeline = Pipeline.from_file(config, plugins=get_plugin_manager(load_entrypoints=False))
    out: dict[str, Any]
    if command == "open":
        opened = pipeline.open_run(logical_date=datetime.fromisoformat(rest[0]))
        out = {"run_id": opened.run_id, "resumed": opened.resumed}
    elif command == "plan":
        counts = pipeline.plan_channel(rest[0], rest[1])
        out = {"states": dict(counts.states), "eligible": counts.eligible}
    elif command == "send":
        part = Slice.parse(rest[2]) if len(rest) > 2 else None
        result = pipeline.send_slice(rest[0], rest[1], part)
        out = {"sent": result.sent, "pending": result.pending}
    elif command == "finish":
        report = pipeline.finish_run(rest[0])
        out = {"status": str(report.status), "report": report.to_dict()}
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
