"""benchmarks/gpu_check.py --small: the whole GPU check in miniature on the CPU, so the script cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_small_gpu_check_runs_every_check_and_prints_one_table(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--small", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=560,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[0].startswith("| check | device | peak allocated GiB | peak reserved GiB | first step s |")
    assert table[0].endswith("| device time / wall | wall s | result |")
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in table[2:]}
    assert all("FAILED" not in line for line in rows.values()), "\n".join(rows.values())
    fits = [name for name in rows if name.startswith("gpu_fit ")]
    assert fits == [
        f"gpu_fit {shape} {q}, 4096 tokens" for shape in ("nllb-600m", "bloomz-560m") for q in ("none", "8bit")
    ]
    for name in fits:  # what only CUDA can say is said to be so
        cells = rows[name].split(" | ")
        assert cells[2] == cells[3] == cells[7] == "n/a (cpu)" and "fit's batch_tokens n/a (cpu)" in cells[9]
    assert "starts from v0001's weights: yes (bfloat16)" in rows["init from the incumbent, bf16"]
    assert "same translations: yes" in rows["out of memory: translation batch halved"]
    assert "sentences/s" in rows["evaluation, 8 sentences, beam 4"]
    serving = [line for name, line in rows.items() if name.startswith("serving torch")]
    assert len(serving) == 4 and all("0 failed" in line for line in serving)
    assert done.stdout.rstrip().endswith("(--small: tiny shapes)")
