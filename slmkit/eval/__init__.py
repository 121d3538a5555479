"""The eval stage: score models on the test split (`stage.run`), compare any models (`slm eval-models`).

Its door for other stages (export re-checks each artifact with eval's readers and metrics): the names below,
imported on first use so that `import slmkit.eval` (the CLI does) stays free of torch.
"""

_BACKENDS = ("Backend", "from_model", "load_backend")
_METRICS = ("HEADLINE", "compute_metrics", "infer_task", "task_of")
_DECODE = ("load_test_split", "max_new_tokens_for")


def __getattr__(name: str):
    if name in _BACKENDS:
        from slmkit.eval import backends

        return getattr(backends, name)
    if name in _METRICS:
        from slmkit.eval import metrics

        return getattr(metrics, name)
    if name in _DECODE:
        from slmkit.eval import decode

        return getattr(decode, name)
    if name == "metrics_table_md":
        from slmkit.eval.tables import metrics_table_md

        return metrics_table_md
    raise AttributeError(f"module 'slmkit.eval' has no attribute {name!r}")


__all__ = [*_BACKENDS, *_METRICS, *_DECODE, "metrics_table_md"]
