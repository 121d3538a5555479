"""GGUF export with the `gguf` library's writer: llama-family weights, byte-level BPE tokenizer, chat template.

Layout follows what llama.cpp reads (and transformers' GGUF loader reads back): tensor names from
`gguf.get_tensor_name_map`, Q/K rows permuted to GGML's interleaved RoPE order, norms kept in F32,
the tied output head left out (readers fall back to `token_embd`), tokenizer as `gpt2` tokens +
merges + token types + special ids, and the chat template under `tokenizer.chat_template`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from slmkit.errors import SlmError

log = logging.getLogger("slmkit")

# HF class -> GGUF architecture. Mistral has no GGUF arch of its own: llama.cpp writes it as llama.
SUPPORTED = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama"}
QK = 32  # every GGML type written here quantises rows in blocks of 32 (ggml-common.h: QK8_0, QK4_0, QK5_0)

# quant -> (type of the 2-D body tensors, tensors kept at Q8_0). gguf-py quantises Q4_0/Q4_1/Q5_0/Q8_0 but no
# K-quants, so the "_m" mixes follow llama.cpp's own *_M recipes with Q8_0 where those use Q6_K: the token
# embedding (here also the tied output head) and attn_v / ffn_down of the layers `use_more_bits` picks
# (src/llama-quant.cpp). Q4_1 is left out: written by gguf-py and read back by transformers it scored 0.24 where
# Q4_0 scored 0.94 on the demo (a reader or writer bug, not chased). FOUR_BIT, smallest first, is what `auto` tries.
RECIPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "q4_0": ("Q4_0", ()),
    "q4_0_m": ("Q4_0", ("token_embd", "more_bits")),
    "q5_0_m": ("Q5_0", ("token_embd", "more_bits")),
    "q4_0_gate_up": ("Q4_0", ("token_embd", "all_but_gate_up")),  # only ffn_gate / ffn_up at 4 bits
    "q8_0": ("Q8_0", ()),
    "f16": ("F16", ()),
    "f32": ("F32", ()),
    # "_im": the same mixes (and IQ4_NL, llama.cpp's non-linear 4-bit levels, block 32) quantised by llama.cpp's own
    # row quantisers with an importance matrix from the run's train rows (imatrix.py; the llamacpp extra)
    "iq4_nl_m_im": ("IQ4_NL", ("token_embd", "more_bits")),
    "q4_0_m_im": ("Q4_0", ("token_embd", "more_bits")),
    "q5_0_m_im": ("Q5_0", ("token_embd", "more_bits")),
    "q4_0_gate_up_im": ("Q4_0", ("token_embd", "all_but_gate_up")),
}
IMATRIX_RECIPES = tuple(q for q in RECIPES if q.endswith("_im"))
# Recipes llama.cpp's own quantiser writes (llama_model_quantize, through the llamacpp extra) from an F32 GGUF
# written here: its K-quant mixes and the non-linear IQ4_NL. Tensors whose rows are not a multiple of 256 (QK_K;
# SmolLM2-135M's width is 576) cannot hold K-quants, and llama.cpp falls back per tensor (Q4_K -> Q5_0, Q6_K ->
# Q8_0; src/llama-quant.cpp), so on such models Q4_K_M is mostly Q5_0 with an 8-bit head.
LLAMA_RECIPES = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "iq4_nl": "IQ4_NL"}
QUANTS = (*RECIPES, *LLAMA_RECIPES)
# What `auto` tries, smallest first on SmolLM2-135M (docs/benchmarks.md); the llama.cpp ones only where it is installed
FOUR_BIT = ("q4_0", "iq4_nl", "q4_0_m", "q4_k_m", "q5_0_m", "q4_0_gate_up")

# llama.cpp token types (gguf.TokenType): only these three occur in a byte-level BPE vocabulary.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def _read_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise SlmError(f"{src} has no config.json", "export a merged model folder first (`--format merged`)")
    return json.loads(path.read_text())


def check_supported(config: dict, where: str = "model") -> str:
    """Return the GGUF architecture name or raise SlmError naming the unsupported one."""
    arch = (config.get("architectures") or ["unknown"])[0]
    if arch not in SUPPORTED:
        raise SlmError(
            f"GGUF export supports llama-family models ({', '.join(SUPPORTED)}); {where} is {arch}",
            "export this model with --format onnx or --format merged instead",
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise SlmError(
            f"GGUF export does not write rope scaling '{rope.get('rope_type')}' yet ({where})",
            "use --format onnx or merged for this model",
        )
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise SlmError(
            f"GGUF export of llama models with bias terms is not supported ({where})",
            "use --format onnx or merged for this model",
        )
    return SUPPORTED[arch]


# ----------------------------------------------------------------------------- tokenizer


def _pre_tokenizer_name(tj: dict) -> str:
    """llama.cpp's name for the pre-tokenizer, recognised from tokenizer.json's structure.

    llama.cpp itself identifies it by hashing encodings of a test text; the structures matched here
    are the ones slmkit models use. Anything else gets "default" (GPT-2 splitting) and a warning.
    """
    pre = tj.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Split", "ByteLevel"] and r"\p{N}{1,3}" in json.dumps(parts[0].get("pattern", {})):
        return "llama-bpe"
    log.warning("GGUF: unknown pre-tokenizer %s, writing 'default' (llama.cpp then splits like GPT-2)", kinds)
    return "default"


def tokenizer_metadata(src: Path, vocab_size: int) -> dict:
    """Tokens, types, merges, special ids and chat template of the HF tokenizer in `src`."""
    from transformers import AutoTokenizer

    tj_path = src / "tokenizer.json"
    if not tj_path.is_file():
        raise SlmError(
            f"{src} has no tokenizer.json (a fast tokenizer)", "GGUF export needs a byte-level BPE tokenizer.json"
        )
    tj = json.loads(tj_path.read_text())
    model = tj.get("model", {})
    decoder = (tj.get("decoder") or {}).get("type")
    if model.get("type") != "BPE" or decoder != "ByteLevel":
        raise SlmError(
            f"GGUF export supports byte-level BPE tokenizers; {tj_path} is {model.get('type')} "
            f"with a {decoder} decoder",
            "use --format onnx or merged for this tokenizer",
        )
    tok = AutoTokenizer.from_pretrained(str(src))
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    id_to_tok = {i: t for t, i in model["vocab"].items()} | {i: a["content"] for i, a in added.items()}
    if max(id_to_tok) >= vocab_size:
        raise SlmError(
            f"tokenizer in {src} has ids up to {max(id_to_tok)} but the model's vocab_size is {vocab_size}",
            "resize the model's embeddings to the tokenizer before exporting",
        )
    tokens, types = [], []
    for i in range(vocab_size):  # the embedding may be padded past the tokenizer: those rows are unused
        tokens.append(id_to_tok.get(i, f"[PAD{i}]"))
        types.append(
            UNUSED
            if i not in id_to_tok
            else (CONTROL if added[i].get("special") else USER_DEFINED)
            if i in added
            else NORMAL
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    probe = tok("a")["input_ids"]
    template = tok.chat_template
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()))
    eot = next((tok.convert_tokens_to_ids(t) for t in END_OF_TURN if t in tok.get_vocab()), None)
    return {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "pre": _pre_tokenizer_name(tj),
        "bos": tok.bos_token_id,
        "eos": tok.eos_token_id,
        "unk": tok.unk_token_id,
        "pad": tok.pad_token_id,
        "eot": eot,
        "add_bos": bool(tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]),
        "add_eos": bool(tok.eos_token_id is not None and probe[-1:] == [tok.eos_token_id]),
        "chat_template": template,
    }


# ----------------------------------------------------------------------------- tensors


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's half-split RoPE rows -> GGML's interleaved pairs, per head: [n_head*d, in] -> same shape.

    The inverse of the reverse permutation transformers applies when it reads a llama GGUF.
    """
    d = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, d, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _state_dict(src: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise SlmError(f"no safetensors weights in {src}", "export a merged model folder first (`--format merged`)")
    out: dict[str, np.ndarray] = {}
    for f in files:
        try:
            out.update(load_file(str(f)))
        except TypeError:  # numpy has no bfloat16: read through torch
            from safetensors.torch import load_file as load_torch

            out.update({k: v.float().numpy() for k, v in load_torch(str(f)).items()})
    return out


def use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's pick of the layers whose attn_v / ffn_down get more bits: the first and last eighth, every third."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def tensor_type(gname: str, quant: str, n_layers: int) -> str:
    """The GGML type name tensor `gname` (e.g. blk.3.attn_v.weight) is written in under recipe `quant`."""
    body, keep8 = RECIPES[quant]
    if gname.startswith(("token_embd.", "output.")) and "token_embd" in keep8:  # the head, tied or not
        return "Q8_0"
    parts = gname.split(".")
    if "all_but_gate_up" in keep8 and parts[0] == "blk":
        return body if parts[2] in ("ffn_gate", "ffn_up") else "Q8_0"
    if "more_bits" in keep8 and parts[0] == "blk" and parts[2] in ("attn_v", "ffn_down"):
        return "Q8_0" if use_more_bits(int(parts[1]), n_layers) else body
    return body


def _encode(
    w: np.ndarray, qtype: str, by_llama_cpp: bool = False, imatrix: np.ndarray | None = None
) -> tuple[np.ndarray, object | None]:
    """Array to write and its GGML type (None = infer from numpy dtype); `by_llama_cpp`: llama.cpp's quantiser
    (with `imatrix` [in_features] where given) instead of gguf-py's."""
    import gguf

    w = w.astype(np.float32)
    if w.ndim == 1 or qtype == "F32":
        return w, None  # norms stay F32, as llama.cpp's converter keeps them
    if qtype != "F16" and w.shape[-1] % QK == 0:
        kind = getattr(gguf.GGMLQuantizationType, qtype)
        if by_llama_cpp:
            from slmkit.llamacpp_runtime import quantize_rows

            return quantize_rows(w, int(kind), imatrix), kind
        return gguf.quants.quantize(w, kind), kind
    return w.astype(np.float16), None


def write_gguf(
    src: Path,
    path: Path,
    quant: str = "f16",
    name: str | None = None,
    license_: str | None = None,
    system: str | None = None,
    modelfile: bool = True,
    imatrix: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write `src` (an HF llama folder with safetensors + tokenizer.json) as one GGUF file at `path`, and an Ollama
    Modelfile beside it (SYSTEM: `system`, else the chat template's default) unless `modelfile` is False.

    `imatrix` (HF weight name -> [in_features], imatrix.collect) is used by the `_im` recipes; without one they
    quantise with llama.cpp's kernels uncalibrated (the caller says so in the card)."""
    import gguf

    if quant not in QUANTS:
        raise SlmError(f"GGUF quantisation {quant!r} is not supported", f"use one of: {', '.join(QUANTS)}")
    src, path = Path(src), Path(path)
    if quant in LLAMA_RECIPES:
        return _write_llama_quantized(src, path, quant, name, license_, system)
    if quant in IMATRIX_RECIPES:
        from slmkit.llamacpp_runtime import import_llama_cpp

        import_llama_cpp(f"GGUF {quant} (llama.cpp's quantisers with an importance matrix)")  # before any file
    config = _read_config(src)
    arch = check_supported(config, str(src))
    n_layers, n_head = config["num_hidden_layers"], config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    rope_theta = (config.get("rope_parameters") or {}).get("rope_theta") or config.get("rope_theta", 10000.0)
    tokmeta = tokenizer_metadata(src, config["vocab_size"])

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_name(name or src.name)
    if license_:
        writer.add_license(license_)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(config["vocab_size"])
    body = RECIPES[quant][0]
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if body == "F32" else getattr(gguf.LlamaFileType, f"MOSTLY_{body}"))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, tokmeta)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    state = _state_dict(src)
    tied = config.get("tie_word_embeddings", False)
    for hf_name, w in state.items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise SlmError(
                f"GGUF export: no GGUF name for tensor {hf_name} of {src}",
                "this llama variant has extra weights; use --format onnx or merged",
            )
        if ".attn_q." in gname:
            w = permute_qk(w, n_head)
        elif ".attn_k." in gname:
            w = permute_qk(w, n_kv)
        weights = (imatrix or {}).get("lm_head.weight" if tied and gname.startswith("token_embd.") else hf_name)
        data, raw = _encode(w, tensor_type(gname, quant, n_layers), quant in IMATRIX_RECIPES, weights)
        writer.add_tensor(gname, data, raw_dtype=raw)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("GGUF %s written: %s (%.1f MB)", quant, path, path.stat().st_size / 1e6)
    if modelfile:
        _write_modelfile(src, path, system)
    return path


def _write_llama_quantized(
    src: Path, path: Path, quant: str, name: str | None, license_: str | None, system: str | None
) -> Path:
    """`quant` in LLAMA_RECIPES: an F32 GGUF written here, then quantised by llama.cpp (log: quantize.log beside)."""
    from slmkit.llamacpp_runtime import import_llama_cpp, quantize

    import_llama_cpp(f"GGUF {quant} (written by llama.cpp's quantiser)")  # before any file is written
    full = path.with_name(f".{path.stem}-f32.gguf")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write_gguf(src, full, "f32", name, license_, modelfile=False)
        quantize(full, tmp, LLAMA_RECIPES[quant], path.with_name("quantize.log"))
        os.replace(tmp, path)
    finally:
        full.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    log.info("GGUF %s written by llama.cpp: %s (%.1f MB)", quant, path, path.stat().st_size / 1e6)
    _write_modelfile(src, path, system)
    return path


def _write_modelfile(src: Path, path: Path, system: str | None = None) -> None:
    """An Ollama Modelfile beside the GGUF. It is an extra: a chat template it cannot express skips it, with a warning."""
    from transformers import AutoTokenizer

    from slmkit.export.modelfile import write_modelfile

    try:
        write_modelfile(path.parent, path.name, AutoTokenizer.from_pretrained(str(src)), src, system=system)
    except SlmError as e:
        log.warning("GGUF: no Ollama Modelfile written beside %s: %s", path.name, e)


def _add_tokenizer(writer, t: dict) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(t["pre"])
    writer.add_token_list(t["tokens"])
    writer.add_token_types(t["types"])
    writer.add_token_merges(t["merges"])
    for key, add in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("unk", writer.add_unk_token_id),
        ("pad", writer.add_pad_token_id),
        ("eot", writer.add_eot_token_id),
    ):
        if t[key] is not None:
            add(int(t[key]))
    writer.add_add_bos_token(t["add_bos"])
    writer.add_add_eos_token(t["add_eos"])
    writer.add_add_space_prefix(False)  # byte-level BPE encodes the leading space itself
    if t["chat_template"]:
        writer.add_chat_template(t["chat_template"])


def read_gguf_metadata(path: Path) -> dict:
    """Key facts read back with gguf's own reader: arch, tensor types, special ids, chat template."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def field(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    return {
        "architecture": field("general.architecture"),
        "tokenizer_model": field("tokenizer.ggml.model"),
        "n_tokens": len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else 0,
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
        "eot_token_id": field("tokenizer.ggml.eot_token_id"),
        "chat_template": field("tokenizer.chat_template"),
        "tensor_types": sorted({t.tensor_type.name for t in reader.tensors}),
        "n_tensors": len(reader.tensors),
    }
