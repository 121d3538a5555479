"""Licence check for exports: the base model's and every data source's licence, flagged when not commercial-safe."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from slmkit.runs import RunDir

log = logging.getLogger("slmkit")

_UNKNOWN = {"", "unknown", "other", "none", "null", "unspecified", "proprietary"}
# "nc" as a licence element (CC BY-NC, CC-BY-NC-SA-4.0), or words that restrict commercial use.
_NON_COMMERCIAL = re.compile(r"(^|[\s\-_])nc($|[\s\-_])|non[\s\-]?commercial|research[\s\-]only|academic", re.I)


def classify(licence: str | None) -> str:
    """'non-commercial', 'unknown' or 'ok'."""
    text = (licence or "").strip()
    if text.lower() in _UNKNOWN:
        return "unknown"
    return "non-commercial" if _NON_COMMERCIAL.search(text) else "ok"


def _data_sources(run_dir: Path) -> list[dict]:
    """Sources named in the data manifest (one today; a 'sources' list if the data stage writes several)."""
    path = RunDir(run_dir).manifest("data")
    summary = json.loads(path.read_text()).get("summary", {}) if path.is_file() else {}
    if summary.get("sources"):
        # each source row names its file or URL under "name" (data stage summary); "source" in older manifests
        return [
            {
                "source": s.get("name") or s.get("source"),
                "sha256": s.get("sha256") or s.get("source_sha256"),
                "license": s.get("license"),
            }
            for s in summary["sources"]
        ]
    if summary.get("source"):
        return [
            {"source": summary["source"], "sha256": summary.get("source_sha256"), "license": summary.get("license")}
        ]
    return []


def check_licences(base_model: str, run_dir: Path) -> dict:
    """{"model": {...}, "data": [...], "warnings": [...], "commercial_ok": bool}; warnings are also logged loudly."""
    from slmkit.models import model_license, resolve_model

    model_lic = model_license(base_model, resolve_model(base_model))
    model = {"name": base_model, "license": model_lic, "status": classify(model_lic)}
    data = [d | {"status": classify(d["license"])} for d in _data_sources(Path(run_dir))]
    warnings = []
    for what, lic, status in [(f"base model {base_model}", model_lic, model["status"])] + [
        (f"data source {d['source']}", d["license"], d["status"]) for d in data
    ]:
        if status != "ok":
            article = "an" if status[0] in "aeiou" else "a"
            warnings.append(f"{what} has {article} {status} licence ({lic or 'none given'})")
    for w in warnings:
        log.warning("LICENCE WARNING: %s -- check it allows your use before shipping this model", w)
    return {"model": model, "data": data, "warnings": warnings, "commercial_ok": not warnings}


def card_section(lic: dict) -> list[str]:
    """Markdown lines for the model card."""
    lines = [
        "## Licences",
        f"- base model `{lic['model']['name']}`: {lic['model']['license']} ({lic['model']['status']})",
    ]
    lines += [
        f"- data `{d['source']}` (sha256 `{d['sha256']}`): {d['license'] or 'unknown'} ({d['status']})"
        for d in lic["data"]
    ]
    if lic["warnings"]:
        lines += ["", "**Warning:** " + "; ".join(lic["warnings"]) + ". Commercial use may not be allowed."]
    return lines + [""]
