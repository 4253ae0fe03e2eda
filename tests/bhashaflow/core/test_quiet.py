"""quiet_libraries: the library warnings we cannot fix are dropped, each by its module and message only."""

from __future__ import annotations

import logging

import pytest
import torch

from bhashaflow.core.quiet import quiet_libraries


def eight_bit_linear() -> torch.nn.Module:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear8bitLt(16, 8, bias=False, has_fp16_weights=False)
    layer.load_state_dict(torch.nn.Linear(16, 8, bias=False).state_dict())
    return layer.to("cpu").eval()  # eval: bitsandbytes' CPU backend takes the GPU's MatMul8bitLt path, as serving does


def test_bitsandbytes_cast_message_is_dropped_on_every_forward(caplog: pytest.LogCaptureFixture) -> None:
    quiet_libraries()
    layer = eight_bit_linear()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            out = layer(torch.randn(2, 16, dtype=torch.bfloat16))
        logging.getLogger("bitsandbytes.autograd._functions").warning("MatMul8bitLt: something else")
    assert out.dtype == torch.bfloat16
    messages = [r.getMessage() for r in caplog.records if r.name == "bitsandbytes.autograd._functions"]
    assert messages == ["MatMul8bitLt: something else"]  # only that one message of that module is dropped


def test_the_cast_message_is_what_bitsandbytes_logs(caplog: pytest.LogCaptureFixture) -> None:
    # Without the filter the message is there: a renamed message would leave the filter matching nothing.
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    kept, logger.filters = logger.filters, []
    try:
        with caplog.at_level(logging.WARNING):
            eight_bit_linear()(torch.randn(2, 16, dtype=torch.bfloat16))
    finally:
        logger.filters = kept
    assert [r.getMessage() for r in caplog.records if r.name == logger.name] == [
        "MatMul8bitLt: inputs will be cast from torch.bfloat16 to float16 during quantization"
    ]
