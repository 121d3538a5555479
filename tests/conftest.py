"""Shared fixtures: an isolated SLM_HOME, and a tiny random llama + ChatML tokenizer built offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "intent-router"

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = (
    "what is the weather today set an alarm for six play some music book a flight to paris translate hello "
    "into french classify request reply with one intent weather alarm play_music book_flight translate "
    "tomorrow please me my at in a of"
).split()


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory):
    """Keep the registry and model cache of the test session out of the user's folders."""
    home = tmp_path_factory.mktemp("slm_home")
    old = os.environ.get("SLM_HOME")
    os.environ["SLM_HOME"] = str(home)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield home
    if old is None:
        os.environ.pop("SLM_HOME", None)
    else:
        os.environ["SLM_HOME"] = old


@pytest.fixture(autouse=True)
def _serve_in_fp32(monkeypatch):
    """The torch serve backend in fp32 whatever this machine measures (no test may depend on its real speed): in
    process through the probe's one door, in `slm serve` subprocesses through the config's env layer. Tests of the
    measured choice stub the probe itself (tests/unit/test_serve_dtype.py)."""
    import slmkit.serve.torch_runner as torch_runner

    monkeypatch.setattr(torch_runner, "measured_decode_dtype", lambda: ("float32", "pinned by the test suite"))
    monkeypatch.setenv("SLM_SERVE__DTYPE", "float32")


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(WORDS)) + list("abcdefghijklmnopqrstuvwxyz_.,?!'"))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tok.chat_template = CHATML
    return tok


def make_tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """A 2-layer llama (hidden 32) with random weights, saved as safetensors with the tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=True,
        initializer_range=0.3,
    )  # wide enough for confident logits
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_llama"))


TINY_ROWS = [
    ("what is the weather today", "weather"),
    ("set an alarm for six", "alarm"),
    ("play some music", "play_music"),
    ("book a flight to paris", "book_flight"),
    ("translate hello into french", "translate"),
    ("what is the weather tomorrow", "weather"),
    ("set my alarm at six please", "alarm"),
    ("play music for me", "play_music"),
    ("book me a flight", "book_flight"),
    ("translate hello", "translate"),
]


def write_tiny_csv(folder: Path, suffixes: tuple[str, ...] = ("", " please", " today", " tomorrow")) -> Path:
    """rows.csv (text,intent): every TINY_ROWS request once per suffix, so each intent has a few rows."""
    csv = Path(folder) / "rows.csv"
    csv.write_text("text,intent\n" + "".join(f"{t}{s},{label}\n" for s in suffixes for t, label in TINY_ROWS))
    return csv


@pytest.fixture()
def tiny_csv(tmp_path) -> Path:
    """40 rows (4 copies of 10 phrasings with a varying suffix) of a 5-intent router, as CSV."""
    suffixes = ["", " please", " today", " tomorrow"]
    lines = ["text,intent"] + [f"{t}{s},{label}" for s in suffixes for t, label in TINY_ROWS]
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_config(tmp_path: Path, model_dir: Path, csv: Path, **train) -> "BuildConfig":  # noqa: F821
    from slmkit.config import load_config

    overrides = {
        "name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "model": {"base_model": str(model_dir)},
        "data": {
            "path": str(csv),
            "system_prompt": "classify request reply with one intent",
            "split": {"val": 0.1, "test": 0.2},
        },
        # fp32 unless a test asks: `auto` would pick bf16 on CPUs that measure it faster, and tests must not depend
        # on the machine's speed
        "train": {
            "max_steps": 6,
            "batch_size": 4,
            "save_steps": 2,
            "logging_steps": 1,
            "lr": 1e-2,
            "dtype": "float32",
            **train,
        },
        "eval": {"max_new_tokens": 4, "batch_size": 8},
    }
    return load_config(None, overrides, environ={})


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def save_onnx_ready_llama(path: Path, tok, seed: int = 0, initializer_range: float = 0.1) -> Path:
    """A 2-layer llama with hidden 64 / 4 heads (head size 16, as onnxruntime's attention needs) saved with `tok`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path
