"""Offline teacher cache: exact round trip, compact size, resume after interruption, key checks."""

from __future__ import annotations

import pytest
import torch

from slmkit.distill.kd_cache import TopKCache, build_cache, cache_key, teacher_fingerprint
from slmkit.distill.kd_losses import assistant_mask, labelled_logits, log_probs
from slmkit.distill.prune import load_full_model
from slmkit.encoding import collate
from slmkit.errors import SlmError
from slmkit.train.loop import encode_split
from tests.conftest import TINY_ROWS, make_tiny_model_dir

K = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    import json

    path = tmp_path_factory.mktemp("kdc") / "train.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"{t} {s}"}, {"role": "assistant", "content": lab}]}
        for s in ("", "please", "today")
        for t, lab in TINY_ROWS
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher, tok = load_full_model(str(tiny_model_dir))
    examples, _ = encode_split(tok, path, 64)
    return teacher, tok, examples


def _key(model_dir, examples, k=K, vocab=None):
    return cache_key(teacher_fingerprint(model_dir), examples, k, 1.0, vocab or 0)


def _build(setup, folder, key, **kw):
    teacher, tok, examples = setup
    return build_cache(
        teacher, examples, folder, key, tok.pad_token_id, shard_rows=7, batch_size=4, show_progress=False, **kw
    )


def test_round_trip_is_exact_and_compact(setup, tmp_path, tiny_model_dir):
    teacher, tok, examples = setup
    vocab = teacher.get_output_embeddings().weight.shape[0]
    key = _key(tiny_model_dir, examples, vocab=vocab)
    summary = _build(setup, tmp_path / "c", key)
    assert summary["shards"] == 5 and summary["rows"] == len(examples)
    # payload per token: k int32 ids + k fp16 log-probs + one fp32 missing mass; shard headers/offsets on top
    assert K * 6 + 4 <= summary["bytes_per_token"] < K * 6 + 4 + 400
    cache = TopKCache(tmp_path / "c", key)
    rows = [20, 3, 11]  # across shards, out of order
    ids, vals, miss = cache.lookup(rows)
    batch = collate([examples[i] for i in rows], tok.pad_token_id)
    with torch.no_grad():
        logp = log_probs(
            labelled_logits(teacher, batch["input_ids"], batch["attention_mask"], assistant_mask(batch["labels"]))
        )
    top, top_ids = logp.topk(K, -1)
    assert torch.equal(ids, top_ids)
    assert torch.equal(vals, top.half().float())
    assert torch.allclose(miss, 1 - top.exp().sum(-1), atol=1e-6)
    assert sum(cache.row_tokens(r) for r in rows) == ids.shape[0]


def test_interrupted_build_resumes_without_redoing_shards(setup, tmp_path, tiny_model_dir):
    _, _, examples = setup
    key = _key(tiny_model_dir, examples)
    full = tmp_path / "full"
    _build(setup, full, key)

    def stop_after_two(index):
        if index == 1:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        _build(setup, part, key, on_shard=stop_after_two)
    with pytest.raises(SlmError, match="incomplete"):
        TopKCache(part, key)
    first = (part / "shard-00000.safetensors").stat()
    seen = []
    _build(setup, part, key, on_shard=seen.append)
    assert seen == [2, 3, 4]  # only the missing shards were scored
    assert (part / "shard-00000.safetensors").stat().st_mtime_ns == first.st_mtime_ns
    from safetensors.torch import load_file

    for i in range(5):
        name = f"shard-{i:05d}.safetensors"
        a, b = load_file(part / name), load_file(full / name)
        assert a.keys() == b.keys() and all(torch.equal(a[t], b[t]) for t in a)


def test_cache_from_another_teacher_data_or_k_is_refused(setup, tmp_path, tiny_model_dir):
    _, _, examples = setup
    key = _key(tiny_model_dir, examples)
    _build(setup, tmp_path / "c", key)
    other_teacher = make_tiny_model_dir(tmp_path / "other", seed=5)
    assert teacher_fingerprint(other_teacher) != key["teacher"]
    with pytest.raises(SlmError, match="another teacher"):
        TopKCache(tmp_path / "c", _key(other_teacher, examples))
    with pytest.raises(SlmError, match="other training data"):
        TopKCache(tmp_path / "c", _key(tiny_model_dir, examples[:-1]))
    with pytest.raises(SlmError, match="another top_k"):
        _build(setup, tmp_path / "c", _key(tiny_model_dir, examples, k=4))
    _build(setup, tmp_path / "c", _key(tiny_model_dir, examples, k=4), overwrite=True)
    assert TopKCache(tmp_path / "c", _key(tiny_model_dir, examples, k=4)).lookup([0])[0].shape[1] == 4


def test_k_larger_than_vocab_is_refused(setup, tmp_path, tiny_model_dir):
    teacher, _, examples = setup
    vocab = teacher.get_output_embeddings().weight.shape[0]
    with pytest.raises(SlmError, match=f"top_k={vocab + 1} is not in 1..{vocab}"):
        _build(setup, tmp_path / "c", _key(tiny_model_dir, examples, k=vocab + 1))
