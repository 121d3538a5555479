"""Row filters for synthetic data: near-duplicate detection (the data stage's MinHash) and output format checks."""

from __future__ import annotations

import json
import re
from typing import Any

from slmkit.errors import SlmError

NUM_PERM = 128
SHINGLE = 5  # character 5-grams: robust to small rewordings of short prompts


def near_dups(threshold: float):
    """The data stage's MinHash near-dedup over character 5-grams: `check(texts)` is None for each new text (then
    remembered), else says which earlier one it repeats; `add(texts)` remembers texts unchecked (seeds)."""
    from slmkit.data import NearDedup

    return NearDedup(threshold, NUM_PERM, SHINGLE, seed=1, shingle="chars")


class FormatCheck:
    """An output passes when it fully matches `regex`, validates as the pydantic model `model`
    ('package.module:Class', JSON text), and/or parses as JSON valid under `schema` (JSON Schema)."""

    def __init__(self, regex: str | None, schema: dict | None, where: str, model: str | None = None):
        self.model = _import_model(model, where) if model else None
        self.pattern = None
        if regex is not None:
            try:
                self.pattern = re.compile(regex, re.DOTALL)
            except re.error as e:
                raise SlmError(
                    f"{where}.output_regex is not a valid regular expression ({e})", "fix the pattern"
                ) from None
        self.validator = None
        if schema is not None:
            try:
                import jsonschema
            except ImportError:
                raise SlmError(
                    f"{where}.output_schema needs the jsonschema package", "pip install jsonschema"
                ) from None
            try:
                cls = jsonschema.validators.validator_for(schema)
                cls.check_schema(schema)
            except jsonschema.SchemaError as e:
                raise SlmError(
                    f"{where}.output_schema is not a valid JSON Schema ({e.message})", "fix the schema"
                ) from None
            self.validator = cls(schema)

    def hint(self) -> str | None:
        parts = []
        if self.pattern is not None:
            parts.append(f"Each output must fully match the regular expression: {self.pattern.pattern}")
        if self.validator is not None:
            parts.append(
                "Each output must be a JSON value (as a string) valid under this JSON Schema: "
                + json.dumps(self.validator.schema)
            )
        if self.model is not None:
            parts.append(
                "Each output must be JSON (as a string) valid under this JSON Schema: "
                + json.dumps(self.model.model_json_schema())
            )
        return "\n".join(parts) or None

    def ok(self, output: str) -> bool:
        if self.pattern is not None and not self.pattern.fullmatch(output.strip()):
            return False
        if self.model is not None:
            from pydantic import ValidationError

            try:
                self.model.model_validate_json(output)
            except ValidationError:
                return False
        if self.validator is not None:
            try:
                value: Any = json.loads(output)
            except json.JSONDecodeError:
                return False
            return self.validator.is_valid(value)
        return True


def _import_model(spec: str, where: str):
    """'package.module:Class' -> the pydantic model class."""
    import importlib

    from pydantic import BaseModel

    mod_name, _, cls_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError, ValueError) as e:
        raise SlmError(
            f"{where}.output_model {spec!r} cannot be imported ({e})",
            "use 'package.module:ClassName' of a pydantic model importable from this environment",
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        raise SlmError(
            f"{where}.output_model {spec!r} is not a pydantic model class", "point it at a BaseModel subclass"
        )
    return cls
