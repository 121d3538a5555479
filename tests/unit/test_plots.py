"""Plots write real, correctly sized PNGs that contain what was asked for."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from slmkit.errors import SlmError
from slmkit.plots import length_histogram, loss_curve, metric_bars

PNG_SIG = b"\x89PNG\r\n\x1a\n"
SIZE = (800, 500)  # 8x5 inches at 100 dpi
TAB_BLUE = (0x1F, 0x77, 0xB4)  # matplotlib's first and second cycle colours
TAB_ORANGE = (0xFF, 0x7F, 0x0E)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which must directly follow the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIG
    length, ctype = struct.unpack(">I4s", data[8:16])
    assert ctype == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def has_colour(path: Path, rgb: tuple[int, int, int], tol: int = 6) -> bool:
    """Whether any pixel is within `tol` of `rgb` on every channel."""
    import matplotlib.image

    img = (matplotlib.image.imread(path)[..., :3] * 255).round().astype(int)
    return bool((np.abs(img - np.array(rgb)) <= tol).all(axis=-1).any())


def check_png(path: Path, returned: Path) -> None:
    assert returned == path
    assert path.stat().st_size > 1000
    assert png_size(path) == SIZE
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind


def test_loss_curve(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "loss.png"  # parent does not exist yet
    series = {
        "train": [(s, 3.0 / (s + 1)) for s in range(0, 100, 10)],
        "val": [(50, 0.2), (0, 1.5), (99, 0.1)],
    }  # unsorted on purpose
    check_png(out, loss_curve(series, out))
    assert has_colour(out, TAB_BLUE) and has_colour(out, TAB_ORANGE)


def test_loss_curve_single_series_uses_one_colour(tmp_path: Path) -> None:
    out = tmp_path / "loss.png"
    check_png(out, loss_curve({"train": [(1, 2.0), (2, 1.0)]}, out))
    assert has_colour(out, TAB_BLUE) and not has_colour(out, TAB_ORANGE)


def test_loss_curve_needs_points(tmp_path: Path) -> None:
    with pytest.raises(SlmError, match="no loss values"):
        loss_curve({"train": [], "val": []}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_metric_bars(tmp_path: Path) -> None:
    out = tmp_path / "bars.png"
    metrics = {
        "base": {"n": 10, "accuracy": 0.2, "f1": 0.3, "bleu": 12.5},
        "trained": {"n": 10, "accuracy": 0.9, "f1": 0.8, "bleu": 40.0, "extra": 0.5},
    }
    check_png(out, metric_bars(metrics, out))
    assert has_colour(out, TAB_BLUE) and has_colour(out, TAB_ORANGE)


def test_metric_bars_default_keys_skip_unshared_and_out_of_range(tmp_path: Path) -> None:
    # Only bleu (0-100) and n are shared, and "a"/"b" are each in one model: nothing to plot.
    metrics = {"base": {"n": 5, "bleu": 10.0, "a": 0.5}, "trained": {"n": 5, "bleu": 30.0, "b": 0.5}}
    with pytest.raises(SlmError, match="no metric is shared"):
        metric_bars(metrics, tmp_path / "x.png")
    out = tmp_path / "bleu.png"
    check_png(out, metric_bars(metrics, out, keys=["bleu", "a"]))  # explicit keys allow bleu


def test_metric_bars_needs_models(tmp_path: Path) -> None:
    with pytest.raises(SlmError, match="no models"):
        metric_bars({}, tmp_path / "x.png")


def test_length_histogram(tmp_path: Path) -> None:
    out = tmp_path / "lengths.png"
    lengths = [12, 40, 40, 41, 77, 128, 128, 128, 300]
    check_png(out, length_histogram(lengths, out, title="Lengths"))
    assert has_colour(out, TAB_BLUE)
    with pytest.raises(SlmError, match="no lengths"):
        length_histogram([], tmp_path / "empty.png")
