"""Finished work is never done twice: the cache policy of the per-direction tasks, and the word on what was reused.

Prefect's default cache key includes the flow run, so only a retry of that same flow run found a finished task.
`RunScoped` keys a task by the run (its URI, which names the run id), the direction, the config sections the step
reads and its other inputs, never the flow run: a retried flow run, or a second flow run of the same config on
any host, computes the same key and finds the result record in the run folder's result storage
(`<run_uri>/prefect-results/<key>`, see flows/runners.py). The record is written once the task finished, so a
task killed half-way has none and runs again (training then resumes from its last published checkpoint).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.states import State

from bhashaflow.config import PipelineConfig
from bhashaflow.core.hashing import sha256_json
from bhashaflow.core.settings import get_settings
from bhashaflow.pipeline.reuse import adapter_identity
from bhashaflow.training.loop import TrainResult

# Who produced a result and whether it was handed on: not what the result is, so never part of a key.
_PROVENANCE = frozenset({"host", "reused"})


@dataclass
class RunScoped(CachePolicy):
    """A task's cache key from the run URI, the direction, the config `sections` the step reads and its other inputs.

    An adapter among the inputs (a TrainResult, or the URI in the input named `adapter_input`) counts by its
    published bytes: an adapter trained again under the same URI is evaluated and promoted again.
    """

    step: str = ""
    sections: tuple[str, ...] = ()
    adapter_input: str | None = None

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        config: PipelineConfig = inputs["config"]
        direction = inputs.get("direction")
        others = {name: _identity(value) for name, value in inputs.items() if name not in ("config", "direction")}
        if self.adapter_input is not None:
            others["adapter"] = _adapter(inputs[self.adapter_input])
        digest = sha256_json({"run": config.run_uri(), "config": config.section_hash(*self.sections), "inputs": others})
        return "-".join(part for part in (self.step, direction, digest[:24]) if part)


def _adapter(uri: str) -> str | None:
    return adapter_identity(uri, get_settings().storage_options_for(uri))


def _identity(value: Any) -> Any:
    """A task input as JSON for a key: adapters by their bytes, results without their provenance."""
    if isinstance(value, TrainResult):
        return {"adapter_uri": value.adapter_uri, "adapter": _adapter(value.adapter_uri)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _identity(v) for k, v in value.items() if k not in _PROVENANCE}
    if isinstance(value, list | tuple):
        return [_identity(v) for v in value]
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


# The steps of a direction, each keyed by what it reads (the run URI already names the run id).
TRAIN_CACHE = RunScoped(step="train", sections=("sources", "ingest", "base_model", "training"))
EVALUATE_CACHE = RunScoped(
    step="evaluate", sections=("base_model", "evaluation", "registry"), adapter_input="candidate_uri"
)
PROMOTE_CACHE = RunScoped(step="promote", sections=("promotion", "registry"))
REPORT_CACHE = RunScoped(step="report")


def reused(direction: str, step: str, state: State[Any], result: Any) -> bool:
    """Whether a step's result was handed on instead of produced in this flow run; says so in the log if it was."""
    handed_on = state.name == "Cached" or bool(getattr(result, "reused", False))
    if handed_on:
        host = getattr(result, "host", "") or "an earlier run"
        get_run_logger().info("%s: %s reused, as %s finished it (%s)", direction, step, host, _what(result))
    return handed_on


def _what(result: Any) -> str:
    if isinstance(result, TrainResult):
        return f"step {result.steps}, best step {result.best_step}, {result.adapter_uri}"
    version = getattr(result, "version", None)
    return f"{version}, promoted: {result.promoted}" if version is not None else "scores at the run URI"
