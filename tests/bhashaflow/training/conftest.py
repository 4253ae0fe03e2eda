"""The training tests' tiny bases (both families) and a shard of 64 FLORES dev pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import dev_lines, write_shard


@pytest.fixture(scope="module")
def bases(tiny_bases: dict[str, Path]) -> dict[str, Path]:
    return tiny_bases


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> str:
    pairs = list(zip(dev_lines("eng_Latn", 64), dev_lines("hin_Deva", 64), strict=True))
    return write_shard(
        tmp_path_factory.mktemp("shards") / "eng_Latn-hin_Deva-00000.parquet", pairs, "eng_Latn", "hin_Deva"
    )
