"""Model quality on tasks nobody here tuned for: base model, the plain default recipe, and the autopilot (recipe
search within a budget), each trained from the data alone and scored on the data set's own test split.

    python bench/quality_bench.py --task snips --train-rows 2000 --budget 45m          # SNIPS slot filling
    python bench/quality_bench.py --task intent --recipes default                      # the demo's intent router
    python bench/quality_bench.py --task xquad --budget 30m                            # extractive QA (F1)

Tasks read ../shared/data (--data-root): snips = snips_slots (CC0; `type: span` answers scored by entity F1,
official 700-row test split), intent = the example's CLINC150 subset (accuracy), xquad = xquad_en (CC BY-SA 4.0;
SQuAD token F1 on a by-paragraph split). Each recipe is one `slm build` in runs/quality-bench/<task>-<recipe>/; the
table (with 95% intervals, collapse flags, train time, CPU model) is
printed and written to runs/quality-bench/<task>.json. Run it alone on the machine: training time is measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "quality-bench"
# The README's recipe for a new task (LoRA r16, one epoch, lr 3e-4), as a user would first try it.
DEFAULT_TRAIN = {"method": "lora", "epochs": 1, "lr": 3.0e-4, "batch_size": 8}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def snips_config(data_root: Path, rows: int, seed: int, prompt_kind: str = "short") -> dict:
    """2000 (by default) training sentences sampled from SNIPS train, the 700 official test sentences as test.
    prompt "types" lists the 39 slot types in the system prompt (~150 tokens a row: about two thirds of the trained tokens);
    "short" gives only the answer format, which a fine-tuned model learns from the rows anyway."""
    src = data_root / "snips_slots"
    sub = OUT / f"snips-train-{rows}"
    lines = {f: (src / "train" / f).read_text(encoding="utf-8").splitlines() for f in ("seq.in", "seq.out", "label")}
    pick = sorted(random.Random(seed).sample(range(len(lines["seq.in"])), rows))
    sub.mkdir(parents=True, exist_ok=True)
    for f, all_lines in lines.items():
        (sub / f).write_text("".join(all_lines[i] + "\n" for i in pick), encoding="utf-8")
    types = sorted({t[2:] for ln in lines["seq.out"] for t in ln.split() if t != "O"})
    prompt = "List the slots of the request as `type: span; type: span`, or `none` when there are none."
    if prompt_kind == "types":
        prompt += f" Slot types: {', '.join(types)}."
    return {
        "data": {
            "path": str(sub),
            "test_path": str(src / "test"),
            "system_prompt": prompt,
            "split": {"val": 0.1, "test": 0.0},
        },
        "eval": {"max_new_tokens": 48, "batch_size": 16},
    }


def intent_config(data_root: Path, rows: int, seed: int, prompt_kind: str = "short") -> dict:
    cfg = yaml.safe_load((ROOT / "examples" / "intent-router" / "build.yaml").read_text())
    cfg["data"]["path"] = str(ROOT / "examples" / "intent-router" / cfg["data"]["path"])
    return {"data": cfg["data"]}


def xquad_config(data_root: Path, rows: int, seed: int, prompt_kind: str = "short") -> dict:
    """XQuAD-en (CC BY-SA 4.0): 1,190 SQuAD v1.1 dev questions on 240 paragraphs, split by paragraph (the data
    stage keeps a context's questions together) into ~75% train, 10% val, 25% test; scored by SQuAD token F1."""
    return {
        "data": {
            "path": str(data_root / "xquad_en" / "xquad.en.json"),
            "system_prompt": "Answer the question with the shortest span of the text that answers it.",
            "split": {"val": 0.1, "test": 0.25},
        },
        "eval": {"max_new_tokens": 32, "batch_size": 8},
    }


TASKS = {"snips": snips_config, "intent": intent_config, "xquad": xquad_config}


def build(task: str, recipe: str, base: dict, budget_min: float, extra: list[str]) -> dict:
    name = f"{task}-{recipe}"
    cfg = {
        "name": name,
        "output_dir": str(OUT),
        "model": {"base_model": "default"},
        **base,
        "export": {"formats": ["merged"]},
        "stages": ["data", "train", "eval"],
    }
    cfg["train"] = dict(DEFAULT_TRAIN)
    if recipe == "autopilot":
        cfg["train"]["search"] = {"enabled": True, "budget_minutes": budget_min}
    conf = OUT / f"{name}.yaml"
    conf.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "slmkit.cli", "build", str(conf), "--no-progress", *extra],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        raise SystemExit(f"{name} failed:\n{res.stderr[-3000:]}")
    run = OUT / name
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    train = json.loads((run / "train" / "manifest.json").read_text())["summary"]
    return {
        "recipe": recipe,
        "seconds": round(time.monotonic() - t0, 1),
        "train_seconds": train["seconds"],
        "steps": train["steps"],
        "metrics": metrics,
        "train": train,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="snips")
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--recipes", default="default,autopilot", help="comma list of default, autopilot")
    ap.add_argument("--budget", default="45m", help="autopilot search budget, e.g. 45m")
    ap.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", choices=["short", "types"], default="short", help="snips: the system prompt")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for every build")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    budget = float(args.budget.rstrip("m"))
    base = TASKS[args.task](args.data_root, args.train_rows, args.seed, args.prompt)
    extra = [x for s in args.sets for x in ("--set", s)]
    results = [build(args.task, r, base, budget, extra) for r in args.recipes.split(",")]
    path = OUT / f"{args.task}.json"
    if path.is_file():  # recipes run earlier (with the same settings) stay beside the new ones
        earlier = json.loads(path.read_text())
        same = all(earlier.get(k) == v for k, v in (("train_rows", args.train_rows), ("prompt", args.prompt)))
        ran = {r["recipe"] for r in results}
        results = [r for r in earlier.get("results", []) if same and r["recipe"] not in ran] + results
    out = {
        "task": args.task,
        "cpu": cpu_model(),
        "date": time.strftime("%Y-%m-%d"),
        "train_rows": args.train_rows,
        "prompt": args.prompt,
        "results": results,
    }
    path.write_text(json.dumps(out, indent=1))
    print(f"{args.task} on {out['cpu']}")
    for r in results:
        m = r["metrics"]
        for model, scores in m["models"].items():
            q = m["quality"][model]
            head = q["metric"]
            flag = " COLLAPSED: " + q["collapse"]["reason"] if q["collapse"]["collapsed"] else ""
            print(
                f"  {r['recipe']:<9} {model:<8} {head} {scores[head]:.3f} [{q['ci95'][0]:.3f}, {q['ci95'][1]:.3f}] "
                f"n={m['n']} train {r['train_seconds']:.0f} s, {r['steps']} steps{flag}"
            )


if __name__ == "__main__":
    main()
