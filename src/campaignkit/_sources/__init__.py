"""Built-in segment sources: :class:`CsvSource` and :class:`JsonLinesSource`.

Both stream their file (one record in memory at a time), report every row-level
problem as a :class:`~campaignkit.RejectedRow` with the physical line where the
record starts, and raise :class:`~campaignkit.SourceError` for file-level problems.
They register as source types ``csv`` and ``jsonl`` through
``campaignkit_register_sources``.

The modules, by responsibility:

- :mod:`._file`: :class:`FileSource`, what both share (options, opening, locating
  errors), and the :class:`Layout` of the columns resolved against a header;
- :mod:`._csv` and :mod:`._jsonl`: the two sources; :mod:`._csv_rows`, the per-row
  loop of a CSV read and the checks that name a rejected record's problem;
- :mod:`._rows`: what a record becomes: reason codes, strict consent parsing, the
  compiled dict builders of the per-row loops;
- :mod:`._lines`: :class:`SourceLines`, how a read accounts for every physical line;
- :mod:`._options`: the ``[source]`` table of ``from_config``.
"""

from __future__ import annotations

from collections.abc import Callable

from .._source import SourceFactory
from ..hookspecs import hookimpl
from ._csv import CsvSource
from ._jsonl import JsonLinesSource
from ._lines import SourceLines
from ._options import CsvOptions, JsonLinesOptions
from ._rows import BAD_CONSENT_VALUE as BAD_CONSENT_VALUE
from ._rows import EMPTY_REQUIRED_FIELD as EMPTY_REQUIRED_FIELD
from ._rows import MALFORMED_ROW as MALFORMED_ROW
from ._rows import MULTILINE_FIELD as MULTILINE_FIELD
from ._rows import parse_consent

__all__ = ["CsvSource", "JsonLinesSource", "SourceLines", "parse_consent"]

#: The names the option classes had in the single module ``_sources.py``.
_CsvOptions = CsvOptions
_JsonLinesOptions = JsonLinesOptions


# -- registration -----------------------------------------------------------------------------


@hookimpl
def campaignkit_register_sources(register: Callable[[SourceFactory], None]) -> None:
    """Register the built-in ``csv`` and ``jsonl`` source types."""
    register(CsvSource)
    register(JsonLinesSource)
