"""`data:` section: sources, columns, task, splits, cleaning, chunking, fetching, limits."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from slmkit.config.base import ColumnMap, _Strict

SOURCE_TYPES = (
    "auto",
    "csv",
    "tsv",
    "json",
    "jsonl",
    "parquet",
    "excel",
    "text",
    "markdown",
    "rst",
    "pdf",
    "html",
    "url",
    "folder",
    "openai",
    "sharegpt",
    "alpaca",
    "squad",
    "preference",
    "hf_dataset",
    "chroma",
    "conll",
    "bio",
)
PII_TYPES = (
    "email",
    "phone",
    "credit_card",
    "iban",
    "ipv4",
    "ipv6",
    "us_ssn",
    "api_key",
    "aws_key",
    "bearer_token",
    "secret",
)


class SourceConfig(_Strict):
    """One input: a file, a folder, an http(s) URL, a saved HF dataset or a ChromaDB folder."""

    path: str = Field(..., description="file, folder or http(s) URL; relative paths are from the config file")
    type: Literal[SOURCE_TYPES] = "auto"  # type: ignore[valid-type]
    json_field: str | None = None
    columns: ColumnMap = Field(default_factory=ColumnMap)
    license: str | None = None
    sheet: str | None = Field(None, description="Excel: sheet name (default: the first)")
    split: str | None = Field(None, description="saved HF DatasetDict: which split (default: train)")
    collection: str | None = Field(None, description="ChromaDB: collection name")
    role: Literal["data", "test"] = Field(
        "data", description="'test': every record of this source is the test split, as given (see data.test_path)"
    )


class NormalizeConfig(_Strict):
    enabled: bool = True
    form: Literal["NFC", "NFKC", "NFD", "NFKD"] = "NFKC"
    strip_control: bool = True
    collapse_whitespace: bool = True


class DedupConfig(_Strict):
    exact: bool = True
    near: bool = True
    # 5-word shingles and Jaccard 0.8: the settings of Lee et al. 2022, "Deduplicating Training Data
    # Makes Language Models Better" (NearDup).
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    ngram: int = Field(5, gt=0)
    num_perm: int = Field(128, ge=16)
    seed: int = 1


class PiiConfig(_Strict):
    enabled: bool = True
    types: list[Literal[PII_TYPES]] = Field(default_factory=lambda: list(PII_TYPES))  # type: ignore[valid-type]
    action: Literal["redact", "drop", "report"] = "redact"
    placeholder: str = Field("[{type}]", description="'{type}' becomes the upper-case PII type")


class LengthConfig(_Strict):
    min_tokens: int = Field(1, ge=0)
    max_tokens: int | None = Field(None, gt=0)


class DecontamConfig(_Strict):
    enabled: bool = True
    # 13-gram overlap: the contamination test of Brown et al. 2020 (GPT-3, appendix C).
    ngram: int = Field(13, gt=0)


class StepConfig(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class CleanConfig(_Strict):
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    length: LengthConfig = Field(default_factory=LengthConfig)
    decontaminate: DecontamConfig = Field(default_factory=DecontamConfig)
    steps: list[StepConfig] = Field(default_factory=list, description="user steps registered with @register_step")
    imports: list[str] = Field(default_factory=list, description="modules or .py files that register steps")
    tokenizer: str | None = Field(
        None, description="model whose tokens lengths are counted in (default: model.base_model)"
    )

    @field_validator("steps", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        return [{"name": s} if isinstance(s, str) else s for s in v] if isinstance(v, list) else v


class ChunkConfig(_Strict):
    max_tokens: int = Field(256, gt=8)
    overlap: int = Field(32, ge=0)

    @field_validator("overlap")
    @classmethod
    def _small(cls, v: int, info) -> int:
        if v >= info.data.get("max_tokens", 256):
            raise ValueError("must be smaller than max_tokens")
        return v


class FetchConfig(_Strict):
    timeout_s: float = Field(10.0, gt=0)
    max_bytes: int = Field(10_000_000, gt=0)
    respect_robots: bool = True
    user_agent: str = "slmkit"


class LimitsConfig(_Strict):
    max_line_chars: int = Field(1_000_000, gt=0, description="longer lines are skipped (or the file, for documents)")
    max_file_bytes: int = Field(200_000_000, gt=0)


class BioConfig(_Strict):
    answer_format: Literal["pairs", "json"] = Field(
        "pairs", description="how token tags become the answer: 'type: span; type: span' (none: 'none'), or JSON"
    )


class SplitConfig(_Strict):
    val: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)
    seed: str = "slmkit"


class DataConfig(_Strict):
    path: str | None = Field(None, description="CSV/TSV/JSON/JSONL file, relative to the config file")
    format: Literal["auto", "csv", "tsv", "json", "jsonl"] = "auto"
    json_field: str | None = Field(None, description="for JSON: the key holding the list of rows")
    columns: ColumnMap = Field(default_factory=ColumnMap)
    system_prompt: str | None = Field(
        None, description="system message for every row; {labels} expands to the label list"
    )
    task: Literal["auto", "classification", "extraction", "generation"] = "auto"
    test_path: str | None = Field(
        None,
        description="your own test file (e.g. a data set's official test split): used as the test split as is, "
        "never resampled; data.split.test is then 0",
    )
    bio: BioConfig = Field(default_factory=BioConfig, description="CoNLL and seq.in/seq.out sources")
    dedup: bool = True
    max_rows: int | None = Field(None, gt=0)
    split: SplitConfig = Field(default_factory=SplitConfig)
    license: str | None = None
    sources: list[SourceConfig] = Field(default_factory=list, description="several sources instead of one data.path")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    chunk: ChunkConfig = Field(default_factory=ChunkConfig)
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
