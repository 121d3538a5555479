"""eval/report.html is self-contained and complete; `eval-models` compares several models and gates CI with --fail-under."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from slmkit.errors import SlmError
from tests.conftest import TINY_ROWS, make_tiny_model_dir

SUMMARY = {
    "task": "classification",
    "n": 3,
    "models": {
        "base": {"n": 3, "accuracy": 1 / 3, "macro_f1": 0.2, "perplexity": 40.0},
        "trained": {"n": 3, "accuracy": 1.0, "macro_f1": 1.0, "perplexity": 1.5},
    },
}
PREDICTIONS = [
    {"model": m, "index": i, "prompt": p, "reference": r, "prediction": y}
    for m, ys in (("base", ["weather", "music <b>", "weather"]), ("trained", ["weather", "alarm", "play_music"]))
    for i, ((p, r), y) in enumerate(
        zip([("what is the weather", "weather"), ("set an alarm", "alarm"), ("play music", "play_music")], ys)
    )
]


def _render(tmp_path: Path) -> str:
    from slmkit.eval.metrics import confusion_matrix
    from slmkit.eval.report import write_report

    refs = ["weather", "alarm", "play_music"]
    cms = {
        m: confusion_matrix([p["prediction"] for p in PREDICTIONS if p["model"] == m], refs)
        for m in ("base", "trained")
    }
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


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """$SLM_CHROMIUM, else the first Chromium/Chrome on PATH."""
    return os.environ.get("SLM_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


class Cdp:
    """Chrome DevTools Protocol over --remote-debugging-pipe: NUL-terminated JSON, commands on fd 3, replies on fd 4.

    A pipe needs no port and no websocket package, and the browser's console and exceptions arrive as events
    with their level, which `--enable-logging=stderr` output does not give reliably across Chromium versions.
    """

    def __init__(self, binary: str, profile: Path):
        import fcntl  # POSIX only, like fd passing itself; imported here so the module still loads elsewhere

        cmd_r, self.w = os.pipe()
        self.r, out_w = os.pipe()
        # Park the child's ends on high fds first so moving them onto 3 and 4 cannot overwrite one with the other.
        child_r, child_w = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 100), fcntl.fcntl(out_w, fcntl.F_DUPFD, 100)
        os.close(cmd_r)
        os.close(out_w)

        def onto_3_and_4() -> None:  # runs in the child between fork and exec
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=onto_3_and_4,
            pass_fds=(3, 4),
        )
        os.close(child_r)
        os.close(child_w)
        self.buf, self.last_id, self.events = b"", 0, []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.r, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed its DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        """Send one command and return its result; events read meanwhile are kept in self.events."""
        self.last_id += 1
        msg = {"id": self.last_id, "method": method, "params": params or {}} | (
            {"sessionId": session} if session else {}
        )
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while (reply := self._read(deadline)).get("id") != self.last_id:
            self.events.append(reply)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_for(self, event: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._read(deadline))

    def evaluate(self, session: str, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (TimeoutError, EOFError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.w)
        os.close(self.r)


def page_errors(events: list[dict]) -> list[str]:
    """Uncaught exceptions, console.error/assert calls and error log entries (failed loads, CSP) among CDP events."""
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append(f"uncaught: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            out.append(
                f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"])
            )
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
    return out


def open_in_chromium(binary: str, page: Path, profile: Path, script: list[str]) -> tuple[list, list[str]]:
    """Load `page` headless, run each JS expression in `script`; return their values and the page's errors."""
    cdp = Cdp(binary, profile)
    try:
        target = cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            cdp.send(f"{domain}.enable", session=session)
        cdp.send("Page.navigate", {"url": page.resolve().as_uri()}, session)
        cdp.wait_for("Page.loadEventFired")
        values = [cdp.evaluate(session, js) for js in script]
        cdp.evaluate(session, "0")  # a last round trip, so events raised by the script above have arrived
        return values, page_errors(cdp.events)
    finally:
        cdp.close()


def test_cdp_helper_reports_page_errors(tmp_path):
    """The check below must be able to fail: a page with a broken script, a console error and a missing image."""
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium binary found (apt-get install chromium, or set SLM_CHROMIUM=/path/to/chrome)")
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><body><img src='missing.png'><script>console.error('boom');"
        "notDefined();</script></body></html>"
    )
    _, errors = open_in_chromium(binary, bad, tmp_path / "profile", [])
    assert any("missing.png" in e for e in errors) and "console.error: boom" in errors
    assert any(e.startswith("uncaught: ReferenceError: notDefined") for e in errors), errors


def test_report_renders_in_headless_chromium_without_errors(tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium binary found (apt-get install chromium, or set SLM_CHROMIUM=/path/to/chrome)")
    _render(tmp_path)
    values, errors = open_in_chromium(
        binary,
        tmp_path / "report.html",
        tmp_path / "profile",
        [
            "[...document.querySelectorAll('#summary tbody tr')].map(r => r.cells[0].textContent)",
            "[...document.querySelectorAll('#summary thead th')].map(h => h.textContent)",
            # every inlined PNG decoded: a broken data: URL leaves naturalWidth at 0 without any console message
            "[...document.images].map(i => i.complete && i.naturalWidth > 0)",
            "document.querySelectorAll('table.cm').length",
            # the filter box's script runs: typing hides the disagreement rows that do not match
            "(() => { const f = document.getElementById('filter'); f.value = 'alarm';"
            " f.dispatchEvent(new Event('input'));"
            " return [...document.querySelectorAll('#disagree tbody tr')].filter(r => r.style.display !== 'none').length; })()",
        ],
    )
    assert errors == []
    rows, head, images, confusion, shown = values
    assert rows == ["base", "trained"] and head[0] == "model" and {"accuracy", "macro_f1", "perplexity"} <= set(head)
    assert images == [True, True] and confusion == 2 and shown == 1


@pytest.fixture()
def split(tmp_path) -> Path:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "classify request reply with one intent"},
                {"role": "user", "content": t},
                {"role": "assistant", "content": label},
            ],
            "label": label,
        }
        for t, label in TINY_ROWS[:6]
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _app() -> typer.Typer:
    from slmkit.cli import app

    return app


def test_eval_models_cli_compares_models_and_fails_under(tmp_path, tiny_model_dir, split):
    other = make_tiny_model_dir(tmp_path / "other", seed=1)
    out = tmp_path / "eval"
    args = [
        "eval-models",
        str(tiny_model_dir),
        str(other),
        "--data",
        str(split),
        "--out",
        str(out),
        "--max-new-tokens",
        "3",
        "--no-progress",
    ]
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
