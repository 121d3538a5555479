"""Converting the embedded GGUF (the first run on a machine does it in-process) on the real wheel."""

from __future__ import annotations

import pytest
import torch

from slmkit.models import MARKER, convert_embedded, verify_embedded

pytestmark = pytest.mark.integration


def test_conversion_leaves_the_global_rng_alone(tmp_path):
    # A seeded run that converts first must draw the same LoRA weights as the same run on a warm cache: it did not
    # (from_config's weight init consumed the RNG), and the first run on a machine trained another model.
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    dest = convert_embedded(tmp_path / "smollm2")
    assert torch.equal(torch.get_rng_state(), before)
    assert (dest / MARKER).is_file() and verify_embedded(dest)
