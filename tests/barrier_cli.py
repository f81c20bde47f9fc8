"""Runs ``campaignkit ARGS...`` at a given instant, for ``test_claims.py``.

Usage::

    python barrier_cli.py START_AT ARGS...

The interpreter starts and imports the CLI first; then the process sleeps until
``START_AT`` (``time.time()`` seconds), so that several processes started by the test
enter the same command at the same instant. Exits as the command does.
"""

from __future__ import annotations

import sys
import time

from campaignkit.cli import main

if __name__ == "__main__":
    start = float(sys.argv[1])
    time.sleep(max(0.0, start - time.time()))
    main(sys.argv[2:], prog_name="campaignkit")
