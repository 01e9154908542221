"""No function in pipeline/ runs over 60 lines (decorators and docstring included)."""

from __future__ import annotations

import ast
from pathlib import Path

LIMIT = 60
PIPELINE = Path(__file__).parents[1] / "pipeline"


def test_no_pipeline_function_is_over_60_lines() -> None:
    long = []
    for path in sorted(PIPELINE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if node.end_lineno - first + 1 > LIMIT:
                    long.append(f"{path.name}:{node.lineno} {node.name}")
    assert not long, f"functions over {LIMIT} lines: {long}"
