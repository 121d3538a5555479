"""Synth config; the models live in slmkit.schema.synth (attached to BuildConfig as `synth:`)."""

from slmkit.schema.synth import *  # noqa: F403
from slmkit.schema.synth import TeacherConfig, BudgetConfig, JudgeCheck, _Recipe, CotRecipe, AmplifyRecipe, QaFromDocsRecipe, RespondRecipe, JudgeRecipe, SynthConfig, Recipe  # noqa: F401
