"""The base model with one promoted adapter per direction, and their hot swap.

All model work runs in the batcher's worker thread: loading the base, attaching or removing an
adapter, generating. A reload downloads the new version elsewhere, attaches it between two batches,
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
from bhashaflow.registry.store import Registry, RegistryError, VersionInfo
from serving.batcher import Batcher
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


def adapter_name(direction: str, version: str) -> str:
    """The peft adapter name of a version (peft names may not hold dots)."""
    src, tgt = parse_direction(direction)
    return f"{src}__{tgt}__{version}"


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
        )
        self.registry = Registry(config.registry, settings.storage_options_for(config.registry))
        self.state: EngineState = "loading"
        self.error: str | None = None
        self.device: str | None = None
        self.lm: Any = None  # bhashaflow.modeling.loading.LoadedModel once loaded
        self._lock = threading.Lock()
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
                self._attach(*fetched)
            except Exception as exc:  # noqa: BLE001 - one bad direction must not keep the others down
                log.exception("could not load the promoted adapter of %s", direction)
                self._problems[direction] = str(exc)
                self.metrics.refusals.labels(direction).inc()
        self.state = "ready"
        log.info("ready: base %s on %s, adapters %s", config.base_model, self.device, self.served())

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

    def _attach(self, info: VersionInfo, path: str) -> AdapterSlot:
        """Attach a version and make it the one new requests get (worker thread only)."""
        from bhashaflow.modeling.adapters import load_adapter

        self._check_base(info)
        name = adapter_name(info.direction, info.version)
        with self._lock:
            slot = self._loaded.get(name)
        if slot is not None and slot.unloading:
            self._detach(slot)  # promoted again while on its way out: start afresh
            slot = None
        if slot is None:
            try:
                load_adapter(self.lm, path, name)
            except Exception as exc:  # noqa: BLE001 - intact files whose weights do not fit their config
                raise RegistryError(f"{info.direction}/{info.version}: refused at load: {_first_line(exc)}") from exc
            src, tgt = parse_direction(info.direction)
            slot = AdapterSlot(info.direction, src, tgt, info.version, name, info.manifest_sha256, utc_now())
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
            pointer.version, pointer.manifest_sha256
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
        slot = await asyncio.wrap_future(self.batcher.call_in_worker(lambda: self._attach(info, path)))
        log.info("swapped %s: %s -> %s", direction, current.version if current else None, slot.version)
        return {"direction": direction, "previous": current.version if current else None, "version": slot.version}

    # --- generation (worker thread) -----------------------------------------------------------------

    def _run_batch(self, name: str, texts: list[str]) -> list[str]:
        from bhashaflow.modeling.generation import translate

        slot = self._loaded[name]
        evaluation = self.config.evaluation
        return translate(
            self.lm,
            texts,
            src_lang=slot.src_lang,
            tgt_lang=slot.tgt_lang,
            adapter=name,
            batch_size=len(texts),
            num_beams=evaluation.num_beams,
            max_new_tokens=evaluation.max_new_tokens,
        )


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The gist of an error (torch lists every mismatched tensor, one per line)."""
    text = " ".join(str(exc).split("\n", 2)[:2]).strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
