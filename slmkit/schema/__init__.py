"""Pure config schemas (pydantic only, no heavy imports), so slmkit.config can attach every stage's section."""
