"""What a new user meets at the command line: usage errors, a data-only build's summary, eval on their own files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from typer.main import get_command

from slmkit.cli import app, main
from tests.conftest import TINY_ROWS, tiny_config


def _command_paths(group, prefix=()) -> list[tuple[tuple[str, ...], bool]]:
    """Every (path, is_group) under `group`, groups included, e.g. (('data', 'inspect'), False)."""
    found = []
    for name, cmd in sorted(group.commands.items()):
        sub = getattr(cmd, "commands", None)
        found.append(((*prefix, name), sub is not None))
        if sub is not None:
            found += _command_paths(cmd, (*prefix, name))
    return found


PATHS = _command_paths(get_command(app))


def _slm(argv: list[str], capsys) -> tuple[int, str, str]:
    """`slm ARGV` in this process: (exit code, stdout, stderr). An uncaught exception fails the test (a traceback)."""
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def _error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("error:")]


def test_every_command_is_walked():
    names = {p for p, _ in PATHS}
    assert {
        ("build",),
        ("data",),
        ("data", "inspect"),
        ("data", "run"),
        ("serve",),
        ("models", "show"),
        ("eval-models",),
        ("export-model",),
        ("distill-cache",),
    } <= names
    assert len(names) == 23  # 20 commands and 3 groups (data, config, models)


@pytest.mark.parametrize("path,is_group", PATHS, ids=[" ".join(p) for p, _ in PATHS])
def test_usage_errors_are_one_line_and_help_exits_0(path, is_group, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # commands that run without arguments (doctor, models list) write nothing here
    code, out, err = _slm([*path, "--help"], capsys)
    assert code == 0 and "Usage" in out + err and "Traceback" not in out + err

    code, out, err = _slm([*path, "--no-such-flag"], capsys)
    assert code == 2 and "Traceback" not in out + err
    assert len(_error_lines(err)) == 1 and "No such option: --no-such-flag" in err, err

    code, out, err = _slm(list(path), capsys)
    assert "Traceback" not in out + err
    if is_group:  # a group alone shows its commands
        assert code == 2 and (out + err).count("Usage") == 1 and "Commands" in out + err
    elif code != 0:  # a missing argument, or the command's own one-line refusal (`slm serve` outside SageMaker)
        assert code == 2 and len(_error_lines(err)) == 1, err


def test_unknown_command_suggests_the_close_one(capsys):
    code, out, err = _slm(["buld"], capsys)
    assert code == 2 and _error_lines(err) == [
        "error: No such command 'buld'. Did you mean 'build'?  hint: `slm --help` lists the options"
    ]


def test_the_installed_entry_point_prints_no_traceback():
    res = subprocess.run(
        [sys.executable, "-m", "slmkit.cli", "build", "--bogus", "x"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.count("error:") == 1
    assert res.stderr.splitlines()[0].startswith("Usage: slm build")


def test_data_only_build_does_not_offer_a_model(tmp_path, tiny_model_dir, tiny_csv, capsys):
    cfg = tiny_config(tmp_path, tiny_model_dir, tiny_csv)
    conf = tmp_path / "build.yaml"
    conf.write_text(yaml.safe_dump(cfg.model_dump(mode="json") | {"stages": ["data"]}))
    code, out, err = _slm(["build", str(conf), "--no-progress"], capsys)
    assert code == 0, err
    assert "chat with it" not in out and "train/final" not in out
    assert "no model in this build (stages: data)" in out


@pytest.fixture()
def rows_csv(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("question,answer\n" + "".join(f"{t},{label}\n" for t, label in TINY_ROWS))
    return path


def test_eval_models_reads_the_users_own_files(tmp_path, tiny_model_dir, rows_csv, capsys):
    """A CSV of question/answer rows and a JSONL of input/output rows, read by the data stage's readers, with a
    system prompt from --system; a run's chat-record split still works as before."""
    system = "Reply with one intent: {labels}"
    out_dir = tmp_path / "eval-csv"
    code, out, err = _slm(
        [
            "eval-models",
            str(tiny_model_dir),
            "--data",
            str(rows_csv),
            "--system",
            system,
            "--out",
            str(out_dir),
            "--no-progress",
            "--no-perplexity",
            "--max-new-tokens",
            "2",
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["n"] == len(TINY_ROWS) and metrics["task"] == "classification"
    rows = [json.loads(ln) for ln in (out_dir / "eval_rows.jsonl").read_text().splitlines()]
    labels = sorted({label for _, label in TINY_ROWS})
    assert rows[0]["messages"][0] == {"role": "system", "content": "Reply with one intent: " + ", ".join(labels)}
    assert {r["messages"][-1]["content"] for r in rows} == set(labels)

    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("".join(json.dumps({"input": t, "output": label}) + "\n" for t, label in TINY_ROWS))
    code, out, err = _slm(
        [
            "eval-models",
            str(tiny_model_dir),
            "--data",
            str(jsonl),
            "--out",
            str(tmp_path / "e2"),
            "--no-progress",
            "--no-perplexity",
            "--max-new-tokens",
            "2",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["n"] == len(TINY_ROWS)

    split = tmp_path / "e2" / "eval_rows.jsonl"  # chat records: scored as they are, nothing rewritten
    code, out, err = _slm(
        [
            "eval-models",
            str(tiny_model_dir),
            "--data",
            str(split),
            "--out",
            str(tmp_path / "e3"),
            "--no-progress",
            "--no-perplexity",
            "--max-new-tokens",
            "2",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads((tmp_path / "e3" / "metrics.json").read_text())["data"] == str(split)
    assert not (tmp_path / "e3" / "eval_rows.jsonl").exists()


def test_eval_models_names_a_file_with_no_usable_rows(tmp_path, tiny_model_dir, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("question,answer\n")
    code, out, err = _slm(
        ["eval-models", str(tiny_model_dir), "--data", str(empty), "--out", str(tmp_path / "e")], capsys
    )
    assert code == 2 and len(_error_lines(err)) == 1 and "empty.csv" in err, err
