"""PII and secret detection with checksums where the format has one (Luhn, IBAN mod-97, IP parsing).

`find_pii(text)` returns non-overlapping spans; `redact(text)` replaces them with `[TYPE]`; `pii_batch` redacts
(or drops, or only counts) the PII of a batch of records, the cleaning step.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from slmkit.config.data import PiiConfig

from ..records import map_texts, mark


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    type: str
    text: str


def luhn_ok(digits: str) -> bool:
    """Luhn mod-10 checksum (ISO/IEC 7812-1) over a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616 check: move the first 4 chars to the end, letters -> 10..35, the number mod 97 is 1."""
    s = iban.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


def _ipv4_ok(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s)
    except ValueError:
        return False
    return True


def _ipv6_ok(s: str) -> bool:
    # Two filled groups at least, so slices like `a[::2]` and times like 12:30 are not addresses.
    if sum(1 for g in s.split(":") if g) < 2:
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


# Issuer prefixes and lengths of the major card networks (ISO/IEC 7812 IIN ranges as published by the
# networks): (prefix range low, high, number of prefix digits, allowed lengths).
_CARD_BRANDS = [
    (4, 4, 1, (13, 16, 19)),  # Visa
    (51, 55, 2, (16,)),
    (2221, 2720, 4, (16,)),  # Mastercard
    (34, 34, 2, (15,)),
    (37, 37, 2, (15,)),  # American Express
    (6011, 6011, 4, (16, 17, 18, 19)),
    (644, 649, 3, (16, 17, 18, 19)),
    (65, 65, 2, (16, 17, 18, 19)),  # Discover
    (300, 305, 3, (14, 15, 16, 17, 18, 19)),
    (36, 36, 2, (14, 15, 16, 17, 18, 19)),
    (38, 39, 2, (16, 17, 18, 19)),
    (3528, 3589, 4, (16, 17, 18, 19)),  # JCB
    (62, 62, 2, (16, 17, 18, 19)),  # UnionPay
    (50, 50, 2, (12, 13, 16, 19)),
    (56, 58, 2, (12, 13, 16, 19)),
    (67, 69, 2, (12, 13, 16, 19)),  # Maestro
]


def _card_ok(s: str) -> bool:
    """Luhn-valid, with a known issuer prefix and a length that issuer uses."""
    digits = re.sub(r"[ -]", "", s)
    brand = any(lo <= int(digits[:n]) <= hi and len(digits) in lengths for lo, hi, n, lengths in _CARD_BRANDS)
    return brand and luhn_ok(digits)


def _ssn_ok(s: str) -> bool:
    # SSA rules: area not 000, 666 or 9xx; group not 00; serial not 0000.
    area, group, serial = s.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _phone_ok(s: str) -> bool:
    return 9 <= sum(c.isdigit() for c in s) <= 15


# (type, pattern, validator, group holding the secret value) in priority order: earlier types win overlaps.
_DETECTORS: list[tuple[str, re.Pattern, Callable[[str], bool] | None, int]] = [
    ("secret", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"), None, 0),
    ("bearer_token", re.compile(r"\bBearer\s+([A-Za-z0-9\-._~+/]{16,}=*)"), None, 1),  # RFC 6750 b64token
    (
        "api_key",
        re.compile(
            r"(?<![\w-])(sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}|gh[pousr]_[A-Za-z0-9]{36,}|"
            r"github_pat_[A-Za-z0-9_]{22,}|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_\-]{35}|"
            r"hf_[A-Za-z0-9]{30,})"
        ),
        None,
        1,
    ),
    ("aws_key", re.compile(r"(?<![A-Z0-9])((?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[A-Z0-9]{16})(?![A-Z0-9])"), None, 1),
    ("aws_key", re.compile(r"(?i)aws_?secret_?access_?key\s*[:=]\s*[\"']?([A-Za-z0-9/+=]{40})"), None, 1),
    (
        "secret",
        re.compile(
            r"(?i)\b(?:api[_-]?key|secret(?:[_-]?key)?|password|passwd|access[_-]?token|auth[_-]?token)"
            r"\s*[:=]\s*[\"']?([^\s\"']{8,})"
        ),
        None,
        1,
    ),
    ("email", re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])"), None, 0),
    ("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"), iban_ok, 0),
    ("credit_card", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _card_ok, 0),
    ("us_ssn", re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])"), _ssn_ok, 0),
    ("ipv4", re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)"), _ipv4_ok, 0),
    (
        "ipv6",
        re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"),
        _ipv6_ok,
        0,
    ),
    # International numbers with '+', bracketed area codes, or the NANP 3-3-4 shape; 9-15 digits (ITU-T E.164).
    (
        "phone",
        re.compile(
            r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4}|"
            r"\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w])"
        ),
        _phone_ok,
        0,
    ),
]

TYPES = tuple(dict.fromkeys(t for t, *_ in _DETECTORS))


# Cheap pre-checks: a detector only runs when the text has what every match of it must contain.
_DIGIT = re.compile(r"\d")
_NEEDS: dict[str, Callable[[str], bool]] = {
    "email": lambda t: "@" in t,
    "ipv6": lambda t: "::" in t or t.count(":") >= 3,
    "bearer_token": lambda t: "Bearer" in t,
    "secret": lambda t: "-----BEGIN" in t or "=" in t or ":" in t,
    **{k: lambda t: _DIGIT.search(t) is not None for k in ("iban", "credit_card", "us_ssn", "ipv4", "phone")},
}


def find_pii(text: str, types: Iterable[str] | None = None) -> list[Span]:
    """Non-overlapping PII spans in `text`, sorted by start; earlier detectors win overlaps."""
    wanted = set(types) if types is not None else set(TYPES)
    taken: list[Span] = []
    checked: dict[str, bool] = {}
    for kind, pattern, ok, group in _DETECTORS:
        if kind not in wanted:
            continue
        if kind in _NEEDS and not checked.setdefault(kind, _NEEDS[kind](text)):
            continue
        for m in pattern.finditer(text):
            start, end = m.span(group)
            value = m.group(group)
            if ok is not None and not ok(value):
                continue
            if any(start < s.end and s.start < end for s in taken):
                continue
            taken.append(Span(start, end, kind, value))
    return sorted(taken, key=lambda s: s.start)


def redact(text: str, types: Iterable[str] | None = None, placeholder: str = "[{type}]") -> tuple[str, list[Span]]:
    """`text` with every PII span replaced by the placeholder, and the spans found."""
    spans = find_pii(text, types)
    out, last = [], 0
    for s in spans:
        out += [text[last : s.start], placeholder.format(type=s.type.upper())]
        last = s.end
    out.append(text[last:])
    return "".join(out), spans


def pii_batch(records: list[dict[str, Any]], cfg: PiiConfig, counts: Counter) -> tuple[list[dict[str, Any]], int]:
    """Redact (or drop, or only count) PII; per-type counts go to `counts`, types to meta.pii_redacted.
    Returns the records kept and how many had PII."""
    kept, changed = [], 0
    for rec in records:
        found: list[str] = []

        def _one(text: str) -> str:
            new, spans = redact(text, cfg.types, cfg.placeholder)
            found.extend(s.type for s in spans)
            return new if cfg.action == "redact" else text

        map_texts(rec, _one)
        counts.update(found)
        if found:
            changed += 1
            rec["meta"]["pii_redacted"] = sorted(set(rec["meta"].get("pii_redacted") or []) | set(found))
            if cfg.action == "redact":
                mark(rec, "pii_redact")
            if cfg.action == "drop":
                continue
        kept.append(rec)
    return kept, changed
