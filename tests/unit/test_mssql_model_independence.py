"""The restore model judges Ferry, so it shares no code with it: no module of tests/mssql_model imports
`ferry`, in any form (import, from-import, relative or dynamic by name)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[1] / "mssql_model"


def _ferry_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "ferry"]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").split(".")[0] == "ferry":
                found.append(node.module or "")
        elif isinstance(node, ast.Call) and node.args:
            # importlib.import_module("ferry...") and __import__("ferry...")
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            first = node.args[0]
            dynamic = name in ("import_module", "__import__") and isinstance(first, ast.Constant)
            if dynamic and str(getattr(first, "value", "")).split(".")[0] == "ferry":
                found.append(str(getattr(first, "value", "")))
    return found


def _model_files() -> list[Path]:
    return sorted(MODEL.rglob("*.py"))


def test_the_model_has_files() -> None:
    assert len(_model_files()) > 10


@pytest.mark.parametrize("path", _model_files(), ids=lambda p: p.name)
def test_no_model_module_imports_ferry(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert _ferry_imports(tree) == [], f"{path.name} imports Ferry"


def test_the_check_sees_each_form() -> None:
    sample = (
        "import ferry\nimport os, ferry.core\nfrom ferry.engines import x\n"
        "import importlib\nimportlib.import_module('ferry.cli')\n__import__('ferry')\n"
        "from . import ferry_like\nimport ferrymodel\n"
    )
    assert _ferry_imports(ast.parse(sample)) == ["ferry", "ferry.core", "ferry.engines", "ferry.cli", "ferry"]
