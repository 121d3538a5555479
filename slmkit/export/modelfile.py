"""Ollama Modelfile for a GGUF export, so `ollama create NAME -f Modelfile` in the export folder runs the model as tuned.

The TEMPLATE comes from the model's own (Jinja) chat template, not from a table of model families: the template is
rendered on sentinel messages, the text around each sentinel gives every role's prefix and suffix, and those pieces
are re-assembled as a Go template looping over `.Messages`. Before anything is written the pieces re-render a few
real conversations and must match the HF template exactly; a template they cannot express raises SlmError.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.io import atomic_write_text

MAX_CTX = 8192  # num_ctx cap: llama.cpp allocates the KV cache for the whole context up front
CHECKS = (("user",), ("user", "assistant", "user"), ("system", "user"), ("system", "user", "assistant", "user"))


@dataclass(frozen=True)
class ChatTurns:
    """What a chat template wraps messages in; render() is the prompt Ollama builds from our Go template."""

    preamble: str  # once, before the first message (e.g. a BOS token)
    wrap: dict[str, tuple[str, str]]  # role -> (prefix, suffix); no "system" if the template has no system role
    generation: str  # opens the assistant's reply (add_generation_prompt)
    default_system: str | None  # what the template says when a conversation has no system message

    def render(self, messages: list[dict]) -> str:
        # Ollama prepends the Modelfile's SYSTEM exactly when the first message is not a system one: the condition
        # under which templates like SmolLM2's inject their default. A last assistant message is a prefill (no suffix).
        if self.default_system and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        out = self.preamble
        for i, m in enumerate(messages):
            if m["role"] in self.wrap:
                prefix, suffix = self.wrap[m["role"]]
                last = i == len(messages) - 1
                out += prefix + m["content"] + ("" if last and m["role"] == "assistant" else suffix)
        return out + (self.generation if messages and messages[-1]["role"] != "assistant" else "")


def _gaps(tok, roles, gen: bool = False) -> list[str]:
    """The HF template rendered on one sentinel per message: the len(roles)+1 texts around the sentinels."""
    msgs = [{"role": r, "content": f"\x00{i}\x00"} for i, r in enumerate(roles)]
    parts = re.split("\x00(\\d+)\x00", tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen))
    if parts[1::2] != [str(i) for i in range(len(roles))]:
        raise ValueError(f"the {'/'.join(roles)} messages do not come out once each, in order")
    return parts[0::2]


def _cut(s: str, head: str = "", tail: str = "") -> str:
    if not (s.startswith(head) and s.endswith(tail) and len(s) >= len(head) + len(tail)):
        raise ValueError(f"roles are not separable ({s!r} is not {head!r} + ... + {tail!r})")
    return s[len(head) : len(s) - len(tail)]


def derive_turns(tok) -> ChatTurns:
    """Cut the HF chat template into per-role pieces; SlmError if it cannot be, or they do not reproduce it."""
    try:
        # g: the text before system | between system and user | user, assistant | assistant, user | after user
        try:
            g = _gaps(tok, ["system", "user", "assistant", "user"])
        except Exception:  # the template raises on, or drops, a system message: it has no system role
            g = [None, *_gaps(tok, ["user", "assistant", "user"])]
        user_end, asst_end = g[4], _gaps(tok, ["user", "assistant"])[2]
        asst_start, user_start = _cut(g[2], head=user_end), _cut(g[3], head=asst_end)
        wrap = {"user": (user_start, user_end), "assistant": (asst_start, asst_end)}
        generation = _cut(_gaps(tok, ["user"], gen=True)[1], head=user_end)
        first = g[1] if g[0] is None else _gaps(tok, ["user", "assistant", "user"])[0]  # before a leading user turn
        preamble, default = first.removesuffix(user_start) if first.endswith(user_start) else None, None
        if g[0] is not None:
            if preamble is None or not g[0].startswith(preamble):  # the template wrote a system turn of its own
                default = _cut(first, head=g[0], tail=g[1])
                try:  # a second system message shows the system prefix without the preamble
                    preamble = _cut(g[0], tail=_cut(_gaps(tok, ["system", "user", "system", "user"])[2], head=user_end))
                except Exception:  # refused: "" is exact for every chat but one with a later system message
                    preamble = ""
            wrap = {"system": (_cut(g[0], head=preamble), _cut(g[1], tail=user_start)), **wrap}
        elif preamble is None:
            raise ValueError(f"a conversation does not start with the user prefix {user_start!r}")
    except Exception as e:
        raise SlmError(
            f"cannot turn the chat template into an Ollama template: {str(e).splitlines()[0] if str(e) else e!r}",
            "write the Modelfile's TEMPLATE by hand (see Ollama's Modelfile docs)",
        ) from None
    turns = ChatTurns(preamble, wrap, generation, default)
    for roles in (c for c in CHECKS if "system" in wrap or "system" not in c):
        msgs = [{"role": r, "content": f"Hello from the {r}, message {i + 1}."} for i, r in enumerate(roles)]
        if turns.render(msgs) != tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True):
            raise SlmError(
                f"the chat template renders a {'/'.join(roles)} conversation in a way an Ollama template cannot copy",
                "write the Modelfile's TEMPLATE by hand (see Ollama's Modelfile docs)",
            )
    return turns


def _go(s: str) -> str:
    """A Go template action printing `s` literally (a Go string: \\n, \\", \\\\; non-printables as \\U escapes)."""
    esc = {"\n": "\\n", "\t": "\\t", "\r": "\\r", '"': '\\"', "\\": "\\\\"}
    body = "".join(esc.get(c) or (c if c.isprintable() else f"\\U{ord(c):08x}") for c in s)
    return '{{ "' + body + '" }}' if s else ""


def go_template(turns: ChatTurns, drop_bos: str = "") -> str:
    """The Go template for Ollama; `drop_bos`: a BOS the runtime adds itself (GGUF add_bos_token), left out here."""
    pre = turns.preamble.removeprefix(drop_bos) if drop_bos else turns.preamble
    lines = [_go(pre)] if pre else []
    lines += ["{{- range $i, $_ := .Messages }}", "{{- $last := eq (len (slice $.Messages $i)) 1 }}"]
    for n, role in enumerate(r for r in ("system", "user", "assistant") if r in turns.wrap):
        prefix, suffix = turns.wrap[role]
        suffix = _go(suffix)
        if role == "assistant" and suffix:  # a last assistant message is continued, so its turn stays open
            suffix = "{{ if not $last }}" + suffix + "{{ end }}"
        lines.append(f'{{{{- {"else " if n else ""}if eq .Role "{role}" }}}}{_go(prefix)}{{{{ .Content }}}}{suffix}')
    lines += ["{{- end }}", '{{- if and $last (ne .Role "assistant") }}' + _go(turns.generation) + "{{ end }}"]
    return "\n".join([*lines, "{{- end }}"])


def _quote(s: str) -> str:
    """A Modelfile string. There are no escapes: a value ends at the first line end where it is a closed quote."""
    if "\n" not in s and "\r" not in s and not s.startswith('""'):
        return f'"{s}"'  # inner quotes are fine: only the first and last character count
    if re.search(r'"""[^\S\r\n]*[\r\n]', s):
        raise SlmError(f"cannot write {s[:40]!r}... in a Modelfile: a line ends with three quotes", "shorten it")
    return f'"""{s}"""'


def stop_words(tok, turns: ChatTurns) -> list[str]:
    """EOS, the special tokens closing an assistant turn (e.g. <|im_end|>) and the one opening a user turn."""
    prefix, suffix = turns.wrap["user"][0], turns.wrap["assistant"][1]
    specials = [t.content for t in tok.added_tokens_decoder.values() if t.special]
    ends = sorted((s for s in specials if s in suffix), key=suffix.find) or [suffix.strip()]
    opens = sorted((s for s in specials if s in prefix), key=prefix.find)[:1]
    return [s for s in dict.fromkeys([tok.eos_token, *ends, *opens]) if s]


def render_modelfile(gguf_name: str, tok, params: dict | None = None, system: str | None = None) -> str:
    """Modelfile text: FROM the GGUF beside it, TEMPLATE, SYSTEM (the template's default unless `system`), PARAMETERs."""
    turns, params = derive_turns(tok), dict(params or {})
    extra = params.pop("stop", [])
    params["stop"] = list(dict.fromkeys([*stop_words(tok, turns), *([extra] if isinstance(extra, str) else extra)]))
    adds_bos = tok.bos_token_id is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id]  # as the GGUF says
    lines = ["# Ollama Modelfile written by slmkit: `ollama create NAME -f Modelfile` in this folder", ""]
    lines += [f"FROM ./{gguf_name}", "", f'TEMPLATE """{go_template(turns, tok.bos_token if adds_bos else "")}"""', ""]
    system = turns.default_system if system is None else system
    if "system" not in turns.wrap:
        lines += ["# the chat template has no system role: system messages are left out of the prompt", ""]
    elif system:  # Ollama prepends SYSTEM when a chat does not open with a system message: the template's condition
        note = "the chat template's default system prompt" if system == turns.default_system else "system prompt"
        lines += [f"# {note}, for chats that do not open with a system message", f"SYSTEM {_quote(system)}", ""]
    for key, value in params.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {_quote(v) if isinstance(v, str) else v}")
    return "\n".join(lines) + "\n"


def model_params(src: str | Path) -> dict:
    """PARAMETERs from the model folder's config.json and generation_config.json.

    Greedy (temperature 0, repeat_penalty 1) unless generation_config samples: slmkit verifies every export with
    greedy decoding, and Ollama's defaults (temperature 0.8, repeat_penalty 1.1) would answer other than the card
    reports. num_ctx is the model's context length, capped at MAX_CTX (Ollama's default is shorter).
    """
    cfg, gen = (
        json.loads(p.read_text()) if p.is_file() else {}
        for p in (Path(src) / "config.json", Path(src) / "generation_config.json")
    )
    params: dict = {"temperature": 0, "repeat_penalty": gen.get("repetition_penalty") or 1.0}
    if gen.get("do_sample"):
        params |= {"temperature": gen.get("temperature", 1.0)} | {k: gen[k] for k in ("top_p", "top_k") if k in gen}
    if cfg.get("max_position_embeddings"):
        params["num_ctx"] = min(int(cfg["max_position_embeddings"]), MAX_CTX)
    return params


def write_modelfile(
    folder: str | Path, gguf_name: str, tok, src: str | Path | None = None, system: str | None = None
) -> Path:
    """Write `folder`/Modelfile (atomically) for the GGUF `gguf_name` in that folder; parameters from `src`."""
    text = render_modelfile(gguf_name, tok, model_params(src) if src else None, system=system)
    return atomic_write_text(Path(folder) / "Modelfile", text)
