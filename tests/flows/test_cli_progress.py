"""Watching a run from the CLI: bars on a terminal, periodic lines in a pipe, `--quiet`, no library noise, and
the charts and artifacts a run leaves. One tiny pipeline run per way of watching, shared by its assertions."""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from png_check import assert_png

from bhashaflow.config import TrainingConfig
from tasks.rundirs import artifact_key
from tasks.train import report_every

ROOT = Path(__file__).resolve().parents[2]
BHASHAFLOW = str(Path(sys.executable).parent / "bhashaflow")
DIRECTION = "eng_Latn-hin_Deva"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A warning printed by Python or logged by a library, in Prefect's console format or Python's own.
WARNING_LINE = re.compile(r"\| WARNING \||\b[A-Z][A-Za-z]*Warning: ")

pytestmark = pytest.mark.slow


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str  # for a terminal run: everything the terminal showed, escape codes removed
    run_dir: Path | None = None


def overrides(tiny_base: str, root: Path, run_name: str) -> list[str]:
    sets = [
        f"run_name={run_name}",
        f"base_model={tiny_base}",
        f"workdir={root / 'runs'}",
        f"registry={root / 'registry'}",
        f"directions=[{DIRECTION}]",
        "training.max_steps=12",
        "training.log_every=4",
        "training.checkpoint_every=6",
        "evaluation.max_sentences=6",
        "evaluation.max_new_tokens=8",
        "evaluation.batch_size=2",
    ]
    return [arg for item in sets for arg in ("--set", item)]


@pytest.fixture(scope="module")
def watch_env(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COLUMNS", "LINES"))}
    env.update(
        {
            "PREFECT_API_URL": prefect_api,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "BHASHAFLOW_CACHE_DIR": str(tmp_path_factory.mktemp("watch-cache")),
            "TERM": "xterm-256color",
        }
    )
    return env


def run_in_pipe(args: list[str], env: dict[str, str]) -> Run:
    out = subprocess.run([BHASHAFLOW, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return Run(out.returncode, out.stdout, out.stderr)


def run_in_terminal(args: list[str], env: dict[str, str], timeout_s: float = 300) -> Run:
    """Run the CLI with stdin, stdout and stderr on a pseudo-terminal; returns what the terminal showed."""
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [BHASHAFLOW, *args], cwd=ROOT, env={**env, "COLUMNS": "200"}, stdin=child, stdout=child, stderr=child
    )
    os.close(child)
    shown, deadline = bytearray(), time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if select.select([main], [], [], 1.0)[0]:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
        code = proc.wait(timeout=30)
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
    return Run(code, "", ANSI.sub("", shown.decode("utf-8", "replace")))


def screen_lines(text: str) -> list[str]:
    """Each line as last drawn (a carriage return redraws it), without the bars' repaints."""
    return [
        line.split("\r")[-1] if line.split("\r")[-1].strip() else line.strip("\r")
        for line in text.replace("\r\n", "\n").split("\n")
    ]


@pytest.fixture(scope="module")
def piped(tiny_base: str, watch_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("watch-pipe")
    run = run_in_pipe(
        ["pipeline", "configs/smoke.yaml", "--json", *overrides(tiny_base, root, "watch-pipe")], watch_env
    )
    assert run.code == 0, run.stderr[-3000:]
    run.run_dir = root / "runs" / "watch-pipe" / json.loads(run.stdout)["run_id"]
    return run


@pytest.fixture(scope="module")
def terminal(tiny_base: str, watch_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("watch-tty")
    run = run_in_terminal(["pipeline", "configs/smoke.yaml", *overrides(tiny_base, root, "watch-tty")], watch_env)
    assert run.code == 0, run.stderr[-3000:]
    return run


def test_report_steps_fall_on_log_steps_about_fifty_times_a_run() -> None:
    assert report_every(TrainingConfig(max_steps=500, log_every=10)) == 10
    assert report_every(TrainingConfig(max_steps=2000, log_every=10)) == 10
    assert report_every(TrainingConfig(max_steps=500, log_every=100)) == 10
    assert report_every(TrainingConfig(max_steps=500, log_every=25)) == 5
    assert report_every(TrainingConfig(max_steps=12, log_every=4)) == 1


def test_a_pipe_gets_periodic_lines_every_log_every_steps_and_no_bars(piped: Run) -> None:
    steps = re.findall(
        rf"{DIRECTION} step (\d+)/12 loss \d+\.\d{{4}}, [\d,]+ tokens/s, ETA \d+:\d\d:\d\d", piped.stderr
    )
    assert steps == ["4", "8", "12"]  # training.log_every=4, not every step
    assert "flores-dev: 997 rows read, the whole source" in piped.stderr
    assert f"{DIRECTION} base: translated 6/6 sentences" in piped.stderr
    assert f"{DIRECTION} candidate: translated 6/6 sentences" in piped.stderr
    assert "━" not in piped.stderr and "\r" not in piped.stderr


def test_json_keeps_stdout_to_the_json_alone(piped: Run) -> None:
    lines = piped.stdout.splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result) == {"run_id", "report", "directions"} and DIRECTION in result["directions"]
    assert "chrF++ on FLORES-200" in piped.stderr  # the table goes to stderr beside the JSON


def test_a_run_prints_no_library_warnings_or_bars(piped: Run) -> None:
    noise = [
        line
        for line in piped.stderr.splitlines()
        if WARNING_LINE.search(line) or "Loading weights" in line or "it/s]" in line
    ]
    assert noise == []


def test_a_terminal_gets_one_bar_per_phase_with_rate_and_eta(terminal: Run) -> None:
    lines = screen_lines(terminal.stderr)
    bars = {" ".join(line.split()[:2]): line for line in lines if "━" in line}
    assert set(bars) == {"ingest flores-dev", f"train {DIRECTION}", f"evaluate {DIRECTION}"}
    shown = "\n".join(lines)
    assert re.search(rf"train +{DIRECTION} +━+ 12/12 steps +[\d.,]+ steps/s +took \d:\d\d:\d\d loss \d\.\d{{4}}", shown)
    assert re.search(rf"evaluate +{DIRECTION} base +━+ 6/6 sentences +[\d.,]+ sentences/s", shown)
    assert re.search(rf"evaluate +{DIRECTION} candidate +━+ 6/6 sentences", shown)
    assert re.search(r"ingest +flores-dev +━+ 997/997 rows", shown)
    assert re.search(rf"train +{DIRECTION} +━* *\d+/12 steps .*ETA (\d:\d\d:\d\d|-)", terminal.stderr)  # as it ran
    assert not re.search(rf"{DIRECTION} step \d+/12 loss", shown)  # the bars replace the periodic lines
    assert "Finished in state Completed" in shown  # Prefect's own lines still print, above the bars
    assert "chrF++ on FLORES-200" in shown and not [line for line in lines if WARNING_LINE.search(line)]


def test_quiet_keeps_only_the_final_table(tiny_base: str, watch_env: dict[str, str], tmp_path: Path) -> None:
    run = run_in_terminal(
        ["pipeline", "configs/smoke.yaml", "--quiet", *overrides(tiny_base, tmp_path, "watch-quiet")], watch_env
    )
    assert run.code == 0, run.stderr[-3000:]
    lines = [line for line in screen_lines(run.stderr) if line.strip()]
    assert lines[0].startswith("run watch-quiet-") and ": report " in lines[0]
    assert lines[1].startswith("direction ") and lines[2].startswith("chrF++ on FLORES-200")
    assert len(lines) == 4 and lines[3].startswith(DIRECTION)


def test_quiet_still_prints_the_error(watch_env: dict[str, str], tmp_path: Path) -> None:
    run = run_in_pipe(
        [
            "ingest",
            "configs/demo.yaml",
            "--quiet",
            "--set",
            f"workdir={tmp_path / 'runs'}",
            "--set",
            f"sources.flores-dev.uri={tmp_path / 'missing'}",
        ],
        watch_env,
    )
    assert run.code == 1 and run.stdout == ""
    assert run.stderr.splitlines()[-1].startswith("bhashaflow ingest: error: ")
    assert not [line for line in run.stderr.splitlines() if "| INFO " in line]


def test_the_run_leaves_loss_charts_and_a_deterministic_train_log(piped: Run) -> None:
    assert piped.run_dir is not None
    direction_dir = piped.run_dir / "adapters" / DIRECTION
    assert_png((direction_dir / "loss.png").read_bytes())
    assert_png((piped.run_dir / "loss.png").read_bytes())
    assert_png((piped.run_dir / "chrf.png").read_bytes())
    log = [json.loads(line) for line in (direction_dir / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [4, 8, 12]
    assert all(set(e) == {"step", "loss", "lr", "tokens"} for e in log)  # no wall-clock figures
    report = (piped.run_dir / "report.md").read_text()
    assert f"Loss curves: `{piped.run_dir / 'loss.png'}`" in report


def _artifact(key: str) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert len(found) == 1, [a.data for a in found]  # one card per thing: redrawn charts rewrite it in place
    return {
        "data": found[0].data,
        "description": found[0].description,
        "type": found[0].type,
        "flow_run_id": found[0].flow_run_id,
    }


def _run_artifacts(flow_run_id: object) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return [a for a in found if a.key]  # Prefect's own unkeyed ones point at persisted results


def _embedded_pngs(markdown: str) -> list[bytes]:
    return [
        base64.b64decode(b) for b in re.findall(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    ]


def test_the_artifacts_carry_progress_and_the_loss_curves(piped: Run) -> None:
    progress = _artifact(artifact_key("adapter-pipeline", "watch-pipe", DIRECTION, "train"))
    assert progress["data"] == 100.0
    assert re.fullmatch(
        rf"{DIRECTION} training progress, run watch-pipe-\S+: final loss \d+\.\d{{4}}, no validation; "
        r"finished at step 12 \(best step 12\)",
        str(progress["description"]),
    )
    curve = _artifact(artifact_key("adapter-pipeline", "watch-pipe", DIRECTION, "loss"))  # drawn at steps 6 and 12
    assert str(curve["data"]).startswith(f"### {DIRECTION}: training loss and validation chrF++ at step 12\n")
    assert re.fullmatch(rf"{DIRECTION} loss chart, run watch-pipe-\S+: .* at step 12, .*", str(curve["description"]))
    [png] = _embedded_pngs(str(curve["data"]))
    assert_png(png)
    report = str(_artifact(artifact_key("adapter-pipeline", "watch-pipe", "report"))["data"])
    charts = _embedded_pngs(report)
    assert len(charts) == 2  # chrF++ and the loss curves, side by side
    for png in charts:
        assert_png(png)
    result = json.loads(piped.stdout)["directions"][DIRECTION]
    if result["promoted"]:
        link = _artifact(artifact_key("adapter-pipeline", "watch-pipe", DIRECTION, "adapter"))
        # A local registry: the path as text with the command that opens it, not a file:// link a browser refuses.
        [path] = re.findall(r"In the registry: `(/[^`]+)` on host `[^`]+` \(open: `ls -l \1`\)", str(link["data"]))
        assert Path(path).is_dir() and (link["type"], link["description"]) == (
            "markdown",
            (
                f"{DIRECTION} adapter {result['version']}, promoted by run {json.loads(piped.stdout)['run_id']}: "
                "where it is in the registry"
            ),
        )
    artifacts = _run_artifacts(progress["flow_run_id"])
    assert len(artifacts) == 4 + result["promoted"]  # train, loss, chrf, report (+ adapter)
    for artifact in artifacts:
        assert artifact.description and "file://" not in str(artifact.data), artifact.key
