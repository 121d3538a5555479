"""Base types shared by every config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ColumnMap(_Strict):
    """Which source columns hold what. `messages` wins over input/output when set."""

    input: str | None = None
    output: str | None = None
    system: str | None = None
    messages: str | None = None
