"""Export: merged safetensors folder with tokenizer, chat template and model card, re-checked after writing."""
