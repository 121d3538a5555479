"""The export stage: export a run to every configured format, verify each artifact, and write its card.

    slm export CONFIG        (or inside `slm build`); one format of a finished run: slm export-model RUN -f gguf

Every format is built from the merged folder (itself verified against adapter + base), into
`export/<format>[-<quant>]/` by atomic folder swap, so a failed build or verification leaves no
half-written artifact behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from slmkit.config import BuildConfig, ExportConfig
from slmkit.errors import SlmError
from slmkit.io import atomic_dir, atomic_write_json, atomic_write_text
from slmkit.onnx_runtime import installed as onnx_available
from slmkit.runs import RunDir, read_manifest

log = logging.getLogger("slmkit")

Format = Literal["merged", "gguf", "onnx", "pt2"]


ExportOptions = ExportConfig  # one schema: the export section of the build config


def options_from_config(cfg: BuildConfig, **overrides) -> ExportConfig:
    """cfg.export with CLI overrides applied (validated again)."""
    return ExportConfig.model_validate(cfg.export.model_dump() | overrides)


def expand_formats(formats: list[str]) -> list[str]:
    """`auto` -> merged, plus onnx when onnxruntime-genai is installed (the other formats as listed)."""
    out: list[str] = []
    for fmt in formats:
        out += (["merged"] + (["onnx"] if onnx_available() else [])) if fmt == "auto" else [fmt]
    return list(dict.fromkeys(out))


def artifacts_for(opts: ExportOptions) -> list[tuple[str, str]]:
    """[(format, precision)] in build order, merged excluded (it is always built first)."""
    out: list[tuple[str, str]] = []
    for fmt in expand_formats(opts.formats):
        if fmt == "gguf":
            out += [("gguf", q) for q in opts.gguf_quant]
        elif fmt == "onnx":
            out += [("onnx", q) for q in opts.onnx_quant]
        elif fmt == "pt2":
            out.append(("pt2", "pt2"))
    return out


def _build(
    fmt: str,
    precision: str,
    src: Path,
    tmp: Path,
    cfg: BuildConfig,
    licence: str,
    system: str | None = None,
    imatrix: dict | None = None,
) -> Path:
    """Write one artifact into tmp; return the path load_backend reads. `system`: the run's system prompt (the
    GGUF's Ollama Modelfile sets it as SYSTEM, so `ollama run` prompts the model as it was trained); `imatrix`: the
    importance matrix of the GGUF `_im` recipes."""
    if fmt == "gguf":
        from slmkit.export.gguf import write_gguf

        path = tmp / f"{cfg.name}-{precision}.gguf"
        return write_gguf(src, path, precision, name=cfg.name, license_=licence, system=system, imatrix=imatrix)
    if fmt == "onnx":
        from slmkit.export.onnx import build_onnx

        return build_onnx(src, tmp, precision)
    from slmkit.export.pt2 import export_pt2

    return export_pt2(src, tmp, cfg.train.max_seq_len * 4)


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def recipes_for(fmt: str, quant: str) -> list[str]:
    """The recipes one (format, quant) entry tries: itself, or for `auto` the 4-bit ones smallest first, then 8-bit."""
    if quant != "auto":
        return [quant]
    if fmt == "gguf":
        from slmkit.export.gguf import FOUR_BIT, LLAMA_RECIPES
        from slmkit.llamacpp_runtime import installed

        return [r for r in FOUR_BIT if installed() or r not in LLAMA_RECIPES] + ["q8_0"]
    from slmkit.export.onnx import FOUR_BIT

    return [*FOUR_BIT, "int8"]


def is_4bit(recipe: str) -> bool:
    return recipe.startswith(("int4", "q4", "q5", "iq4"))


def run(cfg: BuildConfig, run_dir: RunDir, *, resume: bool = False, show_progress: bool = True) -> dict:
    """Every format in `export.formats` (merged always first); `resume`: nothing to resume, each artifact is atomic."""
    return export_formats(cfg, run_dir)


def export_formats(cfg: BuildConfig, run_dir: RunDir, opts: ExportOptions | None = None) -> dict:
    """Merged export, then every other format with verification; returns the stage summary.

    Summary keys: path/bytes/verify (the merged export, as before), formats {dir: {path, bytes, verify}}, licence.
    """
    from slmkit.eval import from_model, max_new_tokens_for
    from slmkit.export.licence import check_licences
    from slmkit.export.merge import export_merged
    from slmkit.export.verify import load_eval_rows
    from slmkit.models import load_model, load_tokenizer

    run = RunDir.of_config(cfg, run_dir)
    run_dir = run.root
    opts = opts or options_from_config(cfg)
    merged = run.merged
    summary = (
        export_merged(cfg, run)
        if "merged" in expand_formats(opts.formats) or not (merged / "slmkit.json").is_file()
        else {"path": str(merged), "bytes": _folder_bytes(merged), "verify": {}}
    )
    licence = check_licences(cfg.model.base_model, run_dir)
    summary |= {"formats": {}, "licence": licence}
    todo = artifacts_for(opts)
    if not todo:
        return summary
    source = from_model("source", load_model(merged, "float32", "cpu"), load_tokenizer(merged))
    task = ((read_manifest(run_dir, "data") or {}).get("summary") or {}).get("task")
    checks = {"test": load_eval_rows(run_dir, opts.verify_examples, task)}
    # auto chooses on train rows, so the test rows stay a fair check; the `_im` recipes calibrate on them
    if any(q == "auto" or q.endswith("_im") for _, q in todo):
        checks["calibration"] = load_eval_rows(run_dir, opts.verify_examples, task, split="train")
    new_tokens = cfg.eval.max_new_tokens
    if checks["test"]:
        new_tokens = max_new_tokens_for(source.tok, checks["test"][1], checks["test"][2], cfg.eval.max_new_tokens)
    preds = {k: rows and source.generate(rows[0], new_tokens, cfg.eval.batch_size) for k, rows in checks.items()}
    ctx = _Context(cfg, opts, merged, source, licence, new_tokens, checks, preds)
    optional = "auto" in opts.formats and "onnx" not in opts.formats  # onnx came from `auto`, not from the user
    for fmt, quant in todo:
        name = fmt if fmt == "pt2" else f"{fmt}-{quant}"
        try:
            summary["formats"][name] = _export_artifact(ctx, fmt, quant, run.export(name), name, run_dir)
        except SlmError as e:
            if not (optional and fmt == "onnx"):
                raise
            # the merged export is the deliverable; serve falls back to torch and says why
            log.warning("export %s skipped: %s (%s)", name, e.message, e.hint)
            summary["formats"][name] = {"skipped": e.message}
    return summary


@dataclass
class _Context:
    cfg: BuildConfig
    opts: ExportConfig
    merged: Path
    source: object
    licence: dict
    new_tokens: int
    checks: dict  # "test" / "calibration" -> (conversations, refs, task) or None
    preds: dict  # the same keys -> the source model's answers
    imatrix: tuple | None = None  # (importance matrix, its record for verify.json), collected once

    def importance(self) -> tuple[dict | None, dict]:
        """The GGUF importance matrix from the calibration (train) rows, and what verify.json records of it."""
        if self.imatrix is None:
            from slmkit.export.imatrix import calibration_texts, collect, texts_sha256

            rows = self.checks.get("calibration")
            if not rows:
                log.warning("GGUF: no train rows to calibrate on: quantising without an importance matrix")
                self.imatrix = (None, {"warning": "no train rows: quantised without an importance matrix"})
            else:
                texts = calibration_texts(rows[0], rows[1], self.source.tok)
                matrix = collect(self.source.model, self.source.tok, texts, self.cfg.eval.batch_size)
                self.imatrix = (matrix, {"split": "train", "rows": len(texts), "sha256": texts_sha256(texts)})
        return self.imatrix


class _Rejected(Exception):
    """An `auto` recipe lost more than its margin on the calibration rows (its folder is discarded)."""


def _export_artifact(ctx: _Context, fmt: str, quant: str, dest: Path, name: str, run_dir: Path) -> dict:
    """Build one (format, quant) entry into `dest`; `auto` keeps the first (smallest) recipe within the margin.

    `auto` judges each recipe on train-split rows (calibration), then verifies the kept one on the test rows
    like any export. A recipe that fails never reaches `dest` (atomic folder); verify.json lists the attempts.
    """
    from slmkit.eval import load_backend
    from slmkit.export.card import render_card
    from slmkit.export.verify import compare_metric, rows_sha256, verify_export

    recipes, tried = recipes_for(fmt, quant), []
    calibration = ctx.checks.get("calibration")
    unjudged = quant == "auto" and not calibration and not ctx.checks["test"]
    if unjudged:  # nothing to measure a drop on: the most conservative 4-bit recipe, said so in the card
        recipes = recipes[-2:-1]
    batch = ctx.cfg.eval.batch_size
    for recipe in recipes:
        margin = ctx.opts.metric_margin_4bit if is_4bit(recipe) else ctx.opts.metric_margin
        log.info("export %s: building %s from %s", name, recipe, ctx.merged)
        try:
            matrix, im_record = ctx.importance() if recipe.endswith("_im") else (None, None)
            with atomic_dir(dest) as tmp:
                licence = ctx.licence["model"]["license"]
                built = _build(fmt, recipe, ctx.merged, tmp, ctx.cfg, licence, _system(ctx), matrix)
                artifact = load_backend(str(built), name=name)
                attempt = {"recipe": recipe, "bytes": _folder_bytes(tmp), "margin_points": margin}
                tried.append(attempt)
                if quant == "auto" and calibration:
                    attempt["calibration"] = compare_metric(
                        ctx.source, artifact, *calibration, ctx.new_tokens, batch, ctx.preds["calibration"]
                    )
                    if attempt["calibration"]["drop_points"] > margin:
                        raise _Rejected
                verify = verify_export(
                    ctx.source, artifact, recipe, margin, ctx.checks["test"], ctx.new_tokens, batch, ctx.preds["test"]
                )
                del artifact
                if im_record:
                    verify["imatrix"] = im_record
                if quant == "auto":
                    verify["auto"] = {
                        "chosen": recipe,
                        "tried": tried,
                        "calibration_split": "train" if calibration else None,
                        "calibration_rows": len(calibration[1]) if calibration else 0,
                        "calibration_sha256": rows_sha256(calibration) if calibration else None,
                    }
                    if unjudged:
                        verify["auto"]["warning"] = (
                            "no train or test rows to judge recipes on: the most conservative 4-bit recipe was "
                            "written, checked on fixed prompts' logits only"
                        )
                    elif not calibration:
                        verify["auto"]["warning"] = (
                            "no train rows to choose on: each recipe was judged on the test rows"
                        )
                atomic_write_json(tmp / "verify.json", verify)
                atomic_write_text(tmp / "README.md", render_card(run_dir, ctx.cfg, verify, name, ctx.licence))
                meta = {"base_model": ctx.cfg.model.base_model, "export": fmt, "precision": recipe, "run": ctx.cfg.name}
                atomic_write_json(tmp / "slmkit.json", meta | {"verify": verify})
                path = dest / built.relative_to(tmp) if built != tmp else dest
        except _Rejected:
            cal = tried[-1]["calibration"]
            log.info(
                "export %s: %s lost %.1f points on %d train rows (allowed %s), trying the next recipe",
                *(name, recipe, cal["drop_points"], cal["n"], margin),
            )
            continue
        except SlmError as e:  # only a failed test check of a built auto recipe moves on; a build failure stops
            if quant != "auto" or not tried or tried[-1]["recipe"] != recipe:
                raise
            tried[-1]["rejected"] = e.message
            log.info("export %s: %s failed its test check (%s), trying the next recipe", name, recipe, e.message)
            continue
        return {"path": str(path), "bytes": _folder_bytes(dest), "verify": verify, "recipe": recipe}
    raise SlmError(
        f"export {name}: no recipe kept {_metric_name(tried)} within its margin ({_tried(tried)})",
        "raise export.metric_margin_4bit / metric_margin, or export a higher precision (gguf f16, onnx int8)",
    )


def _system(ctx: _Context) -> str | None:
    """The run's system prompt, as its data rows carry it (data.system_prompt with {labels} expanded)."""
    rows = ctx.checks.get("test") or ctx.checks.get("calibration")
    first = rows[0][0] if rows and rows[0] else []
    return first[0]["content"] if first and first[0].get("role") == "system" else None


def _metric_name(tried: list[dict]) -> str:
    return next((t["calibration"]["metric"] for t in tried if "calibration" in t), "the metric")


def _tried(tried: list[dict]) -> str:
    """One clause a recipe: its change on the train rows (-2.0 = lost 2 points), and why the test check refused it."""
    parts = []
    for t in tried:
        part = (
            f"{t['recipe']} {-t['calibration']['drop_points']:+.1f} on train rows"
            if "calibration" in t
            else t["recipe"]
        )
        parts.append(part + (f", refused on test rows: {t['rejected']}" if "rejected" in t else ""))
    return "; ".join(parts)


def export_one(run_dir: Path, cfg: BuildConfig, fmt: str, quant: list[str] | None = None, **option_overrides) -> dict:
    """`slm export-model RUN --format F [--quant Q]`: one format (merged is built first when missing)."""
    from slmkit.export.gguf import QUANTS as GGUF_QUANTS
    from slmkit.export.onnx import QUANTS as ONNX_QUANTS

    key = {"gguf": "gguf_quant", "onnx": "onnx_quant"}.get(fmt)
    if quant and key is None:
        raise SlmError(
            f"--quant does not apply to --format {fmt}",
            "use --quant only with gguf (auto, q4_0..q8_0, f16) or onnx (auto, int4.., int8)",
        )
    overrides = {"formats": [fmt], **({key: quant} if quant else {}), **option_overrides}
    try:
        opts = options_from_config(cfg, **overrides)
    except ValueError as e:
        raise SlmError(
            f"bad export option: {str(e).splitlines()[-2].strip() if len(str(e).splitlines()) > 1 else e}",
            f"formats: merged|gguf|onnx|pt2; gguf quant: auto|{'|'.join(GGUF_QUANTS)}; "
            f"onnx quant: auto|{'|'.join(ONNX_QUANTS)}",
        ) from None
    return export_formats(cfg, run_dir, opts)
