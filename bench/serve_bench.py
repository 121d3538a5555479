"""Serving benchmark: `slm serve` (torch and onnx backends) under concurrent streaming load, next to baselines.

    python bench/serve_bench.py default --concurrency 1 8 32 --tokens 128 [--backends torch onnx]
                                [--onnx-folder DIR] [--work-dir DIR] [--out results.json]
    python bench/serve_bench.py --smoke    # seconds: tiny random llama, both backends; checks the plumbing only

For each backend and concurrency C it sends C streaming chat requests at once (greedy, `ignore_eos` so each
produces exactly --tokens tokens) and reports aggregate output tokens/s, p50/p95 time to first token and latency,
and failed requests. Baselines, measured after the servers have stopped (so they do not share the CPU with them):

    generate_1, generate_batch_C   transformers `model.generate`, one stream and a hand-built left-padded batch of C
    ort_genai_1, ort_genai_batch_C onnxruntime-genai alone on the same ONNX export, one generator of 1 and C rows

All of them time the same chat-templated prompt from start to last token, prefill included, as the server's
requests are. The ONNX export is --onnx-folder, else the target run's export/onnx-*, else an int4 export of the
target built once into --work-dir. Goals, printed as ratios:
    onnx server at concurrency 1 / ort_genai_1             >= 0.9  (within 10% of standalone onnxruntime-genai)
    torch server at the largest C / generate_batch_C       >= 2.0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
GOALS = {"onnx_conc1_vs_ort_genai_1": 0.9, "torch_conc_max_vs_generate_batch": 2.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(target: str, backend: str, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    extra = ["--backend", "torch", "--no-pack-weights"] if backend == "torch-plain" else ["--backend", backend]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slmkit.serve.cli",
            target,
            "--port",
            str(port),
            *extra,
            "--max-batch-size",
            str(max_batch),
            "--served-model-name",
            "bench",
        ],
        env={**os.environ, "SLM_API_KEY": ""},
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/ping", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise SystemExit(f"the {backend} server exited during startup")
    raise SystemExit(f"the {backend} server did not start")


async def one_request(client: httpx.AsyncClient, tokens: int, prompt: str = PROMPT) -> dict:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    start, first, used = time.perf_counter(), None, 0
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return {"ok": False, "status": r.status_code}
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if first is None and event.get("choices") and event["choices"][0]["delta"].get("content"):
                    first = time.perf_counter()
                if event.get("usage"):
                    used = event["usage"]["completion_tokens"]
    except httpx.HTTPError as e:  # a dropped connection counts as a failed request, not a crashed benchmark
        return {"ok": False, "status": type(e).__name__}
    end = time.perf_counter()
    return {"ok": used == tokens, "ttft": (first or end) - start, "latency": end - start, "tokens": used}


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


async def load(base: str, concurrency: int, tokens: int) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=3600) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_request(client, tokens) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return summarize(concurrency, results, wall)


def summarize(label: int | str, results: list[dict], wall: float) -> dict:
    """Aggregate output tokens/s, TTFT and latency percentiles, and failures of one load."""
    ok = [r for r in results if r["ok"]]
    row = {"concurrency": label, "failed": len(results) - len(ok)}
    if not ok:
        return row
    ttft, lat = [r["ttft"] for r in ok], [r["latency"] for r in ok]
    return {
        **row,
        "tok_s": round(sum(r["tokens"] for r in ok) / wall, 1),
        "ttft_p50": round(_pct(ttft, 50), 3),
        "ttft_p95": round(_pct(ttft, 95), 3),
        "lat_p50": round(_pct(lat, 50), 3),
        "lat_p95": round(_pct(lat, 95), 3),
    }


# Mixed workload (--mixed): different prompts and reply lengths, all sent at once. A hand-built static batch pads
# the prompts and decodes every row until the longest reply is done; continuous batching drops rows as they finish.
MIXED_PROMPTS = [
    PROMPT,
    "What is the capital of France?",
    "List three uses of a paperclip, with one sentence on each.",
    "Explain, step by step and with an example, how a hash map resolves collisions.",
]
MIXED_TOKENS = [16, 32, 64, 128, 256]


def mixed_jobs(n: int) -> list[tuple[str, int]]:
    return [(MIXED_PROMPTS[i % len(MIXED_PROMPTS)], MIXED_TOKENS[i % len(MIXED_TOKENS)]) for i in range(n)]


async def load_mixed(base: str, n: int) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=3600) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_request(client, t, p) for p, t in mixed_jobs(n)))
        wall = time.perf_counter() - start
    return summarize(f"mixed-{n}", results, wall)


def generate_mixed_baseline(target: str, n: int) -> float:
    """Useful tokens/s of one hand-built static batch of the mixed jobs: padded prompts, decoded to the longest reply."""
    jobs = mixed_jobs(n)
    wall = timed_generate(target, [[{"role": "user", "content": p}] for p, _ in jobs], max(t for _, t in jobs))
    return round(sum(t for _, t in jobs) / wall, 1)


def measure_server(target: str, backend: str, concurrency: list[int], tokens: int, mixed: int = 0) -> list[dict]:
    proc, base = start_server(target, backend, max([*concurrency, mixed]))
    try:
        asyncio.run(load(base, 1, 4))  # warm-up: first-call allocations and lazy imports stay out of the numbers
        rows = [asyncio.run(load(base, c, tokens)) for c in concurrency]
        return rows + ([asyncio.run(load_mixed(base, mixed))] if mixed else [])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _chat_text(tok) -> str:
    return tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)


def timed_generate(target: str, chats: list[list[dict]], tokens: int) -> float:
    """Seconds of one greedy `model.generate` of exactly `tokens` new tokens on the left-padded chats (nn.Linear, as
    loaded: the plain transformers baseline a user would write by hand)."""
    import torch

    from slmkit.config.serve import ServeConfig
    from slmkit.serve.load import load_engine

    eng = load_engine(target, ServeConfig(backend="torch", pack_weights=False))
    tok, model = eng.tok, eng.model
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        start = time.perf_counter()
        model.generate(
            **enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
        return time.perf_counter() - start


def generate_baseline(target: str, batch: int, tokens: int) -> float:
    """Output tokens/s of plain greedy `model.generate` on a hand-built batch of `batch` copies of the prompt."""
    return round(batch * tokens / timed_generate(target, [[{"role": "user", "content": PROMPT}]] * batch, tokens), 1)


def ort_genai_baseline(folder: str, batch: int, tokens: int) -> float:
    """Output tokens/s of onnxruntime-genai alone: one generator over `batch` copies of the prompt, greedy."""
    import onnxruntime_genai as og

    from slmkit.models import load_tokenizer

    tok = load_tokenizer(folder)  # the server's tokenizer and template, so both run the same ids
    ids = tok(_chat_text(tok), add_special_tokens=False)["input_ids"]
    model = og.Model(folder)

    def run(n: int) -> float:
        params = og.GeneratorParams(model)
        length = len(ids) + n
        params.set_search_options(max_length=length, min_length=length, do_sample=False, batch_size=batch)
        gen = og.Generator(model, params)
        start = time.perf_counter()
        gen.append_tokens([ids] * batch)
        for _ in range(n):
            gen.generate_next_token()
        return time.perf_counter() - start

    run(2)  # warm-up
    return round(batch * tokens / run(tokens), 1)


def onnx_folder_for(target: str, given: str | None, work_dir: Path) -> str:
    """The ONNX export to serve and time: --onnx-folder, the run's export/onnx-*, or an int4 export made once."""
    from slmkit.errors import SlmError
    from slmkit.onnx_runtime import find_onnx_folder

    if given:
        return given
    try:
        return str(find_onnx_folder(target))
    except SlmError:
        pass
    from slmkit.export.onnx import build_onnx
    from slmkit.runs import resolve_target

    dest = work_dir / "onnx-int4"
    if not (dest / "genai_config.json").is_file():
        model_path, adapter, _ = resolve_target(target)
        if adapter is not None:
            raise SystemExit(f"{target} is a LoRA adapter: export the run first or pass --onnx-folder")
        print(f"building an int4 ONNX export of {model_path} in {dest} ...", flush=True)
        build_onnx(Path(model_path), dest, "int4")
    return str(dest)


def tiny_model(path: Path) -> Path:
    """A 2-layer random llama with the tests' tiny tokenizer; head size 16, the smallest ORT's attention takes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def goal_ratios(servers: dict[str, list[dict]], baselines: dict[str, float], c_max: int) -> dict[str, float]:
    """Server throughput over its baseline, for the goals that the measured backends allow."""

    def tok_s(backend: str, c: int) -> float | None:
        return next((r.get("tok_s") for r in servers.get(backend, []) if r["concurrency"] == c), None)

    ratios = {}
    if tok_s("onnx", 1) and baselines.get("ort_genai_1"):
        ratios["onnx_conc1_vs_ort_genai_1"] = round(tok_s("onnx", 1) / baselines["ort_genai_1"], 2)
    batch = baselines.get(f"generate_batch_{c_max}")
    if tok_s("torch", c_max) and batch:
        ratios["torch_conc_max_vs_generate_batch"] = round(tok_s("torch", c_max) / batch, 2)
    return ratios


def print_report(target: str, tokens: int, servers: dict[str, list[dict]], baselines: dict, ratios: dict) -> None:
    print(f"\n{target}, {tokens} new tokens per request, greedy\n")
    print("| backend | concurrency | tok/s | TTFT p50 | TTFT p95 | latency p50 | latency p95 | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for backend, rows in servers.items():
        for r in rows:
            print(
                f"| {backend} | {r['concurrency']} | {r.get('tok_s', '-')} | {r.get('ttft_p50', '-')} | "
                f"{r.get('ttft_p95', '-')} | {r.get('lat_p50', '-')} | {r.get('lat_p95', '-')} | {r['failed']} |"
            )
    print("\nbaselines (tok/s): " + ", ".join(f"{k} {v}" for k, v in baselines.items()))
    for backend, rows in servers.items():  # continuous vs static batching on mixed lengths: context, not a goal
        for r in rows:
            static = baselines.get(f"generate_static_{str(r['concurrency']).replace('-', '_')}")
            if backend.startswith("torch") and isinstance(r["concurrency"], str) and static and r.get("tok_s"):
                print(
                    f"{backend} {r['concurrency']} / one static generate batch of the same jobs: {r['tok_s'] / static:.2f}x"
                )
    for name, ratio in ratios.items():
        print(f"goal {name}: {ratio} (want >= {GOALS[name]}: {'met' if ratio >= GOALS[name] else 'missed'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", nargs="?", default="default")
    ap.add_argument(
        "--backends",
        nargs="+",
        choices=["torch", "torch-plain", "onnx"],
        default=["torch", "onnx"],
        help="torch-plain: the torch server with --no-pack-weights, to show what packing buys",
    )
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--onnx-folder", default=None, help="ONNX export to use (default: the run's, or one built)")
    ap.add_argument("--work-dir", type=Path, default=None, help="where a missing ONNX export is built")
    ap.add_argument(
        "--mixed",
        type=int,
        default=0,
        metavar="N",
        help="also send N requests of mixed prompts and reply lengths (16-256 tokens) at once, next to "
        "one static generate batch of them",
    )
    ap.add_argument("--smoke", action="store_true", help="tiny random model, 8 tokens, concurrency 1 and 2")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="slm-serve-bench-"))
    if args.smoke:
        args.target, args.tokens, args.concurrency = str(tiny_model(work_dir / "tiny")), 8, [1, 2]
    c_max = max(args.concurrency)
    onnx = onnx_folder_for(args.target, args.onnx_folder, work_dir) if "onnx" in args.backends else None

    servers = {
        b: measure_server(onnx if b == "onnx" else args.target, b, args.concurrency, args.tokens, args.mixed)
        for b in args.backends
    }
    baselines: dict[str, float] = {}
    if {"torch", "torch-plain"} & set(args.backends):
        baselines["generate_1"] = generate_baseline(args.target, 1, args.tokens)
        baselines[f"generate_batch_{c_max}"] = generate_baseline(args.target, c_max, args.tokens)
        if args.mixed:
            baselines[f"generate_static_mixed_{args.mixed}"] = generate_mixed_baseline(args.target, args.mixed)
    if onnx:
        baselines["ort_genai_1"] = ort_genai_baseline(onnx, 1, args.tokens)
        baselines[f"ort_genai_batch_{c_max}"] = ort_genai_baseline(onnx, c_max, args.tokens)
    ratios = goal_ratios(servers, baselines, c_max)
    print_report(args.target, args.tokens, servers, baselines, ratios)
    if args.out:
        from slmkit.io import atomic_write_json

        atomic_write_json(
            args.out,
            {
                "target": args.target,
                "onnx_folder": onnx,
                "tokens": args.tokens,
                "server": servers,
                "baselines": baselines,
                "goal_ratios": ratios,
                "goals": GOALS,
            },
        )


if __name__ == "__main__":
    main()
