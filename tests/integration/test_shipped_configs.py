"""The shipped configs run unchanged, by hub id, offline, on stand-ins of their bases (tests/standins.py).

For each config a user would run on NLLB-200, BLOOMZ and opus-mt, shortened with `--set` only: `bhashaflow check`,
`fit`, `pipeline`, `serve` (translations and feedback over HTTP) and `feedback-loop` (the served corrections
exported, read back, trained with CPO from the incumbent). The adapter the pipeline published and the registry
holds translates the same over HTTP as loaded back here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tiny_models import dev_lines

from bhashaflow.config import load_config
from bhashaflow.core.settings import Settings
from bhashaflow.modeling.adapters import load_adapter
from bhashaflow.modeling.generation import translate
from bhashaflow.modeling.loading import load_base
from bhashaflow.registry.store import Registry
from flows.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
BHASHAFLOW = str(Path(sys.executable).parent / "bhashaflow")
# config -> the directions run (a config's own, or the two the issue names for indic10)
# (two-direction configs run one direction each: the second would only repeat the first's work)
CONFIGS = {
    "configs/gpu-nllb-600m.yaml": ["eng_Latn-tam_Taml"],
    "configs/gpu-bloomz-560m.yaml": ["eng_Latn-hin_Deva"],
    "configs/indic10.yaml": ["eng_Latn-hin_Deva", "eng_Latn-tel_Telu"],
    "configs/opus-mt-en-hi.yaml": None,
}
TAGS = ("eng_Latn", "hin_Deva", "tel_Telu", "tam_Taml", "__", ">>", "</s>", "<pad>", "Translate from", "\n")


def _short(root: Path, directions: list[str] | None) -> list[str]:
    """The shipped config's own settings, cut to seconds of work; nothing else changes."""
    sets = {
        "workdir": root / "runs",
        "registry": root / "registry",
        "serving.episodes_db": root / "episodes.db",
        "rl_export.target": root / "rl-logs",
        "training.max_steps": 2,
        "training.checkpoint_every": 2,
        "training.batch_tokens": 512,
        "training.max_length": 64,
        "training.eval_every": 2,
        "training.validation": "{pairs: 4}",
        "evaluation.max_sentences": 4,
        "evaluation.batch_size": 4,
        "evaluation.num_beams": 1,
        "evaluation.max_new_tokens": 8,
        "promotion.min_gain": 0.0,
    }
    args = [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    if directions:
        args += ["--set", f"directions=[{', '.join(directions)}]"]
    return args


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    """`bhashaflow ARGV --json` in this process (the console script's own main); its JSON summary."""
    capsys.readouterr()
    code = main([*argv, "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, f"bhashaflow {' '.join(argv[:2])} exited {code}: {err[-3000:]}"
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return summary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Any]:
    """Start `bhashaflow serve CONFIG --set ...` as a user does; yields a function that starts one (the URL)."""
    procs: list[subprocess.Popen[str]] = []

    def start(config: str, args: list[str]) -> str:
        port = _free_port()
        proc = subprocess.Popen(
            [BHASHAFLOW, "serve", config, *args, "--port", str(port)],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the service never became ready"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            time.sleep(0.3)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize("config_path", list(CONFIGS), ids=lambda p: Path(p).stem)
def test_shipped_config_end_to_end_by_hub_id(
    config_path: str,
    hf_standins: Path,
    prefect_api: str,
    served: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _short(tmp_path, CONFIGS[config_path])
    config = load_config(str(ROOT / config_path))
    directions = CONFIGS[config_path] or config.directions
    bloomz = "bloomz" in config.base_model

    checked = _cli(capsys, "check", config_path, *args)
    names = {c["name"]: c for c in checked["checks"]}
    assert checked["ok"] and names["base model"]["message"].endswith("in the Hugging Face cache")
    assert names["language tags"]["ok"]
    assert ("evaluation set" in names) == bloomz  # BLOOMZ saw FLORES-200 devtest in training: said, not failed
    if bloomz:
        assert names["evaluation set"]["warning"] and "devtest" in names["evaluation set"]["message"]

    fitted = _cli(capsys, "fit", config_path, *args, "--device", "cpu", "--steps", "2")
    assert fitted  # measured on the CPU: what it can say there

    result = _cli(capsys, "pipeline", config_path, *args)
    assert set(result["directions"]) == set(directions)
    report = Path(result["report"]).read_text()
    assert ("measure memory, not translation" in report) == bloomz
    registry = Registry(str(tmp_path / "registry"))
    for direction, row in result["directions"].items():
        assert row["steps"] == 2 and row["version"] == "v0001"
        if not row["promoted"]:  # random weights: a candidate may score below the base; serve it all the same
            registry.promote(direction, row["version"])

    url = served(config_path, args)
    texts = dev_lines("eng_Latn", 3)
    episodes: dict[str, list[int]] = {}
    lm = load_base(config.base_model, languages=[], settings=Settings(hf_hub_offline=True), device="cpu")
    for direction in directions:
        src, tgt = direction.split("-")
        answers = [
            httpx.post(f"{url}/v1/translate", json={"texts": [t], "src_lang": src, "tgt_lang": tgt}, timeout=60)
            for t in texts
        ]
        assert all(a.status_code == 200 for a in answers), answers[0].text
        outputs = [a.json()["translations"][0] for a in answers]
        assert all(not any(tag in out for tag in TAGS) for out in outputs), outputs
        episodes[direction] = [a.json()["episode_ids"][0] for a in answers]
        _same_as_loaded_back(lm, registry, direction, texts, outputs, tmp_path)
        for episode, correction in zip(episodes[direction], dev_lines(tgt, 3), strict=True):
            answer = httpx.post(
                f"{url}/v1/feedback", json={"episode_id": episode, "reward": -0.5, "correction": correction}, timeout=30
            )
            assert answer.status_code == 200, answer.text

    loop = _cli(capsys, "feedback-loop", config_path, *args, *_loop_args(tmp_path))
    assert loop["export"]["exported"] >= 3 * len(directions), loop
    assert set(loop["directions"]) == set(directions)
    assert all(row["objective"] == "cpo" for row in loop["directions"].values())


def _loop_args(root: Path) -> list[str]:
    feedback = (
        f"{{name: feedback, kind: rl_logs, uri: {root / 'rl-logs'}, trusted_clients: [anonymous], heldout_share: 0.0}}"
    )
    flores = "{name: flores-dev, kind: flores, uri: data/flores200, split: dev}"
    # CPO pairs each correction with the served output: it batches examples (batch_size), not a token budget.
    return [
        "--set",
        f"sources=[{feedback}, {flores}]",
        "--set",
        "training.objective=cpo",
        "--set",
        "training.batch_tokens=null",
        "--set",
        "training.batch_size=4",
        "--set",
        "training.init_from=incumbent",
        "--set",
        "run_id=feedback-loop-1",
    ]


def _same_as_loaded_back(
    lm: Any, registry: Registry, direction: str, texts: list[str], served: list[str], root: Path
) -> None:
    """The promoted adapter fetched from the registry and loaded here translates exactly as the service did."""
    src, tgt = direction.split("-")
    found = registry.fetch_promoted(direction, str(root / "fetched" / direction))
    assert found is not None
    load_adapter(lm, found[1], direction)
    again = [translate(lm, [t], src_lang=src, tgt_lang=tgt, adapter=direction, max_new_tokens=8)[0] for t in texts]
    assert again == served
