"""The synth stage: a teacher LLM writes training data (cot, amplify, qa_from_docs, respond, judge), cached and
budgeted. `stage.run` runs the build config's `synth:` section into runs/<name>/synth/rows.jsonl; `stage.plan` is the
dry run. Other stages read its rows file only (through the run folder), so this package exports nothing else."""
