"""The data stage: sources -> records -> cleaning -> splits (`stage.run`, `slm data`, `slm data inspect`, `slm index`).

    read/       sources.py (what to read) tables.py chatlogs.py documents.py stores.py (how)
    records.py  rows -> canonical chat records (table_stream.py: one table's records, batch by batch)
    chunk.py    documents -> chunks (tokens.py: token counts)
    clean/      the Cleaner; normalize.py steps.py pii.py dedup.py (every dedup and decontamination)
    split.py    hash splits and the split files; build.py: the streaming pass over all of it
    stage.py    the stage door (run, prepare, inspect, load_records); card.py report.py cli.py index.py

Its door for other stages (synth reads seed tables and documents, ids and dedups its rows the same way): the
names below, imported on first use so that `import slmkit.data` (the CLI does) stays light.
"""

_STAGE = ("inspect", "load_records", "prepare", "with_synth_rows")


def __getattr__(name: str):
    if name in _STAGE:
        from slmkit.data import stage

        return getattr(stage, name)
    if name in ("iter_table", "read_table"):
        from slmkit.data.read import tables

        return getattr(tables, name)
    if name in ("DOC_EXTENSIONS", "read_document"):
        from slmkit.data.read import documents

        return getattr(documents, name)
    if name == "source_fingerprint":
        from slmkit.data.read.sources import source_fingerprint

        return source_fingerprint
    if name in ("record_id", "to_records"):
        from slmkit.data import records

        return getattr(records, name)
    if name == "split_chars":
        from slmkit.data.chunk import split_chars

        return split_chars
    if name == "register_step":  # for users' own cleaning steps: `from slmkit.data import register_step`
        from slmkit.data.clean.steps import register_step

        return register_step
    if name in ("dedup_records", "NearDedup"):  # exact dedup of a list of records by id; MinHash near-dedup
        from slmkit.data.clean import dedup

        return getattr(dedup, name)
    raise AttributeError(f"module 'slmkit.data' has no attribute {name!r}")


__all__ = [
    *_STAGE,
    "DOC_EXTENSIONS",
    "NearDedup",
    "dedup_records",
    "iter_table",
    "read_document",
    "read_table",
    "record_id",
    "register_step",
    "source_fingerprint",
    "split_chars",
    "to_records",
]
