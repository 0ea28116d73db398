"""Imports inside the package run one way: from the commands down to the file readers, never upwards.

Every ``import`` / ``from ... import`` of a ``cryoscape`` module (at the top of a file or inside a function) is
read with ``ast``; a module may import modules of its own level or of a lower one (a higher number). The levels:
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cryoscape"

LEVELS = {
    # 0: the commands and the demo
    "cli": 0, "demo": 0, "__main__": 0,
    # 1: using trained runs
    "analysis": 1, "explore": 1, "inference": 1,
    # 2: training
    "train": 2,
    # 3: model families
    "models": 3,
    # 4: data providers and simulation
    "data": 4, "simulate": 4,
    # 5: files and imaging
    "io": 5, "imaging": 5,
    # 6: shared foundations (metadata: the typed CTF/pose containers, numpy only; the run configuration reads
    # its CTF overrides type)
    "utils": 6, "errors": 6, "config": 6, "rundir": 6, "metadata": 6, "__init__": 6,
}


def _level(module: str) -> int:
    """Level of ``cryoscape.X...`` (by X)."""
    part = module.split(".")[1] if "." in module else "__init__"
    if part not in LEVELS:
        raise AssertionError(f"module {module} has no level in tests/test_import_layers.py: give it one")
    return LEVELS[part]


def _module_name(path: Path, src: Path) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str):
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield node.lineno, name


def upward_imports(src: Path = SRC) -> list[str]:
    found = []
    for path in sorted(src.rglob("*.py")):
        module = _module_name(path, src)
        own = _level(module)
        for line, name in _imports(path, module):
            if name == "cryoscape" or not name.startswith("cryoscape."):
                continue
            if _level(name) < own:
                found.append(f"{path.relative_to(src.parent)}:{line}: {module} (level {own}) imports {name} "
                             f"(level {_level(name)})")
    return found


def test_no_module_imports_a_higher_layer():
    found = upward_imports()
    assert not found, "upward imports:\n" + "\n".join(found)


def test_the_check_sees_an_upward_import(tmp_path):
    """The walker is not vacuous: a models module importing train is reported."""
    fake = tmp_path / "cryoscape"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "bad.py").write_text("def f():\n    from cryoscape.train.engine import Engine\n")
    (fake / "models" / "good.py").write_text("from cryoscape.io.mrc import read_mrc\nfrom . import bad\n")
    found = upward_imports(fake)
    assert len(found) == 1 and "cryoscape.models.bad (level 3) imports cryoscape.train.engine (level 2)" in found[0]


@pytest.mark.parametrize("module", ["cryoscape.models.loading", "cryoscape.models.opus_dsd"])
def test_models_do_not_import_train(module):
    path = SRC / (module.split(".", 1)[1].replace(".", "/") + ".py")
    assert not [n for _, n in _imports(path, module) if n.startswith("cryoscape.train")]
