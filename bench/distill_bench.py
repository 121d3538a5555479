"""Distillation benchmark (issue 5): teacher vs pruned students trained by SFT, online KD and offline-cache KD.

Full (CPU, long: teacher LoRA fine-tune + three student trainings on the CLINC150 intent-router subset):
    python bench/distill_bench.py --out runs/bench-distill
Smoke (seconds, tiny random model, checks the plumbing only):
    python bench/distill_bench.py --smoke
Writes <out>/results.json and <out>/results.md (paste into docs/benchmarks.md). Every stage is skipped when its
output already exists, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cfg(out: Path, smoke: bool, teacher_steps: int | None):
    from slmkit.config import load_config

    if smoke:
        from tests.conftest import TINY_ROWS, make_tiny_model_dir

        model = out / "tiny_model"
        if not (model / "config.json").is_file():
            make_tiny_model_dir(model)
        csv = out / "rows.csv"
        csv.write_text(
            "text,intent\n"
            + "".join(f"{t}{s},{lab}\n" for s in ("", " please", " today", " tomorrow") for t, lab in TINY_ROWS)
        )
        over = {
            "name": "teacher",
            "output_dir": str(out),
            "model": {"base_model": str(model)},
            "data": {"path": str(csv), "system_prompt": "classify request reply with one intent"},
            "train": {"max_steps": teacher_steps or 4, "batch_size": 4, "lr": 1e-2, "save_steps": 1000},
        }
        return load_config(None, over, environ={})
    over = {"name": "teacher", "output_dir": str(out)}
    if teacher_steps:
        over["train"] = {"max_steps": teacher_steps}
    return load_config(ROOT / "examples" / "intent-router" / "build.yaml", over, environ={})


def _variant_dir(out: Path, teacher_run: Path, name: str) -> Path:
    d = out / name
    if not (d / "data").is_dir():
        shutil.copytree(teacher_run / "data", d / "data")
    return d


def accuracy_and_speed(model_dir: Path, test_path: Path, max_examples: int | None, decode_tokens: int) -> dict:
    """Accuracy on the test split (greedy) and batch-1 decode tokens/s (median of 5 runs)."""
    import torch

    from slmkit.distill.prune import load_full_model
    from slmkit.eval.decode import load_test_split
    from slmkit.eval.metrics import compute_metrics
    from slmkit.generation import generate

    model, tok = load_full_model(str(model_dir))
    prompts, refs = load_test_split(test_path, max_examples)
    preds = generate(model, tok, prompts, max_new_tokens=16, batch_size=16)
    acc = compute_metrics(preds, refs, "classification")["accuracy"]
    enc = tok.apply_chat_template(prompts[0], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    rates = []
    with torch.no_grad():
        model.generate(
            **enc, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id
        )  # warm up
        for _ in range(5):  # median of 5: single runs on a shared 2-core CPU vary by 10%
            t0 = time.perf_counter()
            model.generate(
                **enc,
                max_new_tokens=decode_tokens,
                min_new_tokens=decode_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
            rates.append(decode_tokens / (time.perf_counter() - t0))
    tok_s = statistics.median(rates)
    return {
        "accuracy": round(acc, 4),
        "decode_tok_s": round(tok_s, 1),
        "layers": model.config.num_hidden_layers,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
    }


def measure_step(kind: str, out: Path, smoke: bool, steps: int) -> dict:
    """Run in a fresh process: `steps` optimizer steps of SFT or offline-cache KD; seconds/step and peak RSS."""
    from slmkit.distill.stage import DistillConfig, distill
    from slmkit.train.stage import run as train

    cfg = _cfg(out, smoke, None)
    student = str(out / "student_init")
    if kind == "sft":
        cfg = cfg.model_copy(
            update={
                "model": cfg.model.model_copy(update={"base_model": student}),
                "train": cfg.train.model_copy(update={"method": "full", "max_steps": steps, "save_steps": 10**6}),
            }
        )
        s = train(cfg, _variant_dir(out, out / "teacher", "step_sft"), show_progress=False)
    else:
        d = json.loads((out / "distill_config.json").read_text())
        d["train"].update(max_steps=steps, save_steps=10**6)
        d.update(mode="offline", cache_dir=str(out / f"offline{d.pop('variant', '')}" / "distill" / "cache"))
        s = distill(
            cfg,
            _variant_dir(out, out / "teacher", "step_offline"),
            DistillConfig.model_validate(d),
            show_progress=False,
        )
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds_per_step": round(s["seconds"] / max(s["steps"], 1), 3), "peak_rss_mb": round(rss_mb, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--smoke", action="store_true", help="tiny random model, a few steps: checks the plumbing in seconds"
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--teacher-steps", type=int, default=None, help="cap the teacher fine-tune (default: the example's epochs)"
    )
    ap.add_argument(
        "--student-steps", type=int, default=None, help="optimizer steps for every student (default 2 epochs)"
    )
    ap.add_argument("--loss", default="forward_kl")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--kd-positions", default="assistant", choices=["assistant", "all"])
    ap.add_argument("--variant", default="", help="suffix for the distilled students' folders, to compare settings")
    ap.add_argument("--max-examples", type=int, default=None, help="cap the test split")
    ap.add_argument("--measure-step", choices=["sft", "offline"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = (args.out or ROOT / "runs" / ("bench-distill-smoke" if args.smoke else "bench-distill")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.measure_step:
        print(json.dumps(measure_step(args.measure_step, out, args.smoke, 3 if args.smoke else 10)))
        return
    run(args, out)


def run(args, out: Path) -> None:
    from slmkit.distill.prune import prune, tokenizer_of
    from slmkit.distill.stage import DistillConfig, distill
    from slmkit.hardware import setup_threads
    from slmkit.io import atomic_write_json, atomic_write_text, read_jsonl
    from slmkit.pipeline import fingerprints, run_stage
    from slmkit.runs import RunDir
    from slmkit.train.stage import run as train

    setup_threads()
    t_all = time.monotonic()
    cfg = _cfg(out, args.smoke, args.teacher_steps)
    teacher_run = RunDir.of(cfg).root
    fp = fingerprints(cfg)
    for stage in ("data", "train"):  # the teacher: the default model fine-tuned by slmkit (LoRA)
        run_stage(cfg, teacher_run, stage, fp, show_progress=not args.smoke)
    teacher = teacher_run / "train" / "final"
    student_init = out / "student_init"
    if not (student_init / "config.json").is_file():
        tok = tokenizer_of(teacher)
        texts = [
            tok.apply_chat_template(r["messages"], tokenize=False)
            for r in read_jsonl(teacher_run / "data" / "train.jsonl")[:128]
        ]
        prune(str(teacher), student_init, ratio=0.5, calibration=texts)
    steps = args.student_steps or (6 if args.smoke else None)
    epochs = 2.0
    base_train = {
        "method": "full",
        "lr": 1e-2 if args.smoke else 1e-4,
        "batch_size": cfg.train.batch_size,
        "max_seq_len": cfg.train.max_seq_len,
        "epochs": epochs,
        "max_steps": steps,
        "save_steps": 10**6,
        "logging_steps": 1 if args.smoke else 5,
        "warmup_ratio": 0.05,
    }
    # SFT-only student: labels only, same steps and learning rate as the distilled ones
    sft_dir = _variant_dir(out, teacher_run, "sft")
    if not (sft_dir / "train" / "final" / "config.json").is_file():
        sft_cfg = cfg.model_copy(
            update={
                "model": cfg.model.model_copy(update={"base_model": str(student_init)}),
                "train": cfg.train.model_copy(update=base_train),
            }
        )
        train(sft_cfg, sft_dir, show_progress=not args.smoke)
    dcfg = {
        "teacher": str(teacher),
        "student": {"model": str(student_init)},
        "loss": args.loss,
        "alpha": args.alpha,
        "kd_positions": args.kd_positions,
        "top_k": 64 if not args.smoke else 16,
        "train": base_train,
    }
    atomic_write_json(out / "distill_config.json", {**dcfg, "variant": args.variant})  # read back by --measure-step
    for mode in ("online", "offline"):
        d = _variant_dir(out, teacher_run, mode + args.variant)
        if not (d / "distill" / "final" / "config.json").is_file():
            distill(cfg, d, DistillConfig.model_validate({**dcfg, "mode": mode}), show_progress=not args.smoke)
    test = teacher_run / "data" / "test.jsonl"
    decode = 8 if args.smoke else 64
    models = {
        "teacher": teacher,
        "student_sft": sft_dir / "train" / "final",
        "student_online": out / f"online{args.variant}" / "distill" / "final",
        "student_offline": out / f"offline{args.variant}" / "distill" / "final",
    }
    results = {name: accuracy_and_speed(path, test, args.max_examples, decode) for name, path in models.items()}
    cache_manifest = json.loads((out / f"offline{args.variant}" / "distill" / "cache" / "manifest.json").read_text())
    steps_cost = {}
    for kind in ("sft", "offline"):  # fresh processes, so peak RSS is each step's own
        cmd = [sys.executable, __file__, "--out", str(out), "--measure-step", kind] + (
            ["--smoke"] if args.smoke else []
        )
        steps_cost[kind] = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        )
    report = {
        "results": results,
        "step_cost": steps_cost,
        "cache_bytes_per_token": cache_manifest["bytes_per_token"],
        "cache_tokens": cache_manifest["tokens"],
        "smoke": args.smoke,
        "loss": args.loss,
        "alpha": args.alpha,
        "wall_minutes": round((time.monotonic() - t_all) / 60, 1),
    }
    report["goals"] = goals(results, steps_cost)
    atomic_write_json(out / "results.json", report)
    atomic_write_text(out / "results.md", to_markdown(report))
    print(to_markdown(report))


def goals(r: dict, cost: dict) -> dict:
    t = r["teacher"]
    best = max(("student_online", "student_offline"), key=lambda k: r[k]["accuracy"])
    return {
        "distilled_beats_sft": r[best]["accuracy"] > r["student_sft"]["accuracy"],
        "keeps_95pct_teacher_accuracy": r[best]["accuracy"] >= 0.95 * t["accuracy"],
        "decodes_1.6x_faster": r[best]["decode_tok_s"] >= 1.6 * t["decode_tok_s"],
        "offline_step_le_1.3x_sft": cost["offline"]["seconds_per_step"] <= 1.3 * cost["sft"]["seconds_per_step"],
    }


def to_markdown(rep: dict) -> str:
    r, t = rep["results"], rep["results"]["teacher"]
    lines = [
        "| model | layers | params (M) | accuracy | vs teacher | decode tok/s | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in r.items():
        rel = m["accuracy"] / t["accuracy"] if t["accuracy"] else float("nan")
        lines.append(
            f"| {name} | {m['layers']} | {m['params_m']} | {m['accuracy']:.3f} | {rel:.0%} | {m['decode_tok_s']} | "
            f"{m['decode_tok_s'] / t['decode_tok_s']:.2f}x |"
        )
    c = rep["step_cost"]
    lines += ["", "| step | s/step | peak RSS (MB) |", "|---|---|---|"]
    lines += [f"| {k} | {v['seconds_per_step']} | {v['peak_rss_mb']} |" for k, v in c.items()]
    lines += [
        "",
        f"offline/SFT step time: {c['offline']['seconds_per_step'] / c['sft']['seconds_per_step']:.2f}x; "
        f"cache {rep['cache_bytes_per_token']} bytes/token over {rep['cache_tokens']} tokens; loss {rep['loss']}, "
        f"alpha {rep['alpha']}; wall {rep['wall_minutes']} min"
        + (" (SMOKE: tiny random model, numbers meaningless)" if rep["smoke"] else ""),
        "",
        "goals: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in rep["goals"].items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
