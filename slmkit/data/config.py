"""Data stage config helpers; the models live in slmkit.schema.data (attached to DataConfig)."""

from __future__ import annotations

from typing import Any

from slmkit.schema.data import *  # noqa: F403 (the data stage's models, re-exported)
from slmkit.schema.data import ChunkConfig, CleanConfig, FetchConfig, LimitsConfig

DEFAULTS: dict[str, Any] = {"sources": list, "clean": CleanConfig, "chunk": ChunkConfig, "fetch": FetchConfig,
                            "limits": LimitsConfig}


def data_section(data: Any, name: str) -> Any:
    """`data.<name>` when DataConfig has it, else the default of this module."""
    value = getattr(data, name, None)
    return DEFAULTS[name]() if value is None else value
