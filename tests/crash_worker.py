"""Runs one campaign attempt for ``test_crash_resume.py``, in a process the test kills.

Usage::

    python crash_worker.py CONFIG LOGICAL_DATE run
    python crash_worker.py CONFIG LOGICAL_DATE resume RUN_ID [--resend-unknown]

``run`` runs the logical date (which resumes an unfinished run of it, or returns the
stored report of a finished one); ``resume`` resumes ``RUN_ID`` explicitly. Provider
tokens come from the environment, as in production. On completion the last stdout
line is a JSON summary: ``run_id``, ``status`` and per channel the ledger totals.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime

from campaignkit import Pipeline, get_plugin_manager


def main(argv: list[str]) -> int:
    config, logical_date, command, *rest = argv
    pipeline = Pipeline.from_file(config, plugins=get_plugin_manager(load_entrypoints=False))
    if command == "run":
        report = pipeline.run(logical_date=datetime.fromisoformat(logical_date))
    elif command == "resume":
        report = pipeline.resume(rest[0], resend_unknown="--resend-unknown" in rest)
    else:
        raise SystemExit(f"unknown command {command!r}")
    summary = {
        "run_id": report.run_id,
        "status": str(report.status),
        "channels": {
            name: {
                "sent": r.sent,
                "failed": r.failed,
                "skipped": r.skipped,
                "pending": r.pending,
                "unknown": r.unknown,
                "stopped": r.stopped,
            }
            for name, r in report.channels.items()
        },
        "errors": dict(report.errors),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
