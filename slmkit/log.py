"""Logging for every command: rich text or JSON lines on stderr, plus runs/<name>/logs/slm.log; quiet libraries."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

from rich.console import Console

from slmkit.errors import SlmError

console = Console(stderr=True)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": self.formatTime(record),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def setup_logging(log_format: str = "text", log_file: Path | None = None) -> None:
    """slmkit's logger to stderr (`text` via rich, or `json`), and to `log_file` when given."""
    if log_format not in ("text", "json"):
        raise SlmError(f"--log-format {log_format!r} is not text or json", "use --log-format text or --log-format json")
    root = logging.getLogger("slmkit")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    root.propagate = False
    if log_format == "json":
        h: logging.Handler = logging.StreamHandler(sys.stderr)
        h.setFormatter(_JsonFormatter())
    else:
        from rich.logging import RichHandler

        h = RichHandler(console=console, show_path=False, show_time=False)
    root.addHandler(h)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(
            _JsonFormatter() if log_format == "json" else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
        )
        root.addHandler(fh)
    quiet_libraries()


def quiet_libraries() -> None:
    """Library loggers at ERROR and their progress bars off: slmkit shows its own progress for long work."""
    for noisy in ("transformers", "accelerate", "peft", "datasets"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Libraries that call tqdm directly (transformers' GGUF loader: "Converting and de-quantizing GGUF tensors...")
    # print carriage-return noise beside slmkit's own progress. tqdm reads TQDM_* defaults when it is first imported,
    # and every command sets up logging before it loads a model.
    os.environ.setdefault("TQDM_DISABLE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def print_error(e: SlmError) -> None:
    """One line on stderr: `error: what went wrong  hint: how to fix it`."""
    console.print(
        f"[bold red]error:[/] {e.message}" + (f"  [dim]hint: {e.hint}[/]" if e.hint else ""),
        highlight=False,
        soft_wrap=True,
    )
