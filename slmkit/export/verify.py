"""Prove an export works: reload it with an independent reader and compare it with the source model.

Two checks (issue 8): next-token logits on fixed prompts (max abs diff, relative to the logit scale,
and top-1 agreement), and the task metric on the eval split, failing when it drops by more than a
margin in points.
"""

from __future__ import annotations

import logging
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.eval import Backend
from slmkit.export.merge import VERIFY_PROMPTS
from slmkit.runs import RunDir

log = logging.getLogger("slmkit")

# Max |logit diff| / max |logit| a correct export stays under, per weight precision. These catch broken
# exports (wrong tensor layout gives ~1.0); quality is judged by the metric margin, not by these.
REL_TOLERANCE = {
    "merged": 1e-4,
    "fp32": 1e-4,
    "f32": 1e-3,
    "pt2": 1e-4,
    "f16": 0.02,
    "q8_0": 0.08,
    "int8": 0.15,
    "int4": 0.5,
}


def compare_logits(source: Backend, artifact: Backend, prompts: list[str] = VERIFY_PROMPTS) -> dict:
    """Feed the source tokenizer's ids to both models; also check the artifact's tokenizer gives the same ids."""
    diffs, scales, agree, top5, tok_match = [], [], 0, 0.0, True
    for p in prompts:
        messages = [{"role": "user", "content": p}]
        ids = source.prompt_ids(messages)
        tok_match &= artifact.prompt_ids(messages) == ids
        a, b = source.next_token_logits(ids), artifact.next_token_logits(ids)
        if a.shape != b.shape:
            raise SlmError(
                f"export {artifact.name} has {b.shape[-1]} logits per position, the source {a.shape[-1]}",
                "the vocabulary was changed on export; this is a bug, please report it",
            )
        diffs.append(float((a - b).abs().max()))
        scales.append(float(a.abs().max()))
        agree += int(a.argmax() == b.argmax())
        # near-ties at the top flip argmax under quantisation; the top-5 set is the steadier signal
        top5 += len(set(a.topk(5).indices.tolist()) & set(b.topk(5).indices.tolist())) / 5
    max_diff = max(diffs)
    return {
        "max_abs_diff": max_diff,
        "rel_diff": max_diff / max(max(scales), 1e-9),
        "top1_agreement": agree / len(prompts),
        "top5_overlap": top5 / len(prompts),
        "tokenizer_match": bool(tok_match),
        "prompts": len(prompts),
    }


def compare_metric(
    source: Backend,
    artifact: Backend,
    conversations: list[list[dict]],
    refs: list[str],
    task: str,
    max_new_tokens: int,
    batch_size: int,
    source_preds: list[str] | None = None,
) -> dict:
    """Headline metric of both models on the same eval rows; drop in points (x100 for [0, 1] metrics)."""
    from slmkit.eval import HEADLINE, compute_metrics

    key = HEADLINE[task]
    src_preds = source_preds or source.generate(conversations, max_new_tokens, batch_size)
    art_preds = artifact.generate(conversations, max_new_tokens, batch_size)
    src, art = compute_metrics(src_preds, refs, task)[key], compute_metrics(art_preds, refs, task)[key]
    scale = 1.0 if key == "bleu" else 100.0  # bleu is already in points
    return {
        "metric": key,
        "source": src,
        "export": art,
        "drop_points": (src - art) * scale,
        "n": len(refs),
        "agreement": sum(a == b for a, b in zip(src_preds, art_preds)) / len(refs),
    }


def check(result: dict, precision: str, margin_points: float, name: str) -> None:
    """Raise SlmError when the logits or the metric are off by more than allowed."""
    logits = result["logits"]
    tol = REL_TOLERANCE.get(precision, 0.5)
    if logits["rel_diff"] > tol:
        raise SlmError(
            f"export {name}: next-token logits differ from the source by {logits['max_abs_diff']:.3g} "
            f"({logits['rel_diff']:.1%} of the logit scale, allowed {tol:.0%} for {precision})",
            "the export is broken; please report it with the model's config.json",
        )
    metric = result.get("metric")
    if metric and metric["drop_points"] > margin_points:
        raise SlmError(
            f"export {name}: {metric['metric']} drops from {metric['source']:.4f} to {metric['export']:.4f} "
            f"({metric['drop_points']:.1f} points, allowed {margin_points})",
            "use a higher-precision format (f16 / int8), or raise export.metric_margin if this is acceptable",
        )


def verify_export(
    source: Backend,
    artifact: Backend,
    precision: str,
    margin_points: float,
    eval_rows: tuple[list[list[dict]], list[str], str] | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    source_preds: list[str] | None = None,
) -> dict:
    """Run both checks and raise on failure; return {"precision", "logits", "metric"?, "margin_points"}."""
    result: dict = {"precision": precision, "margin_points": margin_points, "logits": compare_logits(source, artifact)}
    if not result["logits"]["tokenizer_match"]:
        log.warning(
            "export %s: its tokenizer encodes the verify prompts differently from the source "
            "(the reader may not know this pre-tokenizer); logits were compared on the source's ids",
            artifact.name,
        )
    if eval_rows is not None:
        conversations, refs, task = eval_rows
        result["metric"] = compare_metric(
            source, artifact, conversations, refs, task, max_new_tokens, batch_size, source_preds
        )
    check(result, precision, margin_points, artifact.name)
    log.info(
        "verified %s: max |logit diff| %.3g (rel %.2g), top-1 agreement %.0f%%%s",
        artifact.name,
        result["logits"]["max_abs_diff"],
        result["logits"]["rel_diff"],
        100 * result["logits"]["top1_agreement"],
        f", {result['metric']['metric']} {result['metric']['source']:.3f} -> {result['metric']['export']:.3f}"
        if "metric" in result
        else "",
    )
    return result


def load_eval_rows(run_dir: Path, max_examples: int, task: str | None = None, split: str = "test"):
    """(conversations, refs, task): `max_examples` rows spread evenly over one of the run's splits (stratified splits
    are written label by label, so the first rows would cover a few labels only), or None when there are none."""
    from slmkit.eval import infer_task, load_test_split

    path = RunDir(run_dir).split(split)
    if max_examples <= 0 or not path.is_file() or path.stat().st_size == 0:
        return None
    conversations, refs = load_test_split(path, None)
    keep = (
        [i * len(refs) // max_examples for i in range(max_examples)] if len(refs) > max_examples else range(len(refs))
    )
    conversations, refs = [conversations[i] for i in keep], [refs[i] for i in keep]
    return conversations, refs, task or infer_task(refs)


def rows_sha256(rows: tuple[list[list[dict]], list[str], str]) -> str:
    """Fingerprint of the rows a check ran on (prompts and references), for the export card."""
    import hashlib
    import json

    conversations, refs, _ = rows
    return hashlib.sha256(json.dumps([conversations, refs], sort_keys=True).encode()).hexdigest()
