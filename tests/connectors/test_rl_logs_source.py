"""The rl_logs source: exported parts (jsonl, gzip, parquet) read back as pairs with preference columns, every
other episode a counted skip with its reason, resumable inside a part, bad records rejected by part and line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from tiny_models import dev_lines

from bhashaflow.config import SourceConfig
from bhashaflow.core.settings import Settings
from bhashaflow.episodes.export import encode_part
from connectors.base import SourceError
from connectors.rl_logs import RlLogsConnector

EN, HI = dev_lines("eng_Latn", 20), dev_lines("hin_Deva", 20)


def record(
    i: int, *, correction: str | None = "ref", client: str | None = "web", seq: int | None = None
) -> dict[str, Any]:
    return {
        "episode_id": i,
        "time": "2026-12-04T10:00:00.000Z",
        "direction": "eng_Latn-hin_Deva",
        "src_lang": "eng_Latn",
        "tgt_lang": "hin_Deva",
        "adapter_version": "v0001",
        "base_model": "builtin:tiny-seq2seq",
        "prompt": EN[i],
        "response": f"served {i}",
        "reward": -0.5,
        "correction": HI[i] if correction == "ref" else correction,
        "feedback_time": None,
        "feedback_seq": i if seq is None else seq,
        "latency_ms": 1.0,
        "script_valid": True,
        "client": "web",
        "feedback_client": client,
    }


def source(folder: Path | str, **extra: Any) -> SourceConfig:
    return SourceConfig.model_validate(
        {"name": "fb", "kind": "rl_logs", "uri": str(folder), "trusted_clients": ["web"], **extra}
    )


def rows(folder: Path | str, start: dict[str, Any] | None = None, **extra: Any) -> list[Any]:
    return list(RlLogsConnector(source(folder, **extra), Settings()).iter_records(start))


def test_each_episode_becomes_a_pair_with_its_preference_or_a_skip_with_its_reason(tmp_path: Path) -> None:
    records = [
        record(0),
        record(1, correction=None),
        record(2, client="other"),
        record(3, client=None),
        record(4, client="anonymous"),
        record(5, correction="served 5"),
        record(6),
    ]
    (tmp_path / "episodes-000000000000-000000000006.jsonl").write_bytes(encode_part(records, "jsonl"))
    got = rows(tmp_path)
    assert [r.skip for r in got] == [
        None,
        "no_correction",
        "untrusted_client",
        "untrusted_client",
        "untrusted_client",
        "correction_equals_output",
        None,
    ]
    assert got[0].row == {
        "src": EN[0],
        "tgt": HI[0],
        "src_lang": "eng_Latn",
        "tgt_lang": "hin_Deva",
        "rejected": "served 0",
        "reward": -0.5,
        "adapter_version": "v0001",
        "episode_id": 0,
    }
    assert got[0].ref == "episodes-000000000000-000000000006.jsonl:1"
    assert got[-1].position["done"] is True
    # '*' trusts every attributed client, anonymous only when listed by name.
    star = [r.skip for r in rows(tmp_path, trusted_clients=["*"])]
    assert star[2:5] == [None, "untrusted_client", "untrusted_client"]


def test_parts_are_read_in_export_order_in_every_format_and_resume_inside_a_part(tmp_path: Path) -> None:
    (tmp_path / "episodes-000000000000-000000000002.jsonl").write_bytes(
        encode_part([record(i) for i in range(3)], "jsonl")
    )
    (tmp_path / "episodes-000000000003-000000000005.parquet").write_bytes(
        encode_part([record(i) for i in range(3, 6)], "parquet")
    )
    (tmp_path / "episodes-000000000006-000000000008.jsonl.gz").write_bytes(
        gzip.compress(encode_part([record(i) for i in range(6, 9)], "jsonl"))
    )
    (tmp_path / "notes.txt").write_text("not a part")
    got = rows(tmp_path)
    assert [r.row["episode_id"] for r in got] == list(range(9))
    for cut in range(len(got) - 1):  # from any record's position the rest follows, nothing twice
        rest = rows(tmp_path, got[cut].position)
        assert [r.row["episode_id"] for r in rest] == list(range(cut + 1, 9)), got[cut].position
    assert rows(tmp_path, got[-1].position) == []


def test_an_episode_exported_again_with_new_feedback_supersedes_its_older_record(tmp_path: Path) -> None:
    (tmp_path / "feedback-000000000001-000000000002.jsonl").write_bytes(
        encode_part([record(1, seq=1), record(2, seq=2)], "jsonl")
    )
    (tmp_path / "feedback-000000000003-000000000003.jsonl").write_bytes(
        encode_part([record(1, seq=3, correction=HI[7])], "jsonl")
    )
    got = rows(tmp_path)
    assert [(r.row["episode_id"], r.skip) for r in got] == [(1, "superseded"), (2, None), (1, None)]
    assert got[2].row["tgt"] == HI[7]


def test_broken_lines_and_records_without_a_prompt_are_rejections_naming_part_and_line(tmp_path: Path) -> None:
    good = json.dumps(record(0), ensure_ascii=False)
    no_prompt = json.dumps({k: v for k, v in record(1).items() if k != "prompt"}, ensure_ascii=False)
    (tmp_path / "episodes-000000000000-000000000002.jsonl").write_text(
        f"{good}\n{{broken\n{no_prompt}\n", encoding="utf-8"
    )
    got = rows(tmp_path)
    assert got[0].row is not None and got[1].row is None and got[1].reason == "malformed"
    assert got[2].row is None and got[2].reason == "missing_field"
    assert got[2].error == "episodes-000000000000-000000000002.jsonl:3: field 'prompt' is missing"
    assert [r.ref for r in got] == [f"episodes-000000000000-000000000002.jsonl:{n}" for n in (1, 2, 3)]


def test_config_requires_trusted_clients_and_keeps_rl_keys_to_rl_logs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind rl_logs needs 'trusted_clients'"):
        SourceConfig.model_validate({"name": "fb", "kind": "rl_logs", "uri": str(tmp_path)})
    with pytest.raises(ValueError, match="'heldout_share' applies to kind rl_logs only"):
        SourceConfig.model_validate({"name": "x", "kind": "s3", "uri": "s3://b/p", "heldout_share": 0.1})
    with pytest.raises(SourceError, match="cannot be listed"):
        rows("http://127.0.0.1:9/rl-logs")


def test_a_well_rewarded_output_is_preferred_over_a_badly_rewarded_one_for_the_same_prompt(tmp_path: Path) -> None:
    def rated(i: int, prompt: int, response: str, reward: float, client: str = "web") -> dict[str, Any]:
        return {
            **record(i, correction=None, client=client),
            "prompt": EN[prompt],
            "response": response,
            "reward": reward,
        }

    records = [
        rated(0, 0, HI[0], 1.0),
        rated(1, 0, "गलत अनुवाद", -1.0),
        rated(2, 0, "ठीक", 0.0),  # a pair: +1 over -1
        rated(3, 1, HI[1], 0.5),
        rated(4, 1, "कुछ और", 0.0),  # rewards too close: no pair
        rated(5, 2, HI[2], 1.0),
        rated(6, 2, "बुरा", -1.0, client="other"),
    ]  # an untrusted reward: no pair
    (tmp_path / "episodes-000000000000-000000000006.jsonl").write_bytes(encode_part(records, "jsonl"))
    got = rows(tmp_path)
    assert [r.skip for r in got] == ["no_correction", None] + ["no_correction"] * 5
    assert (got[1].row["tgt"], got[1].row["rejected"], got[1].row["reward"]) == (HI[0], "गलत अनुवाद", -1.0)
    assert [r.skip for r in rows(tmp_path, reward_margin=2.5)][1] == "no_correction"  # above 2: never paired


def test_a_resumed_read_keeps_to_the_parts_there_were_when_it_began(tmp_path: Path) -> None:
    (tmp_path / "episodes-000000000000-000000000002.jsonl").write_bytes(
        encode_part([record(i) for i in range(3)], "jsonl")
    )
    first = rows(tmp_path)
    (tmp_path / "episodes-000000000003-000000000004.jsonl").write_bytes(
        encode_part([record(i) for i in (3, 4)], "jsonl")
    )
    # Resumed mid-way: the same parts as before (a newer part waits for the next run), so the counts stay exact.
    assert [r.row["episode_id"] for r in rows(tmp_path, first[0].position)] == [1, 2]
    assert [r.row["episode_id"] for r in rows(tmp_path)] == [0, 1, 2, 3, 4]


def test_a_corrupt_parquet_part_is_an_error_naming_the_part(tmp_path: Path) -> None:
    (tmp_path / "episodes-000000000000-000000000002.jsonl").write_bytes(encode_part([record(0)], "jsonl"))
    (tmp_path / "episodes-000000000003-000000000005.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(
        SourceError, match=r"source 'fb': .*episodes-000000000003-000000000005\.parquet: not a readable Parquet"
    ):
        rows(tmp_path)
