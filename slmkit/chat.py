"""`slm chat`: streaming terminal chat with a run, an export (merged or ONNX), a registered model or any model name."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.models import resolve_model


def resolve_target(target: str) -> tuple[Path | str, Path | None, dict]:
    """RUN_OR_MODEL -> (model folder or hub id, adapter folder or None, slmkit info).

    Tried in order: a run folder (its merged export, else distill/final, else train/final), an adapter or model folder,
    a name in the registry, runs/<name>, then a model name ('default', a hub id).
    """
    p = Path(target).expanduser()
    if p.is_dir():
        for sub in ("export/merged", "distill/final", "train/final"):
            if (p / sub).is_dir():
                return resolve_target(str(p / sub))
        info = json.loads((p / "slmkit.json").read_text()) if (p / "slmkit.json").is_file() else {}
        if (p / "adapter_config.json").is_file():
            if "base_model" not in info:
                raise SlmError(f"adapter folder {p} does not say its base model", "chat with the run folder instead")
            return resolve_model(info["base_model"]), p, info
        return resolve_model(str(p)), None, info
    from slmkit.runs import get_model

    if (entry := get_model(target)) is not None:
        return resolve_target(entry["path"])
    if Path("runs", target).is_dir():
        return resolve_target(str(Path("runs", target)))
    return resolve_model(target), None, {}


def load_engine_for_chat(target: str, trust_remote_code: bool = False, backend: str = "auto"):
    """The same engine `slm serve` uses, started for one user; an ONNX export folder runs on onnxruntime-genai."""
    from slmkit.schema.serve import ServeConfig
    from slmkit.serve.engine import Engine

    return Engine.load(target, ServeConfig(backend=backend), trust_remote_code=trust_remote_code).start()


def stream_reply(engine, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0, out=None) -> str:
    """Generate a reply, writing text to `out` as it comes; return the full text."""
    from slmkit.serve.engine import SamplingParams

    out = out or sys.stdout
    parts = []
    for piece in engine.generate_stream(messages, SamplingParams(max_tokens=max_new_tokens, temperature=temperature)):
        parts.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    return "".join(parts).strip()


def chat_loop(engine, system: str | None, max_new_tokens: int, temperature: float) -> None:
    """Read user lines until EOF or /exit; keep the conversation as context."""
    history = [{"role": "system", "content": system}] if system else []
    print("Type a message, /reset to clear history, /exit to quit.", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            history = history[:1] if system else []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        sys.stdout.write("model> ")
        history.append({"role": "assistant", "content": stream_reply(engine, history, max_new_tokens, temperature)})
