"""The import contracts of pyproject.toml hold, and they do catch a wrong-way import when one is planted."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["bhashaflow", "connectors", "serving", "tasks", "flows"]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")
MAX_FUNCTION_LINES = 65  # "about 60": a long docstring may carry a function a little past it


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--config", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packages and pyproject.toml, copied so that a planted import never touches the real tree."""
    root = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_contracts_hold() -> None:
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        ("bhashaflow/core/names.py", "import bhashaflow.training.loop", "The library's layers"),
        ("bhashaflow/data/holdout.py", "from bhashaflow.modeling import loaded", "The library's layers"),
        ("bhashaflow/registry/promotion.py", "import prefect", "never import Prefect"),
        ("serving/metrics.py", "import tasks.train", "Serving uses the library, never tasks or flows"),
        ("bhashaflow/episodes/store.py", "import connectors.retry", "does not reach the outside world's connectors"),
    ],
)
def test_a_planted_wrong_way_import_breaks_its_contract(
    tree_copy: Path, module: str, planted: str, contract: str
) -> None:
    target = tree_copy / module
    original = target.read_text()
    target.write_text(original + f"\n{planted}  # planted by the test\n")
    try:
        out = lint_imports(tree_copy)
    finally:
        target.write_text(original)
    assert out.returncode != 0
    broken = out.stdout.split("Broken contracts")[-1]
    assert contract in broken, out.stdout[-3000:]


def test_no_library_function_is_long() -> None:
    long = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
