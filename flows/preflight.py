"""Preflight: what can be known before a run does any work, each check a named line with ok or a reason.

`bhashaflow check CONFIG` runs every check; `adapter-pipeline` runs the cheap ones first (no model loading,
no device) and fails before ingesting with the same messages. It lives in `flows/` because it opens the
sources through the connectors, which the library may not import.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from bhashaflow.config import PipelineConfig, SourceConfig, SourceRetryConfig
from bhashaflow.core.fsio import is_local, join, open_fs
from bhashaflow.core.languages import parse_direction
from bhashaflow.core.names import BASE_MANIFEST
from bhashaflow.core.records import RawRecord, Rejection
from bhashaflow.core.redact import redact_uri
from bhashaflow.core.settings import Settings, get_settings
from bhashaflow.data.flores import flores_file
from bhashaflow.data.validation import Skip, Validator
from bhashaflow.modeling.families import read_config_json, unsupported_reason
from bhashaflow.modeling.loaded import BUILTIN_PREFIX

FIRST_ROWS = 5  # rows read of each source
SOURCE_TIMEOUT_S = 20.0  # longest wait for a source's first rows


@dataclass(frozen=True)
class Check:
    """One named check: ok, or the reason it failed, naming the path, URL, field or source."""

    name: str
    ok: bool
    message: str
    warning: bool = False  # passed, but a person should read it (a base that saw the evaluation split)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PreflightError(RuntimeError):
    """A run cannot work; the message lists each failed check."""


def preflight(config: PipelineConfig, *, thorough: bool = True, settings: Settings | None = None) -> list[Check]:
    """Every check of `config`, in the order a run needs them.

    Args:
        config: the pipeline config.
        thorough: also read the base model's config and check the device and its free memory (slower: imports
            torch and transformers); without it only what a pipeline checks before ingesting.
        settings: credentials, offline mode and the cache directory (default: from the environment).
    """
    settings = settings or get_settings()
    checks = [check_base_model(config, settings, thorough=thorough)]
    if checks[0].ok and not config.base_model.startswith(BUILTIN_PREFIX):  # built-ins carry every configured tag
        checks.append(check_language_tags(config, settings))
    checks += [c for c in [check_contamination(config)] if c is not None]
    checks += [check_flores(config, direction) for direction in config.directions]
    checks += [
        check_writable("workdir", config.workdir, settings),
        check_writable("registry", config.registry, settings),
    ]
    checks += [check_source(config, source, settings) for source in config.sources]
    if thorough:
        checks.append(check_device(config))
    return checks


def require_preflight(config: PipelineConfig) -> None:
    """The cheap checks, before a pipeline does any work; raises PreflightError naming every failure."""
    failed = [c for c in preflight(config, thorough=False) if not c.ok]
    if failed:
        raise PreflightError("preflight failed: " + "; ".join(f"{c.name}: {c.message}" for c in failed))


def format_checks(checks: list[Check]) -> str:
    """One line per check: `ok  ` or `FAIL`, its name, its message."""
    width = max((len(c.name) for c in checks), default=0)
    return "\n".join(f"{_label(c)}  {c.name:<{width}}  {c.message}" for c in checks)


def _label(check: Check) -> str:
    return "FAIL" if not check.ok else "WARN" if check.warning else "ok  "


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except Exception as exc:  # a check that breaks is a failed check, named, never a crashed preflight
        return Check(name, False, " ".join(str(exc).split()) or type(exc).__name__)


def check_base_model(config: PipelineConfig, settings: Settings, *, thorough: bool = True) -> Check:
    """A built-in name, a local folder with config.json and safetensors, or a hub id (in the cache when offline)."""
    return _guarded("base model", lambda: _base_model(config, settings, thorough))


def _base_model(config: PipelineConfig, settings: Settings, thorough: bool) -> Check:
    base = config.base_model
    if base.startswith(BUILTIN_PREFIX):
        from bhashaflow.modeling.builtin import builtin_dir, recipe_for

        recipe_for(base)  # an unknown built-in raises, naming the known ones
        missing = [
            str(p)
            for lang in config.languages
            if not (p := flores_file(config.evaluation.flores_dir, lang, "dev")).is_file()
        ]
        if missing:
            return Check("base model", False, f"{base} is built from FLORES-200 dev text; missing {', '.join(missing)}")
        folder = builtin_dir(
            base, languages=config.languages, cache_dir=settings.cache_dir, flores_dir=config.evaluation.flores_dir
        )
        built = "cached" if (folder / BASE_MANIFEST).is_file() else "built on first use (minutes)"
        return Check("base model", True, f"{base}: built-in, {built} in {folder}")
    local = Path(base).expanduser()
    if local.is_dir():
        return _local_base(base, local, config, thorough)
    if base.startswith((".", "/", "~")) or base.count("/") > 1:  # a hub id is `name` or `org/name`
        return Check("base model", False, f"base model directory {local} does not exist")
    return _hub_base(config, settings, thorough)


def _local_base(base: str, local: Path, config: PipelineConfig, thorough: bool) -> Check:
    if not (local / "config.json").is_file():
        return Check("base model", False, f"base model directory {local} has no config.json")
    refused = unsupported_reason(base, read_config_json(local / "config.json"))
    if refused:
        return Check("base model", False, refused)
    if not any(local.glob("*.safetensors")) and not any(local.glob("*.safetensors.index.json")):
        return Check("base model", False, f"base model directory {local} has no safetensors weights")
    if thorough:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(str(local), trust_remote_code=config.trust_remote_code)
    return Check("base model", True, f"{base}: local folder with config.json and safetensors weights")


def _hub_base(config: PipelineConfig, settings: Settings, thorough: bool) -> Check:
    base = config.base_model
    refused = unsupported_reason(base)
    if refused:
        return Check("base model", False, refused)
    if settings.hf_hub_offline:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(base, "config.json", revision=config.base_revision)
        if not isinstance(found, str):
            return Check(
                "base model", False, f"hub model {base!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
            )
        refused = unsupported_reason(base, read_config_json(Path(found)))
        if refused:
            return Check("base model", False, refused)
        return Check("base model", True, f"hub model {base!r}: in the Hugging Face cache")
    if not thorough:
        return Check("base model", True, f"hub model {base!r}: downloaded on first use")
    from huggingface_hub import HfApi

    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    HfApi(endpoint=settings.hf_endpoint, token=token).model_info(base, revision=config.base_revision, timeout=10)
    return Check("base model", True, f"hub model {base!r}: found on {settings.hf_endpoint}")


def check_language_tags(config: PipelineConfig, settings: Settings) -> Check:
    """Every configured language has the tag the base names it by (loads the tokenizer, never the weights)."""
    return _guarded("language tags", lambda: _language_tags(config, settings))


def _language_tags(config: PipelineConfig, settings: Settings) -> Check:
    from bhashaflow.modeling.encoding import LanguageTagError, language_notes, tag_style
    from bhashaflow.modeling.loading import load_config_and_tokenizer

    base_config, tokenizer = load_config_and_tokenizer(
        config.base_model, revision=config.base_revision, trust_remote_code=config.trust_remote_code, settings=settings
    )
    family = "seq2seq" if getattr(base_config, "is_encoder_decoder", False) else "causal"
    model_type = str(getattr(base_config, "model_type", ""))
    try:
        notes = language_notes(
            tokenizer, family=family, model_type=model_type, base=config.base_model, directions=config.directions
        )
    except LanguageTagError as exc:
        return Check("language tags", False, str(exc))
    if family == "causal":
        return Check("language tags", True, "decoder-only base: languages are named in the prompt, no tags needed")
    style = tag_style(tokenizer)
    kind = {
        "flores": "FLORES-200 codes",
        "m2m100": "__xx__ tokens",
        "mbart": "xx_XX tokens",
        "marian": ">>xxx<< target tokens",
        "none": "none (the base is not told the languages)",
    }[style]
    aliased = f"; aliases: {'; '.join(notes)}" if notes else ""
    return Check(
        "language tags", True, f"{type(tokenizer).__name__}, tags: {kind}; every configured language has one{aliased}"
    )


def check_contamination(config: PipelineConfig) -> Check | None:
    """A warning when the base is known to have seen the evaluation split in training (None otherwise)."""
    from bhashaflow.evaluation.contamination import contamination_for

    known = contamination_for(config.base_model, "FLORES-200", config.evaluation.split)
    if known is None:
        return None
    return Check("evaluation set", True, known.message(config.base_model, config.evaluation.split), warning=True)


def check_flores(config: PipelineConfig, direction: str) -> Check:
    """Both languages' files of the evaluation split."""
    name = f"FLORES {direction}"
    split = config.evaluation.split
    paths = [flores_file(config.evaluation.flores_dir, lang, split) for lang in parse_direction(direction)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return Check(name, False, f"missing {', '.join(missing)} (the {split} split scores this direction)")
    return Check(name, True, f"{', '.join(str(p) for p in paths)}")


def check_writable(name: str, uri: str, settings: Settings) -> Check:
    """Write and remove a probe file: in the folder itself, or locally where the folder would be created."""
    return _guarded(name, lambda: _writable(name, uri, settings))


def _writable(name: str, uri: str, settings: Settings) -> Check:
    shown = redact_uri(uri)
    fs, path = open_fs(uri, settings.storage_options_for(uri))
    if is_local(fs):
        # Creating the folder needs its nearest existing ancestor to be a writable directory: probe there and
        # leave no folder behind.
        existing = Path(path)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return Check(name, False, f"{shown} is not writable: {existing} is not a directory")
        path = str(existing)
    probe = join(path, f".bhashaflow-check-{uuid.uuid4().hex}")
    try:
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as exc:
        reason = getattr(exc, "strerror", None) or " ".join(str(exc).split()) or type(exc).__name__
        return Check(name, False, f"{shown} is not writable: {reason}")
    return Check(name, True, f"{shown} is writable")


def check_source(config: PipelineConfig, source: SourceConfig, settings: Settings) -> Check:
    """The source answers within seconds and one of its first rows has the configured fields."""
    return _guarded(f"source {source.name}", lambda: _source(config, source, settings))


def _source(config: PipelineConfig, source: SourceConfig, settings: Settings) -> Check:
    from connectors import open_connector

    name, where = f"source {source.name}", f"{source.kind} {redact_uri(source.uri)}"
    # One attempt, a short timeout: a preflight reports an unreachable source, it does not wait it out.
    retry = SourceRetryConfig(
        attempts=1, base_delay_s=0.0, max_delay_s=0.0, timeout_s=min(10.0, config.source_retry.timeout_s)
    )
    reader = open_connector(source, settings, config.directions, retry)
    records = _first_records(reader.iter_records(None), FIRST_ROWS, SOURCE_TIMEOUT_S)
    if not records:
        return Check(name, False, f"{where}: no rows")
    validator = Validator(source, config.directions, config.ingest.max_chars, config.ingest.min_script_fraction)
    verdicts = [validator.check_structure(record) for record in records]
    good = sum(isinstance(v, tuple) for v in verdicts)
    rejected = [v for v in verdicts if isinstance(v, Rejection)]
    if good:
        note = f" ({len(rejected)} rejected: {rejected[0].detail})" if rejected else ""
        return Check(name, True, f"{where}: {good} of the first {len(records)} rows have the configured fields{note}")
    if rejected:
        return Check(
            name,
            False,
            f"{where}: none of the first {len(records)} rows has the configured fields: {rejected[0].detail}",
        )
    skipped = sorted({v.direction for v in verdicts if isinstance(v, Skip)})
    return Check(
        name, True, f"{where}: the first {len(records)} rows are of directions not configured ({', '.join(skipped)})"
    )


def _first_records(records: Iterator[RawRecord], count: int, timeout_s: float) -> list[RawRecord]:
    """The first `count` records, read on a thread so a hanging source fails the check in `timeout_s`."""
    out: list[RawRecord] = []
    failure: list[BaseException] = []

    def read() -> None:
        try:
            out.extend(islice(records, count))
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    reader = threading.Thread(target=read, name="preflight-source", daemon=True)
    reader.start()
    reader.join(timeout_s)
    if reader.is_alive():
        raise TimeoutError(f"no {count} rows within {timeout_s:.0f} s")
    if failure:
        raise failure[0]
    return list(out)


def check_device(config: PipelineConfig) -> Check:
    """The device training will use and, on CUDA, its free memory against the base's weights."""
    return _guarded("device", lambda: _device(config))


def _device(config: PipelineConfig) -> Check:
    import torch

    from bhashaflow.modeling.loading import precision_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # training.precision as this device resolves it (auto: bf16, or fp16 on a card without native bf16); asked
    # first, as that also makes the allocator setting training uses before CUDA starts.
    dtype = str(precision_dtype(config.training.precision, device)).removeprefix("torch.")
    dtype = f"{dtype} ({config.training.precision})"
    if device == "cpu":
        return Check("device", True, f"cpu (no CUDA device): training runs on the CPU in {dtype}")
    free, total = torch.cuda.mem_get_info()
    gib = 1024**3
    name = torch.cuda.get_device_name()
    weights = _local_weight_bytes(config.base_model)
    figures = f"cuda ({name}, {dtype}): {free / gib:.1f} GiB free of {total / gib:.1f} GiB"
    if weights is None:
        return Check("device", True, f"{figures}; `bhashaflow fit` measures what training needs")
    if config.training.quantization == "none" and weights > free:
        return Check("device", False, f"{figures}, less than the base's {weights / gib:.1f} GiB of weights")
    return Check(
        "device", True, f"{figures}; base weights {weights / gib:.1f} GiB (`bhashaflow fit` measures training)"
    )


def _local_weight_bytes(base_model: str) -> int | None:
    """Bytes of a local base's safetensors files (None for hub and built-in bases)."""
    local = Path(base_model).expanduser()
    if base_model.startswith(BUILTIN_PREFIX) or not local.is_dir():
        return None
    return sum(p.stat().st_size for p in local.glob("*.safetensors"))
