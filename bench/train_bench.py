"""Training speed and memory: slmkit's trainer against TRL's SFTTrainer, same model, data, batch and masking.

Each configuration runs in its own subprocess (so peak RSS is its own), on the same rows rendered with the
model's chat template, LoRA r=16 on all linear layers (or full fine-tuning), loss on the response only, batch 8.
Prints non-padding tokens/s, peak RSS and the held-out loss, as a table and as JSON. Tokens/s is measured after
the first optimizer step for every trainer (warm-up: allocator, thread pools, slmkit's torch.compile when on), and
also end to end with the first step; the first step's seconds are a column of their own.

    python bench/train_bench.py                 # LoRA + full, default model, 24 steps each
    python bench/train_bench.py --smoke         # 1 step each on a tiny random model (CI)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca_instructions" / "alpaca_5000.json"
EXAMPLE = ROOT / "examples" / "intent-router" / "data" / "clinc150_subset.csv"


def load_rows(n: int) -> list[dict]:
    """Chat rows of mixed length: alpaca instructions when ../shared is there, else the intent-router CSV."""
    if ALPACA.is_file():
        data = json.loads(ALPACA.read_text())
        rows = []
        for r in data:
            prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
            rows.append({"prompt": prompt, "response": r["output"]})
        source = "alpaca_instructions (CC BY-NC 4.0)"
    else:
        import csv

        rows = [{"prompt": r["text"], "response": r["intent"]} for r in csv.DictReader(EXAMPLE.open())]
        source = "intent-router CSV"
    step = max(1, len(rows) // n)
    return [dict(r, source=source) for r in rows[::step][:n]]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def peak_gpu_gb() -> float | None:
    """Peak GPU memory held by tensors (torch's allocator), or None without CUDA."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def heldout_loss(model, tok, rows: list[dict], max_len: int) -> float:
    """Assistant-token loss of a trained model on rows no trainer saw, scored the same way for every trainer."""
    import contextlib

    from slmkit.encoding import encode_chat
    from slmkit.train.loop import evaluate_loss

    exs = [
        encode_chat(
            tok, [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}], max_len
        )
        for r in rows
    ]
    return evaluate_loss(model, exs, tok.pad_token_id, 8, contextlib.nullcontext)


def token_count(tok, rows: list[dict], max_len: int) -> int:
    """Non-padding tokens the trainers see: the chat-rendered rows, truncated to max_len."""
    total = 0
    for r in rows:
        msgs = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
        total += min(
            max_len, len(tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"])
        )
    return total


# ----------------------------------------------------------------------------- workers (one per subprocess)


def steady(points: list[tuple[float, int]]) -> float | None:
    """Tokens/s between the end of the first optimizer step and the end of the last: [(seconds, tokens seen)]."""
    if len(points) < 2:
        return None
    (t0, n0), (t1, n1) = points[0], points[-1]
    return (n1 - n0) / max(t1 - t0, 1e-9)


def run_slmkit(
    model: str, rows: list[dict], heldout: list[dict], args, compile_: bool | str = "auto", dtype: str = "auto"
) -> dict:
    from slmkit.config import load_config
    from slmkit.io import atomic_write_jsonl
    from slmkit.models import load_model, load_tokenizer, resolve_model
    from slmkit.train.stage import run as train

    run = Path(tempfile.mkdtemp(prefix="bench-slm-"))
    if compile_ is True:  # a cold compile, as on a user's first run: an empty inductor cache, so step 1 pays it all
        __import__("os").environ["TORCHINDUCTOR_CACHE_DIR"] = str(run / "inductor-cache")
    recs = [
        {
            "id": str(i),
            "messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}],
            "label": None,
            "meta": {},
        }
        for i, r in enumerate(rows)
    ]
    atomic_write_jsonl(run / "data" / "train.jsonl", recs)
    cfg = load_config(
        None,
        {
            "model": {"base_model": model},
            "train": {
                "method": args.method,
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "max_seq_len": args.max_len,
                "lr": args.lr,
                "warmup_ratio": 0.0,
                "lr_scheduler": "constant",
                "save_steps": 10**6,
                "logging_steps": 1,
                "lora": {"r": 16, "alpha": 32},
                "micro_batch_size": args.micro,
                "compile": compile_,
                "dtype": dtype,
                "eval_steps": None,  # no val carved out of the train rows: every trainer sees the same rows
            },
        },
        environ={},
    )
    t0 = time.perf_counter()
    summary = train(cfg, run, show_progress=False)
    wall = time.perf_counter() - t0
    train_rss, train_gpu = peak_rss_gb(), peak_gpu_gb()  # before the held-out scoring loads a second copy
    log = [json.loads(x) for x in (run / "train" / "log.jsonl").read_text().splitlines()]
    tok = load_tokenizer(resolve_model(model))
    final = run / "train" / "final"
    trained = load_model(resolve_model(model), adapter=final) if args.method == "lora" else load_model(final)
    return {
        "tokens": summary["tokens"],
        "train_seconds": summary["seconds"],
        "wall_seconds": wall,
        "losses": [e["loss"] for e in log],
        "first_step_seconds": log[0]["seconds"],
        "compiled": summary["compiled"],
        "steady_tokens_per_s": steady([(e["seconds"], e["tokens"]) for e in log]),
        "train_peak_rss_gb": round(train_rss, 3),
        "peak_gpu_gb": train_gpu,
        "expected_tokens": token_count(tok, rows, args.max_len),
        "heldout_loss": heldout_loss(trained, tok, heldout, args.max_len),
    }


def run_trl(
    model: str, rows: list[dict], heldout: list[dict], args, packing: bool, bf16: bool, grad_ckpt: bool
) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from slmkit.models import load_tokenizer, resolve_model

    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    cuda = torch.cuda.is_available()
    path = str(resolve_model(model))
    tok = load_tokenizer(path)
    ds = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "completion": [{"role": "assistant", "content": r["response"]}],
            }
            for r in rows
        ]
    )
    losses: list[float] = []
    steps: list[tuple[float, int]] = []

    class Losses(TrainerCallback):
        def on_log(self, _args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

        def on_step_end(self, _args, state, control, **kw):
            steps.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    model_obj = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if bf16 else torch.float32)
    out = tempfile.mkdtemp(prefix="bench-trl-")
    cfg = SFTConfig(
        output_dir=out,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        # on a GPU every TRL setting gets bf16 mixed precision, as a GPU user would run it
        max_length=args.max_len,
        packing=packing,
        bf16=bf16 or cuda,
        use_cpu=not cuda,
        gradient_checkpointing=grad_ckpt,
        completion_only_loss=True,
        seed=0,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
    )
    peft_cfg = (
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        if args.method == "lora"
        else None
    )
    trainer = SFTTrainer(
        model=model_obj, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_cfg, callbacks=[Losses()]
    )
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    train_rss, train_gpu = peak_rss_gb(), peak_gpu_gb()
    seen = int(trainer.state.num_input_tokens_seen)  # non-padding tokens, counted by the Trainer itself
    return {
        "tokens": seen,
        "train_seconds": wall,
        "wall_seconds": wall,
        "losses": losses,
        "train_peak_rss_gb": round(train_rss, 3),
        "peak_gpu_gb": train_gpu,
        "first_step_seconds": steps[0][0] - t0 if steps else None,
        "steady_tokens_per_s": steady(steps),
        "expected_tokens": token_count(tok, rows, args.max_len),
        "heldout_loss": heldout_loss(trainer.model.float(), tok, heldout, args.max_len),
    }


CONFIGS = {
    "slmkit": lambda m, r, h, a: run_slmkit(m, r, h, a),
    "slmkit_compiled": lambda m, r, h, a: run_slmkit(m, r, h, a, compile_=True),
    "trl_default": lambda m, r, h, a: run_trl(m, r, h, a, packing=False, bf16=False, grad_ckpt=True),
    "trl_packing": lambda m, r, h, a: run_trl(m, r, h, a, packing=True, bf16=False, grad_ckpt=True),
    "trl_no_ckpt": lambda m, r, h, a: run_trl(m, r, h, a, packing=False, bf16=False, grad_ckpt=False),
    "trl_bf16": lambda m, r, h, a: run_trl(m, r, h, a, packing=False, bf16=True, grad_ckpt=True),
    "trl_bf16_packing": lambda m, r, h, a: run_trl(m, r, h, a, packing=True, bf16=True, grad_ckpt=True),
    "slmkit_bf16": lambda m, r, h, a: run_slmkit(m, r, h, a, dtype="bfloat16"),
    "slmkit_fp32": lambda m, r, h, a: run_slmkit(m, r, h, a, dtype="float32"),
}
BF16 = {"trl_bf16", "trl_bf16_packing", "slmkit_bf16"}  # run where the CPU has bf16 instructions (or on a GPU)
HELDOUT = 32


def worker(args) -> None:
    rows = load_rows(args.steps * args.batch_size + HELDOUT)
    rows, heldout = rows[:-HELDOUT], rows[-HELDOUT:]
    args.micro = args.micro if args.micro == "auto" else int(args.micro)
    res = CONFIGS[args.worker](args.model, rows, heldout, args)
    # peak_rss_gb is the training's own peak (process start to the end of training); the held-out scoring that
    # follows is the benchmark's, not the trainer's (slmkit's reloads the saved model, TRL's reuses it in memory)
    res.update(
        name=args.worker,
        method=args.method,
        peak_rss_gb=res.pop("train_peak_rss_gb"),
        process_peak_rss_gb=round(peak_rss_gb(), 3),
        data=rows[0]["source"],
    )
    print("RESULT " + json.dumps(res))


# ----------------------------------------------------------------------------- driver


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--micro", default="auto", help="slmkit train.micro_batch_size ('auto' or rows)")
    p.add_argument("--methods", default="lora,full")
    p.add_argument("--configs", default=None, help="comma list of " + ",".join(CONFIGS))
    p.add_argument("--smoke", action="store_true", help="1 step on a tiny random model")
    p.add_argument("--json", type=Path, default=None, help="also write results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--method", default="lora", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.smoke:
        sys.path.insert(0, str(ROOT))
        from tests.conftest import make_tiny_model_dir

        args.model, args.steps, args.batch_size = str(make_tiny_model_dir(Path(tempfile.mkdtemp()))), 1, 2
    import torch

    from slmkit.hardware import cpu_bf16

    bf16_here = torch.cuda.is_available() or cpu_bf16() is not None
    results = []
    for method in args.methods.split(","):
        names = (
            args.configs.split(",")
            if args.configs
            else [
                n
                for n in CONFIGS
                if (method == "lora" or "packing" not in n) and not (args.smoke and n == "slmkit_compiled")
            ]
        )
        for name in names:
            if name in BF16 and not bf16_here:
                print(
                    f"skip {name}: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 instructions "
                    "(a 2048^2 bf16 matmul ran ~500x slower than fp32 on such a CPU)"
                )
                continue
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--method",
                method,
                "--model",
                args.model,
                "--steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
                "--max-len",
                str(args.max_len),
                "--lr",
                str(args.lr),
                "--micro",
                str(args.micro),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{method}/{name} failed:\n{proc.stderr[-3000:]}")
                continue
            r = json.loads(line[7:])
            r["tokens_per_s"] = r["tokens"] / r["train_seconds"]
            results.append(r)
            r["steady_tokens_per_s"] = r["steady_tokens_per_s"] or r["tokens_per_s"]  # a 1-step run has no steady part
            print(
                f"{method:<5} {name:<15} {r['steady_tokens_per_s']:8.1f} tok/s after step 1 ({r['tokens_per_s']:.1f} with it, "
                f"step 1 {r['first_step_seconds']:.1f} s)  peak RSS {r['peak_rss_gb']:.2f} GB  "
                + (f"peak GPU {r['peak_gpu_gb']:.2f} GB  " if r.get("peak_gpu_gb") else "")
                + f"held-out loss {r['heldout_loss']:.4f}  ({r['train_seconds']:.1f} s)",
                flush=True,
            )
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_table(results: list[dict]) -> None:
    print(
        "\n| method | trainer | tokens/s after step 1 | tokens/s with step 1 | step 1 s | peak RSS GB | held-out loss "
        "| speed vs fastest TRL | memory vs that TRL |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [r for r in results if r["method"] == method]
        trl = [r for r in rows if r["name"].startswith("trl")]
        best = max(trl, key=lambda r: r["steady_tokens_per_s"]) if trl else None
        for r in rows:
            ratio = f"{r['steady_tokens_per_s'] / best['steady_tokens_per_s']:.2f}x" if best else "-"
            key = "peak_gpu_gb" if r.get("peak_gpu_gb") else "peak_rss_gb"  # on a GPU, compare GPU memory
            rss = f"{r[key] / best[key]:.2f}x" if best else "-"
            mem = f"{r['peak_rss_gb']:.2f}" + (f" (GPU {r['peak_gpu_gb']:.2f})" if r.get("peak_gpu_gb") else "")
            print(
                f"| {method} | {r['name']} | {r['steady_tokens_per_s']:.1f} | {r['tokens_per_s']:.1f} | {r['first_step_seconds']:.1f} "
                f"| {mem} | {r['heldout_loss']:.4f} | {ratio} | {rss} |"
            )


if __name__ == "__main__":
    main()
