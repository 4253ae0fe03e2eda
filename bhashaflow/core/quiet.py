"""Library output a run does not want: progress bars of model loading, and the warnings we cannot fix.

A warning caused by our own call is fixed at the call. What is left here comes from inside libraries on a
path we cannot avoid, and each filter matches one message of one module only.
"""

from __future__ import annotations

import logging
import sys
import warnings


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message holds `fragment` and one of `reasons`."""

    def __init__(self, fragment: str, reasons: tuple[str, ...]) -> None:
        super().__init__()
        self.fragment, self.reasons = fragment, reasons

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (self.fragment in message and any(reason in message for reason in self.reasons))


# (logger, message fragment, the reasons it must name): each added once per process.
_LOG_FILTERS = (
    # bitsandbytes' CPU backend tries to fetch an optional 4-bit kernel from the hub when it is imported (peft
    # imports it whenever it is installed). We never trust remote kernel code, and offline there is none to fetch:
    # the fetch fails either way and bitsandbytes falls back to its own kernel.
    (
        "bitsandbytes.backends.cpu.ops",
        "Failed to load CPU gemm_4bit_forward from kernels-community",
        ("offline mode", "publisher trust"),
    ),
    ("kernels._internals.hf_hub", "Skipping publisher trust check", ("offline mode",)),
    # bitsandbytes' Linear8bitLt quantizes its inputs in fp16 and says so on every forward of a bf16 model (no
    # once-only guard): hundreds of lines a step. The cast is the kernel's design; fp16 bases (training.precision)
    # do not cast at all.
    ("bitsandbytes.autograd._functions", "MatMul8bitLt: inputs will be cast from", ("to float16 during quantization",)),
)
_done = False


def quiet_libraries(*, datasets: bool = False) -> None:
    """Turn off library progress bars and drop the few library warnings we cannot fix (idempotent).

    Args:
        datasets: also turn off the progress bars of `datasets` (importing it takes a while: only hub sources).
    """
    global _done
    if datasets:
        import datasets as hf_datasets

        if not hf_datasets.are_progress_bars_disabled():
            hf_datasets.disable_progress_bars()
    if _done:
        return
    _done = True
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

    if not are_progress_bars_disabled():
        disable_progress_bars()  # transformers takes its default from here when it is imported ("Loading weights")
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    # peft's PeftModel.__init__ reads the deprecated `model.is_gradient_checkpointing` (peft 0.21, transformers 5)
    # whenever we wrap or load an adapter; get_peft_model is the public API, so the call is not ours to change.
    warnings.filterwarnings(
        "ignore",
        message=r"`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
        module=r"transformers\.modeling_utils",
    )
    for name, fragment, reasons in _LOG_FILTERS:
        logging.getLogger(name).addFilter(_DropMessage(fragment, reasons))
