"""Make a student from the teacher: depth pruning by measured layer importance, width pruning of MLP channels.

Depth: a block whose output hidden state points the same way as its input changes little; importance =
1 - mean cosine(input, output) over calibration tokens ("Block Influence", Men et al. 2024, ShortGPT).
Width: an MLP channel's importance is the mean |activation| entering down_proj on calibration tokens
(Muralidharan et al. 2024, Minitron). The result is a normal HF folder (config with updated
num_hidden_layers / intermediate_size) that loads with AutoModelForCausalLM anywhere.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from slmkit.encoding import padded_batches
from slmkit.errors import SlmError
from slmkit.io import atomic_dir, atomic_write_json, read_jsonl
from slmkit.models import load_model, load_tokenizer, resolve_model

log = logging.getLogger("slmkit")

# Used only when no calibration data is given; real data from the task measures importance better.
GENERIC_CALIBRATION = [
    "The weather today is sunny with a light breeze from the west.",
    "Please set an alarm for seven thirty tomorrow morning.",
    "Translate 'good evening' into French and Spanish.",
    "Write a short summary of the main causes of the First World War.",
    "What is the capital of Australia, and how many people live there?",
    "def add(a, b):\n    return a + b",
    "Book a table for two at an Italian restaurant near the station.",
    "Explain why the sky is blue in two sentences.",
]


def load_full_model(name: str | Path, trust_remote_code: bool = False):
    """(model, tokenizer) with full fp32 weights; a slmkit LoRA output folder is merged into its base."""
    path = Path(name).expanduser()
    if (path / "adapter_config.json").is_file():
        meta = path / "slmkit.json"
        base = (
            json.loads(meta.read_text())["base_model"]
            if meta.is_file()
            else json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        )
        if not base:
            raise SlmError(f"{path}: LoRA adapter without a base model name", "use the export/merged folder instead")
        model = load_model(resolve_model(base), "float32", "cpu", trust_remote_code, adapter=path).merge_and_unload()
        return model.eval(), load_tokenizer(path, trust_remote_code)
    resolved = resolve_model(str(name))
    return load_model(resolved, "float32", "cpu", trust_remote_code), load_tokenizer(resolved, trust_remote_code)


def tokenizer_of(name: str | Path, trust_remote_code: bool = False):
    """Tokenizer of a model name/folder, or of a slmkit LoRA output folder (which saves its tokenizer)."""
    path = Path(name).expanduser()
    if (path / "adapter_config.json").is_file():
        return load_tokenizer(path, trust_remote_code)
    return load_tokenizer(resolve_model(str(name)), trust_remote_code)


def weights_folder(name: str) -> Path | None:
    """Local folder holding the weights of `name` (the base model for a slmkit LoRA folder); None for hub ids."""
    path = Path(name).expanduser()
    if (path / "adapter_config.json").is_file() and (path / "slmkit.json").is_file():
        return weights_folder(json.loads((path / "slmkit.json").read_text())["base_model"])
    resolved = resolve_model(name)
    return resolved if isinstance(resolved, Path) else None


def param_count(name: str) -> int | None:
    """Parameters read from safetensors headers (no weights loaded); None for hub ids."""
    from safetensors import safe_open

    folder = weights_folder(name)
    if folder is None:
        return None
    total = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as sf:
            total += sum(math.prod(sf.get_slice(k).get_shape()) for k in sf.keys())
    return total


def decoder_layers(model) -> torch.nn.ModuleList:
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise SlmError(
            f"cannot prune {model.config.model_type}: its decoder has no `layers` list",
            "use a llama-style model (llama, qwen2, mistral, SmolLM...)",
        )
    return layers


def read_calibration(path: str | Path | None, tok, limit: int = 128) -> list[str]:
    """Texts from a JSONL of chat records ("messages") or {"text"}, or a plain text file (one sample a line)."""
    if path is None:
        return GENERIC_CALIBRATION
    path = Path(path)
    if not path.is_file():
        raise SlmError(
            f"calibration file not found: {path}", "pass --data with a JSONL (messages or text) or text file"
        )
    if path.suffix == ".jsonl":
        rows = read_jsonl(path)[:limit]
        texts = [
            tok.apply_chat_template(r["messages"], tokenize=False) if "messages" in r else str(r.get("text", ""))
            for r in rows
        ]
    else:
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise SlmError(f"{path}: no calibration text found", "rows need a 'messages' or 'text' field")
    return texts


@torch.no_grad()
def measure_importance(
    model, tok, texts: list[str], max_len: int = 256, batch_size: int = 8
) -> tuple[list[float], list[torch.Tensor]]:
    """Per-layer importance (1 - cos(in, out), [L]) and per-layer MLP channel importance ([L] x [I]) on `texts`."""
    layers = decoder_layers(model)
    n = len(layers)
    cos_sum, tok_count = torch.zeros(n, dtype=torch.float64), 0
    chan: list[torch.Tensor | None] = [None] * n
    state: dict = {}

    def pre(i):
        def hook(_mod, args, kwargs):
            state[i] = args[0] if args else kwargs["hidden_states"]

        return hook

    def post(i):
        def hook(_mod, _args, _kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(state.pop(i).float(), out.float(), dim=-1)  # [B, T]
            cos_sum[i] += float(cos[state["mask"]].sum())

        return hook

    def down(i):
        def hook(_mod, args):
            act = args[0].float().abs()[state["mask"]].sum(0)  # [I]
            chan[i] = act if chan[i] is None else chan[i] + act

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles += [
            layer.register_forward_pre_hook(pre(i), with_kwargs=True),
            layer.register_forward_hook(post(i), with_kwargs=True),
        ]
        proj = getattr(getattr(layer, "mlp", None), "down_proj", None)
        if proj is not None:
            handles.append(proj.register_forward_pre_hook(down(i)))
    try:
        model.eval()
        for enc in padded_batches(tok, texts, max_len, batch_size):
            state["mask"] = enc["attention_mask"].bool()
            tok_count += int(state["mask"].sum())
            model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    importance = (1.0 - cos_sum / max(tok_count, 1)).tolist()
    return importance, [c / max(tok_count, 1) if c is not None else torch.empty(0) for c in chan]


def layers_to_keep(n_layers: int, layers: int | None, ratio: float | None) -> int:
    """How many decoder layers survive `--layers N` (keep N) or `--ratio R` (drop share R)."""
    if layers is not None and ratio is not None:
        raise SlmError(
            "give either --layers or --ratio, not both", "--layers N keeps N layers; --ratio R drops R of them"
        )
    if layers is not None:
        if layers > n_layers:
            raise SlmError(
                f"--layers {layers} is more than the teacher's {n_layers} layers",
                "a student cannot be larger than its teacher; choose N <= " + str(n_layers),
            )
        keep = layers
    elif ratio is not None:
        if not 0.0 <= ratio < 1.0:
            raise SlmError(f"--ratio {ratio} is outside [0, 1)", "the ratio is the share of layers to drop, e.g. 0.5")
        keep = n_layers - round(n_layers * ratio)
    else:
        keep = n_layers
    if keep < 1:
        raise SlmError(
            f"pruning would leave no layers (teacher has {n_layers})",
            "keep at least one: --layers 1 or a lower --ratio",
        )
    return keep


def drop_layers(model, drop: list[int]) -> None:
    """Remove decoder layers in place; renumber attention layer_idx (the KV cache is indexed by it)."""
    layers = decoder_layers(model)
    kept = [layer for i, layer in enumerate(layers) if i not in set(drop)]
    for new_idx, layer in enumerate(kept):
        for mod in layer.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new_idx
    model.get_decoder().layers = torch.nn.ModuleList(kept)
    cfg = model.config
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in set(drop)]
    cfg.num_hidden_layers = len(kept)


def _slice_linear(lin: torch.nn.Linear, idx: torch.Tensor, dim: int) -> torch.nn.Linear:
    w = lin.weight.data.index_select(dim, idx)
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, dtype=w.dtype, device=w.device)
    new.weight.data.copy_(w)
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.data if dim == 1 else lin.bias.data.index_select(0, idx))
    return new


def shrink_mlp(model, scores: list[torch.Tensor], keep: int) -> None:
    """Keep the `keep` most active MLP channels of every layer (one intermediate_size for all, as configs need)."""
    for layer, score in zip(decoder_layers(model), scores):
        mlp = getattr(layer, "mlp", None)
        if mlp is None or not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")) or score.numel() == 0:
            raise SlmError(
                f"width pruning needs gate/up/down MLP projections; {model.config.model_type} has other names",
                "prune depth only (--layers/--ratio without --mlp-ratio)",
            )
        idx = score.topk(keep).indices.sort().values
        mlp.gate_proj = _slice_linear(mlp.gate_proj, idx, 0)
        mlp.up_proj = _slice_linear(mlp.up_proj, idx, 0)
        mlp.down_proj = _slice_linear(mlp.down_proj, idx, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = keep
    model.config.intermediate_size = keep


def prune_model(
    model,
    tok,
    texts: list[str],
    layers: int | None = None,
    ratio: float | None = None,
    mlp_ratio: float | None = None,
    max_len: int = 256,
) -> dict:
    """Prune `model` in place; return what was done (importance scores, dropped layers, sizes)."""
    n = len(decoder_layers(model))
    keep = layers_to_keep(n, layers, ratio)
    width = model.config.intermediate_size
    keep_ch = width
    if mlp_ratio is not None:
        if not 0.0 <= mlp_ratio < 1.0:
            raise SlmError(f"--mlp-ratio {mlp_ratio} is outside [0, 1)", "the share of MLP channels to drop, e.g. 0.25")
        keep_ch = max(1, round(width * (1 - mlp_ratio)))
    if keep == n and keep_ch == width:
        raise SlmError(
            "nothing to prune", "pass --layers N (< number of layers), --ratio R (> 0) or --mlp-ratio R (> 0)"
        )
    params_before = sum(p.numel() for p in model.parameters())
    importance, channels = measure_importance(model, tok, texts, max_len)
    drop = sorted(sorted(range(n), key=lambda i: importance[i])[: n - keep])
    if keep_ch < width:
        shrink_mlp(model, channels, keep_ch)
    drop_layers(model, drop)
    return {
        "layers_before": n,
        "layers_after": keep,
        "dropped_layers": drop,
        "layer_importance": [round(x, 6) for x in importance],
        "intermediate_size_before": width,
        "intermediate_size_after": keep_ch,
        "params_before": params_before,
        "params_after": sum(p.numel() for p in model.parameters()),
        "calibration_texts": len(texts),
    }


def prune(
    source: str | Path,
    out: str | Path,
    layers: int | None = None,
    ratio: float | None = None,
    mlp_ratio: float | None = None,
    calibration: str | Path | list[str] | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Load `source`, prune it, write a HF folder at `out` (atomically); return the summary."""
    model, tok = load_full_model(source, trust_remote_code)
    texts = calibration if isinstance(calibration, list) else read_calibration(calibration, tok)
    summary = {"source": str(source), **prune_model(model, tok, texts, layers, ratio, mlp_ratio)}
    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "slmkit.json", {"base_model": str(source), "method": "full", "pruned": summary})
    log.info(
        "pruned %s: %d -> %d layers, MLP %d -> %d, %.1fM -> %.1fM params -> %s",
        source,
        summary["layers_before"],
        summary["layers_after"],
        summary["intermediate_size_before"],
        summary["intermediate_size_after"],
        summary["params_before"] / 1e6,
        summary["params_after"] / 1e6,
        out,
    )
    return summary
