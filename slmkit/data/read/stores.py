"""Sources that a library stored in a folder: a dataset saved with `save_to_disk` (its rows, like a table's) and a
ChromaDB collection (its chunks, e.g. written by `slm index`), each read back through that library."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slmkit.config.data import SourceConfig
from slmkit.errors import SlmError

HF_DATASET_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")


def is_chroma(path: Path) -> bool:
    return (path / "chroma.sqlite3").is_file()


def is_hf_dataset(path: Path) -> bool:
    return any((path / f).is_file() for f in HF_DATASET_FILES)


def hf_rows(path: Path, src: SourceConfig) -> Iterator[tuple[dict[str, Any], str]]:
    """Rows of a dataset saved with save_to_disk, 10,000 at a time (Arrow, memory-mapped)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise SlmError(
            f"{path}: not a dataset saved with save_to_disk ({str(e)[:160]})",
            "save it with Dataset.save_to_disk(PATH), or point at a file",
        ) from None
    split = None
    if isinstance(ds, datasets.DatasetDict):
        split = src.split or ("train" if "train" in ds else next(iter(ds)))
        if split not in ds:
            raise SlmError(f"{path}: no split {split!r} (splits: {', '.join(ds)})", "set the source's split")
        ds = ds[split]
    tag = f"split={split}&" if split else ""
    n = 0
    for batch in ds.iter(batch_size=10_000):
        for row in _unbatch(batch):
            n += 1
            yield row, f"{path}#{tag}row={n}"


def _unbatch(batch: dict[str, list]) -> list[dict]:
    keys = list(batch)
    return [dict(zip(keys, vals)) for vals in zip(*(batch[k] for k in keys))]


def chroma_chunks(path: Path, src: SourceConfig) -> list[dict[str, Any]]:
    """Stored chunks of a collection, as document chunks again (no re-chunking); the source's licence wins."""
    from slmkit.chroma import read_collection

    chunks = read_collection(path, src.collection)
    for c in chunks:
        c["meta"]["license"] = src.license or c["meta"].get("license")
    return chunks
