"""Rebuild data/clinc150_subset.csv from CLINC150's data_full.json.

Usage: python make_subset.py PATH/TO/data_full.json [--out data/clinc150_subset.csv]

Takes 12 intents (one or two per CLINC domain), the first 36 rows of each from the `train` split and the
first 12 from the `test` split, in file order; rows are sorted by intent, train rows before test rows.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

INTENTS = [
    "alarm",
    "balance",
    "book_flight",
    "change_volume",
    "play_music",
    "recipe",
    "report_lost_card",
    "schedule_meeting",
    "tell_joke",
    "tire_pressure",
    "translate",
    "weather",
]
TAKE = {"train": 36, "test": 12}


def subset(data: dict[str, list[list[str]]]) -> list[tuple[str, str]]:
    """(text, intent) rows: per intent, the first TAKE[split] rows of each split, in original order."""
    rows = []
    for intent in sorted(INTENTS):
        for split, n in TAKE.items():
            picked = [text for text, label in data[split] if label == intent][:n]
            if len(picked) < n:
                raise SystemExit(f"{split}: only {len(picked)} rows for {intent!r}, need {n}")
            rows += [(text, intent) for text in picked]
    return rows


def to_csv(rows: list[tuple[str, str]]) -> str:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["text", "intent"])
    writer.writerows(rows)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_full", type=Path, help="path of CLINC150 data/data_full.json")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "clinc150_subset.csv")
    args = ap.parse_args()
    rows = subset(json.loads(args.data_full.read_text(encoding="utf-8")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_csv(rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows, {len(INTENTS)} intents to {args.out}")


if __name__ == "__main__":
    main()
