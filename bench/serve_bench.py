"""Serving benchmark: `slm serve` under concurrent streaming load, next to plain `generate` baselines.

    python bench/serve_bench.py default --concurrency 1 8 32 --tokens 128 [--onnx-folder DIR] [--out results.json]

For each concurrency C it sends C streaming chat requests at once (greedy, `ignore_eos` so each produces exactly
--tokens tokens) and reports aggregate output tokens/s, p50/p95 time to first token and latency, and failures.
Baselines, measured in the same run after the server has stopped (so they do not share the CPU with it):
`model.generate` for one stream and for a hand-built batch of the largest C, and onnxruntime-genai for one
stream when --onnx-folder points at an ORT GenAI export.
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
import time

import httpx

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(target: str, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "slmkit.serve.cli", target, "--port", str(port),
                             "--max-batch-size", str(max_batch), "--served-model-name", "bench"],
                            env={**os.environ, "SLM_API_KEY": ""})
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/ping", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise SystemExit("server exited during startup")
    raise SystemExit("server did not start")


async def one_request(client: httpx.AsyncClient, tokens: int) -> dict:
    body = {"model": "bench", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
    start, first, used = time.perf_counter(), None, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return {"ok": False}
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if first is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if event.get("usage"):
                used = event["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"ok": used == tokens, "ttft": (first or end) - start, "latency": end - start, "tokens": used}


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


async def load(base: str, concurrency: int, tokens: int) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=3600) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_request(client, tokens) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ok = [r for r in results if r["ok"]]
    if not ok:
        return {"concurrency": concurrency, "failed": concurrency}
    return {"concurrency": concurrency, "tok_s": round(sum(r["tokens"] for r in ok) / wall, 1),
            "ttft_p50": round(_pct([r["ttft"] for r in ok], 50), 3), "ttft_p95": round(_pct([r["ttft"] for r in ok], 95), 3),
            "lat_p50": round(_pct([r["latency"] for r in ok], 50), 3), "lat_p95": round(_pct([r["latency"] for r in ok], 95), 3),
            "failed": concurrency - len(ok)}


def generate_baseline(target: str, batch: int, tokens: int) -> float:
    """Output tokens/s of plain greedy `model.generate` on a hand-built left-padded batch."""
    import torch

    from slmkit.serve.engine import Engine

    eng = Engine.load(target)
    tok, model = eng.tok, eng.model
    tok.padding_side = "left"
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    enc = tok([text] * batch, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        start = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        wall = time.perf_counter() - start
    return round((out.shape[1] - enc["input_ids"].shape[1]) * batch / wall, 1)


def ort_genai_baseline(folder: str, tokens: int) -> float:
    import onnxruntime_genai as og

    model = og.Model(folder)
    tok = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=4096, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(tok.encode(PROMPT))
    start, n = time.perf_counter(), 0
    while n < tokens and not gen.is_done():
        gen.generate_next_token()
        n += 1
    return round(n / (time.perf_counter() - start), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", nargs="?", default="default")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--onnx-folder", default=None)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    proc, base = start_server(args.target, max(args.concurrency))
    try:
        asyncio.run(load(base, 1, 4))  # warm-up
        rows = [asyncio.run(load(base, c, args.tokens)) for c in args.concurrency]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    baselines = {"generate_1": generate_baseline(args.target, 1, args.tokens),
                 f"generate_batch_{max(args.concurrency)}": generate_baseline(args.target, max(args.concurrency), args.tokens)}
    if args.onnx_folder:
        baselines["ort_genai_1"] = ort_genai_baseline(args.onnx_folder, args.tokens)

    print(f"\n{args.target}, {args.tokens} new tokens, greedy\n")
    print("| concurrency | tok/s | TTFT p50 | TTFT p95 | latency p50 | latency p95 | failed |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r.get('tok_s', '-')} | {r.get('ttft_p50', '-')} | {r.get('ttft_p95', '-')} | "
              f"{r.get('lat_p50', '-')} | {r.get('lat_p95', '-')} | {r['failed']} |")
    print("\nbaselines (tok/s): " + ", ".join(f"{k} {v}" for k, v in baselines.items()))
    if args.out:
        from slmkit.io import atomic_write_json

        atomic_write_json(args.out, {"target": args.target, "tokens": args.tokens, "server": rows, "baselines": baselines})


if __name__ == "__main__":
    main()
