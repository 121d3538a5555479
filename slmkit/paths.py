"""Where slmkit keeps its own files. SLM_HOME moves all of them (tests point it at a temp dir)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def home() -> Path | None:
    return Path(os.environ["SLM_HOME"]).expanduser() if os.environ.get("SLM_HOME") else None


def cache_dir() -> Path:
    """Model conversions and other re-creatable files."""
    if os.environ.get("SLM_CACHE_DIR"):
        return Path(os.environ["SLM_CACHE_DIR"]).expanduser()
    return (home() / "cache") if home() else Path(platformdirs.user_cache_dir("slmkit"))


def data_dir() -> Path:
    """The model registry and other state worth keeping."""
    return (home() / "data") if home() else Path(platformdirs.user_data_dir("slmkit"))


# Folders no run may write into, whatever the user asks.
SYSTEM_DIRS = ("/etc", "/proc", "/sys", "/dev", "/boot", "/bin", "/sbin", "/lib", "/lib64", "/usr", "/var/lib", "/run")


def check_writable_output(path: Path) -> Path:
    """Refuse system folders and folders we cannot create or write; return the resolved path."""
    from slmkit.errors import SlmError

    resolved = path.expanduser().resolve()
    text = str(resolved)
    if any(text == d or text.startswith(d + "/") for d in SYSTEM_DIRS):
        raise SlmError(
            f"output path {resolved} is inside a system folder", "set output_dir to a folder you own, e.g. runs/"
        )
    try:
        resolved.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SlmError(
            f"cannot create output folder {resolved}: {e.strerror}", "choose a writable output_dir"
        ) from None
    if not os.access(resolved, os.W_OK | os.X_OK):
        raise SlmError(
            f"output folder {resolved} is not writable", "choose a writable output_dir or fix its permissions"
        )
    return resolved
