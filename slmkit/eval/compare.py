"""`slm eval-models MODEL... --data SPLIT`: any number of models (runs, HF folders, GGUF, ONNX, pt2) on one split.

Writes into the output folder: predictions.jsonl, metrics.json, metrics.md, report.html.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.eval.rag import RagSettings, prediction_rows, variants
from slmkit.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from slmkit.runs import RunDir

log = logging.getLogger("slmkit")


def resolve_split(
    data: str, out_dir: Path | None = None, system: str | None = None, config: Path | None = None
) -> Path:
    """The chat-record split to score: a run folder's data/test.jsonl, a split file of chat records, or any file the
    data stage reads (CSV/TSV/JSON/JSONL/Parquet rows with input/output columns, chat logs...), turned into chat
    records with the build's `data:` settings (`config`) or a system prompt (`system`) and written to
    out_dir/eval_rows.jsonl."""
    path = Path(data).expanduser()
    if path.is_dir():
        path = RunDir(path).split("test")
    if not path.is_file():
        raise SlmError(
            f"no eval split at {path}",
            "pass a JSONL split (e.g. runs/NAME/data/test.jsonl), a run folder, "
            "or a CSV/JSON/JSONL file of input/output rows",
        )
    if _is_chat_split(path) and system is None and config is None:
        return path
    return _records_from_rows(path, Path(out_dir or "."), system, config)


def _is_chat_split(path: Path) -> bool:
    """A JSONL file whose first row is a chat record ({'messages': [...]}), as the data stage writes them."""
    if path.suffix.lower() != ".jsonl":
        return False
    with path.open(encoding="utf-8") as f:
        first = next((ln for ln in f if ln.strip()), "")
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and isinstance(row.get("messages"), list)


def _records_from_rows(path: Path, out_dir: Path, system: str | None, config: Path | None) -> Path:
    """Every row of `path` as a chat record, read and cleaned by the data stage (no split, no dedup: the user's
    eval file is scored as given)."""
    from slmkit.config import load_config
    from slmkit.data import load_records

    data: dict = {
        "path": str(path.resolve()),
        "sources": [],
        "split": {"val": 0.0, "test": 0.0},
        "dedup": False,
        "clean": {"dedup": {"exact": False, "near": False}},
    }
    if system is not None:
        data["system_prompt"] = system
    cfg = load_config(config, {"data": data})
    groups, _chunks, summary, _report = load_records(cfg)
    rows = [r for split in groups.values() for r in split]
    if not rows:
        raise SlmError(f"{path}: no rows to evaluate", "give rows with an input and an output column")
    dest = atomic_write_jsonl(out_dir / "eval_rows.jsonl", rows)
    log.info("eval rows: %d from %s (task %s), as chat records in %s", len(rows), path, summary["task"], dest)
    return dest


def parse_fail_under(items: list[str]) -> list[tuple[str | None, str, float]]:
    """['accuracy=0.8', 'trained:f1=0.5'] -> [(None, 'accuracy', 0.8), ('trained', 'f1', 0.5)]."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        model, _, metric = key.rpartition(":")
        try:
            threshold = float(value)
        except ValueError:
            threshold = None
        if not sep or not metric or threshold is None:
            raise SlmError(
                f"--fail-under {item!r} is not METRIC=VALUE",
                "e.g. --fail-under accuracy=0.8 or --fail-under MODEL:f1=0.5",
            )
        out.append((model or None, metric, threshold))
    return out


def check_fail_under(summary: dict, rules: list[tuple[str | None, str, float]]) -> list[str]:
    """Messages for every (model, metric) below its threshold; an unknown metric or model is a user error."""
    failures = []
    for model, metric, threshold in rules:
        targets = [model] if model else list(summary["models"])
        for name in targets:
            if name not in summary["models"]:
                raise SlmError(
                    f"--fail-under names model {name!r}, which was not evaluated",
                    f"models: {', '.join(summary['models'])}",
                )
            value = summary["models"][name].get(metric)
            if value is None:
                raise SlmError(
                    f"--fail-under metric {metric!r} is not computed for task {summary['task']}",
                    f"metrics: {', '.join(k for k in summary['models'][name] if k != 'n')}",
                )
            if value < threshold:
                failures.append(f"{name}: {metric} {value:.4f} < {threshold}")
    return failures


def _unique_names(specs: list[str]) -> list[str]:
    names = []
    for spec in specs:
        p = Path(spec)
        base = (
            f"{p.parent.name}/{p.name}"
            if p.name in ("merged", "final", "pt2") or p.name.startswith(("onnx-", "gguf-"))
            else p.name or spec
        )
        name, k = base, 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


def _run_of(spec: str) -> Path | None:
    """The run folder a model spec belongs to, for its loss curve."""
    p = Path(spec).expanduser().resolve()
    for candidate in (p, *p.parents):
        if RunDir(candidate).train_log("train").is_file():
            return candidate
    return None


def eval_models(
    specs: list[str],
    data: str,
    out_dir: Path,
    task: str = "auto",
    max_examples: int | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    perplexity: bool = True,
    show_progress: bool = True,
    rag: RagSettings | None = None,
    system: str | None = None,
    config: Path | None = None,
) -> dict:
    """Score every model on the split; return {"task", "n", "models": {name: metrics}} and write the files.

    With `rag`, each model is also (or only) scored with retrieved context and shows up as "<name>+rag".
    """
    from slmkit.eval.backends import load_backend
    from slmkit.eval.decode import generate_backend_with_progress, load_test_split, max_new_tokens_for
    from slmkit.eval.metrics import compute_metrics, confusion_matrix, infer_task
    from slmkit.eval.quality import assess, warnings_for
    from slmkit.eval.report import read_loss_series, write_report
    from slmkit.io import read_jsonl

    if not specs:
        raise SlmError(
            "no models to evaluate", "pass one or more models: run folders, export folders, .gguf files, 'default'"
        )
    split = resolve_split(data, Path(out_dir), system, config)
    prompts, refs = load_test_split(split, max_examples)
    rows = read_jsonl(split)[: len(refs)]
    if task == "auto":  # the data stage sets "label" only on classification rows
        task = "classification" if all(r.get("label") is not None for r in rows) else infer_task(refs)
    # Retrieval (and its missing-collection error) happens before any model is loaded.
    prompt_sets = variants(prompts, [r["messages"] for r in rows], rag)
    results, predictions, confusion, spec_of, quality = {}, [], {}, {}, {}
    for name, spec in zip(_unique_names(specs), specs):
        try:
            backend = load_backend(spec, name=name)
        except SlmError:
            raise
        except Exception as e:  # any reader failure: name the model, keep the cause
            raise SlmError(
                f"cannot load model '{spec}': {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                "pass a run folder, an HF model folder, a .gguf file, an ONNX or pt2 export folder",
            ) from None
        new_tokens = max_new_tokens_for(backend.tok, refs, task, max_new_tokens)
        for variant in prompt_sets:
            vname = name + variant.suffix
            preds = generate_backend_with_progress(
                backend, variant.prompts, new_tokens, batch_size, vname, show_progress
            )
            results[vname] = compute_metrics(preds, refs, task)
            quality[vname] = assess(preds, refs, task)
            if perplexity and backend.has_torch_model:
                from slmkit.eval.perplexity import answer_perplexity

                results[vname]["perplexity"] = answer_perplexity(backend.model, backend.tok, variant.conversations)
            if task == "classification":
                confusion[vname] = confusion_matrix(preds, refs)
            predictions += prediction_rows(vname, variant, prompts, refs, preds)
            spec_of[vname] = spec
        del backend
    summary = {"task": task, "n": len(refs), "models": results, "quality": quality} | (
        {"rag": rag.describe()} if rag else {}
    )
    summary["warnings"] = warnings_for(summary)
    out_dir = Path(out_dir)
    from slmkit.eval.tables import metrics_table_md

    atomic_write_jsonl(out_dir / "predictions.jsonl", predictions)
    atomic_write_json(out_dir / "metrics.json", summary | {"data": str(split), "specs": spec_of})
    atomic_write_text(out_dir / "metrics.md", metrics_table_md(summary))
    runs = {spec: run for spec in specs if (run := _run_of(spec)) is not None}
    loss = read_loss_series({run.name: run for run in runs.values()})
    write_report(out_dir / "report.html", summary, predictions, confusion, loss, title=f"slmkit evaluation: {split}")
    return summary
