"""Synth over real HTTP on 127.0.0.1: the official openai client against fixture servers.

Recipes end to end on GSM8K / Alpaca seed tasks / httpx+PEP docs (tests/fixtures/synth), retries through
429 / 500 / slow / bad JSON / empty / dropped connections, budget stops, a dying server, and resume after
SIGKILL with zero repeated calls (counted by the server).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from slmkit.config.synth import SynthConfig
from slmkit.errors import SlmError
from slmkit.io import read_jsonl
from slmkit.synth.stage import plan, synthesize

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from tests.integration.synth_servers import Server, State, canned_app, fault_app, model_app

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "synth"
ROOT = Path(__file__).resolve().parents[2]
GSM = {
    "type": "cot",
    "seeds": str(FIX / "gsm8k_train_8.jsonl"),
    "input_field": "question",
    "output_field": "answer",
    "answer_regex": r"####\s*(.+)$",
}
ALPACA = {
    "type": "amplify",
    "seeds": str(FIX / "alpaca_seed_tasks_12.jsonl"),
    "instruction_field": "instruction",
    "input_field": "instances.0.input",
    "output_field": "instances.0.output",
    "n": 10,
    "batch_size": 4,
    "output_regex": r"Answer: .+",
    "judge": {"min_score": 4},
}
QA = {"type": "qa_from_docs", "docs": [str(FIX / "docs")], "chunk_chars": 800, "questions_per_chunk": 3}


def teacher(url: str, **kw) -> dict:
    return {
        "backend": "openai",
        "base_url": url,
        "model": "fixture",
        "api_key_env": None,
        "concurrency": 4,
        "timeout_s": 5,
        "retry_base_s": 0.01,
        "retry_max_s": 0.05,
        **kw,
    }


def cfg(url: str, recipes: list[dict], tmp: Path, teacher_kw: dict | None = None, **extra) -> SynthConfig:
    return SynthConfig.model_validate(
        {"teacher": teacher(url, **(teacher_kw or {})), "recipes": recipes, "cache": str(tmp / "cache.sqlite"), **extra}
    )


def gsm_answers() -> list[str]:
    return [json.loads(line)["answer"].split("####")[-1].strip() for line in (FIX / "gsm8k_train_8.jsonl").open()]


def test_each_recipe_end_to_end_and_rerun_makes_no_calls(tmp_path):
    state = State()
    questions = [json.loads(line)["question"] for line in (FIX / "gsm8k_train_8.jsonl").open()]
    state.wrong = {questions[0][:40]: 1, questions[1][:40]: -1}  # seed 0 wrong once, seed 1 always wrong
    recipes = [
        GSM,
        ALPACA,
        QA,
        {"type": "respond", "prompts": str(FIX / "gsm8k_train_8.jsonl"), "input_field": "question"},
        {"type": "judge", "min_score": 4},
    ]
    with Server(canned_app(state)) as srv:
        c = cfg(srv.url, recipes, tmp_path)
        s = synthesize(c, tmp_path / "run", tmp_path, show_progress=False)
        first_hits = state.total
        rows = read_jsonl(tmp_path / "run" / "synth" / "rows.jsonl")
        r = s["recipes"]
        # cot: 8 seeds, one dropped after 3 wrong tries, one kept on its 2nd try; every trace ends in the seed answer
        assert r["cot"]["rows"] == 7 and r["cot"]["dropped"] == {"wrong_answer": 1}
        cot = [x for x in rows if x["meta"]["synthetic"]["recipe"] == "cot"]
        answers = gsm_answers()
        assert [x["messages"][-1]["content"].splitlines()[-1] for x in cot] == [
            f"Answer: {a}" for i, a in enumerate(answers) if i != 1
        ]
        assert cot[0]["meta"]["synthetic"]["attempt"] == 1 and cot[1]["meta"]["synthetic"]["attempt"] == 0
        # amplify: exactly n rows; seed copies and format breakers dropped
        assert r["amplify"]["rows"] == 10
        assert r["amplify"]["dropped"]["near_duplicate"] >= 1 and r["amplify"]["dropped"]["format"] >= 1
        amp = [x for x in rows if x["meta"]["synthetic"]["recipe"] == "amplify"]
        assert all(x["messages"][1]["content"].startswith("Answer: ") for x in amp)
        # qa: the unsupported "green cheese" answer of every chunk dropped by the judge; chunk ids kept
        qa = [x for x in rows if x["meta"]["synthetic"]["recipe"] == "qa_from_docs"]
        assert qa and not any("cheese" in x["messages"][1]["content"] for x in qa)
        assert r["qa_from_docs"]["dropped"]["judge_low_score"] == len({x["meta"]["synthetic"]["chunk_id"] for x in qa})
        docs = {p.name: p.read_text() for p in (FIX / "docs").iterdir()}
        for x in qa:
            name = x["meta"]["synthetic"]["chunk_id"].split("#")[0]
            assert x["messages"][1]["content"] in docs[name]
        # respond + judge: echoes of the prompts, all long enough to pass the fixture's judge rule
        resp = [x for x in rows if x["meta"]["synthetic"]["recipe"] == "respond"]
        assert [x["messages"][-1]["content"] for x in resp] == [f"Echo: {q}" for q in questions]
        assert all(x["meta"]["judge"]["score"] == 5 for x in rows)
        assert s["rows"] == len(rows) == sum(v["rows"] for k, v in r.items() if k != "judge")
        assert s["stats"]["calls"] == first_hits and s["stats"]["prompt_tokens"] > 0
        # rerun: every call from the cache, the server sees nothing, same rows
        s2 = synthesize(c, tmp_path / "run2", tmp_path, show_progress=False)
        assert state.total == first_hits and s2["stats"]["calls"] == 0 and s2["stats"]["cached"] == first_hits
        assert read_jsonl(tmp_path / "run2" / "synth" / "rows.jsonl") == rows
        p = plan(c, tmp_path / "run", tmp_path)
        assert p["cached"] == p["calls"] > 0


def test_retries_through_every_fault_then_succeeds(tmp_path):
    state = State(faults=["429", "500", "slow", "badjson", "drop", "empty"])
    prompts = tmp_path / "p.txt"
    prompts.write_text("first prompt\nsecond prompt\nthird prompt\n")
    with Server(fault_app(state)) as srv:
        c = cfg(
            srv.url,
            [{"type": "respond", "prompts": str(prompts)}],
            tmp_path,
            {"concurrency": 1, "max_retries": 6, "timeout_s": 1.0},
        )
        s = synthesize(c, tmp_path / "run", tmp_path, show_progress=False)
    assert s["rows"] == 3 and s["stats"]["retries"] == 6 and s["stats"]["failed"] == {}
    assert state.total == 9 and s["stats"]["calls"] == 3


def test_retries_exhausted_counts_failure_and_keeps_the_rest(tmp_path):
    state = State(faults=["500", "500"])
    prompts = tmp_path / "p.txt"
    prompts.write_text("a prompt\nb prompt\nc prompt\n")
    with Server(fault_app(state)) as srv:
        c = cfg(srv.url, [{"type": "respond", "prompts": str(prompts)}], tmp_path, {"concurrency": 1, "max_retries": 1})
        s = synthesize(c, tmp_path / "run", tmp_path, show_progress=False)
    assert s["rows"] == 2 and s["stats"]["failed"] == {"http_500": 1}
    assert s["recipes"]["respond"]["dropped"] == {"teacher_http_500": 1}


def test_budget_max_calls_stops_cleanly_then_resumes(tmp_path):
    state = State()
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(10)))
    recipe = [{"type": "respond", "prompts": str(prompts)}]
    with Server(canned_app(state)) as srv:
        s = synthesize(
            cfg(srv.url, recipe, tmp_path, {"concurrency": 2}, budget={"max_calls": 4}),
            tmp_path / "run",
            tmp_path,
            show_progress=False,
        )
        assert s["rows"] == 4 == state.total and "max_calls=4" in s["stopped"]
        assert len(read_jsonl(tmp_path / "run" / "synth" / "rows.jsonl")) == 4
        s = synthesize(cfg(srv.url, recipe, tmp_path), tmp_path / "run", tmp_path, show_progress=False)
    assert s["rows"] == 10 and s["stats"]["calls"] == 6 and state.total == 10 and max(state.hits.values()) == 1


def test_budget_max_cost_stops_at_the_first_call_over(tmp_path):
    state = State()
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(10)))
    budget = {"max_cost_usd": 0.05, "price_in_per_1k": 1.0, "price_out_per_1k": 2.0}
    with Server(canned_app(state)) as srv:
        s = synthesize(
            cfg(srv.url, [{"type": "respond", "prompts": str(prompts)}], tmp_path, {"concurrency": 1}, budget=budget),
            tmp_path / "run",
            tmp_path,
            show_progress=False,
        )
    per_call = s["stats"]["cost_usd"] / s["stats"]["calls"]  # every prompt has the same token counts
    assert s["stats"]["cost_usd"] >= 0.05 > s["stats"]["cost_usd"] - per_call
    assert s["rows"] == state.total < 10 and "max_cost_usd" in s["stopped"]


def test_server_dies_mid_run_keeps_rows_and_resume_asks_only_the_rest(tmp_path):
    state = State(faults=["ok", "ok", "dead"])
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(6)))
    recipe = [{"type": "respond", "prompts": str(prompts)}]
    tk = {"concurrency": 1, "max_retries": 1, "max_consecutive_failures": 2}
    with Server(fault_app(state)) as srv:
        s = synthesize(cfg(srv.url, recipe, tmp_path, tk), tmp_path / "run", tmp_path, show_progress=False)
    assert s["rows"] == 2 and "teacher failing" in s["stopped"] and s["stats"]["failed"] == {"connection": 2}
    healthy = State()
    with Server(canned_app(healthy)) as srv:
        s = synthesize(cfg(srv.url, recipe, tmp_path, tk), tmp_path / "run", tmp_path, show_progress=False)
    assert s["rows"] == 6 and healthy.total == 4 and s["stats"]["cached"] == 2


def test_resume_after_sigkill_repeats_no_completed_call(tmp_path):
    state = State(hold_at=5)
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(8)))
    with Server(fault_app(state)) as srv:
        conf = tmp_path / "build.yaml"
        conf.write_text(
            yaml.safe_dump(
                {
                    "name": "killed",
                    "output_dir": str(tmp_path / "runs"),
                    "synth": {
                        "teacher": teacher(srv.url, concurrency=1),
                        "cache": "run",
                        "recipes": [{"type": "respond", "prompts": "p.txt"}],
                    },
                }
            )
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "slmkit.cli", "synth", str(conf), "--no-progress"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert state.held.wait(60), proc.communicate(timeout=5)[0].decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        state.release.set()
        completed = set(state.order[:4])  # answered (and cached) before the kill
        in_flight = state.order[4]
        assert not (tmp_path / "runs" / "killed" / "synth" / "rows.jsonl").exists()
        done = subprocess.run(
            [sys.executable, "-m", "slmkit.cli", "synth", str(conf), "--no-progress"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    second = state.order[5:]
    assert not completed & set(second) and in_flight in second and len(second) == 4
    assert len(read_jsonl(tmp_path / "runs" / "killed" / "synth" / "rows.jsonl")) == 8
    manifest = json.loads((tmp_path / "runs" / "killed" / "synth" / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["summary"]["stats"]["cached"] == 4


def test_tiny_model_server_answers_respond_recipe(tmp_path, tiny_model_dir):
    state = State()
    prompts = tmp_path / "p.txt"
    prompts.write_text("what is the weather today\nplay some music\n")
    with Server(model_app(tiny_model_dir, state)) as srv:
        s = synthesize(
            cfg(srv.url, [{"type": "respond", "prompts": str(prompts)}], tmp_path, {"max_tokens": 6}),
            tmp_path / "run",
            tmp_path,
            show_progress=False,
        )
    rows = read_jsonl(tmp_path / "run" / "synth" / "rows.jsonl")
    assert s["rows"] == 2 == state.total and all(r["messages"][-1]["content"].strip() for r in rows)
    assert rows[0]["meta"]["synthetic"]["teacher"] == "openai:fixture"


def test_preflight_names_missing_key_and_unreachable_endpoint(tmp_path, monkeypatch):
    recipe = [{"type": "respond", "prompts": str(FIX / "gsm8k_train_8.jsonl"), "input_field": "question"}]
    monkeypatch.delenv("SLM_TEST_TEACHER_KEY", raising=False)
    c = cfg("http://127.0.0.1:9/v1", recipe, tmp_path, {"api_key_env": "SLM_TEST_TEACHER_KEY"})
    with pytest.raises(SlmError, match="SLM_TEST_TEACHER_KEY is not set"):
        synthesize(c, tmp_path / "run", tmp_path, show_progress=False)
    monkeypatch.setenv("SLM_TEST_TEACHER_KEY", "sk-test")
    with pytest.raises(SlmError, match="cannot reach the teacher endpoint http://127.0.0.1:9/v1"):
        synthesize(c, tmp_path / "run", tmp_path, show_progress=False)
    lite = SynthConfig.model_validate(
        {"teacher": {"backend": "litellm", "model": "anthropic/claude-x"}, "recipes": recipe}
    )
    with pytest.raises(SlmError, match="LiteLLM is not installed") as e:
        synthesize(lite, tmp_path / "run", tmp_path, show_progress=False)
    assert "slmkit[litellm]" in e.value.hint


def test_cli_dry_run_then_run(tmp_path):
    from slmkit.cli import app

    state = State()
    with Server(canned_app(state)) as srv:
        conf = tmp_path / "build.yaml"
        conf.write_text(
            yaml.safe_dump(
                {
                    "name": "cli",
                    "output_dir": str(tmp_path / "runs"),
                    "synth": {"teacher": teacher(srv.url), "cache": "run", "recipes": [GSM]},
                }
            )
        )
        runner = CliRunner()
        dry = runner.invoke(app, ["synth", str(conf), "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert "8 calls      0 cached" in dry.output and state.total == 0
        run = runner.invoke(app, ["synth", str(conf), "--no-progress"])
        assert run.exit_code == 0, run.output
        assert "8 rows" in run.output and state.total == 8
        dry = runner.invoke(app, ["synth", str(conf), "--dry-run"])
        assert "8 calls      8 cached" in dry.output
        bad = runner.invoke(app, ["synth", str(conf), "--set", "synth.teacher.concurency=2"])
        assert isinstance(bad.exception, SlmError) and "synth.teacher.concurency" in str(bad.exception)
