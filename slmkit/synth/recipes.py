"""Synthesis recipes: cot, amplify, qa_from_docs, respond, judge.

Each recipe has `run(recipe, ctx) -> Result` and `plan(recipe, ctx) -> Plan` (the calls it would make,
for `--dry-run`). Requests are a pure function of the config and earlier replies, so a rerun replays
the cache and asks the teacher nothing it already answered. Rows are canonical records
(`slmkit.data.records`) with `meta.synthetic = {teacher, recipe, cache_key, ...}`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.config.synth import AmplifyRecipe, CotRecipe, JudgeCheck, JudgeRecipe, QaFromDocsRecipe, RespondRecipe
from slmkit.errors import SlmError
from slmkit.synth import inputs, prompts
from slmkit.synth.checks import FormatCheck, near_dups
from slmkit.synth.teacher import Reply, Request, Teacher

POLICY_SEEDS = 20  # seeds shown when writing the task policy
SHOWN_SEEDS = 5  # seeds shown per amplify batch (rotated, so batches differ)


@dataclass
class Ctx:
    teacher: Teacher
    config_dir: Path
    rows: list[dict] = field(default_factory=list)  # rows made by the recipes above this one


@dataclass
class Result:
    rows: list[dict] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    replaces_previous: bool = False  # judge over the rows above: its rows replace them


@dataclass
class Plan:
    requests: list[Request]  # calls whose prompts are known now
    more: int = 0  # further calls that depend on replies (retries, judge, later batches), at most
    rows: int = 0  # rows expected


def make_row(messages: list[dict], recipe: str, teacher: str, key: str, source: str, **extra: Any) -> dict:
    from slmkit.data import record_id

    return {
        "id": record_id(messages),
        "messages": messages,
        "label": None,
        "meta": {
            "source": source,
            "source_sha256": None,
            "license": None,
            "split": None,
            "synthetic": {"teacher": teacher, "recipe": recipe, "cache_key": key, **extra},
            "pii_redacted": [],
        },
    }


def _turns(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant.strip()}]


def _fail(res: Result, rep: Reply) -> None:
    res.dropped["budget_or_halt" if rep.error == "stopped" else f"teacher_{rep.error}"] += 1


def _judge(
    ctx: Ctx, check: JudgeCheck, convs: list[list[dict]], docs: list[str | None] | None = None
) -> list[tuple[int | None, Reply]]:
    docs = docs or [None] * len(convs)
    reqs = [Request(prompts.judge_messages(check.rubric, c, d), schema="json") for c, d in zip(convs, docs)]
    replies = ctx.teacher.complete(reqs)
    return [(prompts.parse_score(r.text) if r.ok else None, r) for r in replies]


def _keep_judged(res: Result, verdict: tuple[int | None, Reply], min_score: int) -> int | None:
    """The score when the row passes; otherwise counts the reason and returns None."""
    score, rep = verdict
    if not rep.ok:
        _fail(res, rep)
    elif score is None:
        res.dropped["judge_unreadable"] += 1
    elif score < min_score:
        res.dropped["judge_low_score"] += 1
    else:
        return score
    return None


# ----------------------------------------------------------------------------- cot


def _cot_seeds(r: CotRecipe, ctx: Ctx) -> list[dict]:
    what = f"synth.recipes.{r.label}.seeds"
    seeds = inputs.pairs(inputs.resolve(ctx.config_dir, r.seeds), what, r.input_field, r.output_field)
    pat = re.compile(r.answer_regex, re.MULTILINE | re.DOTALL) if r.answer_regex else None
    for s in seeds:
        m = pat.search(s["output"]) if pat else None
        if pat and (m is None or not m.groups()):
            raise SlmError(
                f"{s['source']}: answer_regex {r.answer_regex!r} finds no answer (group 1) in the output",
                "fix synth.recipes[].answer_regex, e.g. '####\\s*(.+)$' for GSM8K",
            )
        s["answer"] = m.group(1).strip() if m else s["output"]
    return seeds


def _cot_request(r: CotRecipe, seed: dict, attempt: int) -> Request:
    return Request(prompts.cot_messages(seed["input"], seed["answer"] if r.give_answer else None), attempt=attempt)


def plan_cot(r: CotRecipe, ctx: Ctx) -> Plan:
    seeds = _cot_seeds(r, ctx)
    return Plan([_cot_request(r, s, 0) for s in seeds], more=(r.attempts - 1) * len(seeds), rows=len(seeds))


def run_cot(r: CotRecipe, ctx: Ctx) -> Result:
    """Reasoning that must end in the seed's answer; a mismatch is retried with a new seed, then dropped."""
    seeds, res = _cot_seeds(r, ctx), Result()
    todo, made = list(range(len(seeds))), {}
    for attempt in range(r.attempts):
        if not todo or ctx.teacher.stopped:
            break
        replies = ctx.teacher.complete([_cot_request(r, seeds[i], attempt) for i in todo])
        retry = []
        for i, rep in zip(todo, replies):
            got = prompts.final_answer(rep.text) if rep.ok else None
            if got is not None and prompts.normalize_answer(got) == prompts.normalize_answer(seeds[i]["answer"]):
                made[i] = make_row(
                    _turns(seeds[i]["input"], rep.text),
                    r.label,
                    ctx.teacher.label,
                    rep.key,
                    seeds[i]["source"],
                    attempt=attempt,
                )
            elif rep.error != "stopped":
                retry.append(i)
        todo = retry
    res.dropped["wrong_answer"] += len(todo)
    res.dropped["budget_or_halt"] += len(seeds) - len(made) - len(todo)
    res.rows = [made[i] for i in sorted(made)]
    return res


# ----------------------------------------------------------------------------- amplify


def _amp_setup(r: AmplifyRecipe, ctx: Ctx) -> tuple[list[dict], Request, FormatCheck]:
    where = f"synth.recipes.{r.label}"
    seeds = inputs.pairs(
        inputs.resolve(ctx.config_dir, r.seeds), f"{where}.seeds", r.input_field, r.output_field, r.instruction_field
    )
    shown = [{"input": s["input"], "output": s["output"]} for s in seeds]
    return (
        shown,
        Request(prompts.policy_messages(shown[:POLICY_SEEDS])),
        FormatCheck(r.output_regex, r.output_schema, where, r.output_model),
    )


def _amp_request(r: AmplifyRecipe, policy: str, shown: list[dict], batch: int, check: FormatCheck) -> Request:
    start = batch * SHOWN_SEEDS % len(shown)
    sample = (shown[start:] + shown[:start])[:SHOWN_SEEDS]
    schema = {
        "examples": "json",
        "output_schema": r.output_schema,
        "output_model": r.output_model,
        "output_regex": r.output_regex,
    }
    return Request(prompts.amplify_messages(policy, sample, r.batch_size, batch, check.hint()), schema=schema)


def plan_amplify(r: AmplifyRecipe, ctx: Ctx) -> Plan:
    shown, policy_req, check = _amp_setup(r, ctx)
    first = math.ceil(r.n / r.batch_size)
    judge = r.n if r.judge else 0
    cached = ctx.teacher.cache.get(ctx.teacher.key(policy_req))
    if cached is None:
        return Plan([policy_req], more=first + judge, rows=r.n)
    return Plan(
        [policy_req] + [_amp_request(r, cached.text, shown, b, check) for b in range(first)], more=judge, rows=r.n
    )


def run_amplify(r: AmplifyRecipe, ctx: Ctx) -> Result:
    """Policy from the seeds, then batches of new examples until n rows pass format, near-dup and judge checks."""
    shown, policy_req, check = _amp_setup(r, ctx)
    res = Result()
    [policy] = ctx.teacher.complete([policy_req])
    if not policy.ok:
        _fail(res, policy)
        return res
    with near_dups(r.near_dup_threshold) as dedup:
        dedup.add([s["input"] for s in shown])
        _amp_batches(r, ctx, res, policy.text, shown, check, dedup)
    res.dropped["over_n"] += max(len(res.rows) - r.n, 0)
    res.rows = res.rows[: r.n]
    return res


def _amp_batches(
    r: AmplifyRecipe, ctx: Ctx, res: Result, policy: str, shown: list[dict], check: FormatCheck, dedup: Any
) -> None:
    """Waves of batch requests until n rows are made (or max_batches asked); each example must pass the format
    check, be no near-duplicate of a seed or of an earlier example, and pass the judge."""
    max_batches = r.max_batches or 3 * math.ceil(r.n / r.batch_size)
    batch = 0
    while len(res.rows) < r.n and batch < max_batches and not ctx.teacher.stopped:
        wave = min(max_batches - batch, ctx.teacher.cfg.concurrency, math.ceil((r.n - len(res.rows)) / r.batch_size))
        replies = ctx.teacher.complete([_amp_request(r, policy, shown, b, check) for b in range(batch, batch + wave)])
        batch += wave
        fresh: list[tuple[dict, str]] = []
        for rep in replies:
            found = prompts.items(prompts.parse_json(rep.text), "examples", ("input", "output")) if rep.ok else None
            if not rep.ok:
                _fail(res, rep)
            elif found is None:
                res.dropped["bad_json"] += 1
            well_formed = [ex for ex in found or [] if check.ok(ex["output"])]
            if len(well_formed) < len(found or []):
                res.dropped["format"] += len(found) - len(well_formed)
            for ex, dupe in zip(well_formed, dedup.check([ex["input"] for ex in well_formed])):
                if dupe is not None:
                    res.dropped["near_duplicate"] += 1
                else:
                    fresh.append((ex, rep.key))
        convs = [_turns(ex["input"], ex["output"]) for ex, _ in fresh]
        verdicts = _judge(ctx, r.judge, convs) if r.judge and fresh else [(None, None)] * len(fresh)
        for (ex, key), conv, verdict in zip(fresh, convs, verdicts):
            score = _keep_judged(res, verdict, r.judge.min_score) if r.judge else None
            if r.judge and score is None:
                continue
            extra = {"judge_score": score} if r.judge else {}
            res.rows.append(make_row(conv, r.label, ctx.teacher.label, key, f"synth:{r.label}#batch", **extra))


# ----------------------------------------------------------------------------- qa_from_docs


def _qa_setup(r: QaFromDocsRecipe, ctx: Ctx) -> tuple[list[inputs.Chunk], list[Request]]:
    what = f"synth.recipes.{r.label}"
    chunks = (
        inputs.chunks(ctx.config_dir, r.docs, r.chunk_chars, r.chunk_overlap, None, f"{what}.docs") if r.docs else []
    )
    if r.collection:
        chunks += inputs.collection_chunks(ctx.config_dir, r.collection.path, r.collection.name, f"{what}.collection")
    chunks = chunks[: r.max_chunks] if r.max_chunks else chunks
    return chunks, [Request(prompts.qa_messages(c.text, c.id, r.questions_per_chunk), schema="json") for c in chunks]


def plan_qa_from_docs(r: QaFromDocsRecipe, ctx: Ctx) -> Plan:
    chunks, reqs = _qa_setup(r, ctx)
    n = len(chunks) * r.questions_per_chunk
    return Plan(reqs, more=n if r.judge else 0, rows=n)


def run_qa_from_docs(r: QaFromDocsRecipe, ctx: Ctx) -> Result:
    """Question/answer pairs per chunk; the judge drops answers the chunk does not support."""
    chunks, reqs = _qa_setup(r, ctx)
    res = Result()
    cands: list[tuple[inputs.Chunk, dict, str]] = []
    for chunk, rep in zip(chunks, ctx.teacher.complete(reqs)):
        found = prompts.items(prompts.parse_json(rep.text), "pairs", ("question", "answer")) if rep.ok else None
        if not rep.ok:
            _fail(res, rep)
        elif not found:
            res.dropped["bad_json"] += 1
        cands += [(chunk, p, rep.key) for p in (found or [])[: r.questions_per_chunk]]
    convs = [_turns(p["question"], p["answer"]) for _, p, _ in cands]
    verdicts = _judge(ctx, r.judge, convs, [c.text for c, _, _ in cands]) if r.judge and cands else []
    for i, ((chunk, _, key), conv) in enumerate(zip(cands, convs)):
        extra = {"chunk_id": chunk.id}
        if r.judge:
            score = _keep_judged(res, verdicts[i], r.judge.min_score)
            if score is None:
                continue
            extra["judge_score"] = score
        res.rows.append(
            make_row(conv, r.label, ctx.teacher.label, key, f"{chunk.source}#{chunk.id.split('#', 1)[1]}", **extra)
        )
    return res


# ----------------------------------------------------------------------------- respond


def _respond_setup(r: RespondRecipe, ctx: Ctx) -> tuple[list[dict], list[Request]]:
    items = inputs.prompts(inputs.resolve(ctx.config_dir, r.prompts), f"synth.recipes.{r.label}.prompts", r.input_field)
    system = [{"role": "system", "content": r.system_prompt}] if r.system_prompt else []
    return items, [Request(system + [{"role": "user", "content": it["input"]}]) for it in items]


def plan_respond(r: RespondRecipe, ctx: Ctx) -> Plan:
    items, reqs = _respond_setup(r, ctx)
    return Plan(reqs, rows=len(items))


def run_respond(r: RespondRecipe, ctx: Ctx) -> Result:
    """The teacher answers each prompt as is (sequence-level distillation, Kim & Rush 2016)."""
    items, reqs = _respond_setup(r, ctx)
    res = Result()
    for it, req, rep in zip(items, reqs, ctx.teacher.complete(reqs)):
        if rep.ok:
            msgs = req.messages + [{"role": "assistant", "content": rep.text.strip()}]
            res.rows.append(make_row(msgs, r.label, ctx.teacher.label, rep.key, it["source"]))
        else:
            _fail(res, rep)
    return res


# ----------------------------------------------------------------------------- judge


def _judge_rows(r: JudgeRecipe, ctx: Ctx) -> list[dict]:
    if r.rows is None:
        return ctx.rows
    from slmkit.io import read_jsonl

    path = inputs.resolve(ctx.config_dir, r.rows)
    if not path.is_file():
        raise SlmError(f"synth.recipes.{r.label}.rows: file not found: {path}", "point it at a JSONL of records")
    rows = read_jsonl(path)
    for n, row in enumerate(rows, 1):
        if not isinstance(row.get("messages"), list):
            raise SlmError(
                f"{path}:{n}: row has no 'messages' list", "judge reads canonical records {id, messages, ...}"
            )
    return rows


def plan_judge(r: JudgeRecipe, ctx: Ctx) -> Plan:
    rows = _judge_rows(r, ctx)
    check = JudgeCheck(rubric=r.rubric, min_score=r.min_score)
    return Plan(
        [Request(prompts.judge_messages(check.rubric, row["messages"]), schema="json") for row in rows], rows=len(rows)
    )


def run_judge(r: JudgeRecipe, ctx: Ctx) -> Result:
    """Score rows against the rubric; keep those at or above min_score, with the score in meta.judge."""
    rows = _judge_rows(r, ctx)
    check = JudgeCheck(rubric=r.rubric, min_score=r.min_score)
    res = Result(replaces_previous=r.rows is None)
    for row, verdict in zip(rows, _judge(ctx, check, [row["messages"] for row in rows])):
        score = _keep_judged(res, verdict, r.min_score)
        if score is not None:
            meta = dict(row.get("meta") or {})
            meta["judge"] = {
                "score": score,
                "recipe": r.label,
                "teacher": ctx.teacher.label,
                "cache_key": verdict[1].key,
            }
            res.rows.append({**row, "meta": meta})
    return res


RECIPES = {
    "cot": (run_cot, plan_cot),
    "amplify": (run_amplify, plan_amplify),
    "qa_from_docs": (run_qa_from_docs, plan_qa_from_docs),
    "respond": (run_respond, plan_respond),
    "judge": (run_judge, plan_judge),
}
