"""Serve stage: an OpenAI- and SageMaker-compatible HTTP server over a continuous-batching engine.

from slmkit.serve import SamplingParams, create_app, load_engine
engine = load_engine("runs/my-run").start()
for piece in engine.generate_stream([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=32)):
    print(piece, end="")
"""

from slmkit.config.serve import ServeConfig

_ENGINE_NAMES = ("Engine", "Event", "Result", "SamplingParams")


def __getattr__(name: str):
    """Import the engine (torch, transformers) only when used, so `slm --help` and `slm serve --help` stay fast."""
    if name in _ENGINE_NAMES:
        from slmkit.serve import engine

        return getattr(engine, name)
    if name == "load_engine":
        from slmkit.serve.load import load_engine

        return load_engine
    raise AttributeError(f"module 'slmkit.serve' has no attribute {name!r}")


def create_app(engine, api_key=None):
    """FastAPI app around `engine` (imported lazily: the engine alone needs no web stack)."""
    from slmkit.serve.app import create_app as _create

    return _create(engine, api_key)


__all__ = ["Engine", "Event", "Result", "SamplingParams", "ServeConfig", "create_app", "load_engine"]
