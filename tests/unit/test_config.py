"""Config precedence (defaults < YAML < env < CLI), validation messages, redaction."""

from __future__ import annotations

import pytest

from slmkit.config import cli_overrides, env_overrides, load_config, redact
from slmkit.errors import SlmError


@pytest.fixture()
def yaml_file(tmp_path):
    p = tmp_path / "build.yaml"
    p.write_text("name: from-yaml\ntrain:\n  lr: 0.001\n  batch_size: 4\ndata:\n  path: rows.csv\n")
    return p


def test_defaults_when_nothing_given():
    cfg = load_config(None, environ={})
    assert cfg.train.lr == 2e-4 and cfg.train.method == "lora" and cfg.model.base_model == "default"


def test_yaml_overrides_defaults_and_sets_config_dir(yaml_file):
    cfg = load_config(yaml_file, environ={})
    assert (cfg.name, cfg.train.lr, cfg.train.batch_size) == ("from-yaml", 0.001, 4)
    assert cfg.train.epochs == 1.0  # untouched default
    assert cfg.config_dir == str(yaml_file.parent)


def test_env_overrides_yaml_and_cli_overrides_env(yaml_file):
    env = {"SLM_TRAIN__LR": "0.005", "SLM_TRAIN__BATCH_SIZE": "16", "SLM_HOME": "/ignored/not/config"}
    cfg = load_config(yaml_file, environ=env)
    assert (cfg.train.lr, cfg.train.batch_size) == (0.005, 16)
    cfg = load_config(yaml_file, cli_overrides(["train.lr=0.1"]), environ=env)
    assert (cfg.train.lr, cfg.train.batch_size) == (0.1, 16)


def test_env_parsing_uses_yaml_scalars():
    tree = env_overrides({"SLM_TRAIN__REPORT_TO": "[tensorboard]", "SLM_EVAL__COMPARE_BASE": "false", "OTHER": "x"})
    assert tree == {"train": {"report_to": ["tensorboard"]}, "eval": {"compare_base": False}}


def test_unknown_key_names_the_field_path(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(SlmError) as e:
        load_config(p, environ={})
    assert "train.learning_rate" in e.value.message and str(p) in e.value.message
    assert "slm config show" in e.value.hint


def test_bad_value_names_the_field_path():
    with pytest.raises(SlmError, match=r"train\.batch_size"):
        load_config(None, {"train": {"batch_size": 0}}, environ={})
    with pytest.raises(SlmError, match=r"train\.method"):
        load_config(None, {"train": {"method": "qlora9"}}, environ={})


def test_run_name_must_be_a_plain_folder_name():
    with pytest.raises(SlmError, match="name"):
        load_config(None, {"name": "../escape"}, environ={})


def test_set_without_equals_is_rejected():
    with pytest.raises(SlmError, match="KEY=VALUE"):
        cli_overrides(["train.lr"])


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(SlmError, match="invalid YAML"):
        load_config(bad, environ={})
    with pytest.raises(SlmError, match="not found"):
        load_config(tmp_path / "missing.yaml", environ={})


def test_redact_hides_secret_values_only():
    out = redact(
        {
            "teacher": {"api_key": "sk-123", "model": "m", "api_key_env": "OPENAI_API_KEY"},
            "list": [{"hf_token": "t"}],
            "empty_key": "",
            "eval": {"max_new_tokens": 5},
        }
    )
    assert out == {
        "teacher": {"api_key": "***", "model": "m", "api_key_env": "OPENAI_API_KEY"},
        "list": [{"hf_token": "***"}],
        "empty_key": "",
        "eval": {"max_new_tokens": 5},
    }
