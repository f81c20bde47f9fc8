"""Campaign configuration: attrs classes, TOML loading, errors with key paths.

Modules by responsibility:

- :mod:`._structure`: structuring an option table into an attrs class
  (:func:`collect_options`, :func:`structure_options`), every problem named by its
  key path, unknown keys with a suggestion (:func:`did_you_mean`);
- :mod:`._validators`: the field validators of the schema;
- :mod:`._schema`: the schema's classes (:class:`PipelineConfig`, :class:`Channel` ...);
- :mod:`._loader`: a campaign file read, structured table by table, and checked
  (:func:`load_config`, :func:`check_config`);
- :mod:`._key_lines`: where each key of a TOML document is written, so that
  problems carry their line.
"""

from __future__ import annotations

from ._key_lines import key_lines, line_of
from ._loader import ConfigCheck, check_config, check_config_data, load_config, parse_config
from ._schema import (
    DEFAULT_RESULT_KEYS,
    Channel,
    Execution,
    FrequencyCap,
    PipelineConfig,
    QuietHoursConfig,
    ReceiptsConfig,
    RetryPolicy,
    Schedule,
    SourceConfig,
    Template,
)
from ._structure import collect_options, did_you_mean, structure_options, unknown_key
from ._validators import ENV_NAME, ROWS_PER_CUSTOMER

__all__ = [
    "DEFAULT_RESULT_KEYS",
    "ENV_NAME",
    "ROWS_PER_CUSTOMER",
    "Channel",
    "ConfigCheck",
    "Execution",
    "FrequencyCap",
    "PipelineConfig",
    "QuietHoursConfig",
    "ReceiptsConfig",
    "RetryPolicy",
    "Schedule",
    "SourceConfig",
    "Template",
    "check_config",
    "check_config_data",
    "collect_options",
    "did_you_mean",
    "key_lines",
    "line_of",
    "load_config",
    "parse_config",
    "structure_options",
    "unknown_key",
]
