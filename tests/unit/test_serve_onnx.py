"""The onnx serve backend on a tiny random llama exported with onnxruntime-genai's builder (int4).

The reference is a plain onnxruntime-genai greedy loop over the same export; requests go through the engine
(interleaved generators, stops, seeds, limits, cancellation, drain) and through the FastAPI app.
"""

from __future__ import annotations

import json
import queue
import shutil
import sys
import threading
from pathlib import Path

import pytest

from slmkit.config.serve import ServeConfig
from slmkit.errors import SlmError
from slmkit.serve.engine import Engine, EngineStopped, QueueFull, SamplingParams
from slmkit.serve.load import load_engine, pick_backend, served_name
from tests.unit.test_serve_engine import run_concurrently

pytest.importorskip("onnxruntime_genai")

PROMPTS = [
    "what is the weather today",
    "set an alarm for six",
    "play some music please",
    "book a flight to paris",
    "translate hello into french",
    "hello",
    "what is the weather tomorrow in paris please",
]


def tiny_onnx_export(tmp_path_factory) -> Path:
    """An int4 ONNX export of a 2-layer llama with the tiny ChatML tokenizer, built once per test session.

    Hidden size 64 (not the 32 of conftest's tiny model): onnxruntime's GroupQueryAttention needs a head size
    that is a multiple of 16. Kept under the session's base temp folder so other modules reuse it.
    """
    from slmkit.export.onnx import build_onnx
    from tests.conftest import make_tiny_tokenizer, save_onnx_ready_llama

    dest = tmp_path_factory.getbasetemp() / "serve-onnx-tiny" / "onnx-int4"
    if (dest / "genai_config.json").is_file():
        return dest
    src = dest.parent / "hf"
    tok = make_tiny_tokenizer()
    save_onnx_ready_llama(src, tok, seed=0, initializer_range=0.3)
    return build_onnx(src, dest, "int4")


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    return tiny_onnx_export(tmp_path_factory)


@pytest.fixture(scope="module")
def engine(onnx_dir):
    eng = load_engine(str(onnx_dir), ServeConfig(max_batch_size=3, max_queue=64)).start()
    yield eng
    eng.stop()


def chat(text: str) -> list[dict]:
    return [{"role": "system", "content": "reply with one intent"}, {"role": "user", "content": text}]


def plain_greedy(engine: Engine, messages: list[dict], max_new: int) -> list[int]:
    """onnxruntime-genai on its own: one generator, greedy, until EOS or max_new tokens."""
    import onnxruntime_genai as og

    ids = engine.encode_chat(messages)
    params = og.GeneratorParams(engine.model)
    params.set_search_options(max_length=len(ids) + max_new, do_sample=False)
    gen = og.Generator(engine.model, params)
    gen.append_tokens(ids)
    out: list[int] = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


def text_of(engine: Engine, ids: list[int]) -> str:
    eos = [i for i, t in enumerate(ids) if t in engine.eos_ids]
    return engine.tok.decode(ids[: eos[0]] if eos else ids, skip_special_tokens=True)


def test_engine_on_onnx_export_matches_plain_onnxruntime_genai(engine):
    assert engine.runner.kind == "onnx" and engine.context == 256 and engine.max_batch == 3
    jobs = [(chat(p), SamplingParams(max_tokens=8 + 3 * i)) for i, p in enumerate(PROMPTS)]
    for (messages, params), res in zip(jobs, run_concurrently(engine, jobs)):
        ref = plain_greedy(engine, messages, params.max_tokens)
        assert res.text == text_of(engine, ref)
        assert res.prompt_tokens == len(engine.encode_chat(messages))
        assert res.finish_reason == ("stop" if ref[-1] in engine.eos_ids else "length")
    # ignore_eos runs to exactly max_tokens; up to the first EOS it is plain greedy decoding
    long = [(chat(p), SamplingParams(max_tokens=30, ignore_eos=True)) for p in PROMPTS[:4]]
    for (messages, _), res in zip(long, run_concurrently(engine, long)):
        assert res.finish_reason == "length" and res.completion_tokens == 30
        assert res.text.startswith(text_of(engine, plain_greedy(engine, messages, 30)))


def test_eos_of_the_export_ends_the_reply(engine, onnx_dir, tmp_path):
    # The random model never picks <|im_end|>; make a token it does pick an EOS of the export instead.
    ref = plain_greedy(engine, chat(PROMPTS[0]), 12)
    at = next(i for i in range(2, 8) if ref[i] not in ref[:i])
    folder = tmp_path / "eos"
    shutil.copytree(onnx_dir, folder)
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["eos_token_id"] = [config["model"]["eos_token_id"], ref[at]]
    (folder / "genai_config.json").write_text(json.dumps(config))
    eng = load_engine(str(folder), ServeConfig()).start()
    try:
        res = eng.generate(chat(PROMPTS[0]), SamplingParams(max_tokens=12))
        before = eng.tok.decode(ref[:at], skip_special_tokens=True)
        assert (res.finish_reason, res.completion_tokens, res.text) == ("stop", at, before)
        res = eng.generate(chat(PROMPTS[0]), SamplingParams(max_tokens=12, ignore_eos=True))
        assert (res.finish_reason, res.completion_tokens) == ("length", 12)
        # the model kept generating words; a finished generator would only repeat the pad token after EOS
        assert res.text.startswith(before) and len(res.text.split()) > len(before.split()) + 2
    finally:
        eng.stop()


def test_stream_stop_sequences_and_seeds(engine):
    messages = chat(PROMPTS[0])
    params = dict(max_tokens=20, ignore_eos=True)
    full = engine.generate(messages, SamplingParams(**params)).text
    pieces = list(engine.generate_stream(messages, SamplingParams(**params)))
    assert len(pieces) > 1 and "".join(pieces) == full
    words = full.split()
    stop = " ".join(words[2:4])  # spans a token boundary
    res = engine.generate(messages, SamplingParams(**params, stop=["zzz", stop]))
    assert res.text == full[: full.index(stop)] and res.finish_reason == "stop"

    def sampled(seed: int, top_p: float = 1.0) -> str:
        return engine.generate(messages, SamplingParams(**params, temperature=1.0, top_p=top_p, seed=seed)).text

    assert sampled(7) == sampled(7)
    assert len({sampled(7), sampled(8), sampled(9)}) > 1
    assert sampled(2**62 + 5) == sampled(2**62 + 5)  # seeds beyond onnxruntime-genai's 32 bits are folded in
    assert sampled(3, top_p=1e-6) == full  # a tiny nucleus keeps only the top token: greedy


def _events(engine: Engine, params: SamplingParams):
    q: queue.Queue = queue.Queue()
    return engine.submit(engine.encode_chat(chat(PROMPTS[1])), params, q.put), q


def test_queue_full_cancel_and_drain(onnx_dir):
    eng = load_engine(str(onnx_dir), ServeConfig(max_batch_size=1, max_queue=1)).start()
    try:
        long = SamplingParams(max_tokens=200, ignore_eos=True)
        gate, q1 = threading.Event(), queue.Queue()

        def gated(ev):  # holds the scheduler at the first request's first token, so it cannot finish early
            gate.wait(10)
            q1.put(ev)

        first = eng.submit(eng.encode_chat(chat(PROMPTS[1])), long, gated)
        second, q2 = _events(eng, SamplingParams(max_tokens=3, ignore_eos=True))
        with pytest.raises(QueueFull):
            _events(eng, long)
        first.cancel()  # frees the only slot
        gate.set()
        assert q1.get(timeout=10).kind == "delta"
        events = [q2.get(timeout=10)]
        while events[-1].kind == "delta":
            events.append(q2.get(timeout=10))
        assert events[-1].kind == "done" and events[-1].completion_tokens == 3
        assert first.generated < 200
        assert eng.metrics.counter_value("finished_total", reason="cancelled") == 1
        third, q3 = _events(eng, SamplingParams(max_tokens=40, ignore_eos=True))
        assert q3.get(timeout=10).kind == "delta"
        eng.stop(drain_s=20)  # in flight: finishes before the engine stops
        assert list(q3.queue)[-1].kind == "done" and list(q3.queue)[-1].completion_tokens == 40
        with pytest.raises(EngineStopped):
            _events(eng, SamplingParams(max_tokens=2))
    finally:
        eng.stop()


def test_chat_completions_through_the_app(engine):
    from fastapi.testclient import TestClient

    from slmkit.serve.app import create_app

    body = {"model": engine.name, "messages": chat(PROMPTS[3]), "max_tokens": 9, "temperature": 0, "ignore_eos": True}
    with TestClient(create_app(engine, api_key="")) as client:
        health = client.get("/health").json()
        assert health["backend"] == "onnx" and health["model"] == engine.name == "onnx-int4"
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["usage"]["completion_tokens"] == 9 and out["choices"][0]["finish_reason"] == "length"
        direct = engine.generate(chat(PROMPTS[3]), SamplingParams(max_tokens=9, ignore_eos=True)).text
        assert out["choices"][0]["message"]["content"] == direct
        stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
        r = client.post("/v1/chat/completions", json=stream)
        lines = [ln[6:] for ln in r.text.split("\n\n") if ln.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        chunks = [json.loads(ln) for ln in lines[:-1]]
        streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert streamed == out["choices"][0]["message"]["content"]
        assert chunks[-1]["usage"]["completion_tokens"] == 9
        r = client.post(
            "/v1/completions",
            json={
                "model": engine.name,
                "prompt": "play some music",
                "max_tokens": 4,
                "temperature": 0,
                "ignore_eos": True,
            },
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


def test_backend_selection_run_layout_and_chat(onnx_dir, tmp_path, monkeypatch):
    from slmkit.onnx_runtime import find_onnx_folder
    from slmkit.serve.chat import load_engine_for_chat, stream_reply

    assert pick_backend(str(onnx_dir), "auto")[0] == "onnx"
    assert pick_backend(str(onnx_dir.parent / "hf"), "auto")[0] == "torch"
    assert pick_backend(str(onnx_dir), "torch")[0] == "torch"
    from slmkit.runs import register_model

    run = tmp_path / "runs" / "my-run"
    (run / "export" / "merged").mkdir(parents=True)
    for quant in ("int8", "int4"):
        shutil.copytree(onnx_dir, run / "export" / f"onnx-{quant}")
    # a run, its merged export, runs/<name> and a registered name (stored as export/merged) find the int4 export
    int4 = run / "export" / "onnx-int4"
    assert find_onnx_folder(str(run)) == int4 and find_onnx_folder(str(run / "export" / "merged")) == int4
    monkeypatch.chdir(tmp_path)
    assert find_onnx_folder("my-run") == Path("runs", "my-run", "export", "onnx-int4")
    register_model("registered-onnx-run", "base", "", {}, run / "export" / "merged")
    assert find_onnx_folder("registered-onnx-run") == int4.resolve()
    assert served_name(str(run / "export" / "onnx-int4")) == "my-run"
    eng = load_engine(str(run), ServeConfig(backend="onnx"))
    assert eng.runner.kind == "onnx" and eng.name == "my-run"

    engine = load_engine_for_chat(str(onnx_dir))  # `slm chat EXPORT_FOLDER`
    try:
        out = _Sink()
        text = stream_reply(engine, chat(PROMPTS[0]), max_new_tokens=6, out=out)
        assert engine.runner.kind == "onnx" and out.text.strip() == text
    finally:
        engine.stop()


class _Sink:
    def __init__(self):
        self.text = ""

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


def test_clear_errors(onnx_dir, tmp_path, monkeypatch):
    with pytest.raises(SlmError, match="not a folder, a registered model or a run"):
        load_engine(str(tmp_path / "missing"), ServeConfig(backend="onnx"))
    empty = tmp_path / "run-without-onnx"
    (empty / "export" / "merged").mkdir(parents=True)
    with pytest.raises(SlmError, match="no ONNX export found") as err:
        load_engine(str(empty), ServeConfig(backend="onnx"))
    assert "--format onnx" in err.value.hint
    broken = tmp_path / "broken"
    shutil.copytree(onnx_dir, broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(SlmError, match="onnxruntime-genai cannot load"):
        load_engine(str(broken))
    (broken / "genai_config.json").write_text("{")
    with pytest.raises(SlmError, match="not a valid onnxruntime-genai config"):
        load_engine(str(broken))
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # as if it were not installed
    with pytest.raises(SlmError, match="needs onnxruntime-genai") as err:
        load_engine(str(onnx_dir))
    assert "slmkit[export]" in err.value.hint
