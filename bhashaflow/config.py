"""The pipeline's one typed configuration, loaded from YAML with `--set` overrides.

Every field carries a description: Prefect renders this model as the run form in its UI.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeAlias, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import ErrorDetails

from bhashaflow.core.hashing import sha256_json
from bhashaflow.core.languages import LANGUAGES, parse_direction


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


SourceKind = Literal["flores", "http", "s3", "hf", "qdrant", "aligned", "tmx", "rl_logs"]
FileFormat = Literal["jsonl", "tsv", "parquet"]


class FieldMap(_Strict):
    """Column names in the source rows that hold each part of a pair.

    A name may be a dotted path into nested columns: `translation.en` is the `en` key of the `translation`
    column (the layout of opus-100, opus_books and the WMT sets). A column whose own name holds the dots wins.
    """

    src: str = Field("src", description="Column holding the source sentence, or a dotted path (translation.en).")
    tgt: str = Field("tgt", description="Column holding the target sentence, or a dotted path (translation.hi).")
    src_lang: str = Field("src_lang", description="Column (or dotted path) holding the source FLORES-200 code.")
    tgt_lang: str = Field("tgt_lang", description="Column (or dotted path) holding the target FLORES-200 code.")


# A source name or a run name: a folder name and a Prefect label alike.
_SAFE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _unset(value: object) -> bool:
    # Keys added after run ids existed leave a source's dump (and so the run id) as it was while unset.
    return value is None


class AlignedFiles(_Strict):
    """The two files of an `aligned` source, named outright instead of by a pattern."""

    src: str = Field(description="The source-language file: a name under uri, or a full path or URL of its own.")
    tgt: str = Field(description="The target-language file (line N translates line N of src): a name or a URL.")


class LangPair(_Strict):
    """Fixed languages for a source whose rows do not name them."""

    src: str = Field(description="FLORES-200 code of every source sentence, e.g. eng_Latn.")
    tgt: str = Field(description="FLORES-200 code of every target sentence, e.g. hin_Deva.")

    @field_validator("src", "tgt")
    @classmethod
    def _known(cls, code: str) -> str:
        if code not in LANGUAGES:
            raise ValueError(f"unknown FLORES-200 language code {code!r}")
        return code


class SourceBase(_Strict):
    """What every source kind has: a name, a kind, where it is, and how its rows name a pair's parts.

    One model per kind derives from this (`FloresSource` ... `RlLogsSource`); `SourceConfig` is their union,
    told apart by `kind`. A key of another kind is refused naming the kinds it applies to.
    """

    # The keys each kind must have, and why, for a message that says so (instead of pydantic's "Field required").
    _needs: ClassVar[dict[str, str]] = {}

    name: str = Field(description="Unique name of the source; used in counts and positions.")
    kind: SourceKind = Field(
        description=(
            "flores | http | s3 | hf | qdrant | aligned (two plain-text files, one sentence a line, line N of one "
            "translating line N of the other) | tmx (a TMX 1.4 translation memory) | rl_logs (exported RL log "
            "parts: each corrected episode a pair and a preference triplet; docs/rl-logs.md)."
        )
    )
    uri: str = Field(
        description=(
            "flores: a directory in the official layout; http: a URL (write a credential as ${NAME}, an "
            "environment variable, so the config never holds it); s3: s3://bucket/prefix or glob; "
            "hf: a hub dataset id or a local file/directory; qdrant: a server URL, a local path, or :memory:; "
            "aligned: the folder holding the two files; tmx: the file; rl_logs: the export's folder or prefix. "
            "aligned, tmx and rl_logs take a local path or any fsspec URL (s3://, http(s)://, ...), plain or gzip."
        )
    )
    fields: FieldMap = Field(
        default_factory=FieldMap, description="Column names (or dotted paths into nested columns) of the pair's parts."
    )
    langs: LangPair | None = Field(
        None,
        description=(
            "Fix the languages instead of reading them per row. Required by aligned (it also finds the files: "
            "their language suffixes, ISO 639-1 like .en or FLORES like .eng_Latn) and tmx (which xml:lang pair)."
        ),
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not _SAFE_NAME_RE.fullmatch(name):
            raise ValueError("source name must be 1-64 letters, digits, '_', '.', '-' and not start with a symbol")
        return name

    @model_validator(mode="before")
    @classmethod
    def _keys_of_this_kind(cls, data: Any) -> Any:
        """Drop null optional keys (null always meant unset); refuse another kind's keys; name what is missing."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if v is not None or k not in _OPTIONAL_SOURCE_KEYS}
        name, kind = data.get("name"), data.get("kind")
        for key in data:
            if key in cls.model_fields or key not in _SOURCE_KEY_KINDS:
                continue  # unknown keys are left to extra="forbid", which names them
            if key == "format" and kind in ("aligned", "tmx"):
                raise ValueError(f"source {name!r}: 'fields' and 'format' do not apply to kind {kind}")
            raise ValueError(f"source {name!r}: {key!r} applies to kind {' or '.join(_SOURCE_KEY_KINDS[key])} only")
        for key, why in cls._needs.items():
            if not data.get(key):
                raise ValueError(f"source {name!r}: kind {kind} needs {key!r}{why}")
        return data

    @model_serializer(mode="wrap")
    def _dump_as_one_layout(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        """Every kind dumps the keys of the one model sources had before (null where a kind has no such key).

        The dump hashes into run ids and is written to run folders: a source dumps as it did before kinds had
        models of their own, so its runs resume. Keys added after run ids existed appear only when set.
        """
        data: dict[str, Any] = handler(self)
        for key in _DUMPED_WHEN_SET:
            if key not in self.model_fields_set:
                data.pop(key, None)
        if not (info.exclude_none or info.exclude_unset or info.exclude_defaults):
            data = {key: None for key in _DUMPED_ALWAYS} | data
        return {key: data[key] for key in _DUMP_ORDER if key in data}


class _FileFormatKey(SourceBase):
    format: FileFormat | None = Field(
        None, description="jsonl | tsv | parquet; inferred from the file name when omitted."
    )


class _EndpointKey(SourceBase):
    endpoint_url: str | None = Field(
        None,
        description=("An S3-compatible endpoint for s3:// URLs (overrides AWS_ENDPOINT_URL from the environment)."),
    )


class FloresSource(SourceBase):
    """The FLORES-200 dev split, pairs for every configured direction."""

    kind: Literal["flores"] = Field(description="flores: FLORES-200 in its official layout.")
    split: str | None = Field(None, description="dev (the default; devtest is refused: it is the evaluation set).")

    @model_validator(mode="after")
    def _dev_only(self) -> FloresSource:
        if (self.split or "dev") != "dev":
            raise ValueError(
                f"source {self.name!r}: flores split {self.split!r} is not allowed for training; "
                "devtest is the evaluation set, train on 'dev' only"
            )
        return self


class HttpSource(_FileFormatKey):
    """A file of rows over http(s)."""

    kind: Literal["http"] = Field(description="http: a JSONL, TSV or Parquet file at a URL.")


class S3Source(_FileFormatKey, _EndpointKey):
    """Files of rows under an S3 prefix or glob."""

    kind: Literal["s3"] = Field(description="s3: JSONL, TSV or Parquet files under s3://bucket/prefix or a glob.")


class HfSource(_FileFormatKey):
    """A Hugging Face dataset, streamed, or a local file or folder read through `datasets`."""

    kind: Literal["hf"] = Field(description="hf: a hub dataset id or a local file/directory.")
    split: str | None = Field(None, description="The split to stream (default train).")
    subset: str | None = Field(None, description="The dataset configuration name, if any.")


class QdrantSource(SourceBase):
    """Pairs stored as the payloads of a Qdrant collection."""

    _needs: ClassVar[dict[str, str]] = {"collection": ""}

    kind: Literal["qdrant"] = Field(description="qdrant: a server URL, a local path, or :memory:.")
    collection: str = Field(description="The collection holding pairs as payloads.")


_LANGS_NEEDED = " (the languages of its two sides)"


class _FieldsFixed(SourceBase):
    """A kind whose rows have no columns to map: `fields` stays as it is."""

    @model_validator(mode="after")
    def _no_field_map(self) -> _FieldsFixed:
        if self.fields != FieldMap():
            raise ValueError(f"source {self.name!r}: 'fields' and 'format' do not apply to kind {self.kind}")
        return self


class AlignedSource(_FieldsFixed, _EndpointKey):
    """Two plain-text files, one sentence a line, line N of one translating line N of the other."""

    _needs: ClassVar[dict[str, str]] = {"langs": _LANGS_NEEDED}

    kind: Literal["aligned"] = Field(description="aligned: the folder holding the two files.")
    langs: LangPair = Field(  # type: ignore[assignment]  # required here: it also finds the files
        description=(
            "The languages of the two sides; their suffixes (ISO 639-1 like .en or FLORES like .eng_Latn) find "
            "the files."
        ),
    )
    pattern: str | None = Field(
        None,
        exclude_if=_unset,
        description=(
            "The file names under uri, {lang} standing for each side's language suffix (en or eng_Latn "
            "for eng_Latn) and * for any text (not over http); a .gz suffix is found too. Default *.{lang}: "
            "OPUS's *.en / *.hi, Samanantar's train.en / train.hi, BPCC's train.eng_Latn / train.hin_Deva."
        ),
    )
    files: AlignedFiles | None = Field(
        None, exclude_if=_unset, description="The two files named outright, instead of pattern."
    )

    @model_validator(mode="after")
    def _pattern_or_files(self) -> AlignedSource:
        if self.pattern is not None and self.files is not None:
            raise ValueError(f"source {self.name!r}: give 'pattern' or 'files', not both")
        if self.pattern is not None and "{lang}" not in self.pattern:
            raise ValueError(f"source {self.name!r}: pattern {self.pattern!r} must hold {{lang}}")
        return self


class TmxSource(_FieldsFixed, _EndpointKey):
    """A TMX 1.4 translation memory: one row per <tu>."""

    _needs: ClassVar[dict[str, str]] = {"langs": _LANGS_NEEDED}

    kind: Literal["tmx"] = Field(description="tmx: the file (local, s3:// or http(s)://, plain or gzip).")
    langs: LangPair = Field(  # type: ignore[assignment]  # required here: which xml:lang pair
        description="The languages of the two sides: which xml:lang pair of each <tu> is read."
    )


class RlLogsSource(_EndpointKey):
    """Exported RL log parts: each corrected episode a pair and a preference triplet (docs/rl-logs.md)."""

    _needs: ClassVar[dict[str, str]] = {"trusted_clients": " (whose feedback to learn from; '*' for all)"}

    kind: Literal["rl_logs"] = Field(description="rl_logs: the export's folder or prefix.")
    trusted_clients: list[str] = Field(
        description=(
            "The API clients whose feedback is learned from, by name (feedback_client); 'anonymous' only if "
            "listed, '*' for every attributed client. Other feedback is skipped as untrusted_client."
        ),
    )
    max_length_ratio: float = Field(
        3.0, gt=1, description="Reject a correction more than this many times longer or shorter than its prompt."
    )
    reward_margin: float = Field(
        1.0,
        gt=0,
        description=(
            "Pair the best-rewarded output of a prompt (chosen) with its worst (rejected) when neither has a "
            "correction and their rewards differ by at least this (above 2 never: rewards are in [-1, 1])."
        ),
    )
    heldout_share: float = Field(
        0.1,
        ge=0,
        lt=1,
        description=(
            "Share of corrected episodes kept out of training, chosen by a hash of the pair, and scored "
            "as the held-out corrections yardstick (0: none)."
        ),
    )

    @model_validator(mode="after")
    def _rows_are_episodes(self) -> RlLogsSource:
        if self.fields != FieldMap() or self.langs is not None:
            raise ValueError(f"source {self.name!r}: 'fields' and 'langs' do not apply to kind rl_logs")
        return self

    # The names these settings were read by before they had defaults of their own.
    @property
    def length_ratio_limit(self) -> float:
        return self.max_length_ratio

    @property
    def reward_pair_margin(self) -> float:
        return self.reward_margin

    @property
    def heldout_fraction(self) -> float:
        return self.heldout_share


AnySource = Annotated[
    FloresSource | HttpSource | S3Source | HfSource | QdrantSource | AlignedSource | TmxSource | RlLogsSource,
    Field(discriminator="kind"),
]
"""One configured source: the model of its `kind`."""

SOURCE_MODELS: dict[str, type[SourceBase]] = {
    get_args(model.model_fields["kind"].annotation)[0]: model for model in get_args(get_args(AnySource)[0])
}
"""The model of each source kind, by kind."""

_SOURCE_ADAPTER: TypeAdapter[AnySource] = TypeAdapter(AnySource, config=ConfigDict(title="SourceConfig"))

# Which kinds take each key (for the message naming them), and the one layout every kind dumps in.
_SOURCE_KEY_KINDS: dict[str, list[str]] = {}
for _kind, _model in SOURCE_MODELS.items():
    for _key in _model.model_fields:
        _SOURCE_KEY_KINDS.setdefault(_key, []).append(_kind)
_OPTIONAL_SOURCE_KEYS = frozenset(_SOURCE_KEY_KINDS) - {"name", "kind", "uri", "fields"}
_DUMP_ORDER = (
    "name",
    "kind",
    "uri",
    "split",
    "format",
    "fields",
    "langs",
    "pattern",
    "files",
    "collection",
    "endpoint_url",
    "subset",
    "trusted_clients",
    "max_length_ratio",
    "reward_margin",
    "heldout_share",
)
_DUMPED_ALWAYS = ("name", "kind", "uri", "split", "format", "fields", "langs", "collection", "endpoint_url", "subset")
_DUMPED_WHEN_SET = ("pattern", "files", "trusted_clients", "max_length_ratio", "reward_margin", "heldout_share")


def _source_form() -> type[BaseModel]:
    """What the Prefect run form shows for a source: every kind's keys in one object, as sources had one model
    before (the form renders a union of objects only as a JSON editor). It is the schema only: each source is
    still validated by its kind's model, which names a key of another kind."""
    fields: dict[str, Any] = {}
    for key in _DUMP_ORDER:
        by_kind = {kind: model.model_fields[key] for kind, model in SOURCE_MODELS.items() if key in model.model_fields}
        first = next(iter(by_kind.values()))
        if key in ("name", "uri"):
            fields[key] = (str, Field(description=first.description))
            continue
        if key == "kind":
            fields[key] = (SourceKind, Field(description=SourceBase.model_fields["kind"].description))
            continue
        said: dict[str, list[str]] = {}
        for kind, info in by_kind.items():
            said.setdefault(info.description or "", []).append(kind)
        if key in SourceBase.model_fields:  # said once for every kind (the kinds that require it say so there)
            description = SourceBase.model_fields[key].description or ""
        elif len(said) == 1:
            description = next(iter(said))
            if len(by_kind) < len(SOURCE_MODELS):
                description += f" (kind {' or '.join(by_kind)} only)"
        else:
            description = "; ".join(f"{' or '.join(kinds)}: {text.rstrip('.')}" for text, kinds in said.items())
        annotation = first.annotation
        if key == "fields":
            fields[key] = (annotation, Field(default_factory=FieldMap, description=description))
        else:
            fields[key] = (annotation | None, Field(None, description=description))  # type: ignore[operator]
    form: type[BaseModel] = create_model("SourceConfig", __base__=_Strict, **fields)
    return form


_SOURCE_FORM = _source_form()


def _as_given(value: Any) -> Any:
    """Changes nothing: it carries `_SOURCE_FORM` as the schema of a source (`json_schema_input_type`)."""
    return value


if TYPE_CHECKING:
    SourceConfig: TypeAlias = AnySource
else:

    class SourceConfig:
        """A configured source: to type checkers the union of the kinds' models; called, the model of its kind.

        `SourceConfig(name="web", kind="http", uri=...)` and `SourceConfig.model_validate({...})` return an
        `HttpSource`; an unknown kind is refused listing the known ones.
        """

        def __new__(cls, **data: Any) -> SourceBase:
            return _SOURCE_ADAPTER.validate_python(data)

        @staticmethod
        def model_validate(obj: Any, **options: Any) -> SourceBase:
            return _SOURCE_ADAPTER.validate_python(obj, **options)

        @staticmethod
        def model_construct(**values: Any) -> SourceBase:
            """The model of `values["kind"]`, unvalidated (as pydantic's `model_construct`)."""
            return SOURCE_MODELS[values["kind"]].model_construct(**values)


class IngestConfig(_Strict):
    """Validation and sharding settings of ingestion."""

    max_chars: int = Field(2000, gt=0, description="Longest accepted sentence, in characters.")
    max_reject_fraction: float = Field(
        0.2, ge=0, le=1, description="Fail the run when more than this share of read rows is rejected."
    )
    shard_rows: int = Field(50000, gt=0, description="Rows per Parquet shard.")
    min_script_fraction: float = Field(
        0.5, ge=0, le=1, description="Least share of a sentence's letters that must be in its language's script."
    )
    commit_rows: int = Field(
        20000, gt=0, description="Accepted rows between resumable checkpoints of a source's progress."
    )


class SourceRetryConfig(_Strict):
    """How patiently the http and s3 connectors read a failing source."""

    attempts: int = Field(
        6, ge=1, description="Failed reads of a source in a row (no row read in between) before the run fails."
    )
    base_delay_s: float = Field(
        1.0, ge=0, description="First wait before a retry, in seconds; doubled per failure, with jitter."
    )
    max_delay_s: float = Field(
        30.0, ge=0, description="Longest wait before a retry, in seconds (caps a server's Retry-After too)."
    )
    timeout_s: float = Field(
        60.0, gt=0, description="Seconds allowed to connect and between received bytes before a read counts as failed."
    )


class LoraConfig(_Strict):
    """LoRA adapter shape."""

    r: int = Field(16, gt=0, description="LoRA rank: higher increases capacity and memory.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] | Literal["auto"] = Field(
        "auto", description="Module names to adapt, or 'auto' for the architecture's defaults."
    )


class ValidationConfig(_Strict):
    """Pairs held out of each direction's training data and scored during training."""

    share: float | None = Field(
        None, gt=0, le=1, description="Share of each direction's pairs held out (chosen by a seeded hash of the pair)."
    )
    pairs: int | None = Field(None, gt=0, description="Pairs held out per direction, instead of a share.")
    max_pairs: int = Field(
        500,
        gt=0,
        description="Most pairs held out per direction whatever the share: each is translated at every validation.",
    )
    seed: int = Field(0, description="Which pairs are held out: the same seed holds out the same pairs.")

    @model_validator(mode="after")
    def _share_or_pairs(self) -> ValidationConfig:
        if (self.share is None) == (self.pairs is None):
            raise ValueError("training.validation needs exactly one of share or pairs")
        return self


class CPOConfig(_Strict):
    """Contrastive Preference Optimization (Xu et al., 2024): NLL on the chosen translation plus a preference term."""

    beta: float = Field(0.1, gt=0, description="Scale of the log-probability margin in the preference term.")
    nll_weight: float = Field(1.0, ge=0, description="Weight of the NLL term on the chosen translation.")
    sft_share: float = Field(
        0.5, ge=0, lt=1, description="Share of each step's examples that are plain pairs (SFT), against forgetting."
    )


class TrainingConfig(_Strict):
    """Adapter fine-tuning settings."""

    max_steps: int = Field(300, gt=0, description="Optimizer steps (streamed data has no length).")
    batch_size: int = Field(
        16, gt=0, description="Pairs per micro-batch (grad_accum_steps of them make a step); unused with batch_tokens."
    )
    batch_tokens: int | None = Field(
        None,
        gt=0,
        description=(
            "Budget of non-padding tokens per optimizer step (source + target; prompt + answer for decoder-only "
            "bases), filled from length-grouped pairs instead of a fixed batch_size; at least 2 x max_length."
        ),
    )
    grad_accum_steps: int = Field(
        1,
        gt=0,
        description="Micro-batches per optimizer step, their gradients summed: a small GPU keeps a large effective batch.",
    )
    learning_rate: float = Field(3.0e-4, gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    checkpoint_every: int = Field(100, gt=0, description="Steps between resumable checkpoints.")
    log_every: int = Field(
        10,
        gt=0,
        description="Steps between lines of loss and tokens/s in the log and train_log.jsonl (each reads the loss).",
    )
    seed: int = Field(0, description="Random seed for data order and initialisation.")
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="Load the base in 8-bit or 4-bit through bitsandbytes (CUDA, or its CPU backend)."
    )
    max_length: int = Field(128, gt=0, description="Longest tokenized sentence kept for training.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory on large bases.")
    optimizer: Literal["adamw", "paged_adamw_8bit"] = Field(
        "adamw", description="adamw, or bitsandbytes' paged 8-bit AdamW (CUDA)."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapter shape.")
    validation: ValidationConfig | None = Field(
        None,
        description=(
            "Hold out pairs of each direction (never devtest) and score them during training; the step with the "
            "best validation chrF++ becomes the candidate (null: no validation, the last step is the candidate)."
        ),
    )
    eval_every: int | None = Field(
        None,
        gt=0,
        description="Steps between validations (default: checkpoint_every); every validation writes a checkpoint.",
    )
    patience: int | None = Field(
        None, gt=0, description="Stop after this many validations without a better chrF++ (null: train to max_steps)."
    )
    objective: Literal["sft", "cpo"] = Field(
        "sft",
        exclude_if=lambda v: v == "sft",
        description=(
            "sft: cross-entropy on pairs. cpo: preference tuning on the run's preference triplets (from rl_logs "
            "sources) plus an SFT share of plain pairs; no reference model (docs/rl-logs.md)."
        ),
    )
    cpo: CPOConfig | None = Field(
        None, exclude_if=_unset, description="CPO settings (objective cpo; defaults when null)."
    )
    init_from: Literal["scratch", "incumbent"] = Field(
        "scratch",
        exclude_if=lambda v: v == "scratch",
        description="scratch: a new LoRA adapter; incumbent: start from the direction's promoted adapter (if any).",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        exclude_if=lambda v: v == "auto",
        description=(
            "dtype of the base's weights, its activations and the LoRA weights (fp32 masters and gradient sums stay "
            "fp32). auto: bf16 on GPUs with native bf16 (Ampere on), fp16 with loss scaling on older ones (a T4), "
            "fp32 on the CPU; bf16 and fp32 are honoured on the CPU too. Checkpoints resume in any precision."
        ),
    )

    @model_validator(mode="after")
    def _validation_settings(self) -> TrainingConfig:
        if self.validation is None and (self.eval_every is not None or self.patience is not None):
            raise ValueError("training.eval_every and training.patience need training.validation")
        return self

    @model_validator(mode="after")
    def _objective_settings(self) -> TrainingConfig:
        if self.objective == "cpo" and self.batch_tokens is not None:
            raise ValueError("training.objective cpo takes batch_size, not batch_tokens")
        if self.cpo is not None and self.objective != "cpo":
            raise ValueError("training.cpo applies to training.objective cpo only")
        return self

    @property
    def cpo_settings(self) -> CPOConfig:
        return self.cpo if self.cpo is not None else CPOConfig()

    @model_validator(mode="after")
    def _budget_holds_an_example(self) -> TrainingConfig:
        if self.batch_tokens is not None and self.batch_tokens < 2 * self.max_length:
            raise ValueError(
                f"training.batch_tokens ({self.batch_tokens}) must be at least 2 x max_length "
                f"({2 * self.max_length}): the longest pair must fit one step"
            )
        return self


class EvaluationConfig(_Strict):
    """chrF evaluation on FLORES-200."""

    flores_dir: str = Field("data/flores200", description="FLORES-200 directory in the official layout.")
    split: Literal["devtest", "dev"] = Field("devtest", description="Evaluation split.")
    max_sentences: int | None = Field(None, gt=0, description="Score only the first N sentences (None: all).")
    batch_size: int = Field(32, gt=0, description="Sentences per generate call.")
    num_beams: int = Field(1, gt=0, description="Beam width of generation.")
    max_new_tokens: int = Field(128, gt=0, description="Longest generated translation, in tokens.")


class PromotionConfig(_Strict):
    """Metric gate for promotion."""

    min_gain: float = Field(0.5, ge=0, description="chrF++ points the candidate must gain over incumbent and base.")
    max_regression: float = Field(
        1.0,
        ge=0,
        description=(
            "When the run holds held-out corrections: most chrF++ points the candidate may lose against the incumbent "
            "(or the base, without one) on them; a larger loss blocks promotion."
        ),
    )


class ServingConfig(_Strict):
    """The translation service."""

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8080, ge=0, le=65535, description="Port to bind (0: any free port).")
    max_batch_size: int = Field(16, gt=0, description="Most texts in one generate call.")
    max_wait_ms: int = Field(10, ge=0, description="Longest wait to fill a batch, in milliseconds.")
    queue_limit: int = Field(256, gt=0, description="Most texts waiting; more are refused with 503.")
    max_texts: int = Field(32, gt=0, description="Most texts in one request (413 beyond).")
    max_chars: int = Field(2000, gt=0, description="Longest text in a request (413 beyond).")
    request_timeout_s: float = Field(30.0, gt=0, description="Deadline of a request (504 beyond).")
    reload_poll_s: float = Field(0.0, ge=0, description="Seconds between registry polls for new adapters (0: off).")
    require_auth: bool = Field(False, description="Require an API key (or BHASHAFLOW_API_TOKEN) on every endpoint.")
    episodes_db: str = Field("episodes.db", description="SQLite file that records every served translation.")
    max_body_bytes: int = Field(1_000_000, gt=0, description="Largest request body, refused before parsing.")
    api_keys_file: str | None = Field(
        None,
        description=(
            "YAML or JSON file listing API clients: name, scopes (translate, feedback, admin) and the sha256 of "
            "the key, never the key itself (python -m serving.keys new NAME makes one). Read at start-up."
        ),
    )
    allow_anonymous: bool = Field(
        False,
        description=(
            "Serve without require_auth on an address other than loopback (anyone who reaches it may translate "
            "and give feedback as 'anonymous'); without it such a service refuses to start."
        ),
    )
    feedback_per_minute: float = Field(
        60.0, ge=0, description="Feedback requests each client may make per minute (0: no limit); 429 beyond."
    )
    feedback_burst: int = Field(
        30, gt=0, description="Feedback requests a client may make at once before the rate applies."
    )
    engine: Literal["torch", "ctranslate2"] = Field(
        "torch",
        description=(
            "What generates: torch (transformers' generate, adapters attached to one base) or ctranslate2 (each "
            "promoted adapter merged into the base and converted when first served, cached by its manifest hash; "
            "a base CTranslate2 cannot convert falls back to torch)."
        ),
    )
    compute_type: (
        Literal["int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32"]
        | None
    ) = Field(
        None, description="CTranslate2 engine: weights' and compute type (None: int8 on CPU, int8_float16 on CUDA)."
    )
    max_batch_tokens: int = Field(
        4096,
        gt=0,
        description="CTranslate2 engine: most source tokens in one length-sorted sub-batch of a batch.",
    )

    @model_validator(mode="after")
    def _anonymous_or_auth(self) -> ServingConfig:
        if self.require_auth and self.allow_anonymous:
            raise ValueError("serving.allow_anonymous and serving.require_auth contradict each other: set one")
        return self


class RLExportConfig(_Strict):
    """Export of served episodes for preference or RL training."""

    target: str = Field("rl-logs", description="s3://, file:// (or a path) or https:// endpoint.")
    format: Literal["jsonl", "parquet"] = Field("jsonl", description="Format of exported parts.")
    only_with_feedback: bool = Field(False, description="Export only episodes that received feedback.")


class TaskRunnerConfig(_Strict):
    """Where the per-direction fine-tune and evaluate tasks run."""

    kind: Literal["thread", "dask"] = Field(
        "thread",
        description=(
            "thread: in the flow's process, one task at a time; "
            "dask: on Dask worker processes (an existing cluster or a local one), directions in parallel."
        ),
    )
    address: str | None = Field(
        None,
        description="dask: scheduler address of an existing cluster, e.g. tcp://10.0.0.5:8786 (none: start a local cluster).",
    )
    n_workers: int | None = Field(
        None,
        gt=0,
        description="dask local cluster: worker processes (default one per direction, at most one per CPU core).",
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="dask: worker resources each fine-tune and evaluate task claims, e.g. {GPU: 1}.",
    )
    train_resources: dict[str, float] | None = Field(
        None,
        description="dask: what fine-tune tasks claim instead of `resources` (e.g. {GPU: 1} while evaluation takes {CPU: 1}).",
    )
    evaluate_resources: dict[str, float] | None = Field(
        None, description="dask: what evaluate tasks claim instead of `resources`."
    )

    def resources_of(self, step: Literal["train", "evaluate"]) -> dict[str, float]:
        """The resources the tasks of `step` claim on Dask workers."""
        own = self.train_resources if step == "train" else self.evaluate_resources
        return dict(self.resources if own is None else own)

    def offered_locally(self) -> dict[str, float]:
        """What each worker of a local cluster offers: enough for any task to run on it."""
        offered: dict[str, float] = {}
        for step in ("train", "evaluate"):
            for name, amount in self.resources_of(step).items():  # type: ignore[arg-type]
                offered[name] = max(offered.get(name, 0.0), amount)
        return offered

    @model_validator(mode="after")
    def _dask_only(self) -> TaskRunnerConfig:
        per_step = self.train_resources is not None or self.evaluate_resources is not None
        if self.kind == "thread" and (self.address or self.resources or per_step or self.n_workers is not None):
            # Threads share one process, and loading models with transformers is not thread-safe.
            raise ValueError("task_runner.address, n_workers and resources need kind: dask")
        if self.address and self.n_workers is not None:
            raise ValueError("task_runner.n_workers sizes a local cluster; an existing cluster (address) has its own")
        for spec in (self.resources, self.train_resources or {}, self.evaluate_resources or {}):
            if any(v <= 0 for v in spec.values()):
                raise ValueError("task_runner.resources amounts must be positive")
        return self


class EpisodesDb(_Strict):
    """Where the service records its episodes."""

    episodes_db: str = Field("episodes.db", description="SQLite file that records every served translation.")


class RLExportFlowConfig(_Strict):
    """What the export-rl-logs flow uses, and nothing else: the episodes database and the export settings."""

    run_name: str = Field("run", description="Name of the run whose service wrote the episodes (artifact keys).")
    serving: EpisodesDb = Field(default_factory=EpisodesDb, description="The service's episodes database.")
    rl_export: RLExportConfig = Field(default_factory=RLExportConfig, description="Where and how episodes go out.")

    @classmethod
    def of(cls, config: PipelineConfig) -> RLExportFlowConfig:
        """The export settings of a whole pipeline config (what `bhashaflow export-rl CONFIG` runs)."""
        return cls(
            run_name=config.run_name,
            serving=EpisodesDb(episodes_db=config.serving.episodes_db),
            rl_export=config.rl_export,
        )


_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_RUN_ID_FORMATS = {"date": "%Y-%m-%d", "datetime": "%Y%m%dT%H%M%SZ"}


def fill_run_id(template: str, when: datetime) -> str:
    """`template` with `{date}` (2026-11-27) and `{datetime}` (20261127T020000Z) taken from `when`, in UTC."""
    utc = when.astimezone(UTC)
    return template.format(**{name: utc.strftime(fmt) for name, fmt in _RUN_ID_FORMATS.items()})


class PipelineConfig(_Strict):
    """Everything one bhashaflow run needs."""

    run_name: str = Field("run", description="Name of the run; its folder under workdir.")
    run_id: str | None = Field(
        None,
        description=(
            "Fix the run id (default: run_name plus a hash of the config, so re-runs resume). {date} and "
            "{datetime} are filled from the flow run's scheduled start (UTC), so a schedule with "
            "run_id: nightly-{date} starts a fresh run each day while a retried flow run resumes its own."
        ),
    )
    workdir: str = Field("runs", description="Where runs write (any fsspec URL).")
    directions: list[str] = Field(
        description="Translation directions as src-tgt FLORES-200 codes, e.g. eng_Latn-hin_Deva.", min_length=1
    )
    sources: list[Annotated[AnySource, BeforeValidator(_as_given, json_schema_input_type=_SOURCE_FORM)]] = Field(
        default_factory=list, description="Where training pairs come from."
    )
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Validation and sharding.")
    # Not part of the run id: a run resumed with more patience is still the same run.
    source_retry: SourceRetryConfig = Field(
        default_factory=SourceRetryConfig, description="Retries and timeouts of http and s3 sources."
    )
    base_model: str = Field(
        "builtin:tiny-seq2seq",
        description="A hub id, a local directory, or builtin:tiny-seq2seq / builtin:tiny-causal.",
    )
    base_revision: str | None = Field(None, description="Hub revision of the base model.")
    trust_remote_code: bool = Field(
        False,
        description="Run Python code a model ships (auto_map in its config; hub or local folder): off unless trusted.",
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Adapter fine-tuning.")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="chrF on FLORES-200.")
    promotion: PromotionConfig = Field(default_factory=PromotionConfig, description="Promotion gate.")
    registry: str = Field("registry", description="Adapter registry location (any fsspec URL).")
    serving: ServingConfig = Field(default_factory=ServingConfig, description="Translation service.")
    rl_export: RLExportConfig = Field(default_factory=RLExportConfig, description="RL log export.")
    task_runner: TaskRunnerConfig = Field(
        default_factory=TaskRunnerConfig, description="Where fine-tune and evaluate tasks run: threads or Dask."
    )

    @field_validator("run_name")
    @classmethod
    def _safe_run_name(cls, name: str) -> str:
        if not _SAFE_NAME_RE.fullmatch(name):
            raise ValueError("run_name must be 1-64 letters, digits, '_', '.', '-'")
        return name

    @field_validator("run_id")
    @classmethod
    def _safe_run_id(cls, run_id: str | None) -> str | None:
        if run_id is None or not run_id.strip():
            return None  # `run_id: ""` (or `--set run_id=`) asks for the default
        try:
            sample = fill_run_id(run_id, datetime(2000, 1, 1, tzinfo=UTC))
        except (KeyError, IndexError, AttributeError, ValueError):
            raise ValueError("run_id may hold only the placeholders {date} and {datetime}") from None
        if not _RUN_ID_RE.fullmatch(sample):
            raise ValueError("run_id must be 1-128 letters, digits, '_', '.', '-' (besides {date} and {datetime})")
        return run_id

    @field_validator("directions")
    @classmethod
    def _valid_directions(cls, directions: list[str]) -> list[str]:
        for d in directions:
            parse_direction(d)
        if len(set(directions)) != len(directions):
            raise ValueError("directions repeat")
        return directions

    @model_validator(mode="after")
    def _unique_sources(self) -> PipelineConfig:
        names = [s.name for s in self.sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names repeat: {sorted(dup)}")
        return self

    @property
    def languages(self) -> list[str]:
        """Every language of the configured directions, sorted (the built-in base is built for these)."""
        return sorted({code for d in self.directions for code in parse_direction(d)})

    def section_hash(self, *sections: str) -> str:
        """sha256 of the named sections' canonical JSON (all sections when none are named)."""
        data = self.model_dump(mode="json")
        picked = {k: data[k] for k in (sections or tuple(sorted(data)))}
        return sha256_json(picked)

    @property
    def ingest_hash(self) -> str:
        return self.section_hash("directions", "sources", "ingest")

    def at(self, when: datetime) -> PipelineConfig:
        """This config with `{date}` / `{datetime}` in `run_id` filled from `when` (a flow run's scheduled start)."""
        if not self.run_id or "{" not in self.run_id:
            return self
        return self.model_copy(update={"run_id": fill_run_id(self.run_id, when)})

    def resolved_run_id(self) -> str:
        """The run id: fixed by `run_id`, else stable for the same data, model and training settings.

        Placeholders left in `run_id` (outside a flow, which fills them with `at`) take the current time.
        """
        if self.run_id:
            return fill_run_id(self.run_id, datetime.now(UTC)) if "{" in self.run_id else self.run_id
        digest = self.section_hash("directions", "sources", "ingest", "base_model", "training")
        return f"{self.run_name}-{digest[:10]}"

    def run_uri(self) -> str:
        return f"{self.workdir.rstrip('/')}/{self.run_name}/{self.resolved_run_id()}"


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, key, ".".join(keys[: i + 1]))]
            continue
        if key not in node or node[key] is None:
            node[key] = {}
        node = node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[_list_index(node, last, dotted)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {dotted}: {'.'.join(keys[:-1])} is not a mapping")


def _list_index(node: list[Any], key: str, where: str) -> int:
    if key.isdigit() and int(key) < len(node):
        return int(key)
    # sources are addressed by name too: --set sources.web.uri=...
    for i, item in enumerate(node):
        if isinstance(item, dict) and item.get("name") == key:
            return i
    raise ConfigError(f"--set {where}: no list item {key!r}")


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """Parse `key.path=value` strings; values are YAML."""
    parsed = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: value is not valid YAML ({exc})") from exc
        parsed.append((key, value))
    return parsed


def _kind_choices() -> str:
    kinds = [repr(kind) for kind in get_args(SourceKind)]
    return f"{', '.join(kinds[:-1])} or {kinds[-1]}"


def _error_text(err: ErrorDetails) -> tuple[str, str]:
    """Where an error is, as a dotted key path, and what it says.

    A source's errors are located as `sources.N.key`: the kind pydantic puts after N (which model of the union
    failed) is left out, and a missing or unknown kind is an error of the `kind` key, listing the kinds.
    """
    loc = list(err["loc"])
    for i in range(len(loc) - 2):
        if loc[i] == "sources" and isinstance(loc[i + 1], int) and loc[i + 2] in SOURCE_MODELS:
            del loc[i + 2]
            break
    msg = err["msg"]
    if err["type"] == "union_tag_not_found":
        loc, msg = [*loc, "kind"], "Field required"
    elif err["type"] == "union_tag_invalid":
        loc, msg = [*loc, "kind"], f"Input should be {_kind_choices()}"
    elif err["type"] == "extra_forbidden":
        msg = "unknown key"
    return ".".join(str(p) for p in loc) or "(top level)", msg


def _format_errors(exc: ValidationError) -> str:
    return "; ".join(f"{loc}: {msg}" for loc, msg in map(_error_text, exc.errors()))


def config_from_dict(
    data: dict[str, Any], overrides: list[str] | None = None, origin: str = "config"
) -> PipelineConfig:
    """Validate a config mapping after applying `--set` overrides."""
    data = json.loads(json.dumps(data))  # a deep copy we may edit
    for key, value in parse_overrides(overrides):
        _set_path(data, key, value)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_format_errors(exc)}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a YAML config file and apply `--set key.path=value` overrides.

    Args:
        path: YAML file.
        overrides: `key.path=value` strings, each value parsed as YAML.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return config_from_dict(data, overrides, origin=str(path))
