"""The train stage: supervised fine-tuning (LoRA or full), `stage.run`.

Its door for other stages (distillation trains with the same loop): the names below, imported on first use so that
`import slmkit.train` (the CLI does) stays free of torch.
"""

_LOOP = (
    "add_lora",
    "batch_backward",
    "checkpoint_if_due",
    "encode_split",
    "evaluate_loss",
    "latest_checkpoint",
    "load_checkpoint",
    "make_accelerator",
    "make_optimizer",
    "micro_batch_size",
    "optimizer_step",
    "save_checkpoint",
    "setup_runtime",
)
_LOSSES = ("assistant_ce_loss", "bias_free_linear", "head_backward", "labelled_hidden")


def __getattr__(name: str):
    if name in _LOOP:
        from slmkit.train import loop

        return getattr(loop, name)
    if name in _LOSSES:
        from slmkit.train import losses

        return getattr(losses, name)
    raise AttributeError(f"module 'slmkit.train' has no attribute {name!r}")


__all__ = [*_LOOP, *_LOSSES]
