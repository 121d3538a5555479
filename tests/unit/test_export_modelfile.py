"""The Ollama Modelfile of a GGUF export: its TEMPLATE, run through a small Go text/template interpreter the way Ollama
would run it, must build exactly the prompt the model's HF chat template builds."""

from __future__ import annotations

import copy
import json
import re
from types import SimpleNamespace

import pytest

from slmkit.errors import SlmError
from slmkit.export.modelfile import derive_turns, model_params, render_modelfile

LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
GEMMA = (  # no system role: it raises on one, and calls the assistant "model"
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
QUOTED_DEFAULT = 'You are "Router".\nAnswer with one "intent" word.'
CHATML_DEFAULT = (  # ChatML with a default system prompt holding quotes and a line break
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + QUOTED_DEFAULT.replace("\n", "\\n") + "<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA2 = (  # the system prompt lives inside the first [INST]: not expressible as per-role prefix/suffix
    "{% if messages[0]['role'] == 'system' %}{% set sys = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
    "{% for m in msgs %}{% if m['role'] == 'user' %}[INST] {{ sys if loop.first else '' }}{{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "what is the weather today"}],
    [
        {"role": "user", "content": "set an alarm for six"},
        {"role": "assistant", "content": "alarm"},
        {"role": "user", "content": 'play "some" music'},
    ],
    [
        {"role": "system", "content": "classify request reply with one intent"},
        {"role": "user", "content": "book a flight to paris"},
        {"role": "assistant", "content": "book_flight"},
        {"role": "user", "content": "translate hello"},
    ],
]

# ----------------------------------------------------------------------------- Ollama, emulated

WS = " \t\r\n"
ACTION = re.compile(r'\{\{(- )?((?:"(?:\\.|[^"\\])*"|[^"}]|\}(?!\}))*?)( -)?\}\}')
TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|[()]|[^\s()]+')
FUNCS = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "not": lambda a: not a,
    "and": lambda *a: all(a),
    "len": len,
    "slice": lambda x, i: x[i:],
}


def _go_string(lit: str) -> str:
    esc = {"n": "\n", "t": "\t", "r": "\r"}
    return re.sub(
        r"\\(U[0-9a-f]{8}|.)", lambda m: chr(int(m[1][1:], 16)) if len(m[1]) > 1 else esc.get(m[1], m[1]), lit
    )


def _eval(expr: str, dot, env: dict):
    """A Go template pipeline of one command: literal, .Field, $var, $.Field, (sub) or FUNC args..."""
    toks = TOKEN.findall(expr)

    def command(i):
        args = []
        while i < len(toks) and toks[i] != ")":
            t = toks[i]
            if t == "(":
                v, i = command(i + 1)
            elif t.startswith('"'):
                v = _go_string(t[1:-1])
            elif t.isdigit():
                v = int(t)
            elif t.startswith("$."):
                v = env["$"][t[2:]]
            elif t.startswith("$"):
                v = env[t[1:]]
            elif t.startswith("."):
                v = dot[t[1:]]
            else:
                v = FUNCS[t]
            args.append(v)
            i += 1
        return (args[0](*args[1:]) if callable(args[0]) else args[0]), i

    value, end = command(0)
    assert end == len(toks), expr
    return value


def _parse(items, i=0):
    """Items (text / action) -> nodes, up to an end / else / else if (returned as the terminator)."""
    nodes = []
    while i < len(items):
        kind, val = items[i]
        i += 1
        if kind == "text":
            nodes.append(("text", val))
        elif val == "end" or val == "else" or val.startswith("else if "):
            return nodes, i, val
        elif val.startswith("if "):
            branches, cond = [], val[3:]
            while True:
                body, i, term = _parse(items, i)
                branches.append((cond, body))
                if term == "end":
                    break
                cond = None if term == "else" else term[len("else if ") :]
            nodes.append(("if", branches))
        elif val.startswith("range "):
            index, elem, expr = re.fullmatch(r"range \$(\w+), \$(\w+) := (.+)", val).groups()
            body, i, term = _parse(items, i)
            assert term == "end"
            nodes.append(("range", (index, elem, expr), body))
        elif m := re.fullmatch(r"\$(\w+) := (.+)", val):
            nodes.append(("set", m.groups()))
        else:
            nodes.append(("print", val))
    return nodes, i, None


def _run(nodes, dot, env, out):
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "print":
            out.append(_eval(node[1], dot, env))
        elif node[0] == "set":
            env[node[1][0]] = _eval(node[1][1], dot, env)
        elif node[0] == "if":
            body = next((b for cond, b in node[1] if cond is None or _eval(cond, dot, env)), [])
            _run(body, dot, env, out)
        else:
            (index, elem, expr), body = node[1], node[2]
            for n, item in enumerate(_eval(expr, dot, env)):
                _run(body, item, {**env, index: n, elem: item}, out)


def go_execute(template: str, data: dict) -> str:
    """Go text/template for the constructs the Modelfile uses, trim markers ({{- and -}}) included."""
    items, pos, trim_next = [], 0, False
    for m in ACTION.finditer(template):
        text = template[pos : m.start()]
        text = text.lstrip(WS) if trim_next else text
        items += [("text", text.rstrip(WS) if m[1] else text), ("action", m[2].strip())]
        pos, trim_next = m.end(), bool(m[3])
    items.append(("text", template[pos:].lstrip(WS) if trim_next else template[pos:]))
    nodes, _, term = _parse(items)
    assert term is None
    out: list[str] = []
    _run(nodes, data, {"$": data}, out)
    return "".join(out)


def parse_modelfile(text: str) -> dict:
    """Commands as Ollama's parser reads them: a value runs to the first line end where its quotes are closed."""

    def closed(v):
        return not v.startswith('"') or (
            len(v) >= 6 and v.endswith('"""') if v.startswith('"""') else len(v) >= 2 and v.endswith('"')
        )

    out: dict = {"parameters": {}}
    lines, i = text.split("\n"), 0
    while i < len(lines):
        line, i = lines[i].strip(), i + 1
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        if name == "PARAMETER":
            name, _, value = value.partition(" ")
        while not closed(value.strip()):
            value, i = value + "\n" + lines[i], i + 1
        value = value.strip()
        value = value[3:-3] if value.startswith('"""') else value[1:-1] if value.startswith('"') else value
        if name.isupper():
            out[name.lower()] = value
        else:
            out["parameters"].setdefault(name, []).append(value)
    return out


def ollama_prompt(modelfile: str, messages: list[dict], tok) -> str:
    """The prompt Ollama's chat endpoint builds: SYSTEM prepended unless the chat starts with a system message,
    the TEMPLATE run over the messages, then the BOS llama.cpp adds when the GGUF says add_bos_token."""
    mf = parse_modelfile(modelfile)
    if mf.get("system") and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": mf["system"]}, *messages]
    msgs = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    adds_bos = tok("a")["input_ids"][:1] == [tok.bos_token_id]
    return (tok.bos_token if adds_bos else "") + go_execute(mf["template"], {"Messages": msgs})


def hf_prompt(tok, messages) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ----------------------------------------------------------------------------- tokenizers


@pytest.fixture(scope="module")
def smollm():
    from slmkit.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("default"))


def with_template(tok, template: str, specials=(), add_bos: bool = False):
    """A copy of `tok` with another chat template, its turn markers as special tokens, optionally adding BOS."""
    tok = copy.deepcopy(tok)
    tok.chat_template = template
    if specials:
        tok.add_special_tokens({"additional_special_tokens": list(specials)})
    if add_bos:
        from tokenizers.processors import TemplateProcessing

        tok.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)]
        )
    return tok


@pytest.fixture(scope="module")
def families(smollm):
    return {
        "smollm2": smollm,
        "llama3": with_template(smollm, LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], True),
        "gemma": with_template(smollm, GEMMA, ["<start_of_turn>", "<end_of_turn>"]),
        "chatml_default": with_template(smollm, CHATML_DEFAULT),
    }


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("family", ["smollm2", "llama3", "gemma", "chatml_default"])
def test_modelfile_template_builds_the_hf_prompt(families, family):
    tok = families[family]
    modelfile = render_modelfile("m.gguf", tok)
    assert modelfile.startswith("#") and "\nFROM ./m.gguf\n" in modelfile
    turns = derive_turns(tok)
    for conv in CONVERSATIONS:
        if family == "gemma" and conv[0]["role"] == "system":
            # no system role: Ollama's prompt leaves the system message out, as the template would have to
            assert ollama_prompt(modelfile, conv, tok) == hf_prompt(tok, conv[1:])
            continue
        assert ollama_prompt(modelfile, conv, tok) == hf_prompt(tok, conv) == turns.render(conv)


def test_smollm2_default_system_prompt_and_stops(smollm):
    mf = parse_modelfile(render_modelfile("smol-q8_0.gguf", smollm))
    assert mf["system"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert mf["from"] == "./smol-q8_0.gguf"
    assert mf["parameters"]["stop"] == ["<|im_end|>", "<|im_start|>"]  # eos = turn end, then the next turn's start
    assert "You are a helpful" in hf_prompt(smollm, CONVERSATIONS[0])  # the default Ollama's SYSTEM reproduces
    turns = derive_turns(smollm)
    assert turns.wrap["system"] == ("<|im_start|>system\n", "<|im_end|>\n") and turns.preamble == ""


def test_template_text_uses_ollama_message_loop(families):
    llama3 = render_modelfile("m.gguf", families["llama3"])
    template = parse_modelfile(llama3)["template"]
    assert template.startswith("{{- range $i, $_ := .Messages }}")  # BOS left to llama.cpp (add_bos_token)
    assert (
        '{{- if eq .Role "system" }}{{ "<|start_header_id|>system<|end_header_id|>\\n\\n" }}{{ .Content }}' in template
    )
    assert '{{ if not $last }}{{ "<|eot_id|>" }}{{ end }}' in template  # a final assistant message is continued
    assert parse_modelfile(llama3)["parameters"]["stop"] == ["<|im_end|>", "<|eot_id|>", "<|start_header_id|>"]
    gemma = render_modelfile("m.gguf", families["gemma"])
    assert 'if eq .Role "system"' not in gemma and "SYSTEM" not in gemma and "no system role" in gemma
    assert '{{- else if eq .Role "assistant" }}{{ "<start_of_turn>model\\n" }}' in gemma
    assert "<end_of_turn>" in parse_modelfile(gemma)["parameters"]["stop"]


def test_last_assistant_message_is_continued_not_closed(families):
    tok = families["smollm2"]
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hel"}]
    expected = tok.apply_chat_template(conv, tokenize=False, continue_final_message=True)
    assert ollama_prompt(render_modelfile("m.gguf", tok), conv, tok) == expected


def test_quotes_survive_the_modelfile_syntax(families, smollm):
    mf = render_modelfile("m.gguf", families["chatml_default"], {"stop": ['say "stop"'], "num_ctx": 512})
    assert 'SYSTEM """You are "Router".\nAnswer with one "intent" word."""' in mf
    parsed = parse_modelfile(mf)
    assert parsed["system"] == QUOTED_DEFAULT
    assert parsed["parameters"]["stop"] == ["<|im_end|>", "<|im_start|>", 'say "stop"']
    assert parsed["parameters"]["num_ctx"] == ["512"]
    one_line = parse_modelfile(render_modelfile("m.gguf", smollm, system='be "brief"'))
    assert one_line["system"] == 'be "brief"'
    with pytest.raises(SlmError, match="three quotes"):  # no escape in the syntax can close this early end
        render_modelfile("m.gguf", smollm, system='a """\nb')


@pytest.mark.parametrize(
    ("template", "match"),
    [
        (LLAMA2, "cannot turn the chat template"),
        ("{{ raise_exception('no chat here') }}", "no chat here"),
        (  # separable pieces, but the last user turn is marked differently: the self-check catches it
            "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% if loop.last %}<|last|>{% endif %}"
            "<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
            "cannot",
        ),
    ],
)
def test_inexpressible_templates_raise(smollm, template, match):
    with pytest.raises(SlmError, match=match) as err:
        render_modelfile("m.gguf", with_template(smollm, template))
    assert "by hand" in err.value.hint


def test_model_params_greedy_unless_sampling(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 32768}))
    assert model_params(tmp_path) == {"temperature": 0, "repeat_penalty": 1.0, "num_ctx": 8192}
    gen = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.05}
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    assert model_params(tmp_path) == {
        "temperature": 0.6,
        "repeat_penalty": 1.05,
        "top_p": 0.9,
        "num_ctx": 8192,
    }


# ----------------------------------------------------------------------------- the GGUF export


@pytest.fixture(scope="module")
def bpe_llama(tmp_path_factory):
    from tests.unit.test_export_formats import make_bpe_llama

    return make_bpe_llama(tmp_path_factory.mktemp("bpe_llama_modelfile"))


def test_gguf_export_writes_modelfile_beside_the_gguf(tmp_path, bpe_llama):
    from transformers import AutoTokenizer

    from slmkit.export.stage import _build

    gguf = _build("gguf", "q8_0", bpe_llama, tmp_path, SimpleNamespace(name="tiny"), "apache-2.0")
    text = (tmp_path / "Modelfile").read_text()
    mf = parse_modelfile(text)
    assert mf["from"] == f"./{gguf.name}" == "./tiny-q8_0.gguf" and (tmp_path / mf["from"]).is_file()
    assert mf["parameters"]["num_ctx"] == ["256"] and mf["parameters"]["temperature"] == ["0"]
    assert "<|im_end|>" in mf["parameters"]["stop"] and "system" not in mf  # plain ChatML: no default system
    tok = AutoTokenizer.from_pretrained(str(bpe_llama))
    for conv in CONVERSATIONS:
        assert ollama_prompt(text, conv, tok) == hf_prompt(tok, conv)


def test_gguf_export_without_expressible_template_skips_modelfile(tmp_path, bpe_llama, caplog):
    import shutil

    from transformers import AutoTokenizer

    from slmkit.export.gguf import write_gguf

    src = tmp_path / "src"
    shutil.copytree(bpe_llama, src)
    tok = AutoTokenizer.from_pretrained(str(src))
    tok.chat_template = LLAMA2
    tok.save_pretrained(src)
    with caplog.at_level("WARNING", logger="slmkit"):
        path = write_gguf(src, tmp_path / "out" / "x.gguf", "f16")
    assert path.is_file() and not (path.parent / "Modelfile").exists()
    assert any("no Ollama Modelfile" in r.message for r in caplog.records)
