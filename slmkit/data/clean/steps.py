"""User cleaning steps: Python functions registered by name, named in YAML, run over each batch of records.

from slmkit.data import register_step

@register_step("strip_signature")
def strip_signature(record, marker="--"):
    ...            # edit record["messages"] / record["text"]; return the record, or None to drop it

# build.yaml
data:
  clean:
    imports: [my_steps.py]          # or a module name on sys.path
    steps: [{name: strip_signature, params: {marker: "--"}}]
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slmkit.errors import SlmError

Step = Callable[..., "dict[str, Any] | None"]
_STEPS: dict[str, Step] = {}


def register_step(name: str | None = None) -> Callable[[Step], Step]:
    """Decorator: make `fn(record, **params) -> record | None` available as data.clean.steps[].name."""

    def deco(fn: Step) -> Step:
        key = name or fn.__name__
        old = _STEPS.get(key)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise SlmError(
                f"a data step named {key!r} is already registered ({_STEPS[key].__module__})",
                "pick another name in @register_step(...)",
            )
        _STEPS[key] = fn
        return fn

    return deco


def registered() -> list[str]:
    return sorted(_STEPS)


def get_step(name: str) -> Step:
    if name not in _STEPS:
        raise SlmError(
            f"data.clean.steps: no step named {name!r} (registered: {', '.join(registered()) or 'none'})",
            "decorate the function with @register_step and list its module in data.clean.imports",
        )
    return _STEPS[name]


def import_steps(imports: list[str], base_dir: str | None = None) -> None:
    """Import modules (dotted names) or .py files (relative to the config folder) so their steps register."""
    for item in imports:
        if item.endswith(".py"):
            path = Path(item).expanduser()
            path = path if path.is_absolute() else Path(base_dir or ".") / path
            if not path.is_file():
                raise SlmError(f"data.clean.imports: file not found: {path}", "paths are relative to the config file")
            mod_name = f"slmkit_user_steps_{path.stem}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            try:
                importlib.import_module(item)
            except ImportError as e:
                raise SlmError(
                    f"data.clean.imports: cannot import {item!r} ({e})",
                    "use an importable module name or a path to a .py file",
                ) from None


def run_step(fn: Step, step: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One configured step over a batch of records; a record it returns None for is dropped."""
    kept = []
    for rec in records:
        try:
            out = fn(rec, **step.params)
        except TypeError as e:
            raise SlmError(
                f"data step {step.name!r} failed on {rec['meta'].get('source')}: {e}",
                "check data.clean.steps[].params against the function's arguments",
            ) from None
        if out is not None:
            out["meta"].setdefault("transformations", []).append(step.name)
            kept.append(out)
    return kept
