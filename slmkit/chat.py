"""`slm chat`: streaming terminal chat with a run, an export, a registered model or any model name."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from threading import Thread

from slmkit.errors import SlmError
from slmkit.models import resolve_model


def resolve_target(target: str) -> tuple[Path | str, Path | None, dict]:
    """RUN_OR_MODEL -> (model folder or hub id, adapter folder or None, slmkit info).

    Tried in order: a run folder (its merged export, else train/final), an adapter or model folder,
    a name in the registry, runs/<name>, then a model name ('default', a hub id).
    """
    p = Path(target).expanduser()
    if p.is_dir():
        for sub in ("export/merged", "train/final"):
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


def load_for_chat(target: str, trust_remote_code: bool = False):
    from slmkit.hardware import detect, setup_threads
    from slmkit.models import load_model, load_tokenizer

    model_path, adapter, info = resolve_target(target)
    hw = detect()
    setup_threads()
    tok = load_tokenizer(adapter or model_path, trust_remote_code or info.get("trust_remote_code", False))
    model = load_model(model_path, "float32" if hw.device == "cpu" else hw.dtype, hw.device, trust_remote_code, adapter=adapter)
    return model, tok


def stream_reply(model, tok, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0, out=None) -> str:
    """Generate a reply, writing tokens to `out` as they come; return the full text."""
    from transformers import TextIteratorStreamer

    out = out or sys.stdout
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True).to(model.device)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(**enc, max_new_tokens=max_new_tokens, streamer=streamer, pad_token_id=tok.pad_token_id,
                  do_sample=temperature > 0, **({"temperature": temperature} if temperature > 0 else {}))
    worker = Thread(target=model.generate, kwargs=kwargs, daemon=True)
    worker.start()
    parts = []
    for piece in streamer:
        parts.append(piece)
        out.write(piece)
        out.flush()
    worker.join()
    out.write("\n")
    return "".join(parts).strip()


def chat_loop(model, tok, system: str | None, max_new_tokens: int, temperature: float) -> None:
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
        history.append({"role": "assistant", "content": stream_reply(model, tok, history, max_new_tokens, temperature)})
