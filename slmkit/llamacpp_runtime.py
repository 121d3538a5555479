"""llama.cpp through llama-cpp-python (the optional `slmkit[llamacpp]` extra): open a GGUF, read its logits, and
quantise a GGUF with llama.cpp's own quantiser, once for everything that uses it (export's K-quant recipes and
their verification, eval's GGUF backend, the serve engine's LlamaCppRunner)."""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import torch

from slmkit.errors import SlmError

INSTALL_HINT = "pip install 'slmkit[llamacpp]' (llama-cpp-python builds from source: ~5 min on 2 cores)"
N_CTX = 2048  # per context: SmolLM2-135M's f16 KV cache is ~23 KB a position, so ~47 MB


def installed() -> bool:
    """Whether llama-cpp-python is importable (found, not imported: importing it loads the library)."""
    return importlib.util.find_spec("llama_cpp") is not None


def import_llama_cpp(what: str = "running a GGUF export in llama.cpp"):
    try:
        import llama_cpp
    except ImportError:
        raise SlmError(f"{what} needs llama-cpp-python, which is not installed", INSTALL_HINT) from None
    return llama_cpp


_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_extra_buffers():
    """Load with llama.cpp's `use_extra_bufts` off. Its CPU extra buffers repack weights for AMX (and other
    kernels) at load; on a 2-core AMX Xeon that path segfaulted in the first decode of SmolLM2-135M q8_0 exports
    (llama-cpp-python 0.3.36 built from source, 2026-12-03) while the plain CPU path ran them. `Llama()` takes no
    such argument, so its default model params are swapped while one is built."""
    import llama_cpp.llama as high

    with _PARAMS_LOCK:
        default = high.llama_cpp.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = False
            return p

        high.llama_cpp.llama_model_default_params = params
        try:
            yield
        finally:
            high.llama_cpp.llama_model_default_params = default


def open_llama(path: Path, n_ctx: int = N_CTX, threads: int | None = None):
    """A `llama_cpp.Llama` context on the GGUF at `path` (one sequence's KV cache), capped at the model's n_ctx_train."""
    from slmkit.speed_probe import cpu_cores

    llama_cpp = import_llama_cpp()
    threads = threads or cpu_cores()

    def new(ctx: int):
        try:
            with _without_extra_buffers():
                return llama_cpp.Llama(model_path=str(path), n_ctx=ctx, n_threads=threads, n_batch=512, verbose=False)
        except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
            raise SlmError(f"llama.cpp cannot load {path}: {e}", "re-export it: slm export-model RUN -f gguf")

    llm = new(n_ctx)
    trained = int(llm._model.n_ctx_train())
    return new(trained) if 0 < trained < n_ctx else llm  # no use holding positions the model was never trained on


def last_logits(llm, vocab: int) -> torch.Tensor:
    """[V] float32: the last evaluated position's logits, copied out of llama.cpp's buffer (llama-cpp-python keeps
    `scores` only with logits_all, which would compute the head for every prompt position)."""
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(vocab,)).copy())


def quantize(src: Path, dest: Path, ftype: str, log_path: Path, threads: int | None = None) -> None:
    """llama.cpp's quantiser (`llama_model_quantize`, what its `llama-quantize` tool calls): GGUF `src` -> `dest` as
    LLAMA_FTYPE_MOSTLY_<ftype> (e.g. Q4_K_M), in a child process (a crash there must not take the caller down),
    its log kept at `log_path`. No importance matrix: the binding's `imatrix` field is a C++ map pointer."""
    from slmkit.speed_probe import cpu_cores

    cmd = [sys.executable, "-m", "slmkit.llamacpp_runtime", str(src), str(dest), ftype, str(threads or cpu_cores())]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    Path(log_path).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not Path(dest).is_file():
        last = next((ln for ln in reversed((proc.stderr or proc.stdout).splitlines()) if ln.strip()), "no output")
        raise SlmError(f"llama.cpp could not quantise {src} to {ftype}: {last}", f"see {log_path}")


_GGML = None


def _ggml():
    """libggml-base from llama-cpp-python's own lib folder (the same build that runs the files), with the row
    quantiser's signature declared: ggml_quantize_chunk(type, src, dst, start, nrows, n_per_row, imatrix)."""
    global _GGML
    if _GGML is None:
        import ctypes

        llama_cpp = import_llama_cpp("GGUF quantisation with an importance matrix")
        lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
        f32 = ctypes.POINTER(ctypes.c_float)
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, f32, ctypes.c_void_p, *[ctypes.c_int64] * 3, f32]
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        _GGML = lib
    return _GGML


def quantize_rows(w: np.ndarray, ggml_type: int, imatrix: np.ndarray | None) -> np.ndarray:
    """[rows, n] float32 -> [rows, row_bytes] uint8 in GGML type `ggml_type` (gguf.GGMLQuantizationType's numbers),
    by llama.cpp's own quantiser; `imatrix` [n] weights each column's rounding error by how large its activations
    are (llama.cpp's importance matrix: the mean square of each input over calibration tokens)."""
    import ctypes

    lib = _ggml()
    w = np.ascontiguousarray(w, dtype=np.float32)
    rows, n = w.shape
    lib.ggml_quantize_init(ggml_type)  # the IQ types' lookup tables; a no-op for the others
    row_bytes = int(lib.ggml_row_size(ggml_type, n))
    out = np.empty((rows, row_bytes), dtype=np.uint8)
    f32 = ctypes.POINTER(ctypes.c_float)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    written = lib.ggml_quantize_chunk(
        ggml_type, w.ctypes.data_as(f32), out.ctypes.data, 0, rows, n, None if im is None else im.ctypes.data_as(f32)
    )
    if written != out.nbytes:
        raise SlmError(
            f"llama.cpp wrote {written} bytes for a {rows}x{n} tensor, expected {out.nbytes}",
            "a llama.cpp / slmkit mismatch: please report it",
        )
    return out


def _quantize_main(src: str, dest: str, ftype: str, threads: str) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = int(threads)
    return int(llama_cpp.llama_model_quantize(src.encode(), dest.encode(), params))


if __name__ == "__main__":
    sys.exit(_quantize_main(*sys.argv[1:5]))
