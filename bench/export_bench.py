"""Export benchmark (issue 8): size on disk and greedy decode tokens/s of each export format vs the PyTorch model.

Full (CPU, a few minutes: the embedded SmolLM2-135M-Instruct to GGUF f16/q8_0, ONNX int4/int8, torch.export):
    python bench/export_bench.py --out runs/bench-export
A fine-tuned run (its merged export, every 4-bit recipe too, with the task metric on the run's whole test split):
    python bench/export_bench.py --run runs/intent-router --out runs/bench-export-demo
Smoke (seconds, tiny random llama, checks the plumbing only):
    python bench/export_bench.py --smoke
Decode speed = (N - 1) / (time for N new tokens - time for 1), so prompt prefill is left out. GGUF runs in
llama.cpp where the llamacpp extra is installed, else it is read by transformers, which dequantises to fp32 (its
speed is then PyTorch's, and is reported as such). The .pt2 program has no KV cache, so it recomputes the whole prefix per token.
Writes <out>/results.json and <out>/results.md (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rate(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.1f}"


def decode_rate(backend, n: int) -> float | None:
    """Tokens/s of greedy decoding, prefill excluded; eos is suppressed so every run makes n tokens."""
    import torch

    ids = backend.prompt_ids(PROMPT)
    if getattr(backend, "llm", None) is not None:  # llama.cpp
        from slmkit.llamacpp_runtime import last_logits

        def run(k: int) -> None:
            backend.llm.reset()
            backend.llm.eval(ids)
            for _ in range(k - 1):
                backend.llm.eval([int(last_logits(backend.llm, backend.vocab).argmax())])

        run(2)
        t1, tn = _timed(lambda: run(1)), _timed(lambda: run(n))
    elif backend.kind in ("torch", "gguf"):
        enc = torch.tensor([ids])
        kw = dict(do_sample=False, pad_token_id=backend.tok.pad_token_id)
        with torch.no_grad():
            run = lambda k: backend.model.generate(enc, max_new_tokens=k, min_new_tokens=k, **kw)  # noqa: E731
            run(2)  # warm-up
            t1, tn = _timed(lambda: run(1)), _timed(lambda: run(n))
    elif backend.kind == "onnx":
        import onnxruntime_genai as og

        def run(k: int) -> None:
            params = og.GeneratorParams(backend.model)
            params.set_search_options(max_length=len(ids) + k, min_length=len(ids) + k, do_sample=False)
            gen = og.Generator(backend.model, params)
            gen.append_tokens([ids])
            while not gen.is_done():
                gen.generate_next_token()

        run(2)
        t1, tn = _timed(lambda: run(1)), _timed(lambda: run(n))
    else:  # pt2: full recompute per token

        def run(k: int) -> None:
            seq = list(ids)
            for _ in range(k):
                seq.append(int(backend.next_token_logits(seq).argmax()))

        t1, tn = _timed(lambda: run(1)), _timed(lambda: run(n))
    # None when timer noise swamps the difference (tiny models in --smoke): no rate beats a made-up one
    return (n - 1) / (tn - t1) if tn > t1 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny random llama, a few tokens")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument(
        "--run", type=Path, default=None, help="a finished run: export its merged model, score its test split"
    )
    ap.add_argument("--rows", type=int, default=100_000, help="--run: test rows scored (spread over the split)")
    ap.add_argument("--only", default=None, help="comma list of formats to build, e.g. 'gguf q4_k_m,onnx int4_hqq'")
    args = ap.parse_args()

    import torch

    from slmkit.eval.backends import load_backend
    from slmkit.export.gguf import write_gguf
    from slmkit.export.onnx import build_onnx
    from slmkit.export.pt2 import export_pt2
    from slmkit.export.verify import compare_logits
    from slmkit.hardware import setup_threads

    setup_threads()
    work = Path(tempfile.mkdtemp(prefix="slm-export-bench-"))
    if args.smoke:
        from tests.unit.test_export_formats import make_bpe_llama

        src, n = make_bpe_llama(work / "src"), min(args.tokens, 8)
    elif args.run:
        src, n = args.run / "export" / "merged", args.tokens
    else:
        from slmkit.models import resolve_model

        src, n = resolve_model("default"), args.tokens
    out = args.out or work / "results"
    builds = {
        "gguf f16": lambda: write_gguf(src, work / "gguf" / "model-f16.gguf", "f16"),
        "gguf q8_0": lambda: write_gguf(src, work / "gguf" / "model-q8_0.gguf", "q8_0"),
        "onnx int4": lambda: build_onnx(src, work / "onnx-int4", "int4"),
        "onnx int8": lambda: build_onnx(src, work / "onnx-int8", "int8"),
        "pt2": lambda: export_pt2(src, work / "pt2", 512).parent,
    }
    rows = None
    if args.run:  # the 4-bit recipes, scored on the task: what `export quant: auto` chooses between
        from slmkit.eval import max_new_tokens_for
        from slmkit.export import onnx
        from slmkit.export.verify import load_eval_rows

        del builds["pt2"], builds["gguf f16"]
        from slmkit.export.gguf import LLAMA_RECIPES
        from slmkit.export.stage import recipes_for
        from slmkit.llamacpp_runtime import installed

        # the 4-bit ladder, and every llama.cpp recipe where it is installed
        for q in dict.fromkeys([*recipes_for("gguf", "auto")[:-1], *(LLAMA_RECIPES if installed() else ())]):
            builds[f"gguf {q}"] = lambda q=q: write_gguf(src, work / "gguf" / q / f"model-{q}.gguf", q)
        if installed():  # the importance-matrix recipes, calibrated on 256 train rows as the export stage does
            from slmkit.export.gguf import IMATRIX_RECIPES
            from slmkit.export.imatrix import calibration_texts, collect

            train, matrix = load_eval_rows(args.run, 256, split="train"), {}

            def imatrix():
                if not matrix:
                    matrix.update(collect(source.model, source.tok, calibration_texts(*train[:2], source.tok)))
                return matrix

            for q in IMATRIX_RECIPES:
                path = work / "gguf" / q / f"model-{q}.gguf"
                builds[f"gguf {q}"] = lambda q=q, path=path: write_gguf(src, path, q, imatrix=imatrix())
        for q in dict.fromkeys([*onnx.FOUR_BIT, *onnx.HQQ]):
            builds[f"onnx {q}"] = lambda q=q: build_onnx(src, work / f"onnx-{q}", q)
        rows = load_eval_rows(args.run, args.rows)
    if args.only:
        keep = [k.strip() for k in args.only.split(",")]
        builds = {k: v for k, v in builds.items() if k in keep}
    source = load_backend(str(src), name="pytorch fp32")
    if rows:
        new_tokens = max_new_tokens_for(source.tok, rows[1], rows[2], 32)
        source_preds = source.generate(rows[0], new_tokens, 16)
    results = [
        {
            "format": "pytorch fp32 (safetensors)",
            "bytes": sum(_size(f) for f in Path(src).glob("*.safetensors")),
            "export_s": 0.0,
            "decode_tok_s": decode_rate(source, n),
            "max_abs_logit_diff": 0.0,
            "runtime": "PyTorch",
        }
    ]
    for name, build in builds.items():
        t0 = time.perf_counter()
        path = build()
        export_s = time.perf_counter() - t0
        backend = load_backend(str(path), name=name)
        diff = compare_logits(source, backend)["max_abs_diff"]
        metric = None
        if rows:
            from slmkit.export.verify import compare_metric

            metric = compare_metric(source, backend, *rows, new_tokens, 16, source_preds)
        runtime = {
            "gguf": "llama.cpp" if backend.info.get("reader") == "llama.cpp" else "transformers (dequantised fp32)",
            "onnx": "onnxruntime-genai",
            "pt2": "torch.export, no KV cache",
        }[backend.kind]
        results.append(
            {
                "format": name,
                "bytes": _size(path),
                "export_s": export_s,
                "decode_tok_s": decode_rate(backend, n),
                "max_abs_logit_diff": diff,
                "runtime": runtime,
                "metric": metric,
            }
        )
        shown = f", {metric['metric']} {metric['export']:.4f} (-{metric['drop_points']:.1f})" if metric else ""
        print(
            f"{name}: {results[-1]['bytes'] / 1e6:.1f} MB, {_rate(results[-1]['decode_tok_s'])} tok/s, "
            f"diff {diff:.3g}{shown}",
            flush=True,
        )
        del backend
    model = "tiny random llama (smoke)" if args.smoke else f"run {args.run}" if args.run else "SmolLM2-135M-Instruct"
    lines = [f"Model: {model}, {n} new tokens, {torch.get_num_threads()} threads, CPU", ""]
    if rows:
        m = results[1]["metric"]
        lines[0] += f"; {m['metric']} on the run's {m['n']} test rows (pytorch fp32: {m['source']:.4f})"
    lines += [
        "| format | size (MB) | % of fp32 | export (s) | decode tok/s | max abs logit diff |"
        + (" metric | drop (points) |" if rows else "")
        + " runtime |",
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if rows else "") + "---|",
    ]
    fp32 = results[0]["bytes"]
    lines += [
        f"| {r['format']} | {r['bytes'] / 1e6:.1f} | {100 * r['bytes'] / fp32:.0f}% | {r['export_s']:.1f} | "
        f"{_rate(r['decode_tok_s'])} | {r['max_abs_logit_diff']:.3g} |"
        + (
            f" {r['metric']['export']:.4f} | {r['metric']['drop_points']:.1f} |"
            if r.get("metric")
            else (" | |" if rows else "")
        )
        + f" {r['runtime']} |"
        for r in results
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {out / 'results.md'}")


if __name__ == "__main__":
    main()
