"""`slm chat`: streaming terminal chat with a run, an export (merged or ONNX), a registered model or any model name."""

from __future__ import annotations

import sys


def load_engine_for_chat(target: str, trust_remote_code: bool = False, backend: str = "auto"):
    """The same engine `slm serve` uses, started for one user; an ONNX export folder runs on onnxruntime-genai."""
    from slmkit.config.serve import ServeConfig
    from slmkit.serve.load import load_engine

    return load_engine(target, ServeConfig(backend=backend), trust_remote_code=trust_remote_code).start()


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
