"""The `synth` config section: a teacher, a budget, and a list of recipes (one block each).

Field names follow the OpenAI chat.completions request (model, temperature, top_p, max_tokens, seed).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from slmkit.config.base import _Strict


class TeacherConfig(_Strict):
    backend: Literal["openai", "litellm", "local"] = "openai"
    base_url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1; "
        "None = api.openai.com (openai) or the provider default (litellm)",
    )
    model: str = Field(
        "default",
        description="endpoint model name, LiteLLM 'provider/model', or for local: 'default' / a local HF folder",
    )
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="env variable holding the key; null for local servers that need none"
    )
    concurrency: int = Field(8, gt=0, description="parallel requests (local backend: generate batch size)")
    timeout_s: float = Field(60.0, gt=0, description="per-call timeout")
    max_retries: int = Field(4, ge=0, description="retries on 429, 5xx, timeouts, dropped connections, bad replies")
    retry_base_s: float = Field(1.0, ge=0, description="first backoff delay; doubles per retry, with full jitter")
    retry_max_s: float = Field(30.0, ge=0)
    max_consecutive_failures: int = Field(
        10,
        gt=0,
        description="stop the stage (keeping what was made) when this many calls in a row fail after their retries",
    )
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, gt=0)
    seed: int | None = 0
    json_mode: bool = Field(False, description="send response_format={'type': 'json_object'} when a recipe wants JSON")


class BudgetConfig(_Strict):
    max_calls: int | None = Field(None, gt=0, description="uncached teacher calls allowed in this run")
    max_cost_usd: float | None = Field(None, gt=0)
    price_in_per_1k: float = Field(0.0, ge=0, description="USD per 1k prompt tokens")
    price_out_per_1k: float = Field(0.0, ge=0, description="USD per 1k completion tokens")


class JudgeCheck(_Strict):
    rubric: str = "The answer is correct, helpful and follows the instruction."
    min_score: int = Field(4, ge=1, le=5, description="keep rows the judge scores at least this (1-5 scale)")


class _Recipe(_Strict):
    name: str | None = Field(None, description="label in provenance and the summary; defaults to the type")
    max_rows: int | None = Field(None, gt=0)

    @property
    def label(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]


class CotRecipe(_Recipe):
    type: Literal["cot"]
    seeds: str = Field(..., description="JSONL/JSON/CSV of {input, output} seeds, relative to the config file")
    input_field: str = "input"
    output_field: str = "output"
    answer_regex: str | None = Field(
        None,
        description="extracts the final answer from a seed output (group 1), "
        "e.g. '####\\s*(.+)$' for GSM8K; default: the whole output",
    )
    give_answer: bool = Field(
        True, description="show the teacher the answer (rationalisation, STaR, Zelikman et al. 2022)"
    )
    attempts: int = Field(3, gt=0, description="tries per seed before the seed is dropped")


class AmplifyRecipe(_Recipe):
    type: Literal["amplify"]
    seeds: str
    input_field: str = "input"
    output_field: str = "output"
    instruction_field: str | None = Field(
        None, description="optional column prepended to the input (e.g. 'instruction' for Alpaca-style seeds)"
    )
    n: int = Field(..., gt=0, description="rows to make")
    batch_size: int = Field(5, gt=0, description="examples asked for per call")
    max_batches: int | None = Field(None, gt=0, description="call cap; default 3 x ceil(n / batch_size)")
    near_dup_threshold: float = Field(
        0.8, gt=0, le=1, description="MinHash Jaccard above which a row is a near-duplicate"
    )
    output_regex: str | None = Field(None, description="outputs must fully match this regex")
    output_schema: dict | None = Field(
        None, description="JSON Schema the output (parsed as JSON) must validate against"
    )
    output_model: str | None = Field(
        None, description="'package.module:Class' of a pydantic model the output (JSON text) must validate as"
    )
    judge: JudgeCheck | None = None


class CollectionRef(_Strict):
    path: str = Field(..., description="ChromaDB folder made by `slm index` (relative to the config file)")
    name: str = Field(..., description="collection name")


class QaFromDocsRecipe(_Recipe):
    type: Literal["qa_from_docs"]
    docs: list[str] = Field(
        default_factory=list,
        description="files or folders of documents the data stage reads (.md .txt .rst .pdf .html ...)",
    )
    collection: CollectionRef | None = Field(
        None, description="or/and: the stored chunks of a ChromaDB collection (used as they are, not re-chunked)"
    )
    chunk_chars: int = Field(1500, gt=100)
    chunk_overlap: int = Field(150, ge=0)
    max_chunks: int | None = Field(None, gt=0)
    questions_per_chunk: int = Field(2, gt=0)
    judge: JudgeCheck | None = Field(
        default_factory=lambda: JudgeCheck(rubric="The answer is fully supported by the document excerpt.", min_score=4)
    )

    @model_validator(mode="after")
    def _some_documents(self) -> "QaFromDocsRecipe":
        if not self.docs and self.collection is None:
            raise ValueError("give docs (files or folders) or collection {path, name}")
        return self


class RespondRecipe(_Recipe):
    type: Literal["respond"]
    prompts: str = Field(..., description="JSONL/JSON/CSV/TXT of prompts (TXT: one per line)")
    input_field: str = "input"
    system_prompt: str | None = Field(None, description="system message stored in the rows (not sent as data)")


class JudgeRecipe(_Recipe):
    type: Literal["judge"]
    rows: str | None = Field(None, description="JSONL of canonical records; None = the rows of the recipes above")
    rubric: str = "The assistant reply is correct, helpful and follows the user's request."
    min_score: int = Field(4, ge=1, le=5)


Recipe = Annotated[
    Union[CotRecipe, AmplifyRecipe, QaFromDocsRecipe, RespondRecipe, JudgeRecipe], Field(discriminator="type")
]


class SynthConfig(_Strict):
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    cache: str = Field(
        "user",
        description="'user' (slmkit cache dir/synth), 'run' (<run>/synth/cache.sqlite) or a path to an SQLite file",
    )
    recipes: list[Recipe] = Field(default_factory=list)
    license: str | None = Field(
        None,
        description="licence recorded on teacher-written rows in `slm build` (the teacher's "
        "terms decide it; unset = 'unknown', which the export licence check flags)",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> "SynthConfig":
        labels = [r.label for r in self.recipes]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"recipe names must be unique; give each a 'name' (repeated: {', '.join(sorted(dup))})")
        return self
