"""Manifests, atomic writes, the registry, path safety, model resolution, hardware choice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slmkit.errors import SlmError
from slmkit.io import atomic_dir, atomic_write_text, read_jsonl
from slmkit.paths import check_writable_output
from slmkit.runs import fingerprint, get_model, is_done, list_models, read_manifest, register_model, stage_manifest


def test_stage_manifest_done_and_fingerprint(tmp_path):
    fp = fingerprint("data", {"a": 1}, {"source": "abc"})
    assert fp != fingerprint("data", {"a": 2}, {"source": "abc"})
    with stage_manifest(tmp_path, "data", fp, {"a": 1}, {}) as summary:
        assert read_manifest(tmp_path, "data")["status"] == "running"
        summary["rows"] = 3
    m = read_manifest(tmp_path, "data")
    assert m["status"] == "done" and m["summary"] == {"rows": 3} and m["finished"]
    assert is_done(tmp_path, "data", fp) and not is_done(tmp_path, "data", "other")


def test_failed_stage_never_reads_as_done(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with stage_manifest(tmp_path, "train", "fp", {}, {}):
            raise KeyboardInterrupt
    m = read_manifest(tmp_path, "train")
    assert m["status"] == "failed" and "KeyboardInterrupt" in m["error"]
    assert not is_done(tmp_path, "train")


def test_atomic_dir_leaves_old_content_on_error(tmp_path):
    dest = tmp_path / "out"
    with atomic_dir(dest) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash")
    assert (dest / "a.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left behind


def test_atomic_write_replaces_whole_file(tmp_path):
    p = atomic_write_text(tmp_path / "x" / "f.txt", "hello")
    atomic_write_text(p, "bye")
    assert p.read_text() == "bye" and len(list(p.parent.iterdir())) == 1


def test_read_jsonl_names_the_bad_line(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n')
    with pytest.raises(SlmError, match=r"rows\.jsonl:4: malformed JSON"):
        read_jsonl(p)


def test_registry_round_trip():
    register_model("unit-model", "default", "abc123", {"trained": {"accuracy": 0.9}}, Path("/tmp/x"))
    register_model("unit-model", "default", "def456", {"trained": {"accuracy": 0.95}}, Path("/tmp/x"))
    entry = get_model("unit-model")
    assert entry["data_hash"] == "def456" and entry["metrics"]["trained"]["accuracy"] == 0.95
    assert sum(m["name"] == "unit-model" for m in list_models()) == 1
    assert get_model("no-such-model") is None


@pytest.mark.parametrize("path", ["/etc/slm", "/proc/x", "/sys", "/dev/shm/runs"])
def test_system_folders_are_refused(path):
    with pytest.raises(SlmError, match="system folder"):
        check_writable_output(Path(path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(SlmError):
        check_writable_output(ro / "runs")


def test_resolve_model_errors_and_local_folder(tmp_path, tiny_model_dir):
    from slmkit.models import resolve_model

    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir.resolve()
    assert resolve_model("someorg/some-model") == "someorg/some-model"
    with pytest.raises(SlmError, match="unknown model 'not-a-model'"):
        resolve_model("not-a-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlmError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_cpu_bf16_reads_the_cpu_flags(monkeypatch):
    import torch

    from slmkit import hardware

    flags = {"_is_amx_tile_supported": False, "_is_avx512_bf16_supported": False}
    for name in flags:
        monkeypatch.setattr(torch.cpu, name, lambda name=name: flags[name])
    assert hardware.cpu_bf16() is None
    flags["_is_avx512_bf16_supported"] = True
    assert hardware.cpu_bf16() == "AVX512_BF16"
    flags["_is_amx_tile_supported"] = True
    assert hardware.cpu_bf16() == "AMX"


FAULTS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from slmkit.hardware import keep_freed_memory
    assert keep_freed_memory()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(200):  # buffers of 3-21 MB and 4 MB, every page written, freed each round like a training pass's
    a, b = torch.ones((1 + i % 7) * 2**18 * 3), torch.ones(2**20)
    del a, b
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def test_keep_freed_memory_stops_page_faulting_buffers_back_in(tmp_path):
    """In fresh processes: the same allocate/free pattern page-faults far less once glibc keeps freed memory, and a
    user's own MALLOC_* setting is left alone."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    runs = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", FAULTS, mode],
                capture_output=True,
                text=True,
                check=True,
                env=env,
                cwd=Path(__file__).resolve().parents[2],
            ).stdout
        )
        for mode in ("default", "keep")
    }
    assert runs["keep"] < runs["default"] / 2, runs
    user = subprocess.run(
        [sys.executable, "-c", "from slmkit.hardware import keep_freed_memory; print(keep_freed_memory())"],
        capture_output=True,
        text=True,
        env={**env, "MALLOC_ARENA_MAX": "2"},
        check=True,
    )
    assert user.stdout.strip() == "False"


def test_onednn_primitive_cache_is_bounded_unless_the_user_chose(monkeypatch):
    from slmkit import hardware

    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY"):
        monkeypatch.setenv(name, "0")  # recorded, so the test leaves the environment as it found it
        monkeypatch.delenv(name)
    assert hardware.bound_onednn_cache() is True
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(hardware.ONEDNN_PRIMITIVE_CACHE)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")  # the user's own value stays
    assert hardware.bound_onednn_cache() is False
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    monkeypatch.setenv("DNNL_PRIMITIVE_CACHE_CAPACITY", "8")  # oneDNN's older name counts as a choice too
    assert hardware.bound_onednn_cache() is False
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
