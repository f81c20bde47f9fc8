"""Runs one step of a campaign's run in a process of its own, for
``test_run_steps_hostile.py``, with ways to misbehave.

Usage::

    python hostile_step_worker.py CONFIG open LOGICAL_DATE
    python hostile_step_worker.py CONFIG reopen RUN_ID
    python hostile_step_worker.py CONFIG plan RUN_ID CHANNEL
    python hostile_step_worker.py CONFIG send RUN_ID CHANNEL [N/M] [--limit N]
    python hostile_step_worker.py CONFIG finish RUN_ID

The environment may ask it to misbehave:

* ``HOSTILE_CRASH=CHANNEL``: rendering that channel's messages raises (an unexpected
  error inside the send, after the first message), its text carrying the channel's
  token (``HOSTILE_TOKEN_VAR`` names the variable);
* ``HOSTILE_DIE=1``: the process SIGKILLs itself once the step is done, before it
  lets the run go (its claim stays in the ledger, its owner dead).

The last stdout line is the step's result as JSON; a step that raised prints
``{"raised": "<type>", "message": "<text>"}`` and exits 3.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from datetime import datetime
from typing import Any

from campaignkit import Pipeline, Slice, get_plugin_manager
from campaignkit._engine import _render
from campaignkit._ledger import SqliteLedger


def misbehave() -> None:
    crash = os.environ.get("HOSTILE_CRASH")
    if crash:
        token = os.environ[os.environ["HOSTILE_TOKEN_VAR"]]
        original = _render.Renderer.render
        calls = {"n": 0}

        def render(self: _render.Renderer, *args: Any, **kwargs: Any) -> Any:
            if self.name == crash:
                calls["n"] += 1
                if calls["n"] > 1:
                    raise RuntimeError(f"renderer blew up near {token}")
            return original(self, *args, **kwargs)

        _render.Renderer.render = render  # type: ignore[method-assign]
    if os.environ.get("HOSTILE_DIE"):
        original_close = SqliteLedger.close

        def close(self: SqliteLedger) -> None:
            if self._owners:  # the step is done and the run still claimed: die now
                self._writer.submit(lambda conn: None, wait=True)
                os.kill(os.getpid(), signal.SIGKILL)
            original_close(self)

        SqliteLedger.close = close  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    config, command, *rest = argv
    limit = None
    if "--limit" in rest:
        at = rest.index("--limit")
        limit = int(rest[at + 1])
        del rest[at : at + 2]
    misbehave()
    pipeline = Pipeline.from_file(config, plugins=get_plugin_manager(load_entrypoints=False))
    out: dict[str, Any]
    try:
        if command == "open":
            opened = pipeline.open_run(logical_date=datetime.fromisoformat(rest[0]))
            out = {
                "run_id": opened.run_id,
                "resumed": opened.resumed,
                "replay": opened.replay is not None,
            }
        elif command == "reopen":
            opened = pipeline.reopen_run(rest[0])
            out = {"run_id": opened.run_id, "replay": opened.replay is not None}
        elif command == "plan":
            counts = pipeline.plan_channel(rest[0], rest[1])
            out = {"states": dict(counts.states), "eligible": counts.eligible}
        elif command == "send":
            part = Slice.parse(rest[2]) if len(rest) > 2 else None
            result = pipeline.send_slice(rest[0], rest[1], part, limit=limit)
            out = {"sent": result.sent, "pending": result.pending, "stopped": result.stopped}
        elif command == "finish":
            report = pipeline.finish_run(rest[0])
            out = {"status": str(report.status), "report": report.to_dict()}
        else:
            raise SystemExit(f"unknown command {command!r}")
    except Exception as exc:
        print(json.dumps({"raised": type(exc).__name__, "message": str(exc)}), flush=True)
        return 3
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
