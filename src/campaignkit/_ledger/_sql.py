"""Building the ledger's SQL: statements from constant fragments, values bound."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

__all__: list[str] = []

PAGE = 2000  # rows per read transaction when streaming
IN_MAX = 512  # values per ``seq IN (...)`` list (older SQLite allows 999 parameters)
MARKS = {1 << k: ", ".join("?" * (1 << k)) for k in range(IN_MAX.bit_length())}


def seq_lists(seqs: Sequence[int]) -> Iterator[tuple[str, list[int]]]:
    """``seqs`` in lists of at most ``IN_MAX``, as ``(placeholders, values)`` for a
    ``seq IN (placeholders)`` clause. A list is padded to a power of two by repeating
    its last value (harmless in an ``IN``), so that a handful of statements are
    prepared and then reused from the connection's statement cache."""
    for i in range(0, len(seqs), IN_MAX):
        part = list(seqs[i : i + IN_MAX])
        size = 1 << (len(part) - 1).bit_length()
        part.extend([part[-1]] * (size - len(part)))
        yield MARKS[size], part
