"""Synth stage: a teacher LLM writes training data (cot, amplify, qa_from_docs, respond, judge), cached and budgeted.

Python API: `synthesize(cfg, run_dir, config_dir)` runs a `SynthConfig`; `plan(...)` is the dry run.
"""

from slmkit.synth.config import SynthConfig, TeacherConfig, BudgetConfig
from slmkit.synth.run import plan, synthesize

__all__ = ["SynthConfig", "TeacherConfig", "BudgetConfig", "synthesize", "plan"]
