"""Command-line plumbing shared by `slm` and the container's `serve` entry point: options declared once (typer.Option
objects are reusable defaults) and `run_app`, which turns every user error into one `error:` line."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from slmkit.errors import SlmError
from slmkit.log import print_error

SetOpt = typer.Option(None, "--set", help="Override any config field: --set train.lr=1e-4 (repeatable)")
NameOpt = typer.Option(None, "--name", help="Run name (folder under output_dir)")
OutOpt = typer.Option(None, "--output-dir", help="Where run folders go")
ModelOpt = typer.Option(None, "--base-model", help="'default', a local HF folder or a hub id")
StepsOpt = typer.Option(None, "--max-steps", help="Stop training after this many optimizer steps")
ForceOpt = typer.Option(False, "--force", help="Rerun stages even if their inputs are unchanged")
ResumeOpt = typer.Option(False, "--resume", help="Continue training from the newest complete checkpoint")
LogFmtOpt = typer.Option("text", "--log-format", help="text or json (one JSON object per line)")
ProgOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars")
FailCollapseOpt = typer.Option(
    False, "--fail-on-collapse", help="Exit 1 when a trained model collapsed (one answer to nearly everything)"
)


def _click_exceptions():
    """click's exception classes as this typer raises them (typer >= 0.2x vendors click as typer._click)."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer: click itself
        from click import exceptions
    return exceptions


def run_app(app: typer.Typer, argv: list[str] | None, prog_name: str) -> None:
    """Run a typer app. SlmError and click's usage errors print one `error:` line and exit 2, never a traceback;
    a missing argument or unknown option shows the command's usage line first."""
    ex = _click_exceptions()
    err = Console(stderr=True)
    try:
        code = app(args=argv, prog_name=prog_name, standalone_mode=False)
    except SlmError as e:
        print_error(e)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except ex.NoArgsIsHelpError as e:  # `slm`, `slm models`: the group's help (typer's rich help prints it itself)
        if e.format_message().strip():
            err.print(e.format_message(), highlight=False, markup=False)
        sys.exit(e.exit_code)
    except ex.UsageError as e:  # missing argument, unknown option or command (with click's "did you mean")
        if e.ctx is not None:
            err.print(e.ctx.get_usage(), highlight=False, markup=False)
        where = e.ctx.command_path if e.ctx is not None else prog_name
        print_error(SlmError(e.format_message(), f"`{where} --help` lists the options"))
        sys.exit(e.exit_code)
    except ex.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except typer.Abort:  # click's Abort, as typer exports it (its vendored exceptions module has none)
        sys.exit(1)
    if isinstance(code, int) and code:  # typer.Exit(n) inside a command (e.g. eval-models --fail-under)
        sys.exit(code)
