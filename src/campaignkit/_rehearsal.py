"""Rehearsals: runs against the campaignkit provider sandbox keep their own state.

A rehearsal must never count as the real run of a logical date (the real run would
then send nothing), nor leave the fake providers' "stop" answers in the real
suppression list, nor share run directories with real runs. So a rehearsal records
into its own ledger, ``ledger.sandbox.db`` beside the real one (its runs, deliveries,
suppression list and frequency-cap history), and writes its run directories and
plans under ``<output dir>/sandbox/``.

A :class:`~campaignkit.Pipeline` is a rehearsal when it is built with
``rehearsal=True`` (what ``Sandbox.pipeline()`` and ``--sandbox`` do), from a
configuration ``Sandbox.apply()`` returned, or, by default, when one of its enabled
channels points at a sandbox server started in this process. The sandbox servers
register their ports here while they run.
"""

from __future__ import annotations

import collections
import importlib
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import urlsplit

import attrs

from ._config import Channel, Execution, PipelineConfig
from .exceptions import ConfigError

__all__ = [
    "SANDBOX_DIR",
    "SANDBOX_VARIABLE",
    "in_shared_sandbox",
    "is_rehearsal",
    "rehearsal_config",
    "rehearsal_execution",
    "rehearsal_output_root",
    "sandbox_channels",
    "sandbox_switch",
    "shared_sandbox",
]

#: the environment variable that makes every campaign built from a configuration a
#: rehearsal against the process's own sandbox (``CAMPAIGNKIT_SANDBOX=1``)
SANDBOX_VARIABLE = "CAMPAIGNKIT_SANDBOX"
_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"", "0", "false", "no", "off"})
#: the folder of a rehearsal's run directories and plans, inside the output directory
SANDBOX_DIR = "sandbox"
#: the suffix marking a rehearsal's ledger: ``ledger.db`` -> ``ledger.sandbox.db``
_LEDGER_MARK = ".sandbox"

#: the host names of the sandbox servers' address (they listen on 127.0.0.1 only)
_SANDBOX_HOSTS = frozenset({"127.0.0.1", "localhost"})
_lock = threading.Lock()
_live_ports: collections.Counter[int] = collections.Counter()


def sandbox_switch(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``CAMPAIGNKIT_SANDBOX`` (in ``environ``, default ``os.environ``) asks
    for the sandbox: ``1``, ``true``, ``yes`` or ``on`` (any case).

    Raises:
        ConfigError: another value (a typo must not send for real).
    """
    value = (os.environ if environ is None else environ).get(SANDBOX_VARIABLE, "")
    word = value.strip().lower()
    if word in _ON or word in _OFF:
        return word in _ON
    raise ConfigError(
        f"{SANDBOX_VARIABLE}={value[:20]!r} is neither on (1, true, yes, on) nor off "
        "(0, false, no, off, empty)",
        path=SANDBOX_VARIABLE,
    )


def shared_sandbox() -> Any:
    """The process's own sandbox (:func:`campaignkit.testing.sandbox.shared_sandbox`),
    looked up by name: the sandbox package builds pipelines, so it is imported only
    when a run asks for it."""
    module = importlib.import_module("campaignkit.testing.sandbox")
    return module.shared_sandbox()


def is_rehearsal(execution: Execution) -> bool:
    """Whether ``execution`` records into a rehearsal's ledger (``*.sandbox.db``)."""
    return _LEDGER_MARK in PurePath(execution.state_path).suffixes


def rehearsal_execution(execution: Execution) -> Execution:
    """``execution`` recording into the rehearsal's own state: the ledger
    ``.campaignkit/ledger.db`` becomes ``.campaignkit/ledger.sandbox.db`` and run
    directories go to ``<output_dir>/sandbox/``. Idempotent."""
    if is_rehearsal(execution):
        return execution
    state = PurePath(execution.state_path)
    return attrs.evolve(
        execution,
        state_path=str(state.with_name(f"{state.stem}{_LEDGER_MARK}{state.suffix}")),
        output_dir=str(PurePath(execution.output_dir) / SANDBOX_DIR),
    )


def rehearsal_config(config: PipelineConfig) -> PipelineConfig:
    """``config`` with :func:`rehearsal_execution` applied (channels untouched)."""
    return attrs.evolve(config, execution=rehearsal_execution(config.execution))


def rehearsal_output_root(root: Path) -> Path:
    """Where a rehearsal writes what a real run would write to ``root``:
    ``<root>/sandbox`` (``root`` itself when it is already a ``sandbox`` folder)."""
    return root if root.name == SANDBOX_DIR else root / SANDBOX_DIR


# -- live sandbox servers ----------------------------------------------------------------


def sandbox_started(port: int) -> None:
    """A sandbox server listens on 127.0.0.1:``port`` (called by the servers)."""
    with _lock:
        _live_ports[port] += 1


def sandbox_stopped(port: int) -> None:
    """The sandbox server on ``port`` stopped (called by the servers)."""
    with _lock:
        _live_ports[port] -= 1
        if _live_ports[port] <= 0:
            del _live_ports[port]


def _endpoint(options: Mapping[str, Any]) -> tuple[str, int] | None:
    """The (host, port) a channel's options send to, if they say (``base_url``, a
    plugin channel's ``url``, or ``host`` and ``port``)."""
    base_url = options.get("base_url") or options.get("url")
    if isinstance(base_url, str) and base_url:
        try:
            parts = urlsplit(base_url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return None
        return (parts.hostname or "", port)
    host, smtp_port = options.get("host"), options.get("port")
    if isinstance(host, str) and isinstance(smtp_port, int) and not isinstance(smtp_port, bool):
        return (host.strip("[]").lower(), smtp_port)
    return None


def sandbox_channels(channels: Iterable[Channel]) -> list[str]:
    """Names of the enabled channels whose options point at a sandbox server running
    in this process."""
    with _lock:
        live = set(_live_ports)
    if not live:
        return []
    names = []
    for channel in channels:
        if not channel.enabled:
            continue
        endpoint = _endpoint(channel.options)
        if endpoint is None:
            continue
        host, port = endpoint
        if port in live and host in _SANDBOX_HOSTS:
            names.append(channel.name)
    return names


def in_shared_sandbox(
    config: PipelineConfig, kwargs: dict[str, Any]
) -> tuple[PipelineConfig, dict[str, Any]]:
    """``config`` and a :class:`Pipeline` constructor's keyword arguments pointed at
    the process's :func:`shared_sandbox` (``CAMPAIGNKIT_SANDBOX=1``): its servers, its
    tokens over ``env`` (default ``os.environ``), and a rehearsal."""
    sandbox = shared_sandbox()
    applied = sandbox.apply(config)
    env = kwargs.get("env")
    environ = dict(os.environ if env is None else env)
    return applied, {**kwargs, "env": {**environ, **sandbox.env(applied)}, "rehearsal": True}
