"""`eval/report.html`: one self-contained page (no external URL; images inlined as base64 PNG) comparing models.

Sections: summary table, metric bar chart, training-loss curves of the runs involved, the recipe search's trials
(when `train.search` / `slm tune` found the recipe), confusion matrix (classification), and a filterable table of
the examples where models disagree.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import tempfile
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.io import atomic_write_text
from slmkit.runs import RunDir

log = logging.getLogger("slmkit")

MAX_CM_LABELS = 30  # beyond this a confusion table stops being readable; the most frequent labels are shown
MAX_DISAGREEMENTS = 500
MAX_TRIAL_ROWS = 100  # recipe-search trials listed

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}
.cm td{text-align:center;min-width:2em}.ok{background:#e8f5e9}.bad{background:#ffebee}input{padding:4px;width:20em}"""

_JS = """document.getElementById('filter').addEventListener('input',function(e){var q=e.target.value.toLowerCase();
var rows=document.querySelectorAll('#disagree tbody tr');for(var i=0;i<rows.length;i++){
rows[i].style.display=rows[i].textContent.toLowerCase().indexOf(q)>=0?'':'none';}});"""


def _png_b64(draw) -> str:
    """Run a slmkit.plots helper into a temp file and return its PNG as base64."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "plot.png"
        draw(path)
        return base64.b64encode(path.read_bytes()).decode()


def read_loss_series(run_dirs: dict[str, Path]) -> dict[str, list[tuple[int, float]]]:
    """{run name: [(step, loss)]} from each run's train/log.jsonl (rows without a loss are skipped)."""
    series = {}
    for name, run in run_dirs.items():
        log_path = RunDir(run).train_log("train")
        if log_path.is_file():
            rows = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()]
            series[name] = [(r["step"], r["loss"]) for r in rows if "loss" in r and "step" in r]
    return {k: v for k, v in series.items() if v}


def _summary_table(summary: dict) -> str:
    keys = sorted({k for m in summary["models"].values() for k in m if k != "n"})
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    rows = []
    for name, m in summary["models"].items():
        cells = "".join(
            f"<td class='num'>{m[k]:.4f}</td>" if isinstance(m.get(k), (int, float)) else "<td>—</td>" for k in keys
        )
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table id='summary'><thead><tr><th>model</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _rag_note(rag: dict | None) -> str:
    """Says what '+rag' rows mean, so a reader of the page alone can tell how retrieval was set up."""
    if not rag:
        return ""
    return (
        f"<p id='rag'>Rows ending in <b>+rag</b>: each prompt had the top {int(rag['top_k'])} chunks of ChromaDB "
        f"collection <code>{html.escape(rag['collection'])}</code> ({html.escape(rag['persist_dir'])}) put before "
        "its user message.</p>"
    )


def _confusion_table(name: str, cm: dict) -> str:
    labels, columns, matrix = cm["labels"], cm["columns"], cm["matrix"]
    keep = sorted(range(len(labels)), key=lambda i: -sum(matrix[i]))[:MAX_CM_LABELS]
    keep_cols = [columns.index(labels[i]) for i in keep] + ([len(columns) - 1] if columns[-1] == "(other)" else [])
    peak = max((max(r) for r in matrix), default=1) or 1
    head = "".join(f"<th>{html.escape(columns[j])}</th>" for j in keep_cols)
    body = []
    for i in keep:
        cells = []
        for j in keep_cols:
            v = matrix[i][j]
            shade = (
                f"rgba({'46,125,50' if columns[j] == labels[i] else '198,40,40'},{v / peak:.2f})"
                if v
                else "transparent"
            )
            cells.append(f"<td style='background:{shade}'>{v}</td>")
        body.append(f"<tr><th>{html.escape(labels[i])}</th>{''.join(cells)}</tr>")
    note = f"<p>{len(labels) - len(keep)} less frequent labels not shown.</p>" if len(keep) < len(labels) else ""
    return (
        f"<h3>{html.escape(name)}</h3><p>rows: reference, columns: prediction</p>"
        f"<table class='cm'><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"
    )


def disagreements(predictions: list[dict], normalise=lambda s: " ".join(s.lower().split())) -> list[dict]:
    """Examples whose normalised predictions differ between models: [{index, prompt, reference, preds: {model: text}}]."""
    by_index: dict[int, dict] = {}
    for p in predictions:
        row = by_index.setdefault(
            p["index"], {"index": p["index"], "prompt": p["prompt"], "reference": p["reference"], "preds": {}}
        )
        row["preds"][p["model"]] = p["prediction"]
    return [r for r in by_index.values() if len({normalise(v) for v in r["preds"].values()}) > 1]


def _disagreement_table(rows: list[dict], models: list[str], correct) -> str:
    if not rows:
        return "<p>All models gave the same answers.</p>"
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    body = []
    for r in rows[:MAX_DISAGREEMENTS]:
        cells = "".join(
            f"<td class='{'ok' if correct(r['preds'].get(m, ''), r['reference']) else 'bad'}'>"
            f"{html.escape(r['preds'].get(m, ''))}</td>"
            for m in models
        )
        body.append(
            f"<tr><td>{r['index']}</td><td>{html.escape(r['prompt'])}</td><td>{html.escape(r['reference'])}</td>{cells}</tr>"
        )
    more = f"<p>First {MAX_DISAGREEMENTS} of {len(rows)} shown.</p>" if len(rows) > MAX_DISAGREEMENTS else ""
    return (
        f"<p><input id='filter' placeholder='filter rows'></p><table id='disagree'><thead><tr><th>#</th><th>prompt</th>"
        f"<th>reference</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"
    )


def _warnings_banner(warnings: list[str] | None) -> str:
    """A red box above everything else: a collapsed model or a tiny test split must not look like success."""
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return (
        f"<div class='warn' role='alert' style='border:2px solid #c00;background:#fee;color:#900;padding:.5em 1em'>"
        f"<b>Warning</b><ul>{items}</ul></div>"
    )


def read_val_series(run_dirs: dict[str, Path]) -> dict[str, list[tuple[int, float]]]:
    """{"<run> val <metric>": [(step, value)]} from each run's train manifest (validations during training)."""
    series = {}
    for name, run in run_dirs.items():
        path = RunDir(run).manifest("train")
        summary = (json.loads(path.read_text()).get("summary") or {}) if path.is_file() else {}
        if summary.get("val_history"):
            series[f"{name} val {summary['val_metric']}"] = [(h["step"], h["value"]) for h in summary["val_history"]]
    return series


def read_search(run_dirs: dict[str, Path]) -> dict[str, dict]:
    """{run name: the recipe search block of its train manifest's summary}, for runs whose recipe a search found."""
    found = {}
    for name, run in run_dirs.items():
        path = RunDir(run).manifest("train")
        summary = (json.loads(path.read_text()).get("summary") or {}) if path.is_file() else {}
        if summary.get("search"):
            found[name] = summary["search"]
    return found


def _search_section(search: dict[str, dict]) -> str:
    """Per run: one row per trial (best marked), and the search's trials.png when it is still there."""
    parts = ["<h2>Recipe search</h2>"]
    for name, s in search.items():
        trials = s.get("trials") or []
        keys = list(dict.fromkeys(k for t in trials for k in t.get("params", {})))
        head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
        body = []
        for t in trials[:MAX_TRIAL_ROWS]:
            best = t["number"] == s.get("best", {}).get("number")
            value = f"{t['value']:.4f}" if isinstance(t.get("value"), (int, float)) else "—"
            cells = "".join(
                f"<td>{html.escape(f'{v:.3g}' if isinstance(v, float) else str(v))}</td>"
                for v in (t["params"].get(k, "") for k in keys)
            )
            body.append(
                f"<tr{' class=ok' if best else ''}><td>{t['number']}{' (best)' if best else ''}</td>"
                f"<td>{html.escape(t['state'].lower())}</td><td class='num'>{value}</td>{cells}"
                f"<td class='num'>{t.get('seconds') or ''}</td></tr>"
            )
        parts.append(
            f"<p>{html.escape(name)}: {len(trials)} trials in {s.get('spent_s', 0) / 60:.1f} min, "
            f"{s.get('rows')} of {s.get('rows_total')} train rows a trial; best "
            f"{html.escape(str(s.get('metric')))} {s['best']['value']:.4f} (trial {s['best']['number']}), "
            f"config <code>{html.escape(str(s.get('best_config')))}</code>.{_final_line(s.get('final'))}</p>"
            f"<table class='trials'><thead><tr><th>trial</th><th>state</th>"
            f"<th>{html.escape(str(s.get('metric')))}</th>{head}<th>seconds</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
        )
        plot = Path(s["plot"]) if s.get("plot") else None
        if plot is not None and plot.is_file():
            png = base64.b64encode(plot.read_bytes()).decode()
            parts.append(f"<img alt='recipe search trials' src='data:image/png;base64,{png}'>")
    return "".join(parts)


def _final_line(final: dict | None) -> str:
    if not final:
        return ""
    epochs = f" (up to {final['epochs']:g} epochs)" if final.get("epochs") else ""
    cap = f", capped from {final['natural_steps']} to fit the budget" if final.get("capped") else ""
    return f" Final training on all {final.get('rows')} rows: {final['steps']} steps{epochs}{cap}."


def render_report(
    summary: dict,
    predictions: list[dict],
    confusion: dict[str, dict] | None = None,
    loss_series: dict[str, list[tuple[int, float]]] | None = None,
    title: str = "slmkit evaluation",
    val_series: dict[str, list[tuple[int, float]]] | None = None,
    search: dict[str, dict] | None = None,
) -> str:
    """The HTML text. summary: {"task", "n", "models": {name: {metric: value}}}."""
    from slmkit.eval.metrics import exact_match, extract_number, normalize_label
    from slmkit.plots import loss_curve, metric_bars

    task, models = summary["task"], list(summary["models"])
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Task: <b>{html.escape(task)}</b>, {summary['n']} examples, {len(models)} models.</p>",
        _warnings_banner(summary.get("warnings")),
        _rag_note(summary.get("rag")),
        "<h2>Summary</h2>",
        _summary_table(summary),
    ]
    chart_title = f"{task}: {summary['n']} examples"
    try:
        png = _png_b64(lambda p: metric_bars(summary["models"], p, title=chart_title))
        parts.append(f"<h2>Metrics</h2><img alt='metric bar chart' src='data:image/png;base64,{png}'>")
    except SlmError as e:
        parts.append(f"<p>No chart: {html.escape(e.message)}</p>")
    if loss_series:
        png = _png_b64(lambda p: loss_curve(loss_series, p))
        parts.append(f"<h2>Training loss</h2><img alt='training loss curves' src='data:image/png;base64,{png}'>")
    if val_series:
        png = _png_b64(lambda p: loss_curve(val_series, p, title="Validation during training", ylabel="val metric"))
        parts.append(
            f"<h2>Validation during training</h2><img alt='validation metric curves' src='data:image/png;base64,{png}'>"
        )
    if search:
        parts.append(_search_section(search))
    if confusion:
        parts.append("<h2>Confusion matrices</h2>" + "".join(_confusion_table(n, cm) for n, cm in confusion.items()))
    correct = {
        "classification": lambda p, r: normalize_label(p) == normalize_label(r),
        "math": lambda p, r: extract_number(p) is not None and extract_number(p) == extract_number(r),
    }.get(task, lambda p, r: bool(exact_match(p, r)))
    rows = disagreements(
        predictions, normalize_label if task == "classification" else lambda s: " ".join(s.lower().split())
    )
    parts.append(f"<h2>Examples where models disagree ({len(rows)})</h2>" + _disagreement_table(rows, models, correct))
    script = f"<script>{_JS}</script>" if rows else ""
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(parts)}{script}</body></html>\n"
    )


def write_report(
    path: Path,
    summary: dict,
    predictions: list[dict],
    confusion: dict[str, dict] | None = None,
    loss_series: dict[str, list[tuple[int, float]]] | None = None,
    title: str = "slmkit evaluation",
    val_series: dict[str, list[tuple[int, float]]] | None = None,
    search: dict[str, dict] | None = None,
) -> Path:
    return atomic_write_text(
        path, render_report(summary, predictions, confusion, loss_series, title, val_series, search)
    )
