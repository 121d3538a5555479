#!/bin/sh
# Install torch before anything else can ask for it, so a CPU-only machine never downloads a
# multi-GB CUDA build. Usage: sh scripts/install-torch.sh PATH/TO/python
set -eu
PY="$1"
VERSION="${TORCH_VERSION:-2.13.0}"
if "$PY" -c "import torch" 2>/dev/null; then
  echo "torch $("$PY" -c "import torch; print(torch.__version__)") already installed"; exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "GPU found: installing the default (CUDA) torch build"
  "$PY" -m pip install -q "torch>=2.4"; exit 0
fi
if [ "$(uname -s)" = "Darwin" ]; then "$PY" -m pip install -q "torch>=2.4"; exit 0; fi  # PyPI macOS wheels are CPU/MPS
# Linux without a GPU: a CPU wheel on local disk (pip find-links) if there is one, else PyTorch CPU index.
if "$PY" -m pip install -q --no-index --no-deps "torch==$VERSION" 2>/dev/null; then
  "$PY" -m pip install -q "torch==$VERSION"   # its dependencies from the normal index
else
  "$PY" -m pip install -q "torch==$VERSION" --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
fi
"$PY" -c "import torch; assert not torch.version.cuda, torch.__version__; print(\"torch\", torch.__version__, \"(CPU build)\")"
