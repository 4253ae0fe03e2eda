"""Ingesting an rl_logs source: corrections become pairs and preference triplets, a hashed share is held out
(never trained on), skips and rejections are counted by reason, and the counts add up to the rows read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from tiny_models import dev_lines

from bhashaflow.config import config_from_dict
from bhashaflow.core.settings import Settings
from bhashaflow.data.ingest import preference_uris, shard_uris, stage_source, summary, write_shards
from bhashaflow.episodes.export import encode_part
from connectors.factory import open_connector

N = 80
EN, HI = dev_lines("eng_Latn", N), dev_lines("hin_Deva", N)


def _record(i: int) -> dict[str, Any]:
    correction = None if i % 10 == 0 else HI[i]
    return {"episode_id": i, "direction": "eng_Latn-hin_Deva", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva",
            "adapter_version": "v0001", "prompt": EN[i], "response": f"गलत {i}", "reward": -0.5, "correction": correction,
            "feedback_seq": i, "client": "web", "feedback_client": "web"}


def _ingest(tmp_path: Path, parts: Path, run: str, sources: list[dict[str, Any]]) -> dict[str, Any]:
    config = config_from_dict({"directions": ["eng_Latn-hin_Deva"], "sources": sources})
    staged = [stage_source(config, s, open_connector(s, Settings(), config.directions), str(tmp_path / run))
              for s in config.sources]
    return write_shards(config, staged, str(tmp_path / run))


def _rows(uris: list[str]) -> list[dict[str, Any]]:
    return [row for uri in uris for row in pq.read_table(uri).to_pylist()]


def test_corrections_become_pairs_and_triplets_and_a_held_out_share_never_trains(tmp_path: Path) -> None:
    parts = tmp_path / "rl-logs"
    parts.mkdir()
    (parts / "episodes-000000000000-000000000079.jsonl").write_bytes(encode_part([_record(i) for i in range(N)], "jsonl"))
    feedback = {"name": "fb", "kind": "rl_logs", "uri": str(parts), "trusted_clients": ["web"], "heldout_share": 0.25}
    flores = {"name": "flores-dev", "kind": "flores", "uri": str(Path(__file__).resolve().parents[3] / "data/flores200"),
              "split": "dev"}
    manifest = _ingest(tmp_path, parts, "run", [feedback, flores])
    run = str(tmp_path / "run")
    entry = manifest["directions"]["eng_Latn-hin_Deva"]
    fb = manifest["sources"]["fb"]
    assert fb["read"] == N and fb["skipped_by_reason"] == {"no_correction": 8} and fb["rejected"] == 0
    corrected = N - 8
    held = _rows(preference_uris(manifest, run, "eng_Latn-hin_Deva", "heldout"))
    prefs = _rows(preference_uris(manifest, run, "eng_Latn-hin_Deva"))
    assert entry["heldout"]["rows"] == len(held) and entry["preferences"]["rows"] == len(prefs)
    assert len(held) + len(prefs) == corrected and 8 <= len(held) <= 30  # about a quarter, chosen by hash
    trained = {(r["src"], r["tgt"]) for r in _rows(shard_uris(manifest, run, "eng_Latn-hin_Deva"))}
    assert not trained & {(r["src"], r["tgt"]) for r in held}  # held-out corrections: not even via flores-dev
    assert {(r["src"], r["tgt"]) for r in prefs} <= trained  # every triplet's chosen side is also a pair
    assert all(r["rejected"].startswith("गलत") and r["adapter_version"] == "v0001" for r in prefs + held)
    # flores-dev repeats the corrections: those pairs are its duplicates, the feedback (first) keeps them.
    assert manifest["sources"]["flores-dev"]["duplicates"] == corrected
    assert summary(manifest, "m")["pairs"]["eng_Latn-hin_Deva"]["heldout"] == len(held)
    t = manifest["totals"]
    assert t["read"] == t["accepted"] + t["heldout"] + t["duplicates"] + t["rejected"] + t["skipped"]  # nothing lost
    # The same episodes are held out whatever else the run reads.
    again = _ingest(tmp_path, parts, "again", [feedback])
    assert _rows(preference_uris(again, str(tmp_path / "again"), "eng_Latn-hin_Deva", "heldout")) == held


def test_runs_without_rl_logs_keep_their_manifest_layout(tmp_path: Path) -> None:
    flores = {"name": "flores-dev", "kind": "flores", "uri": str(Path(__file__).resolve().parents[3] / "data/flores200"),
              "split": "dev"}
    manifest = _ingest(tmp_path, tmp_path, "plain", [flores])
    assert set(manifest["directions"]["eng_Latn-hin_Deva"]) == {"accepted", "duplicates", "rejected", "shards"}
    assert not (tmp_path / "plain" / "preferences").exists() and not (tmp_path / "plain" / "heldout").exists()
