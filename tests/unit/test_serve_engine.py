"""The continuous-batching engine on the tiny random llama: same tokens as `generate`, limits, stops, seeds."""

from __future__ import annotations

import queue
import threading
import time

import pytest
import torch

from slmkit.config.serve import ServeConfig
from slmkit.serve.engine import Engine, EngineStopped, PromptTooLong, QueueFull, SamplingParams
from slmkit.serve.load import load_engine, served_name
from slmkit.serve.text import TextTracker

PROMPTS = [
    "what is the weather today",
    "set an alarm for six",
    "play some music please",
    "book a flight to paris",
    "translate hello into french",
    "hello",
    "what is the weather tomorrow in paris please",
]


def chat(text: str) -> list[dict]:
    return [{"role": "system", "content": "reply with one intent"}, {"role": "user", "content": text}]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    eng = load_engine(str(tiny_model_dir), ServeConfig(max_batch_size=3, max_queue=64)).start()
    yield eng
    eng.stop()


def reference(engine: Engine, messages: list[dict], max_new: int, ignore_eos: bool) -> str:
    """Plain transformers greedy generation, one prompt at a time."""
    ids = torch.tensor([engine.encode_chat(messages)])
    extra = {"min_new_tokens": max_new} if ignore_eos else {}
    out = engine.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new,
        do_sample=False,
        pad_token_id=engine.tok.pad_token_id,
        **extra,
    )
    return engine.tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def run_concurrently(engine: Engine, jobs: list[tuple[list[dict], SamplingParams]], stagger_s: float = 0.003):
    results = [None] * len(jobs)

    def work(i: int) -> None:
        time.sleep(stagger_s * i)  # arrivals spread out: later requests join a batch that is already decoding
        results[i] = engine.generate(jobs[i][0], jobs[i][1])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_batched_generation_matches_one_at_a_time(engine):
    # 7 requests, 3 slots, different lengths: rows join mid-decode and leave at different steps.
    jobs = [(chat(p), SamplingParams(max_tokens=6 + 3 * i, ignore_eos=True)) for i, p in enumerate(PROMPTS)]
    results = run_concurrently(engine, jobs)
    for (messages, params), res in zip(jobs, results):
        assert res.finish_reason == "length"
        assert res.completion_tokens == params.max_tokens
        assert res.prompt_tokens == len(engine.encode_chat(messages))
        assert res.text == reference(engine, messages, params.max_tokens, ignore_eos=True)


def test_eos_ends_the_reply_like_generate(engine):
    jobs = [(chat(p), SamplingParams(max_tokens=40)) for p in PROMPTS]
    for (messages, _), res in zip(jobs, run_concurrently(engine, jobs)):
        assert res.text == reference(engine, messages, 40, ignore_eos=False)
        assert res.finish_reason in ("stop", "length")
        if res.finish_reason == "stop":
            assert res.completion_tokens < 40


def test_stop_sequence_truncates_and_is_not_sent(engine):
    messages = chat(PROMPTS[0])
    full = engine.generate(messages, SamplingParams(max_tokens=30, ignore_eos=True)).text
    words = full.split()
    stop = " ".join(words[3:5])  # two tokens: a stop sequence that spans a token boundary
    pieces = list(engine.generate_stream(messages, SamplingParams(max_tokens=30, ignore_eos=True, stop=["zzz", stop])))
    res = engine.generate(messages, SamplingParams(max_tokens=30, ignore_eos=True, stop=["zzz", stop]))
    assert res.text == full[: full.index(stop)]
    assert "".join(pieces) == res.text
    assert res.finish_reason == "stop"


def test_seeds_reproduce_and_differ(engine):
    messages = chat(PROMPTS[1])

    def sampled(seed: int) -> str:
        return engine.generate(
            messages, SamplingParams(max_tokens=25, temperature=1.0, seed=seed, ignore_eos=True)
        ).text

    greedy = engine.generate(messages, SamplingParams(max_tokens=25, ignore_eos=True)).text
    assert sampled(7) == sampled(7)
    assert len({sampled(7), sampled(8), sampled(9)}) > 1
    # a tiny nucleus keeps only the most likely token: sampling collapses to greedy
    nucleus = engine.generate(
        messages, SamplingParams(max_tokens=25, temperature=1.0, top_p=1e-6, seed=3, ignore_eos=True)
    ).text
    assert nucleus == greedy


def test_stream_pieces_join_to_the_full_text(engine):
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    pieces = list(engine.generate_stream(chat(PROMPTS[2]), params))
    assert len(pieces) > 1
    assert "".join(pieces) == engine.generate(chat(PROMPTS[2]), SamplingParams(max_tokens=12, ignore_eos=True)).text


def test_prompt_limits(tiny_model_dir, engine):
    too_long = "hello " * 300
    with pytest.raises(PromptTooLong):
        engine.generate([{"role": "user", "content": too_long}], SamplingParams(max_tokens=4))
    # a prompt near the end of the context (256 positions) gets max_tokens shrunk to what fits
    ids = engine.encode_text("hello " * 250)
    res = engine.generate(prompt="hello " * 250, params=SamplingParams(max_tokens=500, ignore_eos=True))
    assert res.finish_reason == "length" and res.completion_tokens == 256 - len(ids)


def _events(engine, params, prompt=PROMPTS[0]):
    q: queue.Queue = queue.Queue()
    return engine.submit(engine.encode_chat(chat(prompt)), params, q.put), q


def test_queue_full_cancel_and_timeout(tiny_model_dir):
    eng = load_engine(str(tiny_model_dir), ServeConfig(max_batch_size=1, max_queue=1, request_timeout_s=30)).start()
    try:
        long = SamplingParams(max_tokens=200, ignore_eos=True)
        first, q1 = _events(eng, long)
        second, q2 = _events(eng, SamplingParams(max_tokens=3, ignore_eos=True))
        with pytest.raises(QueueFull):
            _events(eng, long)
        assert q1.get(timeout=10).kind == "delta"
        first.cancel()  # frees the only slot: the queued request runs without waiting for 200 tokens
        events = [q2.get(timeout=10)]
        while events[-1].kind == "delta":
            events.append(q2.get(timeout=10))
        assert events[-1].kind == "done" and events[-1].completion_tokens == 3
        assert first.generated < 200
        assert eng.metrics.counter_value("finished_total", reason="cancelled") == 1
        deadline = time.monotonic() + 5
        while not eng.idle and time.monotonic() < deadline:  # the row leaves the batch right after its last event
            time.sleep(0.01)
        assert eng.idle
    finally:
        eng.stop()
    eng = load_engine(str(tiny_model_dir), ServeConfig(request_timeout_s=0.2)).start()
    try:
        _, q = _events(eng, SamplingParams(max_tokens=100_000, ignore_eos=True))
        ev = q.get(timeout=10)
        while ev.kind == "delta":
            ev = q.get(timeout=10)
        assert ev.kind == "error" and ev.code == "timeout"
    finally:
        eng.stop()


def test_stop_drains_in_flight_then_refuses(tiny_model_dir):
    eng = load_engine(str(tiny_model_dir), ServeConfig()).start()
    req, q = _events(eng, SamplingParams(max_tokens=60, ignore_eos=True))
    assert q.get(timeout=10).kind == "delta"
    eng.stop(drain_s=20)
    events = list(q.queue)
    assert events[-1].kind == "done" and events[-1].completion_tokens == 60
    with pytest.raises(EngineStopped):
        _events(eng, SamplingParams(max_tokens=2))


class _ByteTokenizer:
    """Token i = the i-th byte string; decode joins the bytes and decodes UTF-8 with replacement, like BPE."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def test_text_tracker_holds_back_partial_stops_and_split_characters():
    tr = TextTracker(_ByteTokenizer([b"Hel", b"lo EN", b"D more"]), ["END"])
    assert tr.add(0) == "Hel"
    assert tr.add(1) == "lo "  # "EN" might be the start of "END": held back
    assert tr.add(2) == "" and tr.stopped and tr.text == "Hello "
    tr = TextTracker(_ByteTokenizer([b"caf", b"\xc3", b"\xa9 ok"]), ["x"])
    assert [tr.add(0), tr.add(1), tr.add(2)] == ["caf", "", "\u00e9 ok"]  # no half character is ever sent
    tr = TextTracker(_ByteTokenizer([b"ab", b"c"]), ["bcd"])
    assert [tr.add(0), tr.add(1), tr.flush()] == ["a", "", "bc"]  # held text is released at the end


def test_served_name(tmp_path):
    run = tmp_path / "my-run"
    (run / "export" / "merged").mkdir(parents=True)
    assert served_name(str(run / "export" / "merged")) == "my-run"
    assert served_name("default") == "default"
