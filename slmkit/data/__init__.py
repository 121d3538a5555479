"""The data stage: sources -> records -> cleaning -> splits (`stage.run`, `slm data`, `slm data inspect`, `slm index`).

Its door for other stages (synth reads seed tables, ids and dedups its rows the same way): the names below,
imported on first use so that `import slmkit.data` (the CLI does) stays light.
"""

_STAGE = ("inspect", "load_records", "prepare", "with_synth_rows")


def __getattr__(name: str):
    if name in _STAGE:
        from slmkit.data import stage

        return getattr(stage, name)
    if name in ("iter_table", "read_table"):
        from slmkit.data import sources

        return getattr(sources, name)
    if name in ("record_id", "to_records"):
        from slmkit.data import records

        return getattr(records, name)
    if name == "dedup_records":  # exact dedup of a list of records by id (not the module slmkit.data.dedup)
        from slmkit.data.records import dedup

        return dedup
    if name == "source_fingerprint":
        from slmkit.data.ingest import source_fingerprint

        return source_fingerprint
    raise AttributeError(f"module 'slmkit.data' has no attribute {name!r}")


__all__ = [*_STAGE, "dedup_records", "iter_table", "read_table", "record_id", "source_fingerprint", "to_records"]
