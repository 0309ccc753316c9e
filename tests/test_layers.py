"""The architecture, held by tests: import-linter's layer and no-cycle contracts (pyproject.toml),
function-level imports only for heavy optional dependencies, and modules that hold one job."""

from __future__ import annotations

import ast
from pathlib import Path

from importlinter.cli import lint_imports

REPO = Path(__file__).resolve().parents[1]
PACKAGES = [REPO / "src" / "clip_unlearn", REPO / "flows", REPO / "tasks"]
# Imported where they are used, to keep every other import cheap: MLflow's client, Prefect, plotting,
# scikit-learn's digits (data generation only), torchvision's dataset classes (external data only).
HEAVY = ("mlflow", "prefect", "matplotlib", "sklearn", "clip_unlearn.core.data.external")
# The CLI loads what a command runs when it runs, so `unlearn --help` or `unlearn status` starts fast;
# _compat must patch torchvision before anything imports torch.
ANY_IMPORT_IN_FUNCTIONS = ("clip_unlearn/cli/", "clip_unlearn/_compat.py")
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for root in PACKAGES for p in root.rglob("*.py"))


def test_the_layer_and_cycle_contracts_hold():
    assert lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True) == 0


def test_imports_inside_functions_are_only_for_heavy_dependencies():
    found = []
    for path in _modules():
        rel = path.relative_to(REPO).as_posix()
        if any(part in rel for part in ANY_IMPORT_IN_FUNCTIONS):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import):
                    names = [a.name for a in sub.names]
                elif isinstance(sub, ast.ImportFrom):
                    names = [f"{sub.module}.{a.name}" if sub.module == "clip_unlearn.core.data" else sub.module
                             for a in sub.names]
                else:
                    continue
                found += [f"{rel}:{sub.lineno} imports {n}" for n in names if not n.startswith(HEAVY)]
    assert not found, "\n".join(found)


def test_no_module_is_over_about_400_lines():
    long = [f"{p.relative_to(REPO)}: {n}" for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, long
