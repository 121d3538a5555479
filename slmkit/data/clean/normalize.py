"""Text normalisation: a Unicode normal form, control and zero-width characters removed, white space collapsed."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from slmkit.config.data import NormalizeConfig

from ..records import map_texts, mark

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")
_BLANKS = re.compile(r"\n{3,}")


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    """Unicode normal form, control/zero-width characters removed, runs of spaces and blank lines collapsed."""
    text = unicodedata.normalize(cfg.form, text)
    if cfg.strip_control:
        text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if cfg.collapse_whitespace:
        text = _BLANKS.sub("\n\n", "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n")))
    return text.strip()


def normalize_batch(records: list[dict[str, Any]], cfg: NormalizeConfig) -> int:
    """Normalise every text in place; returns how many records changed."""
    changed = 0
    for rec in records:
        if map_texts(rec, lambda t: normalize_text(t, cfg)):
            changed += 1
            mark(rec, "normalize")
    return changed
