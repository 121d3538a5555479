"""Offline teacher cache: top-k log-probs per assistant token, sharded safetensors, resumable.

Layout of a cache folder:
  manifest.json            key (teacher fingerprint, data hash, k, temperature, vocab), shards done, bytes/token
  shard-00000.safetensors  ids [N, k] int32 · logprobs [N, k] fp16 · missing [N] fp32 (teacher mass outside
                           the top k) · offsets [rows+1] int64 (row r's tokens are offsets[r]:offsets[r+1])
Shard i holds rows [i*shard_rows, (i+1)*shard_rows) of the encoded training split, tokens in the order
`labelled_logits` yields them. Each shard is written atomically, then the manifest; an interrupted build
resumes at the first shard the manifest does not list.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from slmkit.distill.kd_losses import kd_mask, labelled_logits, log_probs
from slmkit.encoding import collate
from slmkit.errors import SlmError
from slmkit.io import atomic_write_bytes, atomic_write_json, sha256_file, sha256_json

log = logging.getLogger("slmkit")
VERSION = 1
KEY_FIELDS = ("teacher", "data", "k", "temperature", "vocab_size", "positions")


def teacher_fingerprint(name: str | Path) -> str:
    """sha256 over the teacher's config, weights and tokenizer files (and its base's, for a LoRA adapter)."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return hashlib.sha256(f"named:{name}".encode()).hexdigest()  # hub id or alias: the name is all we know
    from slmkit.models import resolve_model

    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".json", ".jinja", ".model") or f.name == "tokenizer.json"):
            if f.name in ("slmkit.json", "manifest.json"):
                continue
            h.update(f.name.encode() + sha256_file(f).encode())
    meta = path / "slmkit.json"
    if (path / "adapter_config.json").is_file() and meta.is_file():
        base = json.loads(meta.read_text())["base_model"]
        h.update(teacher_fingerprint(resolve_model(base)).encode())
    return h.hexdigest()


def data_hash(examples: list[dict]) -> str:
    """Hash of the encoded rows: covers the data, the tokenizer and max_seq_len at once."""
    return sha256_json([[e["input_ids"], e["labels"]] for e in examples])


def cache_key(
    teacher_fp: str, examples: list[dict], k: int, temperature: float, vocab_size: int, positions: str = "assistant"
) -> dict:
    return {
        "teacher": teacher_fp,
        "data": data_hash(examples),
        "k": k,
        "temperature": temperature,
        "vocab_size": vocab_size,
        "positions": positions,
    }


def _read_manifest(folder: Path) -> dict | None:
    p = folder / "manifest.json"
    return json.loads(p.read_text()) if p.is_file() else None


def check_key(folder: Path, manifest: dict, key: dict) -> None:
    """SlmError naming the first key field that differs (another teacher, other data, another k...)."""
    what = {
        "teacher": "another teacher",
        "data": "other training data (or tokenizer / max_seq_len)",
        "k": "another top_k",
        "temperature": "another temperature",
        "vocab_size": "a teacher with another vocabulary",
        "positions": "other KD positions (distill.kd_positions)",
    }
    for f in KEY_FIELDS:
        if manifest["key"].get(f, "assistant" if f == "positions" else None) != key[f]:  # caches before kd_positions
            got, want = str(manifest["key"].get(f))[:12], str(key[f])[:12]
            raise SlmError(
                f"teacher cache {folder} was built for {what[f]} ({f} {got}, this run needs {want})",
                "delete that folder, point distill.cache_dir elsewhere, or run `slm distill-cache --overwrite`",
            )


@torch.no_grad()
def _score_rows(
    teacher, rows: list[dict], pad_id: int, k: int, temperature: float, batch_size: int, positions: str = "assistant"
) -> dict[str, torch.Tensor]:
    ids, vals, miss, offsets = [], [], [], [0]
    for i in range(0, len(rows), batch_size):
        part = rows[i : i + batch_size]
        batch = collate(part, pad_id)
        keep = kd_mask(batch["labels"], batch["attention_mask"], positions)
        logp = log_probs(
            labelled_logits(
                teacher,
                batch["input_ids"].to(teacher.device),
                batch["attention_mask"].to(teacher.device),
                keep.to(teacher.device),
            ),
            temperature,
        )
        top, top_ids = logp.topk(k, dim=-1)
        ids.append(top_ids.to(torch.int32).cpu())
        vals.append(top.to(torch.float16).cpu())
        miss.append((1.0 - top.exp().sum(-1)).clamp_min(0.0).float().cpu())  # from fp32 values, before fp16 rounding
        for n in keep.sum(1).tolist():
            offsets.append(offsets[-1] + n)
        del logp, top, top_ids
    return {
        "ids": torch.cat(ids),
        "logprobs": torch.cat(vals),
        "missing": torch.cat(miss),
        "offsets": torch.tensor(offsets, dtype=torch.int64),
    }


def build_cache(
    teacher,
    examples: list[dict],
    folder: str | Path,
    key: dict,
    pad_id: int,
    shard_rows: int = 256,
    batch_size: int = 8,
    overwrite: bool = False,
    show_progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
) -> dict:
    """Score `examples` with `teacher` into `folder`, skipping shards a matching manifest lists as done."""
    from safetensors.torch import save

    folder = Path(folder)
    k = key["k"]
    vocab = teacher.get_output_embeddings().weight.shape[0]
    if not 0 < k <= vocab:
        raise SlmError(
            f"distill.top_k={k} is not in 1..{vocab} (the teacher's vocabulary size)",
            f"set distill.top_k to at most {vocab}; 64 keeps nearly all the mass for most models",
        )
    manifest = _read_manifest(folder)
    if manifest is not None and not overwrite:
        check_key(folder, manifest, key)
    if manifest is None or overwrite:
        for old in folder.glob("shard-*.safetensors"):
            old.unlink()
        manifest = {
            "version": VERSION,
            "key": key,
            "shard_rows": shard_rows,
            "rows": len(examples),
            "shards": [],
            "complete": False,
        }
        atomic_write_json(folder / "manifest.json", manifest)
    shard_rows = manifest["shard_rows"]
    n_shards = -(-len(examples) // shard_rows)
    done = {s["index"] for s in manifest["shards"]}
    prog = _progress(n_shards, len(done)) if show_progress else None
    try:
        for s in range(n_shards):
            if s in done:
                continue
            a, b = s * shard_rows, min((s + 1) * shard_rows, len(examples))
            tensors = _score_rows(
                teacher, examples[a:b], pad_id, k, key["temperature"], batch_size, key.get("positions", "assistant")
            )
            name = f"shard-{s:05d}.safetensors"
            blob = save(tensors, metadata={"key": sha256_json(key), "rows": f"{a}:{b}"})
            atomic_write_bytes(folder / name, blob)
            manifest["shards"].append(
                {"index": s, "file": name, "rows": [a, b], "tokens": int(tensors["offsets"][-1]), "bytes": len(blob)}
            )
            manifest["shards"].sort(key=lambda x: x["index"])
            atomic_write_json(folder / "manifest.json", manifest)
            if prog:
                prog[0].update(prog[1], advance=1)
            if on_shard:
                on_shard(s)
    finally:
        if prog:
            prog[0].stop()
    tokens = sum(s["tokens"] for s in manifest["shards"])
    size = sum(s["bytes"] for s in manifest["shards"])
    manifest.update(complete=True, tokens=tokens, bytes=size, bytes_per_token=round(size / max(tokens, 1), 2))
    atomic_write_json(folder / "manifest.json", manifest)
    log.info(
        "teacher cache %s: %d rows, %d tokens, %.1f bytes/token (k=%d)",
        folder,
        len(examples),
        tokens,
        manifest["bytes_per_token"],
        k,
    )
    return {k_: manifest[k_] for k_ in ("rows", "tokens", "bytes", "bytes_per_token")} | {"shards": n_shards, "k": k}


def _progress(total: int, done: int):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    p = Progress(
        TextColumn("[bold]teacher cache"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} shards"),
        TimeElapsedColumn(),
    )
    task = p.add_task("cache", total=total, completed=done)
    p.start()
    return p, task


class TopKCache:
    """Read side: `lookup(rows)` returns the cached teacher for those rows.

    A shard is read whole on first use and kept (the cache of a 100k-token split at k=64 is ~39 MB); per-row
    slices straight from disk cost more per step than the student's forward on small models.
    """

    def __init__(self, folder: str | Path, key: dict):
        self.folder = Path(folder)
        manifest = _read_manifest(self.folder)
        if manifest is None:
            raise SlmError(
                f"no teacher cache at {self.folder}",
                "run `slm distill-cache CONFIG` first (or use distill.mode: online)",
            )
        check_key(self.folder, manifest, key)
        if not manifest.get("complete"):
            raise SlmError(
                f"teacher cache {self.folder} is incomplete ({len(manifest['shards'])} shards done)",
                "rerun `slm distill-cache CONFIG`; it resumes where it stopped",
            )
        self.manifest, self.shard_rows, self.k = manifest, manifest["shard_rows"], manifest["key"]["k"]
        self._paths = {s["index"]: self.folder / s["file"] for s in manifest["shards"]}
        self._loaded: dict[int, dict[str, torch.Tensor]] = {}

    def _shard(self, index: int) -> dict[str, torch.Tensor]:
        if index not in self._loaded:
            from safetensors.torch import load_file

            self._loaded[index] = load_file(str(self._paths[index]))
        return self._loaded[index]

    @property
    def bytes_per_token(self) -> float:
        return self.manifest["bytes_per_token"]

    def row_tokens(self, row: int) -> int:
        off = self._shard(row // self.shard_rows)["offsets"]
        r = row % self.shard_rows
        return int(off[r + 1] - off[r])

    def lookup(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids [N, k] int64, logprobs [N, k] fp32, missing [N] fp32 for `rows`, concatenated in the given order."""
        ids, vals, miss = [], [], []
        for row in rows:
            s, r = divmod(row, self.shard_rows)
            t = self._shard(s)
            a, b = int(t["offsets"][r]), int(t["offsets"][r + 1])
            ids.append(t["ids"][a:b])
            vals.append(t["logprobs"][a:b])
            miss.append(t["missing"][a:b])
        return torch.cat(ids).long(), torch.cat(vals).float(), torch.cat(miss)
