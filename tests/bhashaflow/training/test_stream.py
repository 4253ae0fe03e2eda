"""The training stream: pairs leaking the evaluation set dropped and counted, FLORES read line for line."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_models import dev_lines, devtest_lines, write_shard
from training_helpers import DIRECTION, make_config

from bhashaflow.config import config_from_dict
from bhashaflow.data.decontamination import Decontaminator
from bhashaflow.training.loop import TrainHooks, train_adapter


def test_training_drops_and_counts_pairs_leaking_the_evaluation_set(bases: dict[str, Path], tmp_path: Path) -> None:
    clean = list(zip(dev_lines("eng_Latn", 20), dev_lines("hin_Deva", 20), strict=True))
    eval_src, eval_tgt = devtest_lines("eng_Latn", 30), devtest_lines("hin_Deva", 30)
    leaks = [("  " + eval_src[0].upper() + " ", "anything"), ("anything", eval_tgt[1]), (eval_tgt[2], "reversed")]
    shards = [
        write_shard(tmp_path / "a.parquet", clean[:10] + leaks[:2], "eng_Latn", "hin_Deva"),
        write_shard(tmp_path / "b.parquet", clean[10:] + leaks[2:], "eng_Latn", "hin_Deva"),
    ]
    result = train_adapter(
        config=make_config(bases["seq2seq"], max_steps=10, checkpoint_every=10),
        direction=DIRECTION,
        shard_paths=shards,
        out_dir=str(tmp_path / "run"),
        hooks=TrainHooks(eval_texts={"src": eval_src, "tgt": eval_tgt}),
    )
    assert result.decontaminated == 3
    assert json.loads((tmp_path / "run" / "adapter" / "training_config.json").read_text())["decontaminated"] == 3


def test_default_decontamination_uses_the_configured_evaluation_split(bases: dict[str, Path], tmp_path: Path) -> None:
    from tiny_models import FLORES

    leak = (devtest_lines("eng_Latn")[700], "x")  # past any max_sentences cut: the whole split is excluded
    shard = write_shard(tmp_path / "s.parquet", [("Hello.", "नमस्ते।"), leak], "eng_Latn", "hin_Deva")
    config = make_config(bases["seq2seq"], max_steps=1)
    config = config.model_copy(
        update={"evaluation": config.evaluation.model_copy(update={"flores_dir": str(FLORES), "max_sentences": 10})}
    )
    result = train_adapter(config=config, direction=DIRECTION, shard_paths=[shard], out_dir=str(tmp_path / "run"))
    assert result.decontaminated == 1


def test_a_line_separator_inside_an_evaluation_sentence_shifts_nothing(tmp_path: Path) -> None:
    from bhashaflow.training.stream import eval_sentences

    flores = tmp_path / "flores200"
    (flores / "devtest").mkdir(parents=True)
    # U+2028 and U+0085 are line breaks to str.splitlines, but not in FLORES files (one sentence per "\n").
    eng = ["First sentence.", "Second\u2028 half of it.", "Third\x85 one.", "Fourth."]
    hin = ["पहला।", "दूसरा\u2028 आधा।", "तीसरा।", "चौथा।"]
    (flores / "devtest" / "eng_Latn.devtest").write_text("\n".join(eng) + "\n", encoding="utf-8")
    (flores / "devtest" / "hin_Deva.devtest").write_text("\n".join(hin) + "\n", encoding="utf-8")
    config = config_from_dict({"directions": [DIRECTION], "evaluation": {"flores_dir": str(flores)}})

    sentences = eval_sentences(config, ("eng_Latn", "hin_Deva"), None)

    assert sentences == eng + hin  # eight whole sentences, not eleven fragments
    decon = Decontaminator(sentences)
    kept = list(decon.filter([(eng[1], "x"), ("Second", "x"), ("y", hin[3]), ("clean", "pair")]))
    assert kept == [("Second", "x"), ("clean", "pair")] and decon.removed == 2
