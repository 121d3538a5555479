"""The synth cache (SQLite, WAL), the teacher's cache-first calls, retries, budget and the local backend."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from slmkit.config.synth import BudgetConfig, SynthConfig, TeacherConfig
from slmkit.errors import SlmError
from slmkit.synth.cache import CachedReply, SynthCache, cache_key, default_cache_path
from slmkit.synth.stage import plan
from slmkit.synth.teacher import FatalCallError, LocalBackend, Request, Teacher, TransientError

MSGS = [{"role": "system", "content": "s"}, {"role": "user", "content": "hello"}]
SAMPLING = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 64, "seed": 0}


def test_key_changes_with_every_input_and_only_those():
    base = cache_key("openai", "m", SAMPLING, MSGS, None)
    assert base == cache_key(
        "openai", "m", dict(SAMPLING), [dict(m, name="x") for m in MSGS], None
    )  # extra keys ignored
    variants = [
        cache_key("local", "m", SAMPLING, MSGS),
        cache_key("openai", "m2", SAMPLING, MSGS),
        cache_key("openai", "m", SAMPLING, MSGS, "json"),
        cache_key("openai", "m", SAMPLING, [MSGS[0], {"role": "user", "content": "hello!"}]),
    ]
    variants += [
        cache_key("openai", "m", {**SAMPLING, k: v}, MSGS)
        for k, v in (("temperature", 0.0), ("top_p", 0.9), ("max_tokens", 65), ("seed", 1))
    ]
    assert len({base, *variants}) == 1 + len(variants)


def test_cache_is_wal_and_persists_each_put(tmp_path):
    path = tmp_path / "c.sqlite"
    c = SynthCache(path)
    c.put("k1", "openai", "m", {"messages": MSGS}, CachedReply("hi", 3, 1))
    other = SynthCache(path)  # a second process would see the same
    assert other.get("k1") == CachedReply("hi", 3, 1) and other.get("nope") is None and len(other) == 1
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    c.close()
    other.close()
    assert default_cache_path().parts[-2:] == ("synth", "cache.sqlite")


def test_corrupt_cache_file_is_a_user_error(tmp_path):
    bad = tmp_path / "c.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SlmError, match="c.sqlite"):
        SynthCache(bad)


class Scripted:
    """Async backend: raises the scripted exceptions in order, then answers with the user text."""

    name = "scripted"

    def __init__(self, script=()):
        self.script, self.calls = list(script), 0

    def preflight(self):
        pass

    async def call(self, messages, sampling, schema):
        self.calls += 1
        if self.script:
            raise self.script.pop(0)
        await asyncio.sleep(0)
        return f"re: {messages[-1]['content']}", 7, 3


def teacher(tmp_path, backend, **kw) -> Teacher:
    budget = BudgetConfig(**kw.pop("budget", {}))
    cfg = TeacherConfig(model="m", api_key_env=None, retry_base_s=0.0, **kw)
    return Teacher(cfg, budget, SynthCache(tmp_path / "c.sqlite"), backend=backend)


def reqs(n: int) -> list[Request]:
    return [Request([{"role": "user", "content": f"q{i}"}]) for i in range(n)]


def test_second_teacher_answers_from_cache_with_zero_calls(tmp_path):
    b1 = Scripted()
    t1 = teacher(tmp_path, b1, concurrency=3)
    first = t1.complete(reqs(5))
    assert [r.text for r in first] == [f"re: q{i}" for i in range(5)] and b1.calls == 5
    assert t1.stats.prompt_tokens == 35 and t1.stats.completion_tokens == 15
    b2 = Scripted()
    t2 = teacher(tmp_path, b2)
    again = t2.complete(reqs(6))
    assert b2.calls == 1 and [r.cached for r in again] == [True] * 5 + [False]
    assert [r.key for r in again[:5]] == [r.key for r in first]


def test_retries_transient_errors_and_fails_fast_on_fatal(tmp_path):
    b = Scripted([TransientError("http_429", retry_after=0.0), TransientError("timeout"), TransientError("http_503")])
    t = teacher(tmp_path, b, max_retries=3, concurrency=1)
    [r] = t.complete(reqs(1))
    assert r.ok and b.calls == 4 and t.stats.retries == 3 and t.stats.calls == 1
    b = Scripted([TransientError("http_500")] * 3)
    t = teacher(tmp_path / "x", b, max_retries=2)
    [r] = t.complete(reqs(1))
    assert not r.ok and r.error == "http_500" and t.stats.failed == {"http_500": 1} and b.calls == 3
    b = Scripted([FatalCallError("http_400", "bad request")])
    t = teacher(tmp_path / "y", b, max_retries=5)
    [r] = t.complete(reqs(1))
    assert r.error == "http_400" and b.calls == 1 and t.cache.get(r.key) is None


def test_backoff_is_full_jitter_capped_and_honours_retry_after(tmp_path):
    t = teacher(tmp_path, Scripted())
    t.cfg.retry_base_s, t.cfg.retry_max_s = 0.5, 3.0
    delays = [t._delay(a, None) for a in range(6) for _ in range(50)]
    assert all(0 <= d <= min(3.0, 0.5 * 2 ** (i // 50)) for i, d in enumerate(delays))
    assert max(delays[:50]) < 0.5 and max(delays[-50:]) > 1.0
    assert t._delay(0, 2.0) == 2.0 and t._delay(0, 99.0) == 3.0


def test_local_backend_batches_caches_and_respects_max_calls(tmp_path, tiny_model_dir):
    cfg = TeacherConfig(
        backend="local", model=str(tiny_model_dir), api_key_env=None, concurrency=2, max_tokens=4, temperature=0.0
    )
    t = Teacher(cfg, BudgetConfig(max_calls=3), SynthCache(tmp_path / "c.sqlite"))
    t.preflight()
    out = t.complete(reqs(5))
    assert [r.ok or r.error for r in out][3:] == ["stopped", "stopped"] and t.stats.calls == 3
    assert t.stopped == "budget: max_calls=3 reached" and t.stats.completion_tokens > 0
    fresh = Teacher(cfg, BudgetConfig(), SynthCache(tmp_path / "c.sqlite"))
    again = fresh.complete(reqs(3))
    assert [r.cached for r in again] == [True] * 3 and fresh.backend.model is None  # weights never loaded
    assert [r.text for r in again] == [r.text for r in out[:3]]
    assert isinstance(fresh.backend, LocalBackend)


def test_dry_run_counts_planned_and_cached_calls_without_a_teacher(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\nd\n")
    cfg = SynthConfig.model_validate(
        {
            "teacher": {"model": "m", "api_key_env": "SLM_UNSET_KEY", "base_url": "http://127.0.0.1:9"},
            "cache": "run",
            "recipes": [{"type": "respond", "prompts": "p.txt"}, {"type": "judge", "min_score": 3}],
        }
    )
    p = plan(cfg, tmp_path / "run", tmp_path)
    assert (p["calls"], p["cached"], p["more_at_most"]) == (4, 0, 4)
    t = Teacher(cfg.teacher, cfg.budget, SynthCache(tmp_path / "run" / "synth" / "cache.sqlite"), backend=Scripted())
    t.complete([Request([{"role": "user", "content": x}]) for x in "ab"])
    t.cache.close()
    p = plan(cfg, tmp_path / "run", tmp_path)
    assert (p["calls"], p["cached"]) == (4, 2)
