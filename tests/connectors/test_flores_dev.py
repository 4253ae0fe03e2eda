"""FloresConnector against FLORES-layout folders on disk: aligned pairs, resume, refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tiny_models import FLORES

from bhashaflow.config import SourceConfig
from bhashaflow.core.settings import Settings
from bhashaflow.data.flores import read_flores
from connectors import SourceError, open_connector
from connectors.flores_dev import FloresConnector


def flores_source(uri: Path | str, split: str | None = "dev") -> SourceConfig:
    return SourceConfig(name="flores-dev", kind="flores", uri=str(uri), split=split)


def test_yields_aligned_pairs_per_direction_in_config_order(flores_dir: Path) -> None:
    conn = FloresConnector(flores_source(flores_dir), ["hin_Deva-tam_Taml", "eng_Latn-hin_Deva"])
    records = list(conn.iter_records())

    assert conn.name == "flores-dev"
    assert [r.ref for r in records] == [
        "flores:dev:hin_Deva-tam_Taml:1",
        "flores:dev:hin_Deva-tam_Taml:2",
        "flores:dev:hin_Deva-tam_Taml:3",
        "flores:dev:eng_Latn-hin_Deva:1",
        "flores:dev:eng_Latn-hin_Deva:2",
        "flores:dev:eng_Latn-hin_Deva:3",
    ]
    assert records[1].row == {"src": "dev दो।", "tgt": "dev இரண்டு.", "src_lang": "hin_Deva", "tgt_lang": "tam_Taml"}
    assert records[5].row == {"src": "dev Three.", "tgt": "dev तीन।", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
    assert [r.position for r in records] == [
        {"direction_index": 0, "line": 1},
        {"direction_index": 0, "line": 2},
        {"direction_index": 0, "line": 3},
        {"direction_index": 1, "line": 1},
        {"direction_index": 1, "line": 2},
        {"direction_index": 1, "line": 3},
    ]
    assert all(r.error is None and r.raw is None for r in records)


def test_resuming_from_every_position_continues_exactly_after_it(flores_dir: Path) -> None:
    directions = ["eng_Latn-hin_Deva", "eng_Latn-tam_Taml"]
    records = list(FloresConnector(flores_source(flores_dir), directions).iter_records())

    for i, record in enumerate(records):
        fresh = FloresConnector(flores_source(flores_dir), directions)
        assert [r.ref for r in fresh.iter_records(record.position)] == [r.ref for r in records[i + 1 :]]


def test_a_position_from_elsewhere_is_refused(flores_dir: Path) -> None:
    conn = FloresConnector(flores_source(flores_dir), ["eng_Latn-hin_Deva"])
    with pytest.raises(SourceError, match="does not belong"):
        next(conn.iter_records({"consumed": 3}))
    with pytest.raises(SourceError, match="does not belong"):
        next(conn.iter_records({"direction_index": 2, "line": 0}))


def test_missing_language_file_names_the_file_before_anything_is_yielded(flores_dir: Path) -> None:
    (flores_dir / "dev" / "tam_Taml.dev").unlink()
    conn = FloresConnector(flores_source(flores_dir), ["eng_Latn-hin_Deva", "eng_Latn-tam_Taml"])
    with pytest.raises(SourceError, match=r"tam_Taml\.dev does not exist") as err:
        next(conn.iter_records())
    assert "'flores-dev'" in str(err.value)


def test_files_of_unequal_length_are_refused(flores_dir: Path) -> None:
    with (flores_dir / "dev" / "hin_Deva.dev").open("a", encoding="utf-8") as f:
        f.write("चार।\n")
    conn = FloresConnector(flores_source(flores_dir), ["eng_Latn-hin_Deva"])
    with pytest.raises(SourceError, match=r"eng_Latn\.dev has 3 lines but .*hin_Deva\.dev has 4"):
        list(conn.iter_records())


def test_devtest_is_refused_even_when_config_validation_is_bypassed(flores_dir: Path) -> None:
    with pytest.raises(ValueError, match="devtest is the evaluation set"):
        flores_source(flores_dir, split="devtest")
    unchecked = SourceConfig.model_construct(name="sneaky", kind="flores", uri=str(flores_dir), split="devtest")
    with pytest.raises(SourceError, match="devtest is the evaluation set"):
        FloresConnector(unchecked, ["eng_Latn-hin_Deva"])


def test_unknown_direction_is_a_source_error(flores_dir: Path) -> None:
    with pytest.raises(SourceError, match="xyz_Latn"):
        FloresConnector(flores_source(flores_dir), ["eng_Latn-xyz_Latn"])


def test_open_connector_reads_the_bundled_dev_split(tmp_path: Path) -> None:
    # a copy of two languages keeps the test independent of what else the folder holds
    for lang in ("eng_Latn", "mar_Deva"):
        (tmp_path / "dev").mkdir(exist_ok=True)
        shutil.copy(FLORES / "dev" / f"{lang}.dev", tmp_path / "dev")
    conn = open_connector(flores_source(tmp_path, split=None), Settings(), ["mar_Deva-eng_Latn"])
    records = list(conn.iter_records())
    assert len(records) == 997
    assert records[-1].ref == "flores:dev:mar_Deva-eng_Latn:997"
    assert records[0].row == {
        "src": read_flores(FLORES, "mar_Deva", "dev")[0],
        "tgt": read_flores(FLORES, "eng_Latn", "dev")[0],
        "src_lang": "mar_Deva",
        "tgt_lang": "eng_Latn",
    }
