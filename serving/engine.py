"""The base model with one promoted adapter per direction, and their hot swap.

Two engines generate (serving.engine). torch: every adapter attached to the one base, and all model work in the
batcher's single worker thread. ctranslate2: each adapter version merged into the base and converted
(serving/ct2.py), one worker per direction so that one direction's batch never waits for another's; the torch base
stays loaded for the tokenizer and for the directions CTranslate2 cannot serve, and every torch call holds
`_torch_lock`. A reload downloads (and converts) the new version elsewhere, attaches it between two batches,
points new requests at it, and removes the old version once the requests holding it have finished.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Literal

from bhashaflow.config import PipelineConfig
from bhashaflow.core.languages import parse_direction
from bhashaflow.core.settings import Settings
from bhashaflow.episodes.store import utc_now
from bhashaflow.registry.store import RegistryError, VersionInfo, registry_for
from serving.batcher import Batcher
from serving.ct2 import (
    MAX_SOURCE_TOKENS,
    AdapterRefused,
    ConversionUnsupported,
    CT2Model,
    Decoding,
    check_convertible,
    converted_model,
    default_compute_type,
)
from serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

EngineState = Literal["loading", "ready", "failed", "stopping"]


class NoAdapter(LookupError):
    """No adapter is served for the direction."""


@dataclass(eq=False)
class AdapterSlot:
    """One loaded adapter version; `pending` counts the requests that were handed it."""

    direction: str
    src_lang: str
    tgt_lang: str
    version: str
    name: str  # the peft adapter name
    manifest_sha256: str
    loaded_at: str
    pending: int = 0
    retired: bool = False
    unloading: bool = False
    ct2: CT2Model | None = None  # the converted version (ctranslate2 engine); None: a peft adapter on the torch base

    @property
    def engine(self) -> Literal["torch", "ctranslate2"]:
        return "torch" if self.ct2 is None else "ctranslate2"


def adapter_name(direction: str, version: str) -> str:
    """The peft adapter name of a version (peft names may not hold dots)."""
    src, tgt = parse_direction(direction)
    return f"{src}__{tgt}__{version}"


def bounded_new_tokens(longest_source: int, configured: int) -> int:
    """A batch's generation limit: twice its longest source plus 10 tokens, never above the configured limit.

    A translation is rarely twice its source's length; a sequence that loops would otherwise hold its whole
    batch until `max_new_tokens`.
    """
    return max(1, min(configured, 2 * longest_source + 10))


class Engine:
    """Loads and swaps adapters on one base, and translates batches for the batcher.

    Args:
        config: the pipeline config (base model, directions, registry, serving, generation settings).
        settings: credentials for the registry and the hub, the built-in cache.
        metrics: where batch sizes go.
    """

    def __init__(self, config: PipelineConfig, settings: Settings, metrics: ServingMetrics) -> None:
        self.config = config
        self.settings = settings
        self.metrics = metrics
        serving = config.serving
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=serving.max_batch_size,
            max_wait_ms=serving.max_wait_ms,
            queue_limit=serving.queue_limit,
            on_batch=metrics.batch_size.observe,
            on_out_of_memory=lambda outcome: metrics.out_of_memory.labels(outcome).inc(),
            # CTranslate2 releases the GIL: one worker per direction runs directions' batches side by side.
            workers=len(config.directions) if serving.engine == "ctranslate2" else 1,
        )
        self.registry = registry_for(config, settings)
        self.state: EngineState = "loading"
        self.error: str | None = None
        self.device: str | None = None
        self.lm: Any = None  # bhashaflow.modeling.loading.LoadedModel once loaded
        self._lock = threading.Lock()
        self._torch_lock = threading.RLock()  # the torch base and its adapters: one user at a time
        self._said: set[tuple[str, str]] = set()  # (what, direction) warnings logged once per direction
        self._current: dict[str, AdapterSlot] = {}  # direction -> the version new requests get
        self._loaded: dict[str, AdapterSlot] = {}  # peft name -> every attached version, retired ones too
        self._problems: dict[str, str] = {}  # direction -> why it has no (newer) adapter
        self._cache_dir = tempfile.mkdtemp(prefix="bhashaflow-adapters-")
        self._reload_lock: asyncio.Lock | None = None

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker and load the model there; `state` turns 'ready' (or 'failed') when done."""
        self.batcher.start()
        self.batcher.call_in_worker(self._load_all)

    def stop(self) -> None:
        if self.state != "failed":
            self.state = "stopping"
        self.batcher.stop()
        shutil.rmtree(self._cache_dir, ignore_errors=True)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def _load_all(self) -> None:
        from bhashaflow.modeling.loading import load_configured_base

        config = self.config
        try:
            self.lm = load_configured_base(config, self.settings)
        except Exception as exc:  # noqa: BLE001 - reported on /health and by run(); the process decides
            log.exception("could not load base model %s", config.base_model)
            self.error = f"could not load base model {config.base_model!r}: {exc}"
            self.state = "failed"
            return
        self.device = self.lm.device
        for direction in config.directions:
            try:
                fetched = self.registry.fetch_promoted(direction, self._cache_dir)
                if fetched is None:
                    self._problems[direction] = "no promoted adapter in the registry"
                    continue
                info, path = fetched
                self._attach(info, path, self._prepare(info, path))
            except Exception as exc:  # noqa: BLE001 - one bad direction must not keep the others down
                log.exception("could not load the promoted adapter of %s", direction)
                self._problems[direction] = str(exc)
                self.metrics.refusals.labels(direction).inc()
        self.state = "ready"
        log.info(
            "ready: base %s on %s (%s engine), adapters %s",
            config.base_model,
            self.device,
            config.serving.engine,
            self.served(),
        )

    # --- adapters -----------------------------------------------------------------------------------

    def _check_base(self, info: VersionInfo) -> None:
        if info.base_model != self.config.base_model:
            raise RegistryError(
                f"{info.direction}/{info.version} was trained on {info.base_model!r}, "
                f"but the service runs {self.config.base_model!r}"
            )
        served = getattr(self.lm, "revision", None)  # hub revision, or the content hash of a local base
        if info.base_revision is not None and served is not None and info.base_revision != served:
            raise RegistryError(
                f"{info.direction}/{info.version} was trained on revision {info.base_revision!r} of the base, "
                f"but the service runs {served!r}"
            )

    def _prepare(self, info: VersionInfo, path: str) -> CT2Model | None:
        """The ctranslate2 engine's converted version (converting it if not cached); None where torch serves it.

        Runs outside the worker on a reload (a conversion takes a while; batches go on meanwhile). A base or
        adapter CTranslate2 cannot convert is served by torch, said once per direction in the log.
        """
        serving = self.config.serving
        if serving.engine != "ctranslate2":
            return None
        self._check_base(info)
        src, tgt = parse_direction(info.direction)
        compute_type = default_compute_type(self.lm.device, serving.compute_type)
        try:
            check_convertible(self.lm)
            folder = converted_model(
                self.config, self.settings, info, path, base_revision=self.lm.revision, compute_type=compute_type
            )
            import torch

            model = CT2Model(
                folder,
                self.lm,
                src,
                tgt,
                device=self.lm.device,
                compute_type=compute_type,
                threads=torch.get_num_threads(),
            )
            self._warn_of_beams(info.direction)
            return model
        except AdapterRefused as exc:
            cause = exc.__cause__ or exc
            raise RegistryError(f"{info.direction}/{info.version}: refused at load: {_first_line(cause)}") from exc
        except ConversionUnsupported as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - a conversion that fails any other way: torch still serves
            log.debug("CTranslate2 conversion of %s/%s failed", info.direction, info.version, exc_info=True)
            reason = f"CTranslate2 conversion failed: {_first_line(exc)}"
        self._warn_once("fallback", info.direction, "%s is served by the torch engine: %s", info.direction, reason)
        return None

    def _warn_once(self, what: str, direction: str, message: str, *args: object) -> None:
        """Log `message` the first time `what` happens to `direction` in this service, never again."""
        with self._lock:
            first = (what, direction) not in self._said
            self._said.add((what, direction))
        if first:
            log.warning(message, *args)

    def _warn_of_beams(self, direction: str) -> None:
        """One line per direction where ctranslate2 runs a beam search: its beam search is not transformers' (when
        it stops, how it ends secondary beams, and a repetition penalty applied before the scores are normalised
        rather than after), so what it serves may differ from what was evaluated. Greedy search gives the same
        translations (README, "Serving engines")."""
        num_beams = self.config.evaluation.num_beams
        if num_beams == 1:
            return
        self._warn_once(
            "beams",
            direction,
            "%s is served by ctranslate2 with beam search (num_beams %d), which differs from transformers' in "
            "details: translations may differ from the evaluated ones; evaluation.num_beams: 1 or "
            "serving.engine: torch serves exactly those",
            direction,
            num_beams,
        )

    def _attach(self, info: VersionInfo, path: str, ct2: CT2Model | None = None) -> AdapterSlot:
        """Attach a version (converted, or as a peft adapter) and make it the one new requests get (worker only)."""
        from bhashaflow.modeling.adapters import load_adapter

        self._check_base(info)
        name = adapter_name(info.direction, info.version)
        with self._lock:
            slot = self._loaded.get(name)
        if slot is not None and slot.unloading:
            self._detach(slot)  # promoted again while on its way out: start afresh
            slot = None
        if slot is not None and ct2 is not None:
            ct2.unload()  # the same version is still loaded: the new copy is not needed
        if slot is None:
            if ct2 is None:
                try:
                    with self._torch_lock:
                        load_adapter(self.lm, path, name)
                except Exception as exc:  # noqa: BLE001 - intact files whose weights do not fit their config
                    raise RegistryError(
                        f"{info.direction}/{info.version}: refused at load: {_first_line(exc)}"
                    ) from exc
            src, tgt = parse_direction(info.direction)
            slot = AdapterSlot(info.direction, src, tgt, info.version, name, info.manifest_sha256, utc_now(), ct2=ct2)
        with self._lock:
            slot.retired = False
            old = self._current.get(info.direction)
            self._current[info.direction] = self._loaded[name] = slot
            self._problems.pop(info.direction, None)
            drop_old = old is not None and old is not slot and self._retire_locked(old)
        if drop_old:
            assert old is not None
            self._detach(old)
        return slot

    def _retire_locked(self, slot: AdapterSlot) -> bool:
        """Mark a version retired; True when no request holds it, so it can be removed now."""
        slot.retired = True
        if slot.pending == 0 and not slot.unloading:
            slot.unloading = True
            return True
        return False

    def _detach(self, slot: AdapterSlot) -> None:
        """Remove a retired version from the model (worker thread only)."""
        from bhashaflow.modeling.adapters import unload_adapter

        with self._lock:
            if self._loaded.get(slot.name) is not slot:
                return  # already removed
        try:
            if slot.ct2 is not None:
                slot.ct2.unload()
            else:
                with self._torch_lock:
                    unload_adapter(self.lm, slot.name)
        except Exception:  # noqa: BLE001 - a leftover adapter costs memory, not correctness
            log.exception("could not unload adapter %s", slot.name)
        with self._lock:
            self._loaded.pop(slot.name, None)
        log.info("unloaded %s/%s", slot.direction, slot.version)

    def acquire(self, direction: str) -> AdapterSlot:
        """The version to translate `direction` with, held until `release` (raises NoAdapter)."""
        with self._lock:
            slot = self._current.get(direction)
            if slot is None:
                raise NoAdapter(direction)
            slot.pending += 1
            return slot

    def release(self, slot: AdapterSlot) -> None:
        with self._lock:
            slot.pending -= 1
            drop = slot.retired and slot.pending == 0 and not slot.unloading
            if drop:
                slot.unloading = True
        if drop:
            self.batcher.call_in_worker(lambda: self._detach(slot))

    def loaded(self) -> list[str]:
        """Names of every loaded version (peft adapters or converted models), retired ones not yet removed too."""
        with self._lock:
            return sorted(self._loaded)

    def served(self) -> dict[str, str]:
        """direction -> the version new requests get."""
        with self._lock:
            return {d: s.version for d, s in self._current.items()}

    def adapters(self) -> list[dict[str, Any]]:
        """Every configured direction with its served version (or why there is none)."""
        with self._lock:
            out = []
            for direction in self.config.directions:
                slot = self._current.get(direction)
                in_flight = sum(s.pending for s in self._loaded.values() if s.direction == direction)
                out.append(
                    {
                        "direction": direction,
                        "version": slot.version if slot else None,
                        "manifest_sha256": slot.manifest_sha256 if slot else None,
                        "loaded_at": slot.loaded_at if slot else None,
                        "in_flight": in_flight,
                        "engine": slot.engine if slot else None,
                        "error": self._problems.get(direction),
                    }
                )
            return out

    async def reload(self) -> dict[str, Any]:
        """Swap in the registry's promoted version of every direction that changed; in-flight requests finish."""
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            swapped: list[dict[str, Any]] = []
            errors: dict[str, str] = {}
            for direction in self.config.directions:
                try:
                    swap = await self._reload_direction(direction)
                except Exception as exc:  # noqa: BLE001 - reported per direction; the old version keeps serving
                    log.warning("reload of %s refused: %s", direction, exc)
                    errors[direction] = str(exc)
                    with self._lock:
                        self._problems[direction] = str(exc)
                    self.metrics.refusals.labels(direction).inc()
                    continue
                if swap is not None:
                    swapped.append(swap)
                    self.metrics.reloads.labels(direction).inc()
            return {"swapped": swapped, "errors": errors, "adapters": self.adapters()}

    async def _reload_direction(self, direction: str) -> dict[str, Any] | None:
        pointer = await asyncio.to_thread(self.registry.pointer, direction)
        with self._lock:
            current = self._current.get(direction)
        if pointer is None:
            return None  # nothing promoted (any more): keep what is served
        if current is not None and (current.version, current.manifest_sha256) == (
            pointer.version,
            pointer.manifest_sha256,
        ):
            with self._lock:
                # The served version is promoted (again): an earlier refusal no longer applies.
                self._problems.pop(direction, None)
            return None
        fetched = await asyncio.to_thread(self.registry.fetch_promoted, direction, self._cache_dir)
        if fetched is None:
            return None
        info, path = fetched
        self._check_base(info)
        ct2 = await asyncio.to_thread(self._prepare, info, path)
        slot = await asyncio.wrap_future(self.batcher.call_in_worker(lambda: self._attach(info, path, ct2)))
        log.info("swapped %s: %s -> %s", direction, current.version if current else None, slot.version)
        return {"direction": direction, "previous": current.version if current else None, "version": slot.version}

    # --- generation (worker thread) -----------------------------------------------------------------

    def _run_batch(self, name: str, texts: list[str]) -> list[str]:
        from bhashaflow.modeling.encoding import encode_source
        from bhashaflow.modeling.generation import translate

        with self._lock:
            slot = self._loaded[name]
        evaluation = self.config.evaluation
        longest = max(
            (
                len(encode_source(self.lm, t, slot.src_lang, slot.tgt_lang, MAX_SOURCE_TOKENS))
                for t in texts
                if t.strip()
            ),
            default=0,
        )
        max_new_tokens = bounded_new_tokens(longest, evaluation.max_new_tokens)
        if slot.ct2 is not None:
            decoding = Decoding.of(self.lm, evaluation.num_beams, max_new_tokens)
            return slot.ct2.translate(texts, decoding, self.config.serving.max_batch_tokens)
        with self._torch_lock:
            return translate(
                self.lm,
                texts,
                src_lang=slot.src_lang,
                tgt_lang=slot.tgt_lang,
                adapter=name,
                batch_size=len(texts),
                num_beams=evaluation.num_beams,
                max_new_tokens=max_new_tokens,
                max_source_tokens=MAX_SOURCE_TOKENS,
            )


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The gist of an error (torch lists every mismatched tensor, one per line)."""
    text = " ".join(str(exc).split("\n", 2)[:2]).strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
