"""Teacher backends: OpenAI-compatible endpoints (official client), LiteLLM (optional extra), local HF model.

Remote backends expose `preflight()` and `async call(messages, sampling, schema) -> (text, prompt_tokens,
completion_tokens)`, raising `TransientError` (worth a retry) or `FatalCallError`; the local backend
exposes `generate(batch)` instead. Retries, caching and the budget live in `slmkit.synth.teacher`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from slmkit.config.synth import TeacherConfig
from slmkit.errors import SlmError

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


class TransientError(Exception):
    """A failure worth retrying; `kind` names it in the stats ('http_429', 'timeout', 'bad_reply'...)."""

    def __init__(self, kind: str, retry_after: float | None = None):
        super().__init__(kind)
        self.kind, self.retry_after = kind, retry_after


class FatalCallError(Exception):
    """A failure retrying cannot fix (400, 404...): the call fails at once."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


# ----------------------------------------------------------------------------- backends


def _api_key(cfg: TeacherConfig) -> str | None:
    return os.environ.get(cfg.api_key_env) if cfg.api_key_env else None


def _check_key(cfg: TeacherConfig) -> None:
    if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
        raise SlmError(
            f"synth.teacher.api_key_env: environment variable {cfg.api_key_env} is not set",
            f"export {cfg.api_key_env}=<your key>, or set synth.teacher.api_key_env: null for a local "
            "server that needs no key",
        )


def _classify(exc: BaseException) -> Exception:
    """Map client exceptions (openai's, which LiteLLM also raises) to Transient/Fatal errors."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return TransientError("timeout")
    if isinstance(exc, openai.APIConnectionError):
        return TransientError("connection")
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        if code == 429 or code >= 500:
            after = exc.response.headers.get("retry-after") if exc.response is not None else None
            try:
                wait = float(after) if after else None
            except ValueError:
                wait = None
            return TransientError(f"http_{code}", wait)
        if code in (401, 403):
            return SlmError(
                f"the teacher endpoint refused the credentials (HTTP {code})",
                "check the key in the variable named by synth.teacher.api_key_env",
            )
        return FatalCallError(f"http_{code}", str(exc)[:200])
    if isinstance(exc, (openai.APIResponseValidationError, ValueError)):  # unparsable body (bad JSON)
        return TransientError("bad_reply")
    if isinstance(exc, asyncio.TimeoutError):
        return TransientError("timeout")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


class OpenAIBackend:
    """Any OpenAI-compatible /v1/chat/completions endpoint, through the official client (its own retries off)."""

    name = "openai"

    def __init__(self, cfg: TeacherConfig):
        self.cfg = cfg
        self.base_url = (cfg.base_url or OPENAI_DEFAULT_URL).rstrip("/")
        self._client = None

    def preflight(self) -> None:
        """Key variable set and endpoint answering, before any work starts."""
        import httpx

        _check_key(self.cfg)
        key = _api_key(self.cfg)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            r = httpx.get(f"{self.base_url}/models", headers=headers, timeout=min(self.cfg.timeout_s, 10.0))
        except httpx.HTTPError as e:
            raise SlmError(
                f"cannot reach the teacher endpoint {self.base_url} ({type(e).__name__}: {e})",
                "start the server or fix synth.teacher.base_url",
            ) from None
        if r.status_code in (401, 403):
            var = self.cfg.api_key_env or "(none: synth.teacher.api_key_env is null)"
            raise SlmError(
                f"the teacher endpoint {self.base_url} refused the key (HTTP {r.status_code})",
                f"check the key in {var}",
            )

    async def call(self, messages: list[dict], sampling: dict, schema: Any) -> tuple[str, int, int]:
        import openai

        if self._client is None:
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url,
                api_key=_api_key(self.cfg) or "not-needed",
                timeout=self.cfg.timeout_s,
                max_retries=0,
            )
        extra = {"response_format": {"type": "json_object"}} if schema is not None and self.cfg.json_mode else {}
        try:
            resp = await self._client.chat.completions.create(
                model=self.cfg.model, messages=messages, **sampling, **extra
            )
        except Exception as e:  # noqa: BLE001 - classified below
            raise _classify(e) from None
        return _unpack(resp)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class LiteLLMBackend(OpenAIBackend):
    """Anthropic, Gemini, Bedrock... through LiteLLM (optional extra), which raises openai-style errors."""

    name = "litellm"

    def preflight(self) -> None:
        self._litellm()
        _check_key(self.cfg)

    @staticmethod
    def _litellm():
        try:
            import litellm
        except ImportError:
            raise SlmError(
                "synth.teacher.backend is 'litellm' but LiteLLM is not installed",
                "pip install 'slmkit[litellm]'  (or: pip install litellm)",
            ) from None
        return litellm

    async def call(self, messages: list[dict], sampling: dict, schema: Any) -> tuple[str, int, int]:
        litellm = self._litellm()
        extra = {"response_format": {"type": "json_object"}} if schema is not None and self.cfg.json_mode else {}
        try:
            resp = await litellm.acompletion(
                model=self.cfg.model,
                messages=messages,
                api_base=self.cfg.base_url,
                api_key=_api_key(self.cfg),
                timeout=self.cfg.timeout_s,
                num_retries=0,
                **sampling,
                **extra,
            )
        except Exception as e:  # noqa: BLE001
            raise _classify(e) from None
        return _unpack(resp)


def _unpack(resp) -> tuple[str, int, int]:
    try:
        text = resp.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        raise TransientError("bad_reply") from None
    if not isinstance(text, str) or not text.strip():
        raise TransientError("empty")
    usage = getattr(resp, "usage", None)
    return text, int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)


class LocalBackend:
    """A local HF model ('default' or a folder) with batched `generate`; runs offline."""

    name = "local"

    def __init__(self, cfg: TeacherConfig):
        self.cfg = cfg
        self.model = self.tok = self.resolved = None

    def preflight(self) -> None:
        """Resolve the model now (a bad name fails before any work); weights load at the first uncached call."""
        from slmkit.models import resolve_model

        self.resolved = resolve_model(self.cfg.model)

    def _load(self) -> None:
        from slmkit.hardware import detect, setup_threads
        from slmkit.models import load_model, load_tokenizer

        if self.resolved is None:
            self.preflight()
        setup_threads()
        hw = detect()
        self.tok = load_tokenizer(self.resolved)
        self.model = load_model(self.resolved, dtype=hw.dtype if hw.device == "cuda" else "float32", device=hw.device)

    def generate(self, batch: list[tuple[list[dict], dict]]) -> list[tuple[str, int, int]]:
        """Replies for one batch of (messages, sampling); sampled when temperature > 0, seeded from the first seed."""
        import torch

        if self.model is None:
            self._load()
        tok, model = self.tok, self.model
        tok.padding_side = "left"
        sampling = batch[0][1]
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m, _ in batch]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        do_sample = sampling["temperature"] > 0
        if sampling.get("seed") is not None:
            torch.manual_seed(sampling["seed"])
        kw = {"temperature": sampling["temperature"], "top_p": sampling["top_p"]} if do_sample else {}
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=sampling["max_tokens"], do_sample=do_sample, pad_token_id=tok.pad_token_id, **kw
            )
        new = out[:, enc["input_ids"].shape[1] :]
        results = []
        for row_in, row_new in zip(enc["attention_mask"], new):
            n_out = int((row_new != tok.pad_token_id).sum())
            results.append((tok.decode(row_new, skip_special_tokens=True).strip(), int(row_in.sum()), n_out))
        return results


def make_backend(cfg: TeacherConfig):
    return {"openai": OpenAIBackend, "litellm": LiteLLMBackend, "local": LocalBackend}[cfg.backend](cfg)
