"""The export stage: export a run to every configured format, verify each artifact, and write its card.

    slm export CONFIG        (or inside `slm build`); one format of a finished run: slm export-model RUN -f gguf

Every format is built from the merged folder (itself verified against adapter + base), into
`export/<format>[-<quant>]/` by atomic folder swap, so a failed build or verification leaves no
half-written artifact behind.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from slmkit.config import BuildConfig, ExportConfig
from slmkit.errors import SlmError
from slmkit.io import atomic_dir, atomic_write_json, atomic_write_text
from slmkit.runs import RunDir, read_manifest

log = logging.getLogger("slmkit")

Format = Literal["merged", "gguf", "onnx", "pt2"]


ExportOptions = ExportConfig  # one schema: the export section of the build config


def options_from_config(cfg: BuildConfig, **overrides) -> ExportConfig:
    """cfg.export with CLI overrides applied (validated again)."""
    return ExportConfig.model_validate(cfg.export.model_dump() | overrides)


def artifacts_for(opts: ExportOptions) -> list[tuple[str, str]]:
    """[(format, precision)] in build order, merged excluded (it is always built first)."""
    out: list[tuple[str, str]] = []
    for fmt in dict.fromkeys(opts.formats):
        if fmt == "gguf":
            out += [("gguf", q) for q in opts.gguf_quant]
        elif fmt == "onnx":
            out += [("onnx", q) for q in opts.onnx_quant]
        elif fmt == "pt2":
            out.append(("pt2", "pt2"))
    return out


def _build(fmt: str, precision: str, src: Path, tmp: Path, cfg: BuildConfig, licence: str) -> Path:
    """Write one artifact into tmp; return the path load_backend reads."""
    if fmt == "gguf":
        from slmkit.export.gguf import write_gguf

        return write_gguf(src, tmp / f"{cfg.name}-{precision}.gguf", precision, name=cfg.name, license_=licence)
    if fmt == "onnx":
        from slmkit.export.onnx import build_onnx

        return build_onnx(src, tmp, precision)
    from slmkit.export.pt2 import export_pt2

    return export_pt2(src, tmp, cfg.train.max_seq_len * 4)


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def run(cfg: BuildConfig, run_dir: RunDir, *, resume: bool = False, show_progress: bool = True) -> dict:
    """Every format in `export.formats` (merged always first); `resume`: nothing to resume, each artifact is atomic."""
    return export_formats(cfg, run_dir)


def export_formats(cfg: BuildConfig, run_dir: RunDir, opts: ExportOptions | None = None) -> dict:
    """Merged export, then every other format with verification; returns the stage summary.

    Summary keys: path/bytes/verify (the merged export, as before), formats {dir: {path, bytes, verify}}, licence.
    """
    from slmkit.eval import from_model, load_backend, max_new_tokens_for
    from slmkit.export.card import render_card
    from slmkit.export.licence import check_licences
    from slmkit.export.merge import export_merged
    from slmkit.export.verify import load_eval_rows, verify_export
    from slmkit.models import load_model, load_tokenizer

    run = RunDir.of_config(cfg, run_dir)
    run_dir = run.root
    opts = opts or options_from_config(cfg)
    merged = run.merged
    summary = (
        export_merged(cfg, run)
        if "merged" in opts.formats or not (merged / "slmkit.json").is_file()
        else {"path": str(merged), "bytes": _folder_bytes(merged), "verify": {}}
    )
    licence = check_licences(cfg.model.base_model, run_dir)
    summary |= {"formats": {}, "licence": licence}
    todo = artifacts_for(opts)
    if not todo:
        return summary
    source = from_model("source", load_model(merged, "float32", "cpu"), load_tokenizer(merged))
    task = ((read_manifest(run_dir, "data") or {}).get("summary") or {}).get("task")
    rows = load_eval_rows(run_dir, opts.verify_examples, task)
    new_tokens, source_preds = cfg.eval.max_new_tokens, None
    if rows:
        new_tokens = max_new_tokens_for(source.tok, rows[1], rows[2], cfg.eval.max_new_tokens)
        source_preds = source.generate(rows[0], new_tokens, cfg.eval.batch_size)
    for fmt, precision in todo:
        name = fmt if fmt == "pt2" else f"{fmt}-{precision}"
        dest = run.export(name)
        margin = opts.metric_margin_4bit if precision == "int4" else opts.metric_margin
        log.info("export %s: building from %s", name, merged)
        with atomic_dir(dest) as tmp:
            built = _build(fmt, precision, merged, tmp, cfg, licence["model"]["license"])
            artifact = load_backend(str(built), name=name)
            verify = verify_export(
                source, artifact, precision, margin, rows, new_tokens, cfg.eval.batch_size, source_preds
            )
            del artifact
            atomic_write_json(tmp / "verify.json", verify)
            atomic_write_text(tmp / "README.md", render_card(run_dir, cfg, verify, name, licence))
            atomic_write_json(
                tmp / "slmkit.json",
                {
                    "base_model": cfg.model.base_model,
                    "export": fmt,
                    "precision": precision,
                    "verify": verify,
                    "run": cfg.name,
                },
            )
        summary["formats"][name] = {
            "path": str(dest / built.relative_to(tmp)) if built != tmp else str(dest),
            "bytes": _folder_bytes(dest),
            "verify": verify,
        }
    return summary


def export_one(run_dir: Path, cfg: BuildConfig, fmt: str, quant: list[str] | None = None, **option_overrides) -> dict:
    """`slm export-model RUN --format F [--quant Q]`: one format (merged is built first when missing)."""
    key = {"gguf": "gguf_quant", "onnx": "onnx_quant"}.get(fmt)
    if quant and key is None:
        raise SlmError(
            f"--quant does not apply to --format {fmt}", "use --quant only with gguf (f16, q8_0) or onnx (int4, int8)"
        )
    overrides = {"formats": [fmt], **({key: quant} if quant else {}), **option_overrides}
    try:
        opts = options_from_config(cfg, **overrides)
    except ValueError as e:
        raise SlmError(
            f"bad export option: {str(e).splitlines()[-2].strip() if len(str(e).splitlines()) > 1 else e}",
            "formats: merged|gguf|onnx|pt2; gguf quant: f16|q8_0; onnx quant: int4|int8",
        ) from None
    return export_formats(cfg, run_dir, opts)
