"""eval/report.html is self-contained and complete; `eval-models` compares several models and gates CI with --fail-under."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from slmkit.errors import SlmError
from tests.conftest import TINY_ROWS, make_tiny_model_dir

SUMMARY = {"task": "classification", "n": 3, "models": {
    "base": {"n": 3, "accuracy": 1 / 3, "macro_f1": 0.2, "perplexity": 40.0},
    "trained": {"n": 3, "accuracy": 1.0, "macro_f1": 1.0, "perplexity": 1.5}}}
PREDICTIONS = [{"model": m, "index": i, "prompt": p, "reference": r, "prediction": y}
               for m, ys in (("base", ["weather", "music <b>", "weather"]), ("trained", ["weather", "alarm", "play_music"]))
               for i, ((p, r), y) in enumerate(zip([("what is the weather", "weather"), ("set an alarm", "alarm"),
                                                     ("play music", "play_music")], ys))]


def _render(tmp_path: Path) -> str:
    from slmkit.eval.metrics import confusion_matrix
    from slmkit.eval.report import write_report

    refs = ["weather", "alarm", "play_music"]
    cms = {m: confusion_matrix([p["prediction"] for p in PREDICTIONS if p["model"] == m], refs) for m in ("base", "trained")}
    path = write_report(tmp_path / "report.html", SUMMARY, PREDICTIONS, cms, {"run-a": [(1, 2.0), (2, 1.2), (3, 0.7)]})
    return path.read_text()


def test_report_is_self_contained_with_tables_and_pngs(tmp_path):
    page = _render(tmp_path)
    # no external resource of any kind: the page must open offline
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//)""", page)
    assert "http://" not in page and "https://" not in page
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(pngs) == 2  # metric bars + loss curves
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "<table id='summary'>" in page and "0.3333" in page and "40.0000" in page
    assert page.count("class='cm'") == 2
    # disagreements: rows 1 and 2 differ between models, row 0 does not; user text is escaped
    body = page.split("id='disagree'")[1]
    assert body.count("<tr>") == 3 and "set an alarm" in body and "what is the weather" not in body
    assert "music &lt;b&gt;" in body and "<b>" not in body.replace("<b>classification</b>", "")


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian chromium is not installed at /usr/bin/chromium")
def test_report_renders_in_headless_chromium_without_errors(tmp_path):
    _render(tmp_path)
    proc = subprocess.run(["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--dump-dom", (tmp_path / "report.html").as_uri()], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "id=\"summary\"" in proc.stdout
    assert "Uncaught" not in proc.stderr and "CONSOLE" not in proc.stderr.upper().replace("CONSOLE(0)", "")


@pytest.fixture()
def split(tmp_path) -> Path:
    rows = [{"messages": [{"role": "system", "content": "classify request reply with one intent"},
                          {"role": "user", "content": t}, {"role": "assistant", "content": label}], "label": label}
            for t, label in TINY_ROWS[:6]]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _app() -> typer.Typer:
    from slmkit.eval.cli import register

    app = typer.Typer()
    app.callback()(lambda: None)  # a group, as in slm, so the command name is not read as MODEL
    register(app)
    return app


def test_eval_models_cli_compares_models_and_fails_under(tmp_path, tiny_model_dir, split):
    other = make_tiny_model_dir(tmp_path / "other", seed=1)
    out = tmp_path / "eval"
    args = ["eval-models", str(tiny_model_dir), str(other), "--data", str(split), "--out", str(out),
            "--max-new-tokens", "3", "--no-progress"]
    res = CliRunner().invoke(_app(), args + ["--fail-under", "accuracy=1.01"])
    assert res.exit_code == 1, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "classification" and metrics["n"] == 6
    assert set(metrics["models"]) == {tiny_model_dir.name, "other"}
    for m in metrics["models"].values():
        assert {"accuracy", "macro_f1", "perplexity"} <= set(m) and m["perplexity"] > 1.0
    preds = (out / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 12
    page = (out / "report.html").read_text()
    assert "class='cm'" in page and "<table id='summary'>" in page

    res = CliRunner().invoke(_app(), args + ["--fail-under", "accuracy=0", "--no-perplexity"])
    assert res.exit_code == 0, res.output
    assert "perplexity" not in json.loads((out / "metrics.json").read_text())["models"]["other"]


def test_eval_models_errors(tmp_path, tiny_model_dir, split):
    from slmkit.eval.compare import eval_models, parse_fail_under

    with pytest.raises(SlmError, match="METRIC=VALUE"):
        parse_fail_under(["accuracy>0.5"])
    assert parse_fail_under(["m:f1=0.5"]) == [("m", "f1", 0.5)]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SlmError, match="empty"):
        eval_models([str(tiny_model_dir)], str(empty), tmp_path / "e")
    with pytest.raises(SlmError, match="unknown model"):
        eval_models(["no/such/place/x"], str(split), tmp_path / "e")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf")
    with pytest.raises(SlmError, match="broken.gguf"):
        eval_models([str(broken)], str(split), tmp_path / "e")
