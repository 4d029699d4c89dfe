"""The layers of DESIGN.md, kept by a test: every import (module-level and function-level) in the
project's packages goes to its own layer or a lower one, and side-by-side packages of layer 3
(modules, datamodules, evaluation) or of layer 4 (callbacks, benchmarks) never import each other.

    1 shapes (the world: data *and* evaluation ground truth)
    2 modules.common, modules.text (what data, models and evaluation share)
    3 modules.*, datamodules, evaluation (side by side)
    4 callbacks, benchmarks   5 commands   6 main
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"shapes": 1, "modules.common": 2, "modules.text": 2, "modules": 3, "datamodules": 3, "evaluation": 3,
         "callbacks": 4, "benchmarks": 4, "commands": 5, "main": 6}
SIDE_BY_SIDE = ({"modules", "datamodules", "evaluation"}, {"callbacks", "benchmarks"})


def package_of(module: str) -> str | None:
    """The layer key of a dotted module name (None for third-party and stdlib modules)."""
    for key in ("modules.common", "modules.text"):
        if module == key or module.startswith(key + "."):
            return key
    top = module.split(".")[0]
    return top if top in LAYER else None


def imports_of(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module in LAYER]
    return out


def violations(root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("tests", ".venv", "runs", "data") or rel.parts[0].startswith("."):
            continue
        src = package_of(".".join(rel.with_suffix("").parts))
        if src is None:
            continue
        for line, name in imports_of(path):
            dst = package_of(name)
            if dst is None or dst == src:
                continue
            upward = LAYER[dst] > LAYER[src]
            sideways = any(src in side and dst in side for side in SIDE_BY_SIDE)
            if upward or sideways:
                bad.append(f"{rel}:{line} imports {name} ({src}, layer {LAYER[src]} -> {dst}, layer {LAYER[dst]})")
    return bad


def test_imports_go_downward_only():
    bad = violations()
    assert not bad, "imports that go up or sideways across DESIGN.md's layers:\n" + "\n".join(bad)


def test_the_check_catches_an_upward_import(tmp_path):
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "scene.py").write_text("def f():\n    from modules.ar.model import ARDecoder\n")
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "x.py").write_text("import datamodules.shards\nfrom shapes import render\n")
    (tmp_path / "callbacks").mkdir()
    (tmp_path / "callbacks" / "y.py").write_text("from benchmarks.sampling import bench_sampling\n")
    bad = violations(tmp_path)
    assert len(bad) == 3
    assert bad[0].startswith("callbacks/y.py:1 imports benchmarks.sampling")
    assert bad[1].startswith("evaluation/x.py:1 imports datamodules.shards")
    assert bad[2].startswith("shapes/scene.py:2 imports modules.ar.model")
