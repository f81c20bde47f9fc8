"""Checking a campaign file without sending: every problem at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from .._config import check_config
from ..exceptions import CampaignKitError
from ._checks import ordered, problems_of
from ._pipeline import Pipeline
from ._values import CampaignCheck

__all__ = ["check_campaign"]


def check_campaign(
    path: str | Path,
    *,
    rows: bool = False,
    examples: int = 20,
    **kwargs: Any,
) -> CampaignCheck:
    """Check a campaign file without sending, and report every problem at once.

    Every check runs whatever the others found: the file's schema (every unknown key,
    with a suggestion for a near miss, wrong type and bad value), then, on what could
    be structured, every enabled channel's provider, options and token, every
    template part of every channel, the content rules and the segment's header (see
    :meth:`Pipeline.problems`). A file that is not TOML is one problem.

    Args:
        rows: also read the whole segment as a run would (:meth:`Pipeline.check_rows`)
            when it can be read.
        examples: with ``rows``, rejected rows (and invalid addresses) listed at most.
        kwargs: passed to :class:`Pipeline` (``plugins``, ``env``).
    """
    checked = check_config(path)
    problems = list(checked.problems)
    if checked.config is None:
        return CampaignCheck(ordered(problems))
    pipeline = Pipeline.from_config(checked.config, **kwargs)
    shown = str(path)
    for problem in pipeline.problems():
        if problem.file == pipeline.config_file:
            problem = attrs.evolve(problem, file=shown)
        problems.append(problem)
    row_check = None
    if rows and not any(p.group == "source" for p in problems):
        try:
            row_check = pipeline.check_rows(examples=examples)
        except CampaignKitError as exc:
            problems.extend(problems_of(exc, "source"))
    summary = None
    if not problems:
        summary = pipeline.summary()
    return CampaignCheck(ordered(problems), summary, row_check)
