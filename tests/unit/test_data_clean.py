"""Cleaning: normalisation, exact + near dedup, PII (planted, 100% recall on structured types), length
filters, decontamination, user steps, and their counts in prepare()'s summary and card."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from slmkit.config import BuildConfig, DataConfig, SplitConfig
from slmkit.config.data import CleanConfig, DecontamConfig, DedupConfig, LengthConfig, NormalizeConfig, PiiConfig
from slmkit.data.clean import Cleaner
from slmkit.data.clean.dedup import HeldNgrams
from slmkit.data.clean.normalize import normalize_text
from slmkit.data.clean.pii import find_pii, iban_ok, luhn_ok, redact
from slmkit.data.clean.steps import register_step, registered
from slmkit.data.records import to_records
from slmkit.data.report import Report
from slmkit.data.split import SPLITS, SplitFiles, split_of
from slmkit.errors import SlmError
from slmkit.io import read_jsonl

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "data"
ALPACA = FIX / "alpaca" / "alpaca_40.json"

# Planted PII: (type, value). Card numbers are standard test PANs (Luhn-valid), IBANs are the
# registry examples (mod-97 valid), SSNs follow the SSA rules, keys have the providers' shapes.
PLANTED = [
    ("email", "jane.doe+news@example.co.uk"),
    ("email", "ops@mail.example.org"),
    ("phone", "+1 415-555-0132"),
    ("phone", "(212) 555-0188"),
    ("phone", "+44 20 7946 0958"),
    ("phone", "650.555.0199"),
    ("phone", "+49 30 1234 5678"),
    ("credit_card", "4111 1111 1111 1111"),
    ("credit_card", "5500-0000-0000-0004"),
    ("credit_card", "340000000000009"),
    ("credit_card", "6011000990139424"),
    ("iban", "DE89 3704 0044 0532 0130 00"),
    ("iban", "GB29NWBK60161331926819"),
    ("iban", "FR1420041010050500013M02606"),
    ("ipv4", "192.168.10.254"),
    ("ipv4", "8.8.4.4"),
    ("ipv6", "2001:db8:85a3::8a2e:370:7334"),
    ("ipv6", "fe80::1ff:fe23:4567:890a"),
    ("us_ssn", "123-45-6789"),
    ("us_ssn", "078-05-1120"),
    ("api_key", "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
    ("api_key", "sk-3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"),
    ("api_key", "ghp_0123456789abcdefghijABCDEFGHIJ012345"),
    ("aws_key", "AKIAIOSFODNN7EXAMPLE"),
    ("bearer_token", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
]
TEMPLATES = ["Please contact {v} about the order.", "my details: {v}, thanks", "{v}", "Sent from {v}."]


def clean_only(records: list[dict], report: Report, tok=None, **steps) -> list[dict]:
    """The streaming Cleaner with only the steps given turned on (normalize, pii, dedup; length with `tok`)."""
    off = {"normalize": {"enabled": False}, "pii": {"enabled": False}, "dedup": {"exact": False, "near": False}}
    with Cleaner(CleanConfig.model_validate({**off, **steps}), tok, report) as cleaner:
        return cleaner(records)


def _sentence(kind: str, value: str, i: int) -> str:
    if kind == "bearer_token":
        return f"Authorization: Bearer {value} (request {i})"
    return TEMPLATES[i % 4].format(v=value)


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB29 NWBK 6016 1331 9268 19") and not iban_ok("GB28 NWBK 6016 1331 9268 19")


def test_planted_pii_full_recall_and_redaction():
    for i, (kind, value) in enumerate(PLANTED):
        text = _sentence(kind, value, i)
        spans = find_pii(text)
        assert [(s.type, s.text) for s in spans] == [(kind, value)], text
        red, _ = redact(text)
        assert value not in red and f"[{kind.upper()}]" in red


def test_near_misses_are_not_pii():
    clean = [
        "card 4111 1111 1111 1112 fails Luhn",
        "IBAN GB28NWBK60161331926819 fails mod-97",
        "version 1.2.3.4.5 and 300.1.1.1",
        "slice a[::2] and time 12:30:45",
        "SSN-like 000-12-3456",
        "order 2019-11-03",
        "std::vector<int>",
        "isk-small",
    ]
    for text in clean:
        assert find_pii(text) == [], text


def test_pii_on_records_counts_types_and_marks_provenance():
    rows = [{"text": _sentence(k, v, i), "label": "x"} for i, (k, v) in enumerate(PLANTED)] + [
        {"text": "nothing to see here", "label": "y"}
    ]
    records, _ = to_records(rows, DataConfig())
    report = Report()
    out = clean_only(records, report, pii=PiiConfig())
    expected = {}
    for k, _ in PLANTED:
        expected[k] = expected.get(k, 0) + 1
    assert dict(report.pii) == expected and report.steps["pii_redact"]["changed"] == len(PLANTED)
    assert all(v not in json.dumps(out) for _, v in PLANTED)
    assert out[0]["meta"]["pii_redacted"] == ["email"] and "pii_redact" in out[0]["meta"]["transformations"]
    assert out[-1]["meta"]["pii_redacted"] == []
    dropped = clean_only(to_records(rows, DataConfig())[0], Report(), pii=PiiConfig(action="drop", types=["email"]))
    assert len(dropped) == len(rows) - 2


def test_normalize_unicode_and_whitespace():
    cfg = NormalizeConfig()
    assert (
        normalize_text("ｆｕｌｌ\u200bwidth  \t spaces\r\n\n\n\nnext\x07", cfg) == "fullwidth spaces\n\nnext"
    )  # ZWSP is no space
    assert normalize_text("café", cfg) == normalize_text("cafe\u0301", cfg) == "café"
    records, _ = to_records([{"text": "a  b", "label": "x"}, {"text": "c", "label": "y"}], DataConfig())
    report = Report()
    clean_only(records, report, normalize=cfg)
    assert report.steps["normalize"]["changed"] == 1 and records[0]["messages"][0]["content"] == "a b"


def _alpaca_records():
    rows = json.loads(ALPACA.read_text())
    return rows, to_records([{"input": r["instruction"], "output": r["output"]} for r in rows], DataConfig())[0]


def test_exact_dedup_after_normalisation():
    rows, _ = _alpaca_records()
    planted = [{"input": r["instruction"], "output": r["output"]} for r in rows]
    planted += [
        {"input": "  " + planted[3]["input"].replace(" ", " \t ") + "  ", "output": planted[3]["output"] + "\u200b"}
    ]
    records = to_records(planted, DataConfig())[0]
    assert len(records) == len(rows) + 1  # differs before normalisation
    report = Report()
    out = clean_only(records, report, normalize=NormalizeConfig(), dedup=DedupConfig(near=False))
    assert len(out) == len(rows) and report.steps["exact_dedup"]["dropped"] == 1


def _mutate(text: str, rng: random.Random) -> str:
    """One word changed in a long text: a near duplicate."""
    words = text.split()
    words[rng.randrange(len(words))] = "CHANGED"
    return " ".join(words)


def test_near_dedup_catches_planted_near_duplicates_only():
    rows = [r for r in json.loads(ALPACA.read_text()) if len(r["output"].split()) > 60]
    assert len(rows) >= 8
    rng = random.Random(0)
    base = [{"input": r["instruction"], "output": r["output"]} for r in rows]
    planted = [{"input": r["input"], "output": _mutate(r["output"], rng)} for r in base[:5]]
    records = to_records(base + planted, DataConfig())[0]
    report = Report()
    kept = clean_only(records, report, dedup=DedupConfig(exact=False, num_perm=256))
    assert report.steps["near_dedup"]["dropped"] == 5
    kept_ids = {r["id"] for r in kept}
    assert all(r["id"] in kept_ids for r in records[: len(base)])  # originals (first seen) kept
    dropped = [r for r in records[len(base) :]]
    assert all(r["meta"]["near_duplicate_of"] == records[i]["id"] for i, r in enumerate(dropped))
    strict = clean_only(
        to_records(base + planted, DataConfig())[0], Report(), dedup=DedupConfig(exact=False, threshold=1.0)
    )
    assert len(strict) == len(base) + 5


def test_length_filter_uses_model_tokens(tiny_model_dir):
    from slmkit.data.tokens import get_tokenizer

    tok = get_tokenizer(str(tiny_model_dir))
    rows = [
        {"text": "play some music", "label": "a"},
        {"text": " ".join(["hello"] * 40), "label": "b"},
        {"text": "hi", "label": "c"},
    ]
    records = to_records(rows, DataConfig())[0]
    report = Report()
    kept = clean_only(records, report, tok, length=LengthConfig(min_tokens=3, max_tokens=20))
    assert [r["messages"][0]["content"] for r in kept] == ["play some music"]
    assert records[0]["meta"]["tokens"] == 4 and records[1]["meta"]["tokens"] == 41
    assert report.steps["length_filter"] == {"in": 3, "out": 1, "dropped": 2, "changed": 0}


def decontaminate(
    groups: dict[str, list[dict]], cfg: DecontamConfig, report: Report, out: Path
) -> dict[str, list[dict]]:
    """The split files' decontamination over records placed by hand: each record's group lands in its split."""
    split = SplitConfig(val=0.3, test=0.3)
    place = {s: next(g for g in map(str, range(1000)) if split_of(g, split) == s) for s in SPLITS}
    with SplitFiles(out, split, HeldNgrams(cfg.ngram) if cfg.enabled else None) as files:
        for name, records in groups.items():
            for rec in records:
                rec["meta"]["group"] = place[name]
            files.add(records)
        files.finish(None, False, report)
        files.commit()
    return {s: read_jsonl(out / f"{s}.jsonl") for s in SPLITS}


def test_decontamination_drops_train_rows_overlapping_eval(tmp_path):
    text = (
        "the quick brown fox jumps over the lazy dog while the cat watches from the warm window sill "
        "in the late afternoon sun"
    )

    def mk(t):
        return {
            "id": t,
            "messages": [
                {"role": "system", "content": "shared system prompt words"},
                {"role": "user", "content": t},
                {"role": "assistant", "content": "ok"},
            ],
            "meta": {},
        }

    groups = {
        "train": [
            mk("intro: " + " ".join(text.split()[:14])),
            mk("an unrelated training sentence"),
            mk("shared system prompt words"),
        ],
        "val": [mk(text)],
        "test": [mk("shared system prompt words")],
    }
    report = Report()
    out = decontaminate(groups, DecontamConfig(ngram=13), report, tmp_path / "a")
    assert [r["id"] for r in out["train"]] == ["an unrelated training sentence"]
    assert report.steps["decontaminate"]["dropped"] == 2
    assert decontaminate(groups, DecontamConfig(enabled=False), Report(), tmp_path / "b")["train"] == groups["train"]


@register_step("drop_if_contains")
def _drop_if_contains(record, word="banana"):
    if any(word in m["content"] for m in record["messages"]):
        return None
    record["messages"][-1]["content"] = record["messages"][-1]["content"].upper()
    return record


def test_user_step_from_yaml_config(tmp_path, tiny_model_dir):
    from slmkit.data import prepare

    assert "drop_if_contains" in registered()
    csv = tmp_path / "d.csv"
    csv.write_text(
        "text,intent\n"
        + "\n".join(f"row {i} {'banana' if i % 5 == 0 else 'apple'},lab{i % 3}" for i in range(30))
        + "\n"
    )
    steps_file = tmp_path / "my_steps.py"
    steps_file.write_text(
        "from slmkit.data.clean.steps import register_step\n\n"
        "@register_step('tag_source')\n"
        "def tag(record, tag='x'):\n    record['meta']['tag'] = tag\n    return record\n"
    )
    cfg = BuildConfig(
        config_dir=str(tmp_path),
        model={"base_model": str(tiny_model_dir)},
        data={
            "path": "d.csv",
            "split": {"val": 0.1, "test": 0.1},
            "clean": {
                "imports": ["my_steps.py"],
                "decontaminate": {"enabled": False},
                "steps": [
                    {"name": "drop_if_contains", "params": {"word": "banana"}},
                    {"name": "tag_source", "params": {"tag": "t1"}},
                ],
            },
        },
    )
    summary = prepare(cfg, tmp_path / "out")
    assert summary["steps"]["step:drop_if_contains"] == {"in": 30, "out": 24, "dropped": 6, "changed": 0}
    recs = [json.loads(line) for s in ("train", "val", "test") for line in (tmp_path / "out" / f"{s}.jsonl").open()]
    assert len(recs) == 24 and all(r["meta"]["tag"] == "t1" and r["label"].startswith("LAB") for r in recs)
    assert all(r["meta"]["transformations"][-2:] == ["drop_if_contains", "tag_source"] for r in recs)
    card = (tmp_path / "out" / "card.md").read_text()
    assert "| step:drop_if_contains | 30 | 24 | 6 | 0 |" in card
    bad = cfg.model_copy(deep=True)
    bad.data.clean.steps = [{"name": "nope"}]
    with pytest.raises(SlmError, match="no step named 'nope'"):
        prepare(bad, tmp_path / "out2")


def test_prepare_counts_pii_and_dedup_in_summary_and_card(tmp_path, tiny_model_dir):
    from slmkit.data import prepare

    lines = ["text,intent"] + [f"please book flight number {i} for me,book" for i in range(30)]
    lines += [
        "email me at jo@example.com,contact",
        "call +1 415-555-0132 now,contact",
        "please book flight number 3 for me,book",
        "PLEASE  book flight number 4 for me,book",
    ]
    csv = tmp_path / "d.csv"
    csv.write_text("\n".join(lines) + "\n")
    cfg = BuildConfig(
        model={"base_model": str(tiny_model_dir)},
        data={"path": str(csv), "clean": {"decontaminate": {"enabled": False}}},
    )
    summary = prepare(cfg, tmp_path / "out")
    assert summary["pii"] == {"email": 1, "phone": 1}
    # Row "number 3" is an exact copy; "PLEASE  book ... 4" differs only in case/spacing: a near duplicate.
    assert summary["dropped"]["duplicate"] == 1 and summary["dropped"]["near_duplicate"] == 1
    card = (tmp_path / "out" / "card.md").read_text()
    assert "| email | 1 |" in card and "| phone | 1 |" in card and "## Cleaning steps" in card
    recs = [json.loads(line) for s in ("train", "val", "test") for line in (tmp_path / "out" / f"{s}.jsonl").open()]
    assert sum("[EMAIL]" in r["messages"][0]["content"] for r in recs) == 1
    assert {tuple(r["meta"]["pii_redacted"]) for r in recs} == {(), ("email",), ("phone",)}
