"""The shape of the code, checked rather than stated: the layers (import-linter's contracts in
pyproject.toml), lint and format (ruff), and modules and functions small enough to hold."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

BIN = Path(sys.executable).parent
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 250, 50


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "lint-imports")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": str(BIN), "PYTHONPATH": str(root)},
    )


def test_the_layers_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


def test_a_step_module_importing_mlflow_breaks_them(tmp_path):
    """The contracts can fail: a copy of the packages with one deliberate `import mlflow` in a step."""
    for name in ("experiments", "fmae_models", "tune"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    step = tmp_path / "experiments" / "train_cae.py"
    step.write_text("import mlflow  # noqa: F401\n" + step.read_text())
    result = lint_imports(tmp_path)
    assert result.returncode != 0 and "BROKEN" in result.stdout
    assert "experiments.train_cae -> mlflow" in result.stdout


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]])
def test_ruff_finds_nothing(check):
    result = subprocess.run([str(BIN / "ruff"), *check, "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]


def test_modules_and_functions_stay_small():
    """No module of experiments/ or tune/ over 250 lines, no function over 50: past that, split it."""
    too_long = []
    for path in sorted([*ROOT.glob("experiments/**/*.py"), *ROOT.glob("tune/*.py")]):
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, too_long
