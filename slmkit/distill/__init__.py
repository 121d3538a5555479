"""The distill stage: logit distillation teacher -> student (online, offline top-k cache, on-policy), students made
by pruning the teacher (`stage.run`, `slm distill`, `slm distill-cache`, `slm prune`). No other stage imports it."""
