"""Fault injection settings for a sandbox provider server: :class:`Faults`."""

from __future__ import annotations

import collections
import random
from typing import Any

import attrs

__all__ = ["MAX_FAULT_SECONDS", "Faults"]


#: The longest delay a fault may ask for: a day (``time.sleep`` overflows far above).
MAX_FAULT_SECONDS = 86400.0


def _number(attribute: attrs.Attribute[Any], value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Faults.{attribute.name} must be a number, got {value!r}")
    return float(value)


def _probability(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not 0.0 <= _number(attribute, value) <= 1.0:  # NaN fails too
        raise ValueError(f"Faults.{attribute.name} must be between 0 and 1, got {value!r}")


def _seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not 0.0 <= _number(attribute, value) <= MAX_FAULT_SECONDS:
        raise ValueError(
            f"Faults.{attribute.name} must be between 0 and {MAX_FAULT_SECONDS:g} seconds, "
            f"got {value!r}"
        )


def _optional_positive(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not 0.0 < _number(attribute, value) < float("inf"):
        raise ValueError(f"Faults.{attribute.name} must be a positive number, got {value!r}")


def _http_error(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise ValueError(f"Faults.{attribute.name} must be an HTTP error status, got {value!r}")


@attrs.define
class Faults:
    """Fault injection for a sandbox server; change fields at any time.

    Attributes:
        rate_limit: requests per second (sliding one-second window) above which
            the server answers the provider's 429 with ``Retry-After``.
        retry_after: seconds announced in ``Retry-After`` when rate limiting.
        error_rate: probability that a request gets a 5xx instead of being processed.
        error_status: the 5xx status used for ``error_rate`` and scripted errors.
        latency: seconds added before every answer.
        stall_rate: probability that the server waits ``stall_seconds`` before
            answering (longer than the client timeout, to provoke timeouts).
        stall_seconds: see ``stall_rate``.
        drop_rate: probability that the connection is closed without an answer
            (after reading the request, without processing it).
        late_rate: probability that the request is processed (the message is
            accepted and recorded) and the answer then held back ``stall_seconds``
            (past the client timeout: the client cannot know it was accepted).
        lost_rate: probability that the request is processed and the connection then
            closed without an answer.
        script: faults for the next requests, consumed in order: an HTTP status
            (``429``, ``500``, ``503``...), ``"drop"``, ``"stall"`` (before
            processing), ``"late"``, ``"lost"`` (after processing: see
            ``late_rate`` and ``lost_rate``), or ``"pass"`` (answer normally).
        lookups: whether ``GET`` requests (lookups, such as Twilio's message list)
            get faults too; by default they are answered normally and consume no
            scripted fault.
        seed: seed for the random draws, for reproducible runs.
        echo_credentials: error replies (4xx and 5xx) echo the request's
            ``Authorization`` header in their error text, as some servers and
            proxies do, to check that credentials never reach a ledger or report.
    """

    rate_limit: float | None = attrs.field(default=None, validator=_optional_positive)
    retry_after: float = attrs.field(default=1.0, validator=_seconds)
    error_rate: float = attrs.field(default=0.0, validator=_probability)
    error_status: int = attrs.field(default=503, validator=_http_error)
    latency: float = attrs.field(default=0.0, validator=_seconds)
    stall_rate: float = attrs.field(default=0.0, validator=_probability)
    stall_seconds: float = attrs.field(default=5.0, validator=_seconds)
    drop_rate: float = attrs.field(default=0.0, validator=_probability)
    late_rate: float = attrs.field(default=0.0, validator=_probability)
    lost_rate: float = attrs.field(default=0.0, validator=_probability)
    lookups: bool = False
    script: collections.deque[int | str] = attrs.field(factory=collections.deque)
    seed: int | None = None
    echo_credentials: bool = False
    _rng: random.Random = attrs.field(init=False, factory=random.Random)

    def __attrs_post_init__(self) -> None:
        self._rng.seed(self.seed)

    def fail_next(self, *faults: int | str) -> None:
        """Queue faults for the next requests, e.g. ``fail_next(503, "drop")``."""
        self.script.extend(faults)

    def draw(self) -> float:
        return self._rng.random()
