"""Time arithmetic of the recipe search: durations ('45m', '1h30m'), this machine's measured speed, what a trial costs,
and how many train rows a trial can afford.

A trial's wall time is modelled as

    setup (load, encode, final held-out loss, saving) + trained tokens / tokens_per_s + validations x one validation

with trained tokens = steps x batch_size x grad_accum x tokens per row. The three speeds come from a timed probe
(a 3-step run with one validation, `search._probe`) and are re-measured from every finished trial, so later
decisions use this machine's real numbers, not a FLOP estimate.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from slmkit.encoding import steps_for
from slmkit.errors import SlmError

TARGET_TRIALS = 10  # rows: auto sizes trials so that about this many of the largest fit in the budget
MIN_VALUES = 2  # intermediate values the shortest trial reports (the pruner compares trials at equal steps)
MAX_VALIDATIONS = 8  # validations the longest trial runs at most (each decodes the val rows)
VAL_SHARE = 0.25  # validations take at most about this share of a trial's training time
FINAL_VAL_SHARE = 0.1  # the final training validates under eval_steps: auto, ~10% of its training (train.validate)
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?")


def parse_budget(text: str) -> float:
    """'45m' -> 2700.0 seconds; also '1h30m', '90s', '2h', '1.5h'; a bare number is minutes."""
    t = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", t):
        seconds = float(t) * 60
    elif t and (m := _DURATION.fullmatch(t)) and any(m.groups()):
        h, mins, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mins * 60 + s
    else:
        raise SlmError(f"--budget {text!r} is not a duration", "e.g. --budget 45m, 1h30m, 90s or 2h")
    if seconds <= 0:
        raise SlmError(f"--budget {text!r} is no time at all", "e.g. --budget 45m")
    return seconds


def fmt_duration(seconds: float) -> str:
    """2700 -> '45m', 5400 -> '1h30m', 90 -> '1m30s', 12.3 -> '13s' (rounded up to the second)."""
    s = math.ceil(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"


def round_up_minutes(seconds: float) -> str:
    """A budget to suggest: whole minutes, rounded up ('3m'); under a minute, whole seconds."""
    return f"{math.ceil(seconds / 60)}m" if seconds > 60 else f"{math.ceil(seconds)}s"


@dataclass(frozen=True)
class Speed:
    tokens_per_s: float
    setup_s: float  # per trial: everything but training steps and validations
    val_s: float  # one validation

    @classmethod
    def measure(cls, runs: list[dict]) -> Speed:
        """From timed runs: [{"wall_s", "train_s", "tokens", "val_s", "n_val"}] (the probe and finished trials)."""
        train_s = sum(r["train_s"] for r in runs)
        n_val = sum(r["n_val"] for r in runs)
        setup = [max(0.0, r["wall_s"] - r["train_s"] - r["val_s"]) for r in runs]
        return cls(
            tokens_per_s=sum(r["tokens"] for r in runs) / max(train_s, 1e-6),
            setup_s=sum(setup) / max(len(setup), 1),
            val_s=sum(r["val_s"] for r in runs) / max(n_val, 1),
        )

    def val_steps(self, rows_per_step: int, tokens_per_row: float) -> float:
        """One validation's time in training steps."""
        return self.val_s * self.tokens_per_s / max(rows_per_step * tokens_per_row, 1e-6)

    def trial_seconds(self, steps: int, rows_per_step: int, tokens_per_row: float, eval_steps: int) -> float:
        tokens = steps * rows_per_step * tokens_per_row
        return self.setup_s + tokens / max(self.tokens_per_s, 1e-6) + validations(steps, eval_steps) * self.val_s


def validations(steps: int, every: int) -> int:
    """Validations of a `steps`-step run validating every `every` steps and at its last step."""
    return steps // every + (1 if steps % every else 0)


def step_range(space, t_cfg, rows_by_mode: dict[str, int]) -> tuple[int, int]:
    """Fewest and most optimizer steps a trial of `space` can take, given train rows after each balance mode."""
    modes = space.balance or [t_cfg.balance]
    if space.steps:
        return space.steps[0], space.steps[1]
    if space.epochs:
        lo, hi, max_steps = space.epochs[0], space.epochs[1], None
    else:
        lo = hi = t_cfg.epochs
        max_steps = t_cfg.max_steps

    def steps(rows: int, epochs: float) -> int:
        return steps_for(math.ceil(rows / t_cfg.batch_size), t_cfg.grad_accum, epochs, max_steps)

    return min(steps(rows_by_mode[m], lo) for m in modes), max(steps(rows_by_mode[m], hi) for m in modes)


def eval_every(lo_steps: int, hi_steps: int, val_steps: float = 0.0) -> int:
    """Steps between validations in every trial (the same for all, so the pruner compares equal steps): the shortest
    trial reports MIN_VALUES values, the longest validates at most MAX_VALIDATIONS times, and validating costs at
    most VAL_SHARE of the training time (`val_steps`: one validation's time in training steps)."""
    return max(
        1, math.ceil(lo_steps / MIN_VALUES), math.ceil(hi_steps / MAX_VALIDATIONS), math.ceil(val_steps / VAL_SHARE)
    )


def worst_trial_seconds(
    speed: Speed, space, t_cfg, rows_by_mode: dict[str, int], tokens_per_row: float, eval_steps: int | None = None
) -> tuple[float, int]:
    """(seconds, steps) of the longest trial the space allows."""
    lo, hi = step_range(space, t_cfg, rows_by_mode)
    rows_per_step = t_cfg.batch_size * t_cfg.grad_accum
    every = eval_steps or eval_every(lo, hi, speed.val_steps(rows_per_step, tokens_per_row))
    return speed.trial_seconds(hi, rows_per_step, tokens_per_row, every), hi


def plan_rows(
    per_trial_s: float, speed: Speed, space, t_cfg, rows_by_mode: dict[str, int], tokens_per_row: float, floor: int
) -> int:
    """Most train rows (of rows_by_mode["off"]) whose largest trial fits in per_trial_s, at least `floor`.
    A subset keeps each balance mode's share of rows (the counts are scaled)."""
    total = rows_by_mode["off"]

    def cost(rows: int) -> float:
        scaled = {m: max(1, math.ceil(n * rows / total)) for m, n in rows_by_mode.items()}
        return worst_trial_seconds(speed, space, t_cfg, scaled, tokens_per_row)[0]

    floor = min(floor, total)
    if cost(total) <= per_trial_s or cost(floor) >= cost(total):  # it fits, or rows do not change the cost (steps)
        return total
    lo, hi = floor, total  # cost(lo) may not fit either: then the floor is the answer and the caller decides
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= per_trial_s else (lo, mid)
    return lo


def final_steps(
    speed: Speed, t_cfg, train_rows: int, tokens_per_row: float, left_s: float | None, floor: int = 1
) -> dict:
    """The final training of the best recipe (t_cfg) on all `train_rows`: the steps its epochs ask for, and the steps
    that fit in `left_s` at this machine's measured speed (validations and set-up included; None: no limit). It
    trains the smaller, but at least `floor` steps (the best trial's: fewer would not reproduce what was scored)."""
    rows_per_step = t_cfg.batch_size * t_cfg.grad_accum
    natural = steps_for(math.ceil(train_rows / t_cfg.batch_size), t_cfg.grad_accum, t_cfg.epochs, t_cfg.max_steps)
    step_s = rows_per_step * tokens_per_row / max(speed.tokens_per_s, 1e-6) * (1 + FINAL_VAL_SHARE)
    fits = natural if left_s is None else math.floor(max(left_s - speed.setup_s, 0.0) / step_s)
    steps = max(min(natural, fits), min(natural, floor))
    return {
        "natural_steps": natural,
        "steps": steps,
        "capped": steps < natural,
        "max_steps": steps if steps < natural else None,  # the cap to write into train.max_steps
        "left_s": None if left_s is None else round(max(left_s, 0.0), 1),
        "estimated_s": round(speed.setup_s + steps * step_s, 1),
    }


def too_small(budget_s: float, scale: float, probe_s: float, worst: float, steps: int, rows: int, speed) -> SlmError:
    """The error for a budget that cannot fit the probe and one trial; `scale`: the budget over the search's share."""
    need = (probe_s + worst) * scale
    return SlmError(
        f"--budget {fmt_duration(budget_s)} is too small for one trial: probing this machine took "
        f"{fmt_duration(probe_s)} and the largest trial of train.search.space ({steps} steps on {rows} rows, "
        f"{speed.tokens_per_s:.0f} tokens/s) takes ~{fmt_duration(worst)}"
        + (f", and the search gets {1 / scale:.0%} of the budget" if scale > 1 else "")
        + f"; the minimum is {round_up_minutes(need)}",
        f"pass --budget {round_up_minutes(need)} or more, or narrow train.search.space "
        "(fewer epochs/steps) or lower train.search.rows",
    )
