"""The segment source contract."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ._models import Recipient, RejectedRow

__all__ = ["MODEL_FIELDS", "Source", "SourceFactory"]

#: Recipient fields a source maps columns onto; every other column is an attribute.
MODEL_FIELDS = ("id", "email", "phone", "push_token")


@runtime_checkable
class Source(Protocol):
    """Where a segment comes from.

    A source is re-iterable and streams: :meth:`records` reads the data afresh on
    every call and never holds the whole segment in memory.

    Extraction rejects a recipient holding a control character where it may not (any
    in the id, addresses and the channels' address fields; other than tab and line
    breaks in other attributes) as a ``control_character`` row, whatever the source.
    A source that already does so per row may set the class attribute
    ``rejects_control_characters = True`` to skip that second look (the built-in CSV
    and JSON Lines sources do).
    """

    def fields(self) -> frozenset[str]:
        """Names available to templates and rules: model fields plus attribute columns.

        Reads only what it must (a CSV header).

        Raises:
            SourceError: the data cannot be opened or has no usable header.
        """
        ...

    def records(self, required: Collection[str] = ()) -> Iterator[Recipient | RejectedRow]:
        """Stream the segment, one :class:`Recipient` or :class:`RejectedRow` per row.

        Args:
            required: model fields whose column must exist (``email`` when an email
                channel is enabled); a missing one is a file-level error.

        Raises:
            SourceError: a file-level problem (missing file, undecodable bytes,
                missing required column, unterminated quote, empty file, no rows),
                naming file, line and column. It may be raised after some records
                were yielded, so callers must consume the whole stream before acting.
        """
        ...

    def describe(self) -> str:
        """A short description for reports (``customer_segments.csv``)."""
        ...


class SourceFactory(Protocol):
    """What ``campaignkit_register_sources`` registers: a class with a name and a
    constructor from the ``[source]`` table of a campaign file."""

    @property
    def name(self) -> str:
        """What a campaign sets as ``[source] type``."""
        ...

    def from_config(self, options: Mapping[str, Any], *, base_dir: Path) -> Source:
        """Build the source (a class method on the registered class); raise
        :class:`~campaignkit.ConfigError` on bad options."""
        ...
