"""What eval decodes: the test split's prompts and references, the reply budget, generation with a progress bar."""

from __future__ import annotations

from pathlib import Path

from slmkit.encoding import prompt_messages
from slmkit.errors import SlmError
from slmkit.io import read_jsonl


def load_test_split(path: Path, max_examples: int | None) -> tuple[list[list[dict]], list[str]]:
    if not path.is_file():
        raise SlmError(f"no test split at {path}", "run the data stage first (`slm data CONFIG`)")
    rows = read_jsonl(path)[:max_examples]
    if not rows:
        raise SlmError(
            f"test split {path} is empty", "raise data.split.test or add rows so some land in the test split"
        )
    prompts = [prompt_messages(r["messages"]) for r in rows]
    refs = [r["label"] if r.get("label") is not None else r["messages"][-1]["content"] for r in rows]
    return prompts, refs


def max_new_tokens_for(tok, refs: list[str], task: str, cap: int) -> int:
    if task != "classification":
        return cap
    # Labels are short: a few tokens past the longest one is enough to read the answer.
    return min(cap, max(len(tok(r, add_special_tokens=False)["input_ids"]) for r in refs) + 8)


def generate_with_progress(model, tok, prompts, new_tokens, batch_size, name, show_progress) -> list[str]:
    from slmkit.generation import generate  # looked up per call: tests record what the model was prompted with

    if not show_progress:
        return generate(model, tok, prompts, new_tokens, batch_size)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn(f"[bold]eval {name}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
    ) as prog:
        task = prog.add_task(name, total=len(prompts))
        return generate(model, tok, prompts, new_tokens, batch_size, on_batch=lambda n: prog.advance(task, n))


def generate_backend_with_progress(backend, prompts, new_tokens, batch_size, name, show_progress) -> list[str]:
    """Like generate_with_progress, for any eval backend (torch, GGUF, ONNX, pt2)."""
    if not show_progress:
        return backend.generate(prompts, new_tokens, batch_size)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn(f"[bold]eval {name}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
    ) as prog:
        task = prog.add_task(name, total=len(prompts))
        return backend.generate(prompts, new_tokens, batch_size, on_batch=lambda n: prog.advance(task, n))
