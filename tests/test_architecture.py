"""The house rules of ``docs/ARCHITECTURE.md``, checked on the source: sizes, import directions, the
CLI's place.

Imports inside functions count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ecl"
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 120

#: Each module's layer; a module may import only from its own layer or lower ones (docs/ARCHITECTURE.md).
LAYERS = {
    "ecl.utils": 0,
    "ecl.config": 0,
    "ecl.losses": 1,
    "ecl.data": 1,
    "ecl.models": 2,
    "ecl.optim": 1,
    "ecl.runtime": 1,
    "ecl.checkpoint": 3,
    "ecl.activations": 3,
    "ecl.evaluate": 4,
    "ecl.metrics": 4,
    "ecl.attribution": 5,
    "ecl.pair_methods": 5,
    "ecl.pair_cam": 5,
    "ecl.pair_explain": 5,
    "ecl.studies": 6,
    "ecl.pair_scores": 6,
    "ecl.train": 6,
    "ecl.experiments": 6,
    "ecl.results": 7,
    "ecl.viz": 7,
    "ecl.reproduce": 8,
    "ecl.notebook": 8,
    "ecl.book": 8,
    "ecl.cli": 9,
    "ecl": 9,
    "ecl.__main__": 10,
}
#: Modules that load or measure trained models and must never pull in the training loop.
NEVER_TRAIN = (
    "ecl.checkpoint",
    "ecl.evaluate",
    "ecl.metrics",
    "ecl.activations",
    "ecl.attribution",
    "ecl.pair_methods",
    "ecl.pair_cam",
    "ecl.pair_explain",
    "ecl.pair_scores",
    "ecl.studies",
    "ecl.viz",
    "ecl.results",
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _layer(module: str) -> int:
    while module not in LAYERS:
        module = module.rsplit(".", 1)[0]
    return LAYERS[module]


def _imports(path: Path, name: str) -> set[str]:
    """The ``ecl`` modules a file imports, anywhere in it (relative imports resolved)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "ecl"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.split(".")[0] != "ecl":
                continue
            found.add(base)
            # `from ecl import data` imports the submodule ecl.data.
            found |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in _modules()}
    return {m for m in found if m != name}


def test_no_module_is_longer_than_800_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert {n: k for n, k in long.items() if k > MAX_MODULE_LINES} == {}


def test_no_function_is_longer_than_120_lines():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert long == []


def test_imports_only_go_down_the_layers_so_there_is_no_cycle():
    upward = []
    for name, path in _modules().items():
        for imported in _imports(path, name):
            if imported == "ecl" or name == "ecl":
                continue  # the package's lazy __getattr__ and `import ecl` for its version
            if _layer(imported) > _layer(name):
                upward.append(f"{name} (layer {_layer(name)}) imports {imported} (layer {_layer(imported)})")
    assert upward == []


@pytest.mark.parametrize("name", NEVER_TRAIN)
def test_measuring_and_drawing_never_import_the_training_loop(name):
    assert "ecl.train" not in _imports(_modules()[name], name)


def test_argparse_lives_only_in_the_command_line_module():
    users = [
        n
        for n, p in _modules().items()
        if "argparse"
        in {
            a.name
            for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, ast.Import)
            for a in node.names
        }
    ]
    assert users == ["ecl.cli"]
    assert all(
        "SystemExit" not in p.read_text()
        for n, p in _modules().items()
        if n not in ("ecl.cli", "ecl.__main__")
    )
