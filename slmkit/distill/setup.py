"""Before the distill stage trains: the teacher and student resolved and checked against each other (before any
compute), the student pruned from the teacher when asked, the data encoded (as teacher-written replies when the
tokenizers differ), and the offline top-k teacher cache (`slm distill-cache`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from slmkit.config import BuildConfig, DistillConfig
from slmkit.distill.prune import param_count, weights_folder
from slmkit.encoding import IGNORE
from slmkit.errors import SlmError
from slmkit.hardware import setup_threads
from slmkit.io import atomic_write_json
from slmkit.runs import RunDir
from slmkit.train import encode_split

log = logging.getLogger("slmkit")


def teacher_source(dcfg: DistillConfig, run_dir: Path) -> str:
    if dcfg.teacher != "train":
        return dcfg.teacher
    final = RunDir(run_dir).train_final
    if not final.is_dir():
        raise SlmError(
            f"distill.teacher is 'train' but {final} does not exist",
            "run `slm train CONFIG` first, or set distill.teacher",
        )
    return str(final)


def check_pair(teacher: str, student: str, t_tok, s_tok) -> bool:
    """True when vocabularies match; SlmError when the student is larger than the teacher."""
    t_n, s_n = param_count(teacher), param_count(student)
    if t_n and s_n and s_n > t_n:
        raise SlmError(
            f"student {student} ({s_n / 1e6:.1f}M params) is larger than teacher {teacher} ({t_n / 1e6:.1f}M)",
            "pick a smaller student, or prune the teacher: distill.student.prune.ratio: 0.5",
        )
    if t_tok.get_vocab() != s_tok.get_vocab():
        return False
    from transformers import AutoConfig

    t_v, s_v = (
        getattr(AutoConfig.from_pretrained(str(weights_folder(n) or n)), "vocab_size", None) for n in (teacher, student)
    )
    if t_v != s_v:
        raise SlmError(
            f"teacher and student share a tokenizer but their output layers differ ({t_v} vs {s_v} logits)",
            "use a student whose config.vocab_size equals the teacher's",
        )
    return True


def sequence_level_records(
    teacher_name: str, records: list[dict], max_new_tokens: int, trust_remote_code: bool
) -> list[dict]:
    """Sequence-level KD (Kim & Rush 2016): the teacher's greedy reply replaces each reference reply."""
    from slmkit.distill.prune import load_full_model
    from slmkit.encoding import prompt_messages
    from slmkit.generation import generate

    teacher, tok = load_full_model(teacher_name, trust_remote_code)
    prompts = [prompt_messages(r["messages"]) for r in records]
    replies = generate(teacher, tok, prompts, max_new_tokens, batch_size=8)
    del teacher
    return [{**r, "messages": p + [{"role": "assistant", "content": a}]} for r, p, a in zip(records, prompts, replies)]


def prepare_student(dcfg: DistillConfig, teacher: str, run: RunDir, trust_remote_code: bool) -> str:
    """Model name of the student: the configured one, or the teacher pruned into distill/student_init."""
    if dcfg.student.model is not None:
        return dcfg.student.model
    from slmkit.distill.prune import prune
    from slmkit.io import read_jsonl

    spec = dcfg.student.prune
    dest = run.student_init
    info = dest / "slmkit.json"
    want = {"source": teacher, **spec.model_dump()}
    if info.is_file() and json.loads(info.read_text()).get("prune_spec") == want:
        return str(dest)
    rows = read_jsonl(run.split("train"))[: spec.calibration_rows]
    from slmkit.distill.prune import tokenizer_of

    tok = tokenizer_of(teacher, trust_remote_code)
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    summary = prune(teacher, dest, spec.layers, spec.ratio, spec.mlp_ratio, texts, trust_remote_code)
    meta = json.loads(info.read_text())
    atomic_write_json(info, {**meta, "prune_spec": want, "pruned": summary})
    return str(dest)


def _config(cfg: BuildConfig, dcfg: DistillConfig | None) -> DistillConfig:
    found = dcfg or getattr(cfg, "distill", None)
    if found is None:
        raise SlmError("the config has no distill section", "add a `distill:` block to the YAML (see DistillConfig)")
    return found


def _setup(cfg: BuildConfig, run_dir: Path, dcfg: DistillConfig) -> dict:
    """Resolve teacher and student, check them before any compute, encode the data."""
    from slmkit.distill.prune import tokenizer_of

    run = RunDir(run_dir)
    run_dir, out = run.root, run.stage_dir("distill")
    if not run.split("train").is_file():
        raise SlmError(f"no training data at {run.split('train')}", "run `slm data CONFIG` (or `slm build`) first")
    trc = cfg.model.trust_remote_code
    teacher = teacher_source(dcfg, run_dir)
    t_tok = tokenizer_of(teacher, trc)
    student = prepare_student(dcfg, teacher, run, trc)
    s_tok = tokenizer_of(student, trc)
    same_vocab = check_pair(teacher, student, t_tok, s_tok)
    if not same_vocab and dcfg.tokenizer_mismatch == "error":
        raise SlmError(
            f"teacher {teacher} and student {student} use different tokenizers ({len(t_tok)} vs {len(s_tok)} tokens)",
            "logit distillation needs one vocabulary: pick a student from the teacher's family, prune the "
            "teacher, or set distill.tokenizer_mismatch: sequence (train on teacher-generated replies)",
        )
    max_len = dcfg.train.max_seq_len
    if same_vocab:
        train_ex, cut = encode_split(s_tok, run.split("train"), max_len)
    else:
        from slmkit.encoding import encode_chat
        from slmkit.io import read_jsonl

        log.info("tokenizers differ: sequence-level distillation from teacher-generated replies")
        records = sequence_level_records(teacher, read_jsonl(run.split("train")), dcfg.max_new_tokens, trc)
        train_ex = [
            e
            for e in (encode_chat(s_tok, r["messages"], max_len) for r in records)
            if any(t != IGNORE for t in e["labels"][1:])
        ]
        cut = len(records) - len(train_ex)
    val_ex = encode_split(s_tok, run.split("val"), max_len)[0] if run.split("val").is_file() else []
    if not train_ex:
        raise SlmError(
            "every training row lost its answer to distill.train.max_seq_len truncation",
            "raise distill.train.max_seq_len",
        )
    return {
        "out": out,
        "teacher": teacher,
        "student": student,
        "tok": s_tok,
        "train": train_ex,
        "val": val_ex,
        "cut": cut,
        "sequence_level": not same_vocab,
    }


def cache_folder(dcfg: DistillConfig, run_dir: Path, cfg: BuildConfig) -> Path:
    from slmkit.config import resolve_path

    return resolve_path(cfg, dcfg.cache_dir) if dcfg.cache_dir else RunDir(run_dir).kd_cache


def build_teacher_cache(
    cfg: BuildConfig,
    run_dir: Path,
    dcfg: DistillConfig | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    setup: dict | None = None,
    on_shard=None,
) -> dict:
    """`slm distill-cache`: run the teacher once over the training split into the top-k cache (resumable)."""
    from slmkit.distill.kd_cache import build_cache, cache_key, teacher_fingerprint
    from slmkit.distill.prune import load_full_model

    dcfg = _config(cfg, dcfg)
    setup_threads()
    s = setup or _setup(cfg, run_dir, dcfg)
    if s["sequence_level"]:
        raise SlmError(
            "an offline logit cache needs teacher and student to share a tokenizer", "use distill.mode: online"
        )
    from transformers import AutoConfig

    folder = cache_folder(dcfg, run_dir, cfg)
    t_conf = AutoConfig.from_pretrained(str(weights_folder(s["teacher"]) or s["teacher"]))
    key = cache_key(
        teacher_fingerprint(s["teacher"]),
        s["train"],
        dcfg.top_k,
        dcfg.temperature,
        t_conf.vocab_size,
        dcfg.kd_positions,
    )
    manifest = folder / "manifest.json"
    if (
        not overwrite
        and manifest.is_file()
        and (m := json.loads(manifest.read_text())).get("complete")
        and m["key"] == key
    ):
        return {k: m[k] for k in ("rows", "tokens", "bytes", "bytes_per_token")} | {
            "shards": len(m["shards"]),
            "k": dcfg.top_k,
            "key": key,
        }
    teacher, _ = load_full_model(s["teacher"], cfg.model.trust_remote_code)  # only when there is work to do
    summary = build_cache(
        teacher,
        s["train"],
        folder,
        key,
        s["tok"].pad_token_id,
        dcfg.cache_shard_rows,
        dcfg.train.batch_size,
        overwrite,
        show_progress,
        on_shard,
    )
    del teacher
    return {**summary, "key": key}
